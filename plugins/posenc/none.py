"""No positional encoding, NoPE (Kazemnejad et al. 2023, "The Impact of Positional Encoding on
Length Generalization in Transformers", arXiv:2305.19466): a causal decoder can infer position
from the mask alone."""
from zoo.components import PosEnc
from zoo.hookspecs import hookimpl

PARAMS = {"type": "object", "additionalProperties": False, "properties": {}}
TAGS = {"kind": "none", "bounded": False}


class NoPosEnc(PosEnc):
    """Leaves embeddings, queries and keys as they are."""


@hookimpl
def register_posenc(register):
    register("none", NoPosEnc, PARAMS, TAGS)
