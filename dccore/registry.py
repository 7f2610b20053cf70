"""Named registries: a new stage, task, exporter, device backend or runner is one file that
registers itself, with no edit to a central if/elif.

    STAGES = Registry("stage")

    @STAGES.register("prune")
    class PruneStage: ...

    STAGES.get("prune")          # or RegistryError naming what is registered

Registration happens when the defining module is imported; a registry may name the modules that
hold its built-in entries (``builtins``), imported on first lookup, so importing the registry
itself stays cheap. Names come from code (a recipe's ``kind``, a CLI's ``--device`` prefix),
never from a data file's choice of module: a registry only hands out what code registered.
"""
from __future__ import annotations

import importlib
import sys
from typing import Any, Callable, Generic, Iterator, Mapping, TypeVar

from .errors import DeepCompressError

T = TypeVar("T")


class RegistryError(DeepCompressError, KeyError):
    """A name that nothing registered; the message lists what is registered."""

    exit_code = 2

    def __str__(self) -> str:   # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    def __init__(self, kind: str, builtins: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self._builtins = builtins
        self._loaded = not builtins
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T | None = None) -> Callable[[T], T] | T:
        """``register(name, entry)``, or ``@register(name)`` as a decorator. A name registered
        twice is a bug (two files claiming one kind), not an override."""
        def add(item: T) -> T:
            if name in self._entries and self._entries[name] is not item:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = item
            return item
        return add if entry is None else add(entry)

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for module in self._builtins:
                importlib.import_module(module)

    def get(self, name: str) -> T:
        self._load()
        try:
            return self._entries[name]
        except KeyError:
            raise RegistryError(f"unknown {self.kind} {name!r}; known: "
                                f"{', '.join(sorted(self._entries)) or 'none'}") from None

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def names(self) -> list[str]:
        self._load()
        return list(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        self._load()
        return iter(list(self._entries.items()))


def user_callable(spec: str, label: str, error: type[DeepCompressError]) -> Callable:
    """The callable a *user* names as ``package.module:function`` on the command line or in their
    recipe (never one a data file names). A module of the standard library or a builtin one is
    refused before it is imported: no model factory lives there, and ``os:system`` or
    ``builtins:exec`` would run whatever the kwargs say. ``label`` starts each message (``model 'x:y'``,
    ``task.factory 'x:y'``); ``error`` is the kind raised when it cannot be found."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise error(f"{label}: expected 'package.module:function'")
    top = module_name.split(".")[0]
    if top in sys.stdlib_module_names or top in sys.builtin_module_names:
        # checked before anything is imported: a config naming os:system, subprocess:run or
        # builtins:exec would run a command with the user's rights
        raise error(f"{label}: {top!r} is part of Python's standard library; a factory must be "
                    "your own code (or a model library's), in a module outside the standard "
                    "library and builtins")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise error(f"{label}: cannot import module {module_name!r} ({exc}); make sure it is on "
                    "PYTHONPATH") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise error(f"{label}: {module_name} has no callable {attr!r}")
    return fn


def lazy_attributes(package: str, names: Mapping[str, str]) -> Callable[[str], Any]:
    """A package's module ``__getattr__`` that imports the module holding an attribute (``names``:
    attribute -> module) when it is first used, so that importing the package stays cheap (no
    torch until a verb needs it)::

        __getattr__ = lazy_attributes(__name__, _LAZY)
    """
    def __getattr__(name: str) -> Any:
        if name in names:
            return getattr(importlib.import_module(names[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    return __getattr__
