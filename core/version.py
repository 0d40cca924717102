"""The zoo's version and the version of its plugin API (``ZOO_API`` in a plugin is compared with it).

A base module, like :mod:`zoo.errors`: every layer may import it, it imports nothing of the zoo."""

__version__ = "0.1.0"
PLUGIN_API_VERSION = "1.1"
