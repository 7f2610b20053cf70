"""Qualification configs and nightly matrices: TOML, validated whole before any work.

A qualification config (``examples/qualify_lenet300.toml``)::

    name = "lenet300"            # runs are kept in the history under this name
    [model]                      # recipe = NAME|FILE (+ set = ["k=v"], data = DIR), or
                                 # dcz = FILE (+ factory = NAME|pkg.mod:fn, kwargs = {...})
    [export]                     # formats = ["tflite"], examples = N, dense = true, inputs = FILE
    [export.tflite]              # the exporter's options (its Options fields)
    [bench]                      # devices = ["host", "emulator"], runs, warmup, threads, eval,
                                 # timeout_s, retries, cooldown_max_s, benchmark_model, delegate
    [budgets]                    # see BUDGET_KEYS; [budgets.formats.NAME], [budgets.devices."SPEC"],
                                 # [budgets.regression]
    [history]                    # db = PATH|URL

A nightly matrix (``examples/nightly_lenet.toml``) names device slots and models::

    name = "nightly"
    lease_s = 600
    [devices]                    # slot = SPEC on this host (another host: --device SLOT=SPEC)
    [[models]]                   # name = ..., model = {...}, export = {...}, budgets = {...}
    [bench]                      # as above, without devices
    [regression]                 # window, min_samples; [regression.tolerance.FIGURE] rel, abs
    [history]

Every table rejects keys it does not know, naming the file, the table and the keys allowed; paths
are relative to the file. Errors are UsageError / BudgetError (exit 2), raised before any work.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from dccore.errors import BudgetError, UsageError

Check = Callable[[Any, str], Any]


# ----------------------------------------------------------------------------------------------
# Value checks: each takes (value, "file: table.key") and returns the value or raises

def _fail(where: str, expected: str, value: Any, error: type = UsageError) -> None:
    raise error(f"{where} = {value!r}: expected {expected}")


def text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        _fail(where, "a non-empty string", value)
    return value


def whole(lo: int = 0, hi: int | None = None) -> Check:
    def check(value: Any, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < lo \
                or (hi is not None and value > hi):
            _fail(where, f"a whole number >= {lo}" if hi is None else
                  f"a whole number from {lo} to {hi:,}", value)
        return value
    return check


def number(lo: float = 0.0, error: type = UsageError, hi: float | None = None) -> Check:
    def check(value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or value < lo or (hi is not None and value > hi):
            _fail(where, f"a number >= {lo:g}" if hi is None else
                  f"a number from {lo:g} to {hi:,g}", value, error)
        return float(value)
    return check


# Ceilings on every count and duration a config sets: a slip of the finger (runs = 5000000) is
# refused before any work, not found out after days of benching. Each is far above real use.
MAX_RUNS = 100_000          # benchmark_model's default is 50; 100,000 of a 1 ms model is 100 s
MAX_EXAMPLES = 100_000      # validation / on-device accuracy examples (MNIST's test set: 10,000)
MAX_THREADS = 256
MAX_RETRIES = 10            # doubling backoff: 10 retries already wait ~17 minutes
MAX_SECONDS = 86_400.0      # a timeout, cool-down or lease of a day
MAX_NIGHTS = 366            # a rolling window of a year of nights


def flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        _fail(where, "true or false", value)
    return value


def texts(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        _fail(where, "a list of strings", value)
    return tuple(value)


def any_table(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        _fail(where, "a table", value)
    return value


def table(value: Any, where: str, checks: Mapping[str, Check], error: type = UsageError) -> dict:
    """A TOML table with only the keys in ``checks``, each checked."""
    if not isinstance(value, dict):
        raise error(f"{where} must be a table")
    unknown = sorted(set(value) - set(checks))
    if unknown:
        raise error(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(checks)}")
    return {key: checks[key](v, f"{where}.{key}") for key, v in value.items()}


def read_toml(path: str | Path, what: str, error: type = UsageError) -> dict:
    """The file's data, read under the limits every config file shares (dccore.tomlfile)."""
    from dccore import tomlfile

    return tomlfile.read(path, what, error=error)[0]


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
        raise UsageError(f"{where} = {shown!r}: {len(value):,} characters{what}; the history "
                         f"stores at most {limit} ({', '.join(columns)}): shorten it")
    return value


# ----------------------------------------------------------------------------------------------
# [model], [export], [bench]

