"""Training: the configuration and recipes (:mod:`.config`), the schedule (:mod:`.schedule`), processes
(:mod:`.dist`), progress (:mod:`.progress`), the trainer (:mod:`.trainer`) and its edge, where a model
name is resolved (:mod:`.start`), fine-tuning
(:mod:`.finetune`) and reading runs back (:mod:`.compare`)."""
from .config import TrainConfig  # noqa: F401
from .schedule import lr_at, param_groups  # noqa: F401
from .start import resolve_for_training, train, trainer_for  # noqa: F401
from .trainer import Trainer  # noqa: F401
