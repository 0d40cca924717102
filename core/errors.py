"""Errors a user can cause. The CLI prints their message (no traceback) and exits with code 2."""


class ZooError(Exception):
    """A user-facing error: the message says what is wrong and how to fix it."""


class ManifestError(ZooError):
    """A zoo.json entry, a --set override or a combination of components is invalid."""


class PluginError(ZooError):
    """A plugin failed to load or register (raised only in --strict mode)."""


class ZooWarning(UserWarning):
    """Something the user should know where the work can go on; the CLI prints it as one line,
    ``zoo: warning: ...``."""
