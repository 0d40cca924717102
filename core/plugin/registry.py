"""Plugin discovery: entry points of the group ``zoo`` loaded into a pluggy plugin manager.

Every plugin, the zoo's own built-ins included, is a module named by an entry point. Loading
isolates failures: a module that does not import, a hook that raises, a params schema that is not
a valid JSON Schema or a name another plugin already registered is recorded as a problem of its
distribution (one warning each) and everything else keeps working. ``ZOO_PLUGINS`` (comma-separated
distribution names) restricts which third-party distributions load; the built-ins always load.

Besides components and models, a package may add ``zoo`` subcommands (``register_commands``) and
Hugging Face architecture mappings (``register_hf_arch``), both API 1.1; they are collected with the
same isolation, and a name already taken (a built-in command, or another package's command or
mapping) is the newcomer's problem.

Versioned API: a plugin module (or the package it lives in) may say which plugin API it was built
for with a module-level ``ZOO_API = "1.0"``; none means "1.0", the first API. A plugin loads when
its major version equals ``zoo.PLUGIN_API_VERSION``'s and its minor is not newer; otherwise it is
refused like any other broken plugin (a warning naming the distribution, an error with --strict).

Isolation covers ``SystemExit`` and ``KeyboardInterrupt`` too: while plugin code runs (an entry
point's import, a hook), a SIGINT handler notes a real Ctrl-C from the user. A ``KeyboardInterrupt``
or ``SystemExit`` that plugin code raises while no Ctrl-C was noted is that plugin's failure; after a
real Ctrl-C, the ``KeyboardInterrupt`` goes on (the CLI ends with "zoo: interrupted", exit 130).
"""
from __future__ import annotations

import fnmatch
import importlib.metadata as md
import os
import re
import signal
import sys
import threading
import warnings
from dataclasses import dataclass, field

import pluggy
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from ..errors import ManifestError, PluginError
from ..version import PLUGIN_API_VERSION
from . import hookspecs
from .contract import KINDS, NO_FFN

GROUP = "zoo"
BUILTIN_DIST = "zoo"


class PluginWarning(UserWarning):
    """A plugin distribution failed to load or register; the rest of the zoo keeps working."""


@dataclass
class Component:
    kind: str
    name: str
    cls: type
    params_schema: dict
    tags: dict
    dist: str
    version: str

    def info(self) -> dict:
        return {"kind": self.kind, "name": self.name, "class": f"{self.cls.__module__}.{self.cls.__qualname__}",
                "dist": self.dist, "version": self.version, "tags": self.tags}


@dataclass
class ModelSource:
    entry: dict
    dist: str
    version: str
    origin: str  # where the entry came from: a distribution or a manifest file


# The commands of the zoo CLI (zoo.cli): a package cannot register a command of these names.
# tests/test_cli.py checks that this is exactly the CLI's own list.
BUILTIN_COMMANDS = frozenset({"bench", "check", "compare", "data", "export", "finetune", "generate", "import",
                              "list", "lora", "new-plugin", "plugins", "show", "tensorboard", "tokenizer",
                              "train", "validate"})
COMMAND_RE = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")


@dataclass
class Command:
    """A ``zoo`` subcommand from a package (hook ``register_commands``, API 1.1)."""

    name: str
    help: str
    add_arguments: object  # add_arguments(parser): adds its options to an argparse parser
    run: object  # run(args) -> exit code (None means 0)
    dist: str
    version: str

    def info(self) -> dict:
        return {"name": self.name, "help": self.help, "dist": self.dist, "version": self.version}


@dataclass
class HFArch:
    """A Hugging Face architecture mapping (hook ``register_hf_arch``, API 1.1), for the config.json
    ``model_type`` ``name``. ``from_hf(config) -> (manifest entry, dims)`` maps a config onto zoo
    components and raises :class:`zoo.errors.ZooError` for what none represents;
    ``tensors(spec, names) -> (plan, ignored)`` lists ``(zoo tensor, [HF tensor names], op)`` with
    ops that have ``fwd`` and its inverse ``inv`` (``names``: the checkpoint's tensor names; None on
    export, for the names transformers writes); ``matches(spec) -> [reasons it does not fit]`` and
    ``to_hf(spec, base_config) -> config.json`` export, and are None for an import-only mapping."""

    name: str
    from_hf: object
    tensors: object
    matches: object
    to_hf: object
    dist: str
    version: str

    def info(self) -> dict:
        return {"name": self.name, "export": self.matches is not None, "dist": self.dist, "version": self.version}


