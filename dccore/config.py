"""Configs to and from dicts: the one config system (recipes, qualification configs, nightly
matrices, budgets, exporter and bench options): one generic builder and one serialiser for every
config dataclass, one :class:`Check` per kind of value, one error (:class:`ConfigError`, exit 2).

A config is a frozen dataclass deriving :class:`Config`. Each field declares how a value given for
it is checked (and normalised) with :func:`setting`::

    batch_size: int = setting(128, Int(1, 65536))   # the paper's Caffe LeNet solvers use 64-128

:func:`build` turns a dict into a config: unknown keys are refused naming the field path and the
allowed keys; a bad value names the field, what is allowed and what was given (``stages[1].bits:
expected an integer in [1, 16], got 0``). ``None`` for a field whose default is ``None`` means "not
given". :func:`dump` is the inverse; every config survives ``build(type(c), dump(c)) == c``.
Cross-field rules (prune: quality or sparsity, not both) live in a config's ``_check`` method,
which :func:`build` calls on the finished object.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from contextvars import ContextVar
from pathlib import Path, PurePath
from typing import Any, Callable, Iterable, Iterator, Mapping

from dccore.errors import ConfigError

UNBOUNDED = "∞"


def fail(path: str, allowed: str, got: Any) -> ConfigError:
    return ConfigError(f"{path}: expected {allowed}, got {got!r}")


def table(path: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise fail(path, "a table", value)
    return value


def check_keys(path: str, data: Mapping[str, Any], allowed: set[str] | tuple[str, ...]) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        where = f"{path}." if path else ""
        raise ConfigError(f"{where}{unknown[0]}: unknown key; allowed keys are {sorted(allowed)}")


# --------------------------------------------------------------------------------------------
# Checks: each is called as check(path, value, owner) -> the normalised value, where owner is
# the config class being built. ``child`` tells the key-path walker (``--set a.b.c``) what lies
# below a key: another Check, a Config class, or FREE (anything goes, e.g. a model's kwargs).

FREE = object()


class Check:
    has_children = False    # a table or array whose entries the walker may step into

    def __call__(self, path: str, value: Any, owner: type) -> Any:
        return value

    def child(self, key: str, data: Any, owner: type) -> Any:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class Int(Check):
    lo: int | None = None
    hi: int | None = None

    def __call__(self, path: str, value: Any, owner: type) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail(path, "an integer", value)
        if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            hi = self.hi if self.hi is not None else UNBOUNDED
            raise fail(path, f"an integer in [{self.lo}, {hi}]", value)
        return value


@dataclasses.dataclass(frozen=True)
class Num(Check):
    """A finite number, stored as float; the bounds closed unless ``*_open``."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def __call__(self, path: str, value: Any, owner: type) -> float:
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not math.isfinite(value)):
            raise fail(path, "a finite number", value)
        value = float(value)
        lo, hi = self.lo, self.hi
        if ((lo is not None and (value <= lo if self.lo_open else value < lo))
                or (hi is not None and (value >= hi if self.hi_open else value > hi))):
            left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
            top = hi if hi is not None else UNBOUNDED
            raise fail(path, f"a number in {left}{lo}, {top}{right}", value)
        return value


class Bytes(Check):
    """A count of bytes: a whole number >= 0, written as an integer or a whole float (1e7);
    stored as an int."""

    def __call__(self, path: str, value: Any, owner: type) -> int:
        number = Num(0)(path, value, owner)
        if not number.is_integer():
            raise fail(path, "a whole number of bytes", value)
        return int(number)


@dataclasses.dataclass(frozen=True)
class OneOf(Check):
    choices: tuple[str, ...]

    def __call__(self, path: str, value: Any, owner: type) -> str:
        if value not in self.choices:
            raise fail(path, f"one of {list(self.choices)}", value)
        return value


class Flag(Check):
    """true or false."""

    def __call__(self, path: str, value: Any, owner: type) -> bool:
        if not isinstance(value, bool):
            raise fail(path, "true or false", value)
        return value


