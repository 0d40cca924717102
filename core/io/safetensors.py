"""A small reader and writer of the safetensors format, so that importing a checkpoint needs no
``transformers`` and no ``safetensors`` package.

The format (https://github.com/huggingface/safetensors): 8 bytes little-endian header length N,
N bytes of JSON ``{name: {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
"__metadata__": {str: str}}``, then the raw little-endian tensor bytes, offsets relative to the end
of the header. Why our own: the format is this simple, every error can then name the file and the
tensor (a truncated download, an offset past the end, a dtype we do not know), and the zoo's
dependencies stay as they are. The reader memory-maps the file copy-on-write, so a tensor costs no
memory until it is used; the tests check both directions against the ``safetensors`` package when
it is installed.
"""
from __future__ import annotations

import json
import mmap
import struct
from pathlib import Path

from ..errors import ZooError
from .atomic import write_atomically

_DTYPES = {  # safetensors name -> torch dtype attribute
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}
_MAX_HEADER = 100 * 2**20


def _torch_dtype(name: str, path, tensor: str):
    import torch
    attr = _DTYPES.get(name)
    if attr is None or not hasattr(torch, attr):
        raise ZooError(f"{str(path)!r}: tensor {tensor!r} has dtype {name!r}, which the zoo cannot read "
                       f"(known: {', '.join(_DTYPES)}).")
    return getattr(torch, attr)


def read_header(path) -> tuple[dict, int]:
    """The JSON header of a safetensors file and the byte offset where its data starts."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) < 8:
                raise ZooError(f"{str(path)!r} is not a safetensors file: it is shorter than 8 bytes.")
            (n,) = struct.unpack("<Q", raw)
            if n > _MAX_HEADER:
                raise ZooError(f"{str(path)!r} is not a safetensors file: its header length ({n} bytes) is "
                               f"implausible.")
            head = f.read(n)
    except OSError as e:
        raise ZooError(f"cannot read {str(path)!r}: {e.strerror}.") from None
    try:
        header = json.loads(head)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ZooError(f"{str(path)!r} is not a safetensors file: its header is not JSON (is the file "
                       f"truncated or a Git LFS pointer?).") from None
    if not isinstance(header, dict):
        raise ZooError(f"{str(path)!r} is not a safetensors file: its header is not a JSON object.")
    return header, 8 + n


def load_file(path) -> dict:
    """All tensors of a safetensors file: {name: tensor}, backed by a copy-on-write memory map."""
    import torch
    path = Path(path)
    header, start = read_header(path)
    size = path.stat().st_size
    out = {}
    mm = None
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype_name, shape, (begin, end) = info["dtype"], list(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise ZooError(f"{str(path)!r}: the header entry of tensor {name!r} is malformed: {info!r}.") from None
        dtype = _torch_dtype(dtype_name, path, name)
        numel = 1
        for d in shape:
            numel *= int(d)
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        if end - begin != nbytes or begin < 0:
            raise ZooError(f"{str(path)!r}: tensor {name!r} of shape {shape} and dtype {dtype_name} needs "
                           f"{nbytes} bytes, but its offsets [{begin}, {end}] hold {end - begin}.")
        if start + end > size:
            raise ZooError(f"{str(path)!r}: tensor {name!r} ends at byte {start + end}, past the end of the "
                           f"file ({size} bytes); the file is truncated. Download it again.")
        if numel == 0:
            out[name] = torch.empty(shape, dtype=dtype)
            continue
        if mm is None:
            with open(path, "rb") as f:
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        t = torch.frombuffer(mm, dtype=dtype, count=numel, offset=start + begin)  # (numel,)
        out[name] = t.view(shape)
    return out


def metadata(path) -> dict:
    return read_header(path)[0].get("__metadata__", {}) or {}


def save_file(tensors: dict, path, meta: dict | None = None):
    """Write {name: tensor} as a safetensors file, atomically (a temporary file, then rename)."""
    import torch
    names = {v: k for k, v in _DTYPES.items()}
    header, offset, blobs = {}, 0, []
    if meta:
        header["__metadata__"] = {str(k): str(v) for k, v in meta.items()}
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        code = names.get(str(t.dtype).removeprefix("torch."))
        if code is None:
            raise ZooError(f"cannot write tensor {name!r}: dtype {t.dtype} has no safetensors name.")
        data = t.view(-1).view(torch.uint8)  # (nbytes,): written as is, no copy
        header[name] = {"dtype": code, "shape": list(t.shape), "data_offsets": [offset, offset + data.numel()]}
        offset += data.numel()
        blobs.append(data)
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)  # the data starts 8-byte aligned

    def write(f):
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for b in blobs:
            if b.numel():
                f.write(b.numpy().data)
    write_atomically(Path(path), write)
