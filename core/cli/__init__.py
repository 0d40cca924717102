"""The command line: ``zoo`` (the entry point is :func:`main`), one module per command group."""
from .main import build_parser, main  # noqa: F401