class Text(Check):
    def __call__(self, path: str, value: Any, owner: type) -> str:
        if not isinstance(value, str) or not value:
            raise fail(path, "a non-empty string", value)
        return value


class Shape(Check):
    """A non-empty list of positive integers, stored as a tuple."""

    def __call__(self, path: str, value: Any, owner: type) -> tuple[int, ...]:
        if not isinstance(value, (list, tuple)) or not value:
            raise fail(path, "a list of positive integers", value)
        return tuple(Int(1)(f"{path}[{i}]", v, owner) for i, v in enumerate(value))


class FreeTable(Check):
    """A table whose contents the recipe does not know (a model factory's keyword arguments)."""

    has_children = True

    def __call__(self, path: str, value: Any, owner: type) -> dict[str, Any]:
        return dict(table(path, value))

    def child(self, key: str, data: Any, owner: type) -> Any:
        return FREE


@dataclasses.dataclass(frozen=True)
class Section(Check):
    """A nested config."""

    cls: type
    has_children = True

    def __call__(self, path: str, value: Any, owner: type) -> Any:
        return build(self.cls, value, path)


# --------------------------------------------------------------------------------------------

def setting(default: Any = dataclasses.MISSING, check: Check | None = None, *,
            factory: Any = dataclasses.MISSING, omit: Any = None) -> Any:
    """A config field: its default (or ``factory``), its check, and ``omit(value) -> bool``
    saying when :func:`dump` leaves it out (None values are always left out)."""
    metadata = {"check": check or Check(), "omit": omit}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def _check_of(f: dataclasses.Field) -> Check:
    return f.metadata.get("check") or Check()


def allowed_keys(cls: type) -> set[str]:
    """The keys a dict for ``cls`` may hold (a tagged config also takes its ``kind``)."""
    return set(_fields(cls)) | ({"kind"} if getattr(cls, "KIND", "") else set())


def check_values(cls: type, data: Mapping[str, Any], path: str,
                 names: set[str] | tuple[str, ...] | None = None) -> dict[str, Any]:
    """Check the values ``data`` gives for ``cls``'s fields (all, or only ``names``)."""
    fields = _fields(cls)
    allowed = allowed_keys(cls) if names is None else set(names)
    check_keys(path, data, allowed)
    kw: dict[str, Any] = {}
    for name, value in data.items():
        if name == "kind" and name not in fields:
            continue
        f = fields[name]
        if value is None and f.default is None:
            continue              # "not given": the default is None
        kw[name] = _check_of(f)(f"{path}.{name}" if path else name, value, cls)
    return kw


def build(cls: type, data: Any, path: str = "") -> Any:
    """The config ``cls`` described by ``data``, checked; ConfigError names the bad field."""
    data = table(path or "recipe", data)
    obj = cls(**check_values(cls, data, path))
    obj._check(path)
    return obj


