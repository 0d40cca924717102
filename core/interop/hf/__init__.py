"""Hugging Face checkpoints in and out: the tensor operations (:mod:`.ops`), the architectures
(:mod:`.archs`) and the conversion with its files (:mod:`.convert`)."""
from .convert import export_hf, import_hf  # noqa: F401
