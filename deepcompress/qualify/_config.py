"""Qualification configs and nightly matrices: TOML, built and checked whole (``dccore.config``)
before any work; every bad value is a ConfigError (exit 2) naming the file and the field.

A qualification config (``examples/qualify_lenet300.toml``)::

    name = "lenet300"            # runs are kept in the history under this name
    [model]                      # recipe = NAME|FILE (+ set = ["k=v"], data = DIR), or
                                 # dcz = FILE (+ factory = NAME|pkg.mod:fn, kwargs = {...})
    [export]                     # formats = [...], examples = N, dense = true, inputs = FILE
    [export.FORMAT]              # the exporter's options (its Options fields)
    [bench]                      # devices = ["host", "emulator"], runs, warmup, threads, eval,
                                 # timeout_s, retries, cooldown_max_s, benchmark_model, delegate
    [budgets]                    # see BUDGET_KEYS; [budgets.formats.NAME],
                                 # [budgets.devices."SPEC"], [budgets.regression]
    [history]                    # db = PATH|URL

A nightly matrix (``examples/nightly_lenet.toml``) names device slots and models::

    name = "nightly"
    lease_s = 600
    [devices]                    # slot = SPEC on this host (another host: --device SLOT=SPEC)
    [[models]]                   # name = ..., model = {...}, export = {...}, budgets = {...}
    [bench]                      # as above, without devices
    [regression]                 # window, min_samples; [regression.tolerance.FIGURE] rel, abs
    [history]

Paths are relative to the file. The figures budgets and tolerances name are the qualify metrics
(``_measures.METRICS``); the formats, the registered exporters.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

from dccore.artifacts import artifact_sha256
from dccore.config import (Bytes, Check, Config, FilePath, Fields, Flag, FreeTable, Inline, Int,
                           List, Listed, Num, Section, Table, Text, allowed_keys, build, check_keys,
                           relative_to, setting, table)
from dccore.errors import ConfigError, UsageError
from device_harness.runners import MAX_SECONDS, BenchOptions

from ._measures import (BUDGET_FLAGS, BUDGET_KEYS, DEFAULT_TOLERANCES,
                        DEVICE_KEYS, FORMAT_KEYS, METRICS, REGRESSION_KEYS)

# Ceilings on the counts a config sets beside the bench's own (device_harness.runners: MAX_RUNS,
# MAX_THREADS, MAX_RETRIES, MAX_SECONDS): a slip of the finger is refused before any work.
MAX_EXAMPLES = 100_000      # validation / on-device accuracy examples (MNIST's test set: 10,000)
MAX_NIGHTS = 366            # a rolling window of a year of nights


def stored_limit(table_column: str) -> int:
    """The characters the history keeps in ``table.column`` (its schema, read, not copied)."""
    from .history import _schema

    table_name, _, column = table_column.partition(".")
    return getattr(_schema, table_name).c[column].type.length


def fits_history(value: str, where: str, *columns: str, what: str = "") -> str:
    """Refuse, before any work, a value longer than a history column it is stored in; otherwise
    the run does all its work and then fails to record it (PostgreSQL refuses the insert)."""
    limit = min(stored_limit(c) for c in columns)
    if len(value) > limit:
        shown = value if len(value) <= 40 else value[:37] + "..."
        raise ConfigError(f"{where} = {shown!r}: {len(value):,} characters{what}; the history "
                          f"stores at most {limit} ({', '.join(columns)}): shorten it")
    return value


# ----------------------------------------------------------------------------------------------
# The checks only qualification has

NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


@dataclass(frozen=True)
class Stored(Check):
    """A string the history stores in ``columns``; ``name``: only letters, digits, '-', '_', '.'
    (it is part of a cell's key)."""

    columns: tuple[str, ...]
    name: bool = False
    what: str = ""

    def __call__(self, path: str, value: Any, owner: type) -> str:
        value = Text()(path, value, owner)
        if self.name and not set(value) <= NAME_CHARS:
            raise ConfigError(f"{path} = {value!r}: use letters, digits, '-', '_', '.'")
        return fits_history(value, path, *self.columns, what=self.what)


class DeviceSpec(Check):
    """A device SPEC of a known form (``host``, ``emulator``, ``HOST:PORT``, ``simctl:UDID``)."""

    def __call__(self, path: str, value: Any, owner: type) -> str:
        from device_harness import check_spec

        value = Stored(("metrics.device", "gates.device"))(path, value, owner)
        try:
            check_spec(value)
        except UsageError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        return value


class Program(Check):
    """The benchmark_model binary: pushed to the device and run there, so only a program."""

    def __call__(self, path: str, value: Any, owner: type) -> Path:
        from device_harness.runners import executable_problem

        program = FilePath()(path, value, owner)
        problem = executable_problem(program)
        if problem:
            raise ConfigError(f"{path} = {str(program)!r}: {problem}")
        return program


def _formats() -> list[str]:
    from exporters import EXPORTERS

    return EXPORTERS.names()


def _host_formats() -> tuple[str, ...]:
    """The default formats: what the default device, this host, runs."""
    from device_harness import formats_for

    return tuple(formats_for("host"))


def _harness(name: str, default: Any) -> Any:
    """A [bench] setting checked as the harness checks its BenchOptions field (one set of limits,
    the ceilings included); only the default is qualify's."""
    return setting(default, next(f for f in dataclasses.fields(BenchOptions)
                                 if f.name == name).metadata["check"])


def _limits(keys: Mapping[str, str]) -> dict[str, Check]:
    """A check per budget key: bytes are whole, every limit >= 0."""
    whole = {m.budget for _, m in METRICS.items() if m.whole}
    return {k: Bytes() if k in whole else Num(0.0) for k in keys}


# ----------------------------------------------------------------------------------------------
# [model], [export], [bench]

def _a_name(recipe: str) -> bool:
    return not (recipe.endswith(".toml") or "/" in recipe)


@dataclass(frozen=True)
class ModelSpec(Config):
    """Where the compressed model comes from: a recipe run (cached by its hash), or a ready .dcz
    and how to rebuild it (a built-in name, or the user's own ``package.module:factory``)."""

    recipe: str | None = setting(None, FilePath(keep=_a_name, text=True))   # a name, or a file
    set: tuple[str, ...] = setting((), List(Text()))    # --set KEY=VALUE, applied to the recipe
    data: str | None = setting(None, FilePath(text=True))   # the IDX dataset folder
    dcz: Path | None = setting(None, FilePath())
    factory: str | None = setting(None, Text())
    kwargs: Mapping[str, Any] = setting(check=FreeTable(), factory=dict)

    def describe(self) -> str:
        return f"recipe {self.recipe}" if self.recipe else f"{self.dcz}"

    def _check(self, path: str) -> None:
        if (self.recipe is None) == (self.dcz is None):
            raise ConfigError(f"{path}: give exactly one of recipe = NAME|FILE (compress) or "
                              "dcz = FILE (a compressed model)")
        if self.recipe is not None and (self.factory is not None or self.kwargs):
            raise ConfigError(f"{path}: factory and kwargs go with dcz; a recipe names its model "
                              "in its own [model] table")
        if self.dcz is not None and self.set:
            raise ConfigError(f"{path}: set = [...] overrides a recipe; there is none with dcz")


@dataclass(frozen=True)
class ExporterOptions(Check):
    """An exporter's options, checked against its Options config (ConfigError names the field)."""

    name: str

    def __call__(self, path: str, value: Any, owner: type) -> dict:
        from exporters import EXPORTERS

        build(EXPORTERS.get(self.name).Options, dict(table(path, value)), path)
        return dict(value)


@dataclass(frozen=True)
class ExportSpec(Config):
    formats: tuple[str, ...] = setting(check=List(Listed(_formats), distinct=True, nonempty=True),
                                       factory=_host_formats)
    examples: int = setting(1000, Int(1, MAX_EXAMPLES))   # validate on the first N examples:
    # enough for 0.1-point accuracy agreement, a few seconds of conversion checks
    dense: bool = setting(True, Flag())        # also export uncompressed, for the report's ratio
    inputs: Path | None = setting(None, FilePath())   # named tensors (.pt/.npz), not IDX test data
    options: Mapping[str, Mapping[str, Any]] = setting(    # [export.FORMAT], inline
        check=Fields(lambda: {name: ExporterOptions(name) for name in _formats()}), factory=dict)

    def _check(self, path: str) -> None:
        for name in self.options:
            if name not in self.formats:
                raise ConfigError(f"{path}.{name}: options for a format not in formats")


@dataclass(frozen=True)
class BenchSpec(Config):
    devices: tuple[str, ...] = setting(("host",), List(DeviceSpec(), distinct=True, nonempty=True))
    runs: int = _harness("runs", 50)   # benchmark_model's default: a stable median
    warmup: int = _harness("warmup", 5)
    threads: int = _harness("threads", 1)
    eval: int = setting(0, Int(0, MAX_EXAMPLES))   # accuracy on N test examples, on the device
    timeout_s: float = _harness("timeout_s", 120.0)
    retries: int = _harness("retries", 1)   # one reconnection: a flaky cable, not a dead phone
    cooldown_max_s: float = _harness("cooldown_max_s", 60.0)
    benchmark_model: Path | None = setting(None, Program())
    delegate: str = _harness("delegate", "default")


class MatrixBench(Check):
    """[bench] of a matrix: the devices are its slots."""

    def __call__(self, path: str, value: Any, owner: type) -> BenchSpec:
        check_keys(path, table(path, value), allowed_keys(BenchSpec) - {"devices"})
        return build(BenchSpec, value, path)


# ----------------------------------------------------------------------------------------------
# [budgets]

@dataclass(frozen=True)
class Budgets(Config):
    """Budget keys apply to every subject; a per-format or per-device entry wins over them, and a
    flag (``with_flags``) over both. Written flat in [budgets], beside its sub-tables."""

    limits: Mapping[str, float] = setting(check=Fields(lambda: _limits(BUDGET_KEYS)), factory=dict)
    formats: Mapping[str, Mapping[str, float]] = setting(
        check=Table(Fields(lambda: _limits(FORMAT_KEYS))), factory=dict)
    devices: Mapping[str, Mapping[str, float]] = setting(
        check=Table(Fields(lambda: _limits(DEVICE_KEYS))), factory=dict)
    regression: Mapping[str, float] = setting(
        check=Fields(lambda: {k: Num(0.0) for k in REGRESSION_KEYS}), factory=dict)

    def for_artifact(self, fmt: str) -> dict[str, float]:
        return {**{k: v for k, v in self.limits.items() if k in FORMAT_KEYS},
                **self.formats.get(fmt, {})}

    def for_device(self, device: str) -> dict[str, float]:
        return {**{k: v for k, v in self.limits.items() if k in DEVICE_KEYS},
                **self.devices.get(device, {})}

    def min_metric(self) -> float | None:
        return self.limits.get("min_metric")

    def with_flags(self, values: Mapping[str, float | None]) -> "Budgets":
        """Apply ``--max-size-bytes N``-style overrides (``None``: not given): a flag wins over
        every entry of its budget."""
        b = self
        for option, value in values.items():
            if value is None:
                continue
            section, key = BUDGET_FLAGS[option]
            if section == "regression":
                b = replace(b, regression={**b.regression, key: Num(0.0)(option, value, Budgets)})
            else:   # the flag's limit, and no per-format or per-device entry of it left
                limit = _limits({key: ""})[key](option, value, Budgets)
                b = replace(b, limits={**b.limits, key: limit},
                            formats=_without(b.formats, key), devices=_without(b.devices, key))
        return b

    def check_subjects(self, path: str, formats: tuple[str, ...], devices: tuple[str, ...]) -> None:
        """A per-format or per-device entry for what is not exported or benched is a typo."""
        where = f"{path}." if path else ""
        for fmt in self.formats:
            if fmt not in ("dcz", *formats):
                raise ConfigError(f"{where}formats.{fmt}: not an artifact of this config (dcz, "
                                  f"{', '.join(formats)})")
        for dev in self.devices:
            if dev not in devices:
                raise ConfigError(f'{where}devices."{dev}": not a device of this config '
                                  f"({', '.join(devices)})")

    def is_empty(self) -> bool:
        return not (self.limits or self.formats or self.devices or self.regression)


BUDGETS = Inline(Budgets, "limits")


def _without(tables: Mapping[str, Mapping[str, float]], key: str) -> dict[str, dict[str, float]]:
    return {name: {k: v for k, v in t.items() if k != key} for name, t in tables.items()}


@dataclass(frozen=True)
class HistorySpec(Config):
    db: str | None = setting(None, FilePath(keep=lambda db: "://" in db, text=True))   # or a URL


# ----------------------------------------------------------------------------------------------
# The qualification config

@dataclass(frozen=True)
class QualifyConfig(Config):
    name: str = setting("", Stored(("runs.name", "runs.model")))   # the file's stem if not given
    model: ModelSpec | None = setting(None, Section(ModelSpec))
    export: ExportSpec = setting(check=Inline(ExportSpec, "options"), factory=ExportSpec)
    bench: BenchSpec = setting(check=Section(BenchSpec), factory=BenchSpec)
    budgets: Budgets = setting(check=BUDGETS, factory=Budgets)
    history: HistorySpec = setting(check=Section(HistorySpec), factory=HistorySpec)
    path: Path = dataclasses.field(default=Path(), init=False)   # the file read
    sha256: str = dataclasses.field(default="", init=False)      # its bytes': which config ran

    def _check(self, path: str) -> None:
        if self.model is None:
            raise ConfigError("no [model] table; name a recipe or a .dcz file")
        self.budgets.check_subjects("budgets", self.export.formats, self.bench.devices)


def _read(cls: type, path: str | Path, what: str, make: Any = None) -> Any:
    """``cls`` built from the file (``make(data)``: from its data, another way), errors naming
    the file; relative paths in it are relative to it."""
    from dccore import tomlfile

    p = Path(path)
    data = tomlfile.read(p, what)[0]
    try:
        with relative_to(p.resolve().parent):
            return make(data) if make else build(cls, {"name": p.stem, **data})
    except UsageError as exc:
        raise ConfigError(f"{p}: {exc}") from None


def _source(config: Any, path: str | Path) -> Any:
    object.__setattr__(config, "path", Path(path))   # not settings: what was read, and its hash
    object.__setattr__(config, "sha256", artifact_sha256(path))
    return config


def load_qualify_config(path: str | Path, *, budgets_file: str | Path | None = None,
                        flags: Mapping[str, float | None] | None = None) -> QualifyConfig:
    """Read and check a qualification config (and a separate budgets file, and budget flags)."""
    config = _read(QualifyConfig, path, "config")
    if budgets_file is not None:   # the same [budgets] table as in a config, or its contents
        def make(data: dict) -> Budgets:
            b = BUDGETS("", data["budgets"] if set(data) == {"budgets"} else data, Budgets)
            b.check_subjects("", config.export.formats, config.bench.devices)
            return b
        config = replace(config, budgets=_read(Budgets, budgets_file, "budgets file", make))
    config = replace(config, budgets=config.budgets.with_flags(flags or {}))
    if config.budgets.is_empty():
        raise ConfigError(f"{path}: no budgets; a qualification must check something (add "
                          "[budgets] with e.g. max_size_bytes and min_metric)")
    return _source(config, path)


# ----------------------------------------------------------------------------------------------
# The nightly matrix

@dataclass(frozen=True)
class Tolerance(Config):
    """How much worse than the rolling median a night may be: max(rel x |median|, abs)."""

    rel: float | None = setting(None, Num(0.0))
    abs: float | None = setting(None, Num(0.0))

    def allowed(self, median: float) -> float:
        return max(self.rel * abs(median), self.abs)


@dataclass(frozen=True)
class Rolling(Config):
    window: int = setting(7, Int(1, MAX_NIGHTS))        # a week of nights: a slow drift shows
    min_samples: int = setting(3, Int(1, MAX_NIGHTS))   # fewer passing nights: no verdict yet
    tolerance: Mapping[str, Tolerance] = setting(       # what the matrix changes of the defaults
        check=Table(Tolerance, key=Listed(lambda: DEFAULT_TOLERANCES)), factory=dict)

    @property
    def tolerances(self) -> dict[str, Tolerance]:
        """Every figure's tolerance: its metric's default, with what the matrix sets."""
        out = {}
        for figure, (rel, abs_) in DEFAULT_TOLERANCES.items():
            given = self.tolerance.get(figure, Tolerance())
            out[figure] = Tolerance(rel if given.rel is None else given.rel,
                                    abs_ if given.abs is None else given.abs)
        return out

    def _check(self, path: str) -> None:
        if self.min_samples > self.window:
            raise ConfigError(f"{path}: min_samples {self.min_samples} > window {self.window}")


@dataclass(frozen=True)
class MatrixModel(Config):
    name: str = setting("", Stored(("runs.model", "cells.model"), name=True))
    model: ModelSpec | None = setting(None, Section(ModelSpec))
    export: ExportSpec = setting(check=Inline(ExportSpec, "options"), factory=ExportSpec)
    budgets: Budgets = setting(check=BUDGETS, factory=Budgets)

    def _check(self, path: str) -> None:
        if not self.name or self.model is None:
            raise ConfigError(f"{path}: needs name = ... and model = {{recipe = ...}} or "
                              "{dcz = ...}")
        if self.budgets.regression:
            raise ConfigError(f"{path}.budgets.regression: a nightly compares each figure with "
                              "its rolling baseline; set tolerances in "
                              "[regression.tolerance.FIGURE]")


@dataclass(frozen=True)
class Matrix(Config):
    name: str = setting("", Stored(("runs.name", "cells.matrix")))   # the file's stem if not given
    devices: Mapping[str, str] = setting(   # slot -> SPEC on this host
        check=Table(DeviceSpec(), key=Stored(("cells.device", "runs.device_slot"), name=True,
                                             what=" in a device slot")), factory=dict)
    models: tuple[MatrixModel, ...] = setting((), List(Section(MatrixModel)))
    bench: BenchSpec = setting(check=MatrixBench(), factory=BenchSpec)
    regression: Rolling = setting(check=Section(Rolling), factory=Rolling)
    lease_s: float = setting(600.0, Num(1.0, MAX_SECONDS))
    history: HistorySpec = setting(check=Section(HistorySpec), factory=HistorySpec)
    path: Path = dataclasses.field(default=Path(), init=False)
    sha256: str = dataclasses.field(default="", init=False)

    def _check(self, path: str) -> None:
        if not self.devices:
            raise ConfigError("no [devices]; name at least one slot, e.g. host = \"host\"")
        if not self.models:
            raise ConfigError("no [[models]]")
        for i, m in enumerate(self.models):
            where = f"models[{i}]"
            if m.name in [o.name for o in self.models[:i]]:
                raise ConfigError(f"{where}.name = {m.name!r}: names must be distinct")
            m.budgets.check_subjects(f"{where}.budgets", m.export.formats, tuple(self.devices))
            for slot in self.devices:   # the cell's key: MATRIX/YYYY-MM-DD/MODEL/SLOT
                fits_history(f"{self.name}/YYYY-MM-DD/{m.name}/{slot}", f"{where}.name",
                             "runs.cell_key", what=f" in the key of its cell on slot {slot!r}")


def load_matrix(path: str | Path, *, device_overrides: Mapping[str, str] | None = None) -> Matrix:
    matrix = _read(Matrix, path, "matrix")
    devices = dict(matrix.devices)
    for slot, spec in (device_overrides or {}).items():
        if slot not in devices:
            raise ConfigError(f"--device {slot}={spec}: the matrix has no device slot {slot!r} "
                              f"(slots: {', '.join(devices)})")
        devices[slot] = DeviceSpec()(f"--device {slot}", spec, Matrix)
    return _source(replace(matrix, devices=devices), path)
