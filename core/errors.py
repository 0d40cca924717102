"""Errors a user can cause. The CLI prints their message (no traceback) and exits with code 2.

A valid but ineffective combination (``--fsdp`` without torchrun) is a :class:`ZooWarning` instead:
the work goes on, and the CLI prints ``zoo: warning: ...``."""
import warnings


class ZooError(Exception):
    """A user-facing error: the message says what is wrong and how to fix it."""


class ManifestError(ZooError):
    """A zoo.json entry, a --set override or a combination of components is invalid."""


class PluginError(ZooError):
    """A plugin failed to load or register (raised only in --strict mode)."""


class ZooWarning(UserWarning):
    """Something the user should know where the work can go on (a valid but ineffective choice, a
    plugin of another version); the CLI prints it as one line, ``zoo: warning: ...``."""


def warn(message: str):
    """Warn the user (the CLI prints ``zoo: warning: MESSAGE``)."""
    warnings.warn(message, ZooWarning, stacklevel=2)