@dataclass
class Registry:
    components: dict = field(default_factory=lambda: {k: {} for k in KINDS})
    models: dict = field(default_factory=dict)  # name -> ModelSource
    presets: dict = field(default_factory=dict)  # name -> ModelSource
    commands: dict = field(default_factory=dict)  # name -> Command (API 1.1)
    hf_archs: dict = field(default_factory=dict)  # HF model_type -> HFArch (API 1.1), built-ins first
    problems: list = field(default_factory=list)  # (dist, reason)
    dists: dict = field(default_factory=dict)  # dist name -> version, for every loaded distribution
    api_versions: dict = field(default_factory=dict)  # dist name -> the plugin API it declares
    skipped: dict = field(default_factory=dict)  # dist name -> [entry point names]: left out by ZOO_PLUGINS
    allowlist: str | None = None  # ZOO_PLUGINS as it was when the plugins loaded
    default_preset: str = "char"

    # ---- inspection -------------------------------------------------------------------------
    def get(self, kind: str, name: str) -> Component:
        try:
            return self.components[kind][name]
        except KeyError:
            raise ManifestError(unknown_name_message(kind, name, self.components.get(kind, {}),
                                                     self.excluded_hint(kind, name)[0])) from None

    def excluded_hint(self, kind=None, name=None, dists=()) -> tuple[str, bool]:
        """(a sentence, whether it names the likely provider) about the installed distributions that
        ZOO_PLUGINS left out, for a component nobody provides: the one among ``dists`` (those a
        checkpoint names) or with an entry point named ``KIND-NAME`` (the convention), else all of
        them. ("", False) when ZOO_PLUGINS left nothing out."""
        if not self.skipped:
            return "", False
        wanted = {_norm(d) for d in dists}
        likely = sorted(d for d, eps in self.skipped.items()
                        if _norm(d) in wanted or (kind and f"{kind}-{name}" in eps))
        setting = f"ZOO_PLUGINS={self.allowlist!r}"
        if likely:
            more = ",".join([*(n.strip() for n in (self.allowlist or "").split(",") if n.strip()), *likely])
            return (f" {', '.join(likely)} {'is' if len(likely) == 1 else 'are'} installed but left out by "
                    f"{setting}; add {'it' if len(likely) == 1 else 'them'} (ZOO_PLUGINS={more}) or unset "
                    f"ZOO_PLUGINS.", True)
        return (f" {setting} leaves out the installed distribution(s) {', '.join(sorted(self.skipped))}; if one "
                f"of them provides it, add it to ZOO_PLUGINS.", False)

    def list_components(self, kind: str | None = None):
        kinds = [kind] if kind else KINDS
        return [c for k in kinds for c in sorted(self.components[k].values(), key=lambda c: c.name)]

    def list_models(self, pattern: str = "*"):
        return sorted(n for n in self.models if fnmatch.fnmatch(n, pattern))

    def warn_problems(self, strict: bool = False):
        if strict and self.problems:
            raise PluginError("plugin problems (--strict):\n" + "\n".join(
                f"  {d}: {r}" for d, r in self.problems))
        by_dist = {}
        for d, r in self.problems:
            by_dist.setdefault(d, []).append(r)
        for d, reasons in by_dist.items():
            warnings.warn(f"plugin distribution {d!r} failed and was skipped: {'; '.join(reasons)}",
                          PluginWarning, stacklevel=2)


def unknown_name_message(kind, name, known, excluded: str = "") -> str:
    """``excluded``: what :meth:`Registry.excluded_hint` says, if anything."""
    import difflib
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return (f"unknown {kind} {name!r}.{hint} Registered {kind} components: "
            f"{', '.join(sorted(known)) or '(none)'}." + (excluded or " Install the plugin that provides it, "
                                                            "or check `zoo plugins`."))


def _allowlist(raw=None):
    raw = os.environ.get("ZOO_PLUGINS") if raw is None else raw
    if raw is None:
        return None
    return {_norm(n) for n in raw.split(",") if n.strip()}