@dataclass(frozen=True)
class ModelSpec:
    """Where the compressed model comes from: a recipe run (cached by its hash), or a ready .dcz
    and how to rebuild it (a built-in name, or the user's own ``package.module:factory``)."""

    recipe: str | None = None
    overrides: tuple[str, ...] = ()      # --set KEY=VALUE, applied to the recipe
    data: str | None = None              # the IDX dataset folder (training and validation)
    dcz: Path | None = None
    factory: str | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        return f"recipe {self.recipe}" if self.recipe else f"{self.dcz}"


def parse_model(value: Any, where: str, base: Path) -> ModelSpec:
    t = table(value, where, {"recipe": text, "set": texts, "data": text, "dcz": text,
                             "factory": text, "kwargs": any_table})
    if ("recipe" in t) == ("dcz" in t):
        raise UsageError(f"{where}: give exactly one of recipe = NAME|FILE (compress) or "
                         "dcz = FILE (a compressed model)")
    if "recipe" in t and ("factory" in t or "kwargs" in t):
        raise UsageError(f"{where}: factory and kwargs go with dcz; a recipe names its model in "
                         "its own [model] table")
    if "dcz" in t and "set" in t:
        raise UsageError(f"{where}: set = [...] overrides a recipe; there is none with dcz")
    recipe = t.get("recipe")
    if recipe is not None and (recipe.endswith(".toml") or "/" in recipe):
        recipe = str(_relative(base, recipe))
    return ModelSpec(recipe=recipe, overrides=t.get("set", ()),
                     data=str(_relative(base, t["data"])) if "data" in t else None,
                     dcz=_relative(base, t["dcz"]) if "dcz" in t else None,
                     factory=t.get("factory"), kwargs=dict(t.get("kwargs", {})))


def _relative(base: Path, path: str) -> Path:
    try:
        p = Path(path).expanduser()
    except RuntimeError:   # ~user of no such user: the path is taken as written
        p = Path(path)
    return p if p.is_absolute() else base / p


@dataclass(frozen=True)
class ExportSpec:
    formats: tuple[str, ...] = ("tflite",)
    examples: int | None = 1000      # validate on the first N examples: enough for 0.1-point
                                     # accuracy agreement, a few seconds of conversion checks
    dense: bool = True               # also export uncompressed, for the ratio in the report
    inputs: Path | None = None       # named tensors (.pt/.npz) instead of the IDX test set
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


def parse_export(value: Any, where: str, base: Path) -> ExportSpec:
    from exporters import EXPORTERS

    names = EXPORTERS.names()
    checks: dict[str, Check] = {"formats": texts, "examples": whole(1, MAX_EXAMPLES), "dense": flag,
                                "inputs": text}
    checks.update({name: any_table for name in names})
    t = table(value, where, checks)
    formats = t.get("formats", ExportSpec.formats)
    unknown = [f for f in formats if f not in names]
    if unknown or not formats or len(set(formats)) != len(formats):
        raise UsageError(f"{where}.formats = {list(formats)}: expected distinct registered "
                         f"formats ({', '.join(names)})")
    options = {}
    for name in names:
        if name in t:
            if name not in formats:
                raise UsageError(f"{where}.{name}: options for a format not in formats")
            options[name] = _exporter_options(name, t[name], f"{where}.{name}")
    return ExportSpec(formats=tuple(formats), examples=t.get("examples", ExportSpec.examples),
                      dense=t.get("dense", True),
                      inputs=_relative(base, t["inputs"]) if "inputs" in t else None,
                      options=options)


def _exporter_options(name: str, value: dict, where: str) -> dict:
    """Check an exporter's options against its Options config (ConfigError names the field)."""
    from dccore.config import build
    from exporters import EXPORTERS

    build(EXPORTERS.get(name).Options, value, where)
    return dict(value)


@dataclass(frozen=True)
class BenchSpec:
    devices: tuple[str, ...] = ("host",)
    runs: int = 50                   # benchmark_model's default: a stable median on a phone
    warmup: int = 5
    threads: int = 1
    eval: int = 0                    # also measure accuracy on the first N test examples, on device
    timeout_s: float = 120.0
    retries: int = 1                 # one reconnection: a flaky cable, not a dead phone
    cooldown_max_s: float = 60.0
    benchmark_model: Path | None = None
    delegate: str = "default"


