"""The built-in named models and size presets: zoo.json, registered through the models hook like
any package's models."""
import json
from importlib.resources import files

from zoo.hookspecs import hookimpl


def builtin_manifest() -> dict:
    return json.loads(files("zoo_plugins").joinpath("zoo.json").read_text(encoding="utf-8"))


@hookimpl
def register_models(register):
    manifest = builtin_manifest()
    for name, preset in manifest.get("presets", {}).items():
        register(name, preset, preset=True)
    for name, entry in manifest.get("models", {}).items():
        register(name, entry)