def _norm(dist: str) -> str:
    """A distribution name normalised as pip does (PEP 503): ``Zoo_ReLU2`` -> ``zoo-relu2``."""
    return re.sub(r"[-_.]+", "-", dist.strip()).lower()


DEFAULT_PLUGIN_API = "1.0"  # what a plugin that declares no ZOO_API is taken to be built for


def declared_api(obj) -> str:
    """The ``ZOO_API`` a plugin declares: on the module itself, else on the nearest package above it."""
    api = getattr(obj, "ZOO_API", None)
    name = getattr(obj, "__name__", None)
    while api is None and isinstance(name, str) and "." in name:
        name = name.rsplit(".", 1)[0]
        api = getattr(sys.modules.get(name), "ZOO_API", None)
    return DEFAULT_PLUGIN_API if api is None else str(api)


def api_problem(declared: str, where: str, dist: str):
    """None if a plugin built for API ``declared`` runs on this zoo, else the reason it does not."""
    ours = tuple(int(x) for x in PLUGIN_API_VERSION.split("."))
    m = re.fullmatch(r"(\d+)(?:\.(\d+))?", declared.strip())
    if m is None:
        return (f"{where} declares ZOO_API = {declared!r}, which is not a version; write e.g. "
                f"ZOO_API = \"{PLUGIN_API_VERSION}\"")
    major, minor = int(m.group(1)), int(m.group(2) or 0)
    if major == ours[0] and minor <= ours[1]:
        return None
    fix = (f"upgrade the zoo to one that provides plugin API {major}.{minor}" if (major, minor) > ours
           else f"install a release of {dist} built for plugin API {ours[0]}.x")
    return (f"{where} was built for zoo plugin API {declared}, but this zoo provides API "
            f"{PLUGIN_API_VERSION}; {fix}")


def _entry_points():
    eps = list(md.entry_points(group=GROUP))
    # built-ins first, so that a clash is blamed on the newcomer
    return sorted(eps, key=lambda ep: (_norm(ep.dist.name) != BUILTIN_DIST if ep.dist else True,
                                       ep.dist.name if ep.dist else "", ep.name))


class UserInterrupts:
    """A context in which a real Ctrl-C is noted: a SIGINT handler sets ``noted`` and then does
    what the previous handler does (raise ``KeyboardInterrupt``). The previous handler is restored
    on exit. Outside the main thread no signal can arrive, so nothing is installed and ``noted``
    stays False; where SIGINT is ignored, it stays ignored."""

    def __init__(self):
        self.noted = False
        self._prev = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            prev = signal.getsignal(signal.SIGINT)
            if prev not in (signal.SIG_IGN, None):  # None: a handler not installed from Python
                signal.signal(signal.SIGINT, self._handler)
                self._prev = prev
        return self

    def _handler(self, signum, frame):
        self.noted = True
        if callable(self._prev):
            self._prev(signum, frame)  # signal.default_int_handler raises KeyboardInterrupt
        else:
            raise KeyboardInterrupt

    def __exit__(self, *exc):
        if self._prev is not None:
            signal.signal(signal.SIGINT, self._prev)
            self._prev = None
        return False

    def plugin_failure(self, e: BaseException) -> bool:
        """Whether ``e``, raised by plugin code, is that plugin's failure (else it must go on)."""
        if isinstance(e, KeyboardInterrupt):
            return not self.noted
        return isinstance(e, (Exception, SystemExit))

    def check(self):
        """After plugin code returned or failed: a Ctrl-C it swallowed still ends the command."""
        if self.noted:
            raise KeyboardInterrupt