_BENCH_CHECKS: dict[str, Check] = {
    "devices": texts, "runs": whole(1, MAX_RUNS), "warmup": whole(0, MAX_RUNS),
    "threads": whole(1, MAX_THREADS), "eval": whole(0, MAX_EXAMPLES),
    "timeout_s": number(0.001, hi=MAX_SECONDS), "retries": whole(0, MAX_RETRIES),
    "cooldown_max_s": number(0, hi=MAX_SECONDS), "benchmark_model": text,
    "delegate": text}


def parse_bench(value: Any, where: str, base: Path, *, with_devices: bool = True) -> BenchSpec:
    checks = dict(_BENCH_CHECKS)
    if not with_devices:
        del checks["devices"]
    t = table(value, where, checks)
    if "benchmark_model" in t:
        from device_harness.runners import executable_problem

        t["benchmark_model"] = _relative(base, t["benchmark_model"])
        problem = executable_problem(t["benchmark_model"])
        if problem:   # it is pushed to the device and run there: only a program, never data
            raise UsageError(f"{where}.benchmark_model = {str(t['benchmark_model'])!r}: {problem}")
    if "devices" in t:
        from device_harness import check_spec

        if not t["devices"] or len(set(t["devices"])) != len(t["devices"]):
            raise UsageError(f"{where}.devices: expected a list of distinct device SPECs")
        for spec in t["devices"]:
            check_spec(spec)
            fits_history(spec, f"{where}.devices", "metrics.device", "gates.device")
    from device_harness.runners import DELEGATES

    if t.get("delegate", "default") not in DELEGATES:
        raise UsageError(f"{where}.delegate = {t['delegate']!r}: expected one of "
                         f"{', '.join(DELEGATES)}")
    return BenchSpec(**t)


# ----------------------------------------------------------------------------------------------
# [budgets]

# key -> (what it limits, flag). A limit is a ceiling unless it starts with min_.
BUDGET_KEYS = {
    "max_size_bytes": "bytes of each artifact on disk (a package: all its files)",
    "max_zipped_bytes": "bytes of each artifact deflated, as inside an APK/IPA",
    "min_metric": "the task's primary metric (accuracy, or output cosine for a label-free task)",
    "max_latency_p50_ms": "median latency on each device",
    "max_latency_p90_ms": "90th-percentile latency on each device",
    "max_model_memory_mb": "the model's own peak memory on each device (the runner with the "
                           "model minus without it)",
    "max_peak_memory_mb": "peak resident memory of the runner process on each device (its "
                          "interpreter and libraries included)",
}
FORMAT_KEYS = ("max_size_bytes", "max_zipped_bytes")
DEVICE_KEYS = ("max_latency_p50_ms", "max_latency_p90_ms", "max_model_memory_mb",
               "max_peak_memory_mb", "min_metric")
REGRESSION_KEYS = {
    "size_pct": "artifact bytes may grow this much over the last passing run (percent)",
    "latency_pct": "latency p50/p90 may grow this much (percent)",
    "memory_pct": "peak memory may grow this much (percent)",
    "metric_drop": "the primary metric may get this much worse (its own units: 0.005 = 0.5 pt)",
}
# --flag -> (section, key): one flag per budget
BUDGET_FLAGS = {
    **{f"--{k.replace('_', '-')}": ("limits", k) for k in BUDGET_KEYS},
    "--max-size-regression-pct": ("regression", "size_pct"),
    "--max-latency-regression-pct": ("regression", "latency_pct"),
    "--max-memory-regression-pct": ("regression", "memory_pct"),
    "--max-metric-drop": ("regression", "metric_drop"),
}
_WHOLE = {"max_size_bytes", "max_zipped_bytes"}


def _limit(key: str) -> Check:
    def check(value: Any, where: str) -> float | int:
        v = number(0, BudgetError)(value, where)
        if key in _WHOLE:
            if not v.is_integer():
                _fail(where, "a whole number of bytes", value, BudgetError)
            return int(v)
        return v
    return check