def dump(obj: Any) -> Any:
    """A config as plain data (dicts, lists, str, numbers, bool): what :func:`build` takes."""
    if isinstance(obj, Config):
        out: dict[str, Any] = {"kind": obj.KIND} if getattr(obj, "KIND", "") else {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            omit = f.metadata.get("omit")
            if value is None or (omit is not None and omit(value)):
                continue
            out[f.name] = dump(value)
        return out
    if isinstance(obj, Mapping):
        return {k: dump(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [dump(v) for v in obj]
    return str(obj) if isinstance(obj, PurePath) else obj


class UnknownKey(ConfigError):
    """A key path names a key that cannot be there; the walker adds where."""

    def __init__(self, key: str, allowed: Any) -> None:
        super().__init__(f"unknown key {key!r}; allowed: {sorted(allowed)}")
        self.key, self.allowed = key, sorted(allowed)


def below(node: Any, key: str, data: Any, owner: type) -> Any:
    """What lies below ``key`` in ``node``: a Config class, a Check, FREE, or None (nothing
    checks it)."""
    if isinstance(node, type):
        if key not in allowed_keys(node):
            raise UnknownKey(key, allowed_keys(node))
        f = _fields(node).get(key)
        below = _check_of(f) if f is not None else None
    else:
        below = node.child(key, data, owner)
    return below.cls if isinstance(below, Section) else below


def _item(data: Any, key: str) -> Any:
    """``data[key]`` for a table or (by position) an array, else None."""
    if isinstance(data, Mapping):
        return data.get(key)
    if isinstance(data, list) and key.isdigit() and int(key) < len(data):
        return data[int(key)]
    return None


def lookup(cls: type, parts: list[str], data: Any) -> Check | None:
    """Walk the key path ``parts`` (``--set a.b.c=...``) through ``cls``'s schema. ``data`` is the
    dict being edited, for what the schema reads from it (a stage's kind). Returns the check of
    the value at the end of the path, or None when nothing checks it there. ConfigError names the
    first key that cannot be there, where it is, and what is allowed."""
    node: Any = cls
    owner = cls
    for i, part in enumerate(parts):
        where = ".".join(parts[:i]) or "the recipe"
        if node is FREE:
            return None
        if node is None or (isinstance(node, Check) and not node.has_children):
            raise ConfigError(f"{where} is a single value, not a table")
        if isinstance(node, type):
            owner = node
        try:
            node = below(node, part, data, owner)
        except UnknownKey as exc:
            raise ConfigError(f"unknown key {exc.key!r} in {where}; allowed: "
                              f"{exc.allowed}") from None
        data = _item(data, part)
    return node if isinstance(node, Check) else None


class Config:
    """Base of every config dataclass: ``from_dict`` is :func:`build`, ``to_dict`` :func:`dump`."""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], path: str = "") -> Any:
        return build(cls, data, path)

    def to_dict(self) -> dict[str, Any]:
        return dump(self)

    def _check(self, path: str) -> None:
        """Rules across fields; raise ConfigError naming ``path``."""


class Checked(Config):
    """A config that code also makes by keyword (exporter and bench options): its fields are
    checked, and normalised, when it is constructed, as :func:`build` checks them."""

    def __post_init__(self) -> None:
        given = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}
        for name, value in check_values(type(self), given, "").items():
            object.__setattr__(self, name, value)
        self._check("")


# --------------------------------------------------------------------------------------------
# More kinds of value (qualification configs, nightly matrices, budgets): lists, tables keyed by
# name, names and keys read from a registry when checked, paths relative to the file being read.

def _at(path: str, key: Any) -> str:
    """``path.key``, the key quoted as TOML would where it is not bare ("127.0.0.1:5555")."""
    key = str(key)
    if not key.replace("_", "").replace("-", "").isalnum():
        key = f'"{key}"'
    return f"{path}.{key}" if path else key


@dataclasses.dataclass(frozen=True)
class Listed(Check):
    """One of the names ``names()`` gives when checked (a registry's, which plugins add to)."""

    names: Callable[[], Iterable[str]]

    def __call__(self, path: str, value: Any, owner: type) -> str:
        return OneOf(tuple(self.names()))(path, value, owner)


@dataclasses.dataclass(frozen=True)
class List(Check):
    """A list whose items each pass ``item``, stored as a tuple."""

    item: Check
    distinct: bool = False
    nonempty: bool = False
    has_children = True

    def __call__(self, path: str, value: Any, owner: type) -> tuple:
        if not isinstance(value, (list, tuple)) or (self.nonempty and not value):
            raise fail(path, "a non-empty list" if self.nonempty else "a list", value)
        items = tuple(self.item(f"{path}[{i}]", v, owner) for i, v in enumerate(value))
        if self.distinct and any(v in items[:i] for i, v in enumerate(items)):
            raise fail(path, "a list of distinct items", list(value))
        return items

    def child(self, key: str, data: Any, owner: type) -> Any:
        return self.item