def _describe(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    if isinstance(e, KeyboardInterrupt):
        text = "KeyboardInterrupt without a Ctrl-C from the user"
    elif isinstance(e, SystemExit):
        text += " (plugin code must not exit the zoo)"
    return text


def discover(extra_plugins=(), use_entry_points=True, check_model=None) -> Registry:
    """Discover plugins and collect what they register.

    ``extra_plugins``: (module_or_object, dist_name) pairs registered after the entry points,
    e.g. by tests or an application embedding the zoo. ``check_model(what, name, entry, origin)``
    validates each model entry ("model"), preset ("preset") or whole manifest ("manifest", name
    None) a plugin registers, raising an error that becomes the plugin's problem; the manifest
    format belongs to the spec layer, which passes it (:func:`zoo.spec.catalog.load_registry`).
    """
    with UserInterrupts() as interrupts:
        return _discover(extra_plugins, use_entry_points, check_model, interrupts)


def _discover(extra_plugins, use_entry_points, check_model, interrupts) -> Registry:
    reg = Registry()
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    plugin_dist = {}  # plugin name in pm -> (dist, version)
    reg.allowlist = os.environ.get("ZOO_PLUGINS")
    allow = _allowlist(reg.allowlist)

    sources = []
    if use_entry_points:
        for ep in _entry_points():
            dist = ep.dist.name if ep.dist else "<unknown>"
            version = ep.dist.version if ep.dist else "0"
            if allow is not None and _norm(dist) != BUILTIN_DIST and _norm(dist) not in allow:
                reg.skipped.setdefault(dist, []).append(ep.name)  # remembered, to say so when it is missed
                continue
            try:
                obj = ep.load()
            except BaseException as e:  # a broken plugin must not take the zoo down
                if not interrupts.plugin_failure(e):
                    raise
                interrupts.check()
                reg.problems.append((dist, f"cannot import {ep.value!r}: {_describe(e)}"))
                continue
            interrupts.check()
            sources.append((obj, f"{dist}:{ep.name}", dist, version))
        if allow is not None:
            found = {_norm(ep.dist.name) for ep in md.entry_points(group=GROUP) if ep.dist}
            for name in sorted(allow - found - {BUILTIN_DIST}):
                reg.problems.append((name, f"ZOO_PLUGINS names {name!r}, but no installed distribution with "
                                           f"that name has entry points in the group {GROUP!r}; check the "
                                           f"spelling, or pip install it"))
    for i, (obj, dist) in enumerate(extra_plugins):
        sources.append((obj, f"{dist}:extra{i}", dist, "0"))

    for obj, pname, dist, version in sources:
        try:  # attribute look-ups may run plugin code (a module's __getattr__)
            api = declared_api(obj)
            why = api_problem(api, f"plugin {pname}", dist)
            if not why:
                pm.register(obj, name=pname)
        except BaseException as e:
            if not interrupts.plugin_failure(e):
                raise
            interrupts.check()
            reg.problems.append((dist, f"invalid hook implementation in {pname}: {_describe(e)}"))
            continue
        if why:
            reg.problems.append((dist, why))
            continue
        reg.api_versions.setdefault(dist, api)
        plugin_dist[pname] = (dist, version)
        reg.dists.setdefault(dist, version)

    for kind in KINDS:
        _collect(reg, pm, f"register_{kind}", plugin_dist, interrupts,
                 lambda *a, _k=kind, **kw: _add_component(reg, _k, *a, **kw))
    _collect(reg, pm, "register_models", plugin_dist, interrupts,
             lambda *a, **kw: _add_model(reg, *a, check=check_model, **kw))
    _collect(reg, pm, "register_commands", plugin_dist, interrupts, lambda *a, **kw: _add_command(reg, *a, **kw))
    _collect(reg, pm, "register_hf_arch", plugin_dist, interrupts, lambda *a, **kw: _add_hf_arch(reg, *a, **kw))
    return reg


def _collect(reg, pm, hookname, plugin_dist, interrupts, add):
    hook = getattr(pm.hook, hookname)
    # get_hookimpls() is in registration order (pluggy calls them in reverse); built-ins come first
    for impl in hook.get_hookimpls():
        dist, version = plugin_dist.get(impl.plugin_name, ("<unknown>", "0"))
        staged = []

        def register(*args, **kwargs):
            staged.append((args, kwargs))

        try:
            impl.function(register=register)
        except BaseException as e:
            if not interrupts.plugin_failure(e):
                raise
            interrupts.check()
            reg.problems.append((dist, f"hook {hookname} in {impl.plugin_name} raised {_describe(e)}"))
            continue
        interrupts.check()
        for args, kwargs in staged:
            try:
                add(*args, dist=dist, version=version, **kwargs)
            except BaseException as e:  # add may run plugin code (a command's add_arguments)
                if not interrupts.plugin_failure(e):
                    raise
                interrupts.check()
                reg.problems.append((dist, f"{hookname}: {e}"))


def _add_component(reg, kind, name, cls, params_schema=None, tags=None, *, dist, version):
    if not isinstance(name, str) or not name:
        raise ValueError(f"component name must be a non-empty string, got {name!r}")
    params_schema = params_schema if params_schema is not None else {"type": "object"}
    try:
        Draft202012Validator.check_schema(params_schema)
    except SchemaError as e:
        raise ValueError(f"{kind} {name!r} has an invalid params schema: {e.message}") from None
    if params_schema.get("type") != "object":
        raise ValueError(f"{kind} {name!r}: params schema must have type 'object'")
    if not callable(cls):
        raise ValueError(f"{kind} {name!r}: {cls!r} is not a class")
    if kind == "ffn" and name == NO_FFN:
        raise ValueError(f"ffn name {NO_FFN!r} is reserved: \"ffn\": \"none\" in a spec means a block without an "
                         f"ffn; register the component under another name")
    if name in reg.components[kind]:
        other = reg.components[kind][name]
        raise ValueError(f"{kind} name {name!r} is already registered by {other.dist!r}")
    reg.components[kind][name] = Component(kind, name, cls, params_schema, dict(tags or {}), dist, version)


def _add_model(reg, name, entry, *, preset=False, dist, version, origin=None, check=None):
    if name is None:  # register(None, manifest): a whole zoo.json-style manifest
        if check:
            check("manifest", None, entry, f"manifest registered by {origin or dist}")
        for n, e in entry.get("presets", {}).items():
            _add_model(reg, n, e, preset=True, dist=dist, version=version, origin=origin, check=check)
        for n, e in entry.get("models", {}).items():
            _add_model(reg, n, e, dist=dist, version=version, origin=origin, check=check)
        return
    table = reg.presets if preset else reg.models
    what = "preset" if preset else "model"
    if name in table:
        raise ValueError(f"{what} name {name!r} is already registered by {table[name].origin!r}")
    if check:
        check(what, name, entry, origin or dist)
    table[name] = ModelSource(entry, dist, version, origin or f"{dist} {version}")


def _add_command(reg, name, help, add_arguments, run, *, dist, version):
    if not isinstance(name, str) or not COMMAND_RE.fullmatch(name):
        raise ValueError(f"command name {name!r} is not lower-case words joined by '-' (e.g. 'toys-hello')")
    if name in BUILTIN_COMMANDS:
        raise ValueError(f"command {name!r} is one of the zoo's own commands; choose another name "
                         f"(e.g. prefixed with the package's)")
    if name in reg.commands:
        raise ValueError(f"command {name!r} is already registered by {reg.commands[name].dist!r}")
    if not isinstance(help, str):
        raise TypeError(f"command {name!r}: help must be a string, got {help!r}")
    if not callable(add_arguments) or not callable(run):
        raise TypeError(f"command {name!r}: add_arguments and run must be callables")
    import argparse
    try:  # run once on a scratch parser, so a broken one is this package's problem, not the CLI's
        add_arguments(argparse.ArgumentParser(prog=f"zoo {name}", add_help=False))
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt):
            raise
        raise ValueError(f"command {name!r}: add_arguments(parser) raised {_describe(e)}") from None
    reg.commands[name] = Command(name, help, add_arguments, run, dist, version)


def _add_hf_arch(reg, name, from_hf, tensors, matches=None, to_hf=None, *, dist, version):
    if not isinstance(name, str) or not name:
        raise ValueError(f"HF architecture name (a config.json model_type) must be a non-empty string, got {name!r}")
    if name in reg.hf_archs:
        raise ValueError(f"HF architecture {name!r} is already mapped by {reg.hf_archs[name].dist!r}")
    if not callable(from_hf) or not callable(tensors):
        raise TypeError(f"HF architecture {name!r}: from_hf and tensors must be callables")
    if (matches is None) != (to_hf is None) or (matches is not None and not (callable(matches) and callable(to_hf))):
        raise ValueError(f"HF architecture {name!r}: matches and to_hf go together (both callables for a mapping "
                         f"that exports, both None for one that only imports)")
    reg.hf_archs[name] = HFArch(name, from_hf, tensors, matches, to_hf, dist, version)