@dataclass(frozen=True)
class Budgets:
    limits: Mapping[str, float] = field(default_factory=dict)            # every subject
    formats: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    devices: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    regression: Mapping[str, float] = field(default_factory=dict)
    flags: Mapping[str, float] = field(default_factory=dict)             # win over all the above

    def for_artifact(self, fmt: str) -> dict[str, float]:
        merged = {k: v for k, v in self.limits.items() if k in FORMAT_KEYS}
        merged.update(self.formats.get(fmt, {}))
        merged.update({k: v for k, v in self.flags.items() if k in FORMAT_KEYS})
        return merged

    def for_device(self, device: str) -> dict[str, float]:
        merged = {k: v for k, v in self.limits.items() if k in DEVICE_KEYS}
        merged.update(self.devices.get(device, {}))
        merged.update({k: v for k, v in self.flags.items() if k in DEVICE_KEYS})
        return merged

    def min_metric(self) -> float | None:
        return self.flags.get("min_metric", self.limits.get("min_metric"))

    def with_flags(self, values: Mapping[str, float | None]) -> "Budgets":
        """Apply ``--max-size-bytes N``-style overrides (``None``: not given)."""
        limits, regression = dict(self.flags), dict(self.regression)
        for option, value in values.items():
            if value is None:
                continue
            section, key = BUDGET_FLAGS[option]
            where = f"{option} {value}"
            if section == "limits":
                limits[key] = _limit(key)(value, where)
            else:
                regression[key] = number(0, BudgetError)(value, where)
        return replace(self, flags=limits, regression=regression)

    def is_empty(self) -> bool:
        return not (self.limits or self.formats or self.devices or self.regression or self.flags)

    def to_dict(self) -> dict[str, Any]:
        return {"limits": dict(self.limits), "formats": {k: dict(v) for k, v in self.formats.items()},
                "devices": {k: dict(v) for k, v in self.devices.items()},
                "regression": dict(self.regression), "flags": dict(self.flags)}


def parse_budgets(value: Any, where: str, *, formats: tuple[str, ...],
                  devices: tuple[str, ...]) -> Budgets:
    """The [budgets] table. ``formats``/``devices``: what the config exports and benches, so a
    per-format or per-device entry naming anything else (a typo) is refused."""
    checks: dict[str, Check] = {k: _limit(k) for k in BUDGET_KEYS}
    checks.update(formats=any_table, devices=any_table, regression=any_table)
    t = table(value, where, checks, BudgetError)
    per_format = {}
    for fmt, limits in t.pop("formats", {}).items():
        if fmt not in ("dcz", *formats):
            raise BudgetError(f"{where}.formats.{fmt}: not an artifact of this config (dcz, "
                              f"{', '.join(formats)})")
        per_format[fmt] = table(limits, f"{where}.formats.{fmt}", {k: _limit(k) for k in FORMAT_KEYS},
                                BudgetError)
    per_device = {}
    for dev, limits in t.pop("devices", {}).items():
        if dev not in devices:
            raise BudgetError(f"{where}.devices.{dev!r}: not a device of this config "
                              f"({', '.join(devices)})")
        per_device[dev] = table(limits, f"{where}.devices.{dev!r}",
                                {k: _limit(k) for k in DEVICE_KEYS}, BudgetError)
    regression = table(t.pop("regression", {}), f"{where}.regression",
                       {k: number(0, BudgetError) for k in REGRESSION_KEYS}, BudgetError)
    return Budgets(limits=t, formats=per_format, devices=per_device, regression=regression)


# ----------------------------------------------------------------------------------------------
# The qualification config

@dataclass(frozen=True)
class QualifyConfig:
    name: str
    path: Path
    model: ModelSpec
    export: ExportSpec
    bench: BenchSpec
    budgets: Budgets
    db: str | None
    sha256: str                       # of the file's bytes: which config produced a run

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "sha256": self.sha256,
                "model": _plain(self.model), "export": _plain(self.export),
                "bench": _plain(self.bench), "budgets": self.budgets.to_dict()}


