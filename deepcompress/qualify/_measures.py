"""The qualify metrics: every figure qualify measures (an artifact's bytes, a device's p50, the
task's metric), registered once with all that configs, gates and reports know of it. The tables
the rest read (``FIGURES``, ``BUDGET_KEYS``, ``BUDGET_FLAGS``, ``DEFAULT_TOLERANCES``...) are
derived from the registry whenever they are read, so a metric registered later (a plugin's, a
test's) shows up in budgets, flags, gates, figures and tolerances alike.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from dccore.registry import Registry


@dataclass(frozen=True)
class Measure:
    """A figure qualify measures, and all that configs, gates and reports know of it: a new figure
    is one ``METRICS.register(NAME, Measure(...))``; its budget key, flag, regression allowance
    and nightly tolerance follow from it."""

    unit: str                          # "B", "ms", "MB" or "" (how fmt_value shows it)
    lower_is_better: bool = True
    on: str = "device"                 # its budgets: per "artifact" (format), per "device", "model"
    budget: str | None = None          # its budget key: a ceiling, a floor when it starts min_
    help: str = ""                     # what the budget limits (its flag's help)
    whole: bool = False                # the budget counts whole units (bytes)
    regression: str | None = None      # its allowance over the last passing run: a KEY_pct grows
    regression_help: str = ""          # by a percentage, any other worsens by an amount
    tolerance: tuple[float, float] | str = (0.0, 0.0)   # nightly: (rel, abs) around the rolling
                                       # median, or the figure whose tolerance it shares
    read: Callable[[Any], Any] | None = None   # its value in an export's artifact ("artifact") or
                                       # a bench result ("device"); None: qualify measures it


METRICS: Registry[Measure] = Registry("qualify metric")


def _latency(q: str) -> Callable[[dict], Any]:
    return lambda r: (r.get("latency_ms") or {}).get(q)


_SIZE = "artifact bytes may grow this much over the last passing run (percent)"
_MEMORY = "peak memory may grow this much (percent)"
# Tolerances measured on this project's 2-core VM (BENCHMARKS.md, nightly): 20 nights of
# LeNet-300-100 on the host kept p50 within +-3% of their median and p90 within +-7%, so p50 at
# 6% flags a 10% regression and lets noise pass. Sizes are deterministic: any growth is a change.
for _name, _measure in {
    "size_bytes": Measure("B", on="artifact", budget="max_size_bytes", whole=True,
                          help="bytes of each artifact on disk (a package: all its files)",
                          regression="size_pct", regression_help=_SIZE, tolerance=(0.005, 0.0),
                          read=lambda a: a.bytes),
    "zipped_bytes": Measure("B", on="artifact", budget="max_zipped_bytes", whole=True,
                            help="bytes of each artifact deflated, as inside an APK/IPA",
                            regression="size_pct", tolerance=(0.005, 0.0),
                            read=lambda a: a.zipped_bytes),
    "latency_p50_ms": Measure("ms", budget="max_latency_p50_ms", help="median latency on each "
                              "device", regression="latency_pct", regression_help="latency "
                              "p50/p90 may grow this much (percent)", tolerance=(0.06, 0.0005),
                              read=_latency("p50")),
    "latency_p90_ms": Measure("ms", budget="max_latency_p90_ms", help="90th-percentile latency "
                              "on each device", regression="latency_pct", tolerance=(0.15, 0.001),
                              read=_latency("p90")),
    # the model's own: the runner with it minus without it (the allocator's rounding shows)
    "model_memory_mb": Measure("MB", budget="max_model_memory_mb", help="the model's own peak "
                               "memory on each device (the runner with the model minus without "
                               "it)", regression="memory_pct", regression_help=_MEMORY,
                               tolerance=(0.10, 1.0), read=lambda r: r.get("model_memory_mb")),
    # the runner process's whole peak, interpreter included (VmHWM moves by a few MB)
    "peak_memory_mb": Measure("MB", budget="max_peak_memory_mb", help="peak resident memory of "
                              "the runner process on each device (its interpreter and libraries "
                              "included)", regression="memory_pct", tolerance=(0.05, 2.0),
                              read=lambda r: r.get("peak_memory_mb")),
    # the task's primary metric on the compressed model; half a point of accuracy (or cosine)
    "metric": Measure("", lower_is_better=False, on="model", budget="min_metric",
                      help="the task's primary metric (accuracy, or output cosine for a "
                           "label-free task)", regression="metric_drop",
                      regression_help="the primary metric may get this much worse (its own "
                                      "units: 0.005 = 0.5 pt)", tolerance=(0.0, 0.005)),
    # the same, measured on the device (bench eval)
    "device_metric": Measure("", lower_is_better=False, budget="min_metric",
                             regression="metric_drop", tolerance="metric"),
}.items():
    METRICS.register(_name, _measure)


class _Derived(Mapping):
    """A table read from METRICS whenever it is used: a metric registered later shows up."""

    def __init__(self, make: Callable[[], dict]) -> None:
        self._make = make

    def __getitem__(self, key: str) -> Any:
        return self._make()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._make())

    def __len__(self) -> int:
        return len(self._make())

    def __repr__(self) -> str:
        return repr(self._make())


def _keys(attr: str, on: str | None = None) -> dict[str, str]:
    """key -> what it limits, of the metrics' budgets (``on`` that subject) or allowances."""
    out: dict[str, str] = {}
    for _, m in METRICS.items():
        key, what = (m.budget, m.help) if attr == "budget" else (m.regression, m.regression_help)
        if key and on in (None, m.on):
            out[key] = out.get(key) or what
    return out


def regression_flag(key: str) -> str:
    """--max-size-regression-pct for size_pct, --max-metric-drop for metric_drop."""
    return (f"--max-{key[:-4]}-regression-pct" if key.endswith("_pct")
            else f"--max-{key.replace('_', '-')}")


FIGURES = _Derived(lambda: {n: (m.unit, m.lower_is_better) for n, m in METRICS.items()})
BUDGET_KEYS = _Derived(lambda: _keys("budget"))                    # key -> what it limits
FORMAT_KEYS = _Derived(lambda: _keys("budget", "artifact"))        # [budgets.formats.NAME]
DEVICE_KEYS = _Derived(lambda: _keys("budget", "device"))          # [budgets.devices."SPEC"]
REGRESSION_KEYS = _Derived(lambda: _keys("regression"))
DEFAULT_TOLERANCES = _Derived(lambda: {n: m.tolerance for n, m in METRICS.items()
                                       if not isinstance(m.tolerance, str)})
# --flag -> (section, key): one flag per budget and per regression allowance
BUDGET_FLAGS = _Derived(lambda: {
    **{f"--{k.replace('_', '-')}": ("limits", k) for k in BUDGET_KEYS},
    **{regression_flag(k): ("regression", k) for k in REGRESSION_KEYS}})


def tolerance_key(figure: str) -> str:
    shared = METRICS.get(figure).tolerance
    return shared if isinstance(shared, str) else figure
