"""docs/plugins.md describes the contract as it is: every protocol of zoo.plugin.protocols has its
own entry (a line starting ``#### ProtocolName`` under "## The contract"), and that entry names every
method and attribute of the protocol; the docs name no protocol that does not exist."""
import inspect
import re
import typing
from pathlib import Path

import pytest

from zoo.plugin import protocols

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def _protocols():
    return {name: obj for name, obj in vars(protocols).items()
            if inspect.isclass(obj) and obj.__module__ == protocols.__name__
            and getattr(obj, "_is_protocol", False) and obj is not typing.Protocol}


def _members(proto) -> set:
    names = set(getattr(proto, "__annotations__", {}))
    names |= {n for n in vars(proto) if not n.startswith("_")}
    return names


def _entries(text: str) -> dict:
    """'#### Name' -> the text up to the next heading of level 2 to 4."""
    section = text.split("\n## The contract", 1)
    assert len(section) == 2, "docs/plugins.md has no '## The contract' section"
    body = section[1].split("\n## ", 1)[0]
    parts = re.split(r"^#### ", body, flags=re.M)[1:]
    out = {}
    for p in parts:
        head, _, rest = p.partition("\n")
        out[head.strip().split()[0].strip("`")] = re.split(r"^#{2,4} ", rest, flags=re.M)[0]
    return out


def test_the_protocols_are_found():
    found = _protocols()
    assert {"TokenMixer", "PositionalEncoding", "FeedForward", "MixerCache"} <= set(found)
    assert all(_members(p) for p in found.values()), [n for n, p in found.items() if not _members(p)]


@pytest.mark.parametrize("name", sorted(_protocols()))
def test_every_protocol_and_member_is_documented(name):
    entries = _entries(DOC.read_text(encoding="utf-8"))
    assert name in entries, f"docs/plugins.md documents no protocol {name} (a '#### {name}' entry)"
    missing = sorted(m for m in _members(_protocols()[name]) if f"`{m}" not in entries[name]
                     and f".{m}" not in entries[name])
    assert not missing, f"the docs entry of {name} does not name {missing}"


def test_the_docs_name_only_protocols_that_exist():
    extra = set(_entries(DOC.read_text(encoding="utf-8"))) - set(_protocols())
    assert not extra, f"docs/plugins.md documents protocols that zoo.plugin.protocols lacks: {sorted(extra)}"


def test_the_check_fails_on_an_undocumented_member():
    entries = _entries(DOC.read_text(encoding="utf-8"))
    name = "TokenMixer"

    class Grown(typing.Protocol):  # the same protocol with one more method nobody documented
        def forward(self): ...

        def new_cache(self): ...

        def an_undocumented_method(self): ...

    missing = [m for m in _members(Grown) if f"`{m}" not in entries[name] and f".{m}" not in entries[name]]
    assert missing == ["an_undocumented_method"]
