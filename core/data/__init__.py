"""Training data: corpora (:mod:`.corpus`), token shards (:mod:`.shards`), the window sampler (:mod:`.sampler`)."""
from .corpus import DATASETS, find_dataset, fingerprint, read_text, split_text, token_dtype  # noqa: F401
from .sampler import SegmentSampler, WindowSampler, fixed_batches, segment_batches  # noqa: F401
from .shards import META, load_meta, open_shards, prepare_shards  # noqa: F401