def _plain(obj: Any) -> Any:
    if hasattr(obj, "__dataclass_fields__"):
        return {f.name: _plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return [_plain(v) for v in obj]
    return str(obj) if isinstance(obj, Path) else obj


TOP_KEYS = ("name", "model", "export", "bench", "budgets", "history")


def load_qualify_config(path: str | Path, *, budgets_file: str | Path | None = None,
                        flags: Mapping[str, float | None] | None = None) -> QualifyConfig:
    """Read and check a qualification config (and a separate budgets file, and budget flags)."""
    p = Path(path)
    data = read_toml(p, "config")
    where = str(p)
    t = table(data, where, {k: (text if k == "name" else any_table) for k in TOP_KEYS})
    if "model" not in t:
        raise UsageError(f"{where}: no [model] table; name a recipe or a .dcz file")
    base = p.resolve().parent
    model = parse_model(t["model"], f"{where}: model", base)
    export = parse_export(t.get("export", {}), f"{where}: export", base)
    bench = parse_bench(t.get("bench", {}), f"{where}: bench", base)
    if budgets_file is not None:
        b_data = read_toml(budgets_file, "budgets file")
        if set(b_data) == {"budgets"}:   # the same [budgets] table as in a config
            b_data = b_data["budgets"]
        budgets = parse_budgets(b_data, str(budgets_file), formats=export.formats,
                                devices=bench.devices)
    else:
        budgets = parse_budgets(t.get("budgets", {}), f"{where}: budgets", formats=export.formats,
                                devices=bench.devices)
    budgets = budgets.with_flags(flags or {})
    if budgets.is_empty():
        raise BudgetError(f"{where}: no budgets; a qualification must check something (add "
                          "[budgets] with e.g. max_size_bytes and min_metric)")
    history = table(t.get("history", {}), f"{where}: history", {"db": text})
    name = fits_history(t.get("name", p.stem), f"{where}: name", "runs.name", "runs.model")
    return QualifyConfig(name=name, path=p, model=model, export=export,
                         bench=bench, budgets=budgets, db=_db(history.get("db"), base),
                         sha256=hashlib.sha256(p.read_bytes()).hexdigest())


# ----------------------------------------------------------------------------------------------
# The nightly matrix

# Figures compared with the rolling baseline, and how much worse than its median a night may be
# before it is flagged: max(rel x |median|, abs). Measured on this project's 2-core VM
# (BENCHMARKS.md, nightly): 20 nights of LeNet-300-100 on the host kept p50 within +-3% of their
# median and p90 within +-7%, so p50 at 6% flags a 10% regression and lets noise pass.
DEFAULT_TOLERANCES = {
    "latency_p50_ms": (0.06, 0.0005),
    "latency_p90_ms": (0.15, 0.001),
    "model_memory_mb": (0.10, 1.0),    # a few MB at most: the allocator's rounding shows
    "peak_memory_mb": (0.05, 2.0),     # the runner's VmHWM moves by a few MB with the allocator
    "size_bytes": (0.005, 0.0),        # deterministic: any real growth is a change
    "zipped_bytes": (0.005, 0.0),
    "metric": (0.0, 0.005),            # half a point of accuracy (or cosine)
}


@dataclass(frozen=True)
class Tolerance:
    rel: float
    abs: float

    def allowed(self, median: float) -> float:
        return max(self.rel * abs(median), self.abs)


@dataclass(frozen=True)
class Rolling:
    window: int = 7                  # a week of nights: a slow drift shows within one
    min_samples: int = 3             # fewer passing nights than this: no verdict yet
    tolerances: Mapping[str, Tolerance] = field(default_factory=lambda: {
        k: Tolerance(*v) for k, v in DEFAULT_TOLERANCES.items()})


def parse_rolling(value: Any, where: str) -> Rolling:
    t = table(value, where, {"window": whole(1, MAX_NIGHTS), "min_samples": whole(1, MAX_NIGHTS),
                             "tolerance": any_table})
    tolerances = dict(Rolling().tolerances)
    for figure, tol in t.pop("tolerance", {}).items():
        if figure not in DEFAULT_TOLERANCES:
            raise UsageError(f"{where}.tolerance.{figure}: unknown figure; known: "
                             f"{', '.join(DEFAULT_TOLERANCES)}")
        given = table(tol, f"{where}.tolerance.{figure}", {"rel": number(0), "abs": number(0)})
        old = tolerances[figure]
        tolerances[figure] = Tolerance(given.get("rel", old.rel), given.get("abs", old.abs))
    rolling = Rolling(tolerances=tolerances, **t)
    if rolling.min_samples > rolling.window:
        raise UsageError(f"{where}: min_samples {rolling.min_samples} > window {rolling.window}")
    return rolling


@dataclass(frozen=True)
class MatrixModel:
    name: str
    model: ModelSpec
    export: ExportSpec
    budgets: Budgets


@dataclass(frozen=True)
class Matrix:
    name: str
    path: Path
    devices: Mapping[str, str]       # slot -> SPEC on this host
    models: tuple[MatrixModel, ...]
    bench: BenchSpec
    rolling: Rolling
    lease_s: float
    db: str | None
    sha256: str


MATRIX_KEYS = ("name", "devices", "models", "bench", "regression", "lease_s", "history")
SLOT_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def check_slot(name: str, where: str) -> str:
    if not name or not set(name) <= SLOT_CHARS:
        raise UsageError(f"{where}: device slot {name!r}: use letters, digits, '-', '_', '.'")
    return fits_history(name, f"{where}: device slot", "cells.device", "runs.device_slot")


def load_matrix(path: str | Path, *, device_overrides: Mapping[str, str] | None = None) -> Matrix:
    from device_harness import check_spec

    p = Path(path)
    where = str(p)
    data = read_toml(p, "matrix")
    t = table(data, where, {"name": text, "devices": any_table, "models": _model_list,
                            "bench": any_table, "regression": any_table,
                            "lease_s": number(1, hi=MAX_SECONDS),
                            "history": any_table})
    base = p.resolve().parent
    devices = {check_slot(k, f"{where}: devices"): text(v, f"{where}: devices.{k}")
               for k, v in t.get("devices", {}).items()}
    for slot, spec in (device_overrides or {}).items():
        if slot not in devices:
            raise UsageError(f"--device {slot}={spec}: the matrix has no device slot {slot!r} "
                             f"(slots: {', '.join(devices)})")
        devices[slot] = spec
    if not devices:
        raise UsageError(f"{where}: no [devices]; name at least one slot, e.g. host = \"host\"")
    for slot, spec in devices.items():
        check_spec(spec)
        fits_history(spec, f"{where}: devices.{slot}", "metrics.device", "gates.device")
    name = fits_history(t.get("name", p.stem), f"{where}: name", "runs.name", "cells.matrix")
    if not t.get("models"):
        raise UsageError(f"{where}: no [[models]]")
    models, seen = [], set()
    for i, entry in enumerate(t["models"]):
        w = f"{where}: models[{i}]"
        m = table(entry, w, {"name": text, "model": any_table, "export": any_table,
                             "budgets": any_table})
        if "name" not in m or "model" not in m:
            raise UsageError(f"{w}: needs name = ... and model = {{recipe = ...}} or {{dcz = ...}}")
        if m["name"] in seen or not set(m["name"]) <= SLOT_CHARS:
            raise UsageError(f"{w}.name = {m['name']!r}: names must be distinct and use letters, "
                             "digits, '-', '_', '.'")
        seen.add(m["name"])
        fits_history(m["name"], f"{w}.name", "runs.model", "cells.model")
        for slot in devices:   # the cell's key: MATRIX/YYYY-MM-DD/MODEL/SLOT
            fits_history(f"{name}/YYYY-MM-DD/{m['name']}/{slot}", f"{w}.name",
                         "runs.cell_key", what=f" in the key of its cell on slot {slot!r}")
        export = parse_export(m.get("export", {}), f"{w}.export", base)
        budgets = parse_budgets(m.get("budgets", {}), f"{w}.budgets", formats=export.formats,
                                devices=tuple(devices))
        if budgets.regression:
            raise BudgetError(f"{w}.budgets.regression: a nightly compares each figure with its "
                              "rolling baseline; set tolerances in [regression.tolerance.FIGURE]")
        models.append(MatrixModel(m["name"], parse_model(m["model"], f"{w}.model", base), export,
                                  budgets))
    history = table(t.get("history", {}), f"{where}: history", {"db": text})
    return Matrix(name=name, path=p, devices=devices, models=tuple(models),
                  bench=parse_bench(t.get("bench", {}), f"{where}: bench", base, with_devices=False),
                  rolling=parse_rolling(t.get("regression", {}), f"{where}: regression"),
                  lease_s=t.get("lease_s", 600.0), db=_db(history.get("db"), base),
                  sha256=hashlib.sha256(p.read_bytes()).hexdigest())


def _db(db: str | None, base: Path) -> str | None:
    """A history path is relative to the file that names it; a URL is left as it is."""
    return db if db is None or "://" in db else str(_relative(base, db))


def _model_list(value: Any, where: str) -> list:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        _fail(where, "[[models]] tables", value)
    return value