def _checker(value: Any) -> Check:
    """A Check, or a Config class as the Section that builds it."""
    return Section(value) if isinstance(value, type) else value


@dataclasses.dataclass(frozen=True)
class Table(Check):
    """A table of entries keyed by name (a format, a device, a slot): each key passes ``key``
    (any name when None), each value ``value`` (a Check, or a Config class built from it)."""

    value: Any
    key: Check | None = None
    has_children = True

    def __call__(self, path: str, value: Any, owner: type) -> dict[str, Any]:
        out = {}
        for k, v in table(path, value).items():
            if self.key is not None:
                k = self.key(_at(path, k), k, owner)
            out[k] = _checker(self.value)(_at(path, k), v, owner)
        return out

    def child(self, key: str, data: Any, owner: type) -> Any:
        return _checker(self.value)


@dataclasses.dataclass(frozen=True)
class Fields(Check):
    """A table of known keys, each with its own check, read when checked: ``schema()`` gives
    {key: Check} (the keys a registry defines: one budget per metric, one table per exporter)."""

    schema: Callable[[], Mapping[str, Check]]
    has_children = True

    def __call__(self, path: str, value: Any, owner: type) -> dict[str, Any]:
        checks, data = self.schema(), table(path, value)
        check_keys(path, data, tuple(checks))
        return {k: checks[k](_at(path, k), v, owner) for k, v in data.items()}

    def child(self, key: str, data: Any, owner: type) -> Any:
        checks = self.schema()
        if key not in checks:
            raise UnknownKey(key, checks)
        return checks[key]


@dataclasses.dataclass(frozen=True)
class Inline(Check):
    """A nested config whose table also holds, beside its other fields, the entries of its field
    ``into`` (budgets beside their per-format tables, exporters' options beside the export
    settings). Each such entry is named at the table's own path (``budgets.max_size_bytes``);
    :func:`dump` writes ``into`` as its own table, which :func:`build` takes too."""

    cls: type
    into: str
    has_children = True

    def __call__(self, path: str, value: Any, owner: type) -> Any:
        data = table(path, value)
        inner = _check_of(_fields(self.cls)[self.into])
        others = allowed_keys(self.cls) - {self.into}
        check_keys(path, data, others | set(inner.schema() if isinstance(inner, Fields) else data))
        kw = check_values(self.cls, {k: v for k, v in data.items() if k in others}, path)
        kw[self.into] = inner(path, {k: v for k, v in data.items() if k not in others}, self.cls)
        obj = self.cls(**kw)
        obj._check(path)
        return obj

    def child(self, key: str, data: Any, owner: type) -> Any:
        if key in allowed_keys(self.cls) - {self.into}:
            return below(self.cls, key, data, owner)
        return _check_of(_fields(self.cls)[self.into]).child(key, data, owner)


_BASE: ContextVar[Path | None] = ContextVar("dccore_config_base", default=None)


@contextlib.contextmanager
def relative_to(base: Path) -> Iterator[None]:
    """While building: a :class:`FilePath` that is relative is taken relative to ``base`` (the
    folder of the file that names it), not to the working directory."""
    token = _BASE.set(base)
    try:
        yield
    finally:
        _BASE.reset(token)


@dataclasses.dataclass(frozen=True)
class FilePath(Check):
    """A path ('~' expanded), relative to the file being read (:func:`relative_to`). ``keep(text)``
    says when a value is not a path and is kept as written (a URL, a built-in name); ``text``:
    store the path as a string."""

    keep: Callable[[str], bool] | None = None
    text: bool = False

    def __call__(self, path: str, value: Any, owner: type) -> Path | str:
        value = str(value) if isinstance(value, PurePath) else Text()(path, value, owner)  # code's
        if self.keep is not None and self.keep(value):
            return value
        try:
            p = Path(value).expanduser()
        except RuntimeError:   # ~user of no such user: the path is taken as written
            p = Path(value)
        base = _BASE.get()
        p = p if p.is_absolute() or base is None else base / p
        return str(p) if self.text else p
