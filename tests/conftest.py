"""Test settings. The data and tokenizer files come from settings a user can also set
(ZOO_DATA_DIR, TIKTOKEN_CACHE_DIR); when unset and the project's ../shared folder is there (CI and
development machines without internet), they point into it."""
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

if "ZOO_DATA_DIR" not in os.environ and (SHARED / "data" / "tinyshakespeare.txt").is_file():
    os.environ["ZOO_DATA_DIR"] = str(SHARED / "data")
if "TIKTOKEN_CACHE_DIR" not in os.environ and (SHARED / "tiktoken-cache").is_dir():
    os.environ["TIKTOKEN_CACHE_DIR"] = str(SHARED / "tiktoken-cache")


def pytest_configure(config):
    # tests must not be able to see the user's own manifests or plugin selection
    os.environ.pop("ZOO_MANIFEST", None)
    os.environ.pop("ZOO_PLUGINS", None)


@pytest.fixture
def fresh_registry():
    """Reload the registry before and after a test that changes plugins or manifests."""
    import zoo
    zoo.configure([])
    yield
    zoo.configure([])


def needs_data():
    return pytest.mark.skipif(not (Path(os.environ.get("ZOO_DATA_DIR", "/nonexistent")) / "tinyshakespeare.txt").is_file(),
                              reason="Tiny Shakespeare not available: set ZOO_DATA_DIR to a folder holding tinyshakespeare.txt")
