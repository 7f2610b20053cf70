"""Qualification: does a model ship? One command compresses it (or takes a ready .dcz), exports
it, benches it on every device, judges every figure against its budget and against the last
passing run, records the run in a history database and writes an HTML report, JUnit XML and
JSON. ``nightly`` runs a matrix of models x devices every night against rolling baselines.

    config = load_qualify_config("examples/qualify_lenet300.toml")
    result = qualify(config, Path("out/qualify"))

The machinery lives in underscore modules; the history (SQLite or PostgreSQL, migrated with
Alembic) in :mod:`deepcompress.qualify.history`.
"""
from __future__ import annotations

from dccore.registry import lazy_attributes

_LAZY = {
    "load_qualify_config": "deepcompress.qualify._config",
    "load_matrix": "deepcompress.qualify._config",
    "BUDGET_FLAGS": "deepcompress.qualify._measures",
    "BUDGET_KEYS": "deepcompress.qualify._measures",
    "REGRESSION_KEYS": "deepcompress.qualify._measures",
    "qualify": "deepcompress.qualify._qualify",
    "QualifyResult": "deepcompress.qualify._qualify",
    "run_nightly": "deepcompress.qualify._nightly",
    "primary_metric": "deepcompress.qualify._metric",
    "Metric": "deepcompress.qualify._metric",
    "open_history": "deepcompress.qualify.history",
    # the gates, for whatever else judges figures against budgets (`deepcompress check`)
    **{name: "deepcompress.qualify._gates" for name in (
        "FIGURES", "Figure", "Gate", "budget_gates", "regression_gates", "verdict", "fmt_value")},
    **{name: "deepcompress.qualify._outputs" for name in ("gate_name", "junit_xml")},
}

__all__ = list(_LAZY)

__getattr__ = lazy_attributes(__name__, _LAZY)
