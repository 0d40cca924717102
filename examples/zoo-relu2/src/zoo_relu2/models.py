"""The package's named models: its zoo.json, registered whole through the models hook."""
import json
from importlib.resources import files

from zoo.hookspecs import hookimpl


@hookimpl
def register_models(register):
    register(None, json.loads(files("zoo_relu2").joinpath("zoo.json").read_text(encoding="utf-8")))
