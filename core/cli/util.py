"""What the commands share: tables, sizes, whole-number flags, ``--set`` overrides, and recognising
files the zoo wrote."""
from __future__ import annotations

import argparse
import json
import math

from ..spec.manifest import parse_override


def whole_number(text: str) -> int:
    """The ``type`` of an integer flag: ``64``, and a float that is a whole number (``1e3``, ``64.0``)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        x = float(text)
    except ValueError:
        x = math.nan
    if not (math.isfinite(x) and x.is_integer()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(x)


def fmt_params(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def table(rows, headers):
    rows = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def overrides(pairs):
    return dict(parse_override(p) for p in pairs or [])


def json_file_with(*keys):
    """A test for ``check_output_file``: the file is JSON holding all these keys (a file this command
    wrote before, which it may overwrite)."""
    def ours(path) -> bool:
        try:
            data = json.loads(open(path, "rb").read(1 << 24))
        except (OSError, ValueError):
            return False
        items = data if isinstance(data, list) else [data]
        return bool(items) and all(isinstance(d, dict) and all(k in d for k in keys) for d in items)
    return ours
