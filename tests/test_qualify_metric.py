"""What qualify's metric gate judges, without a device: the figure measured for each shipped
format (the decoded .dcz in PyTorch, each artifact in its runtime), never the file's claim; a
format this OS cannot run is a skipped gate that says why, and nothing measured at all fails."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from deepcompress.examples import ValidationSet
from deepcompress.qualify._config import Budgets
from deepcompress.qualify._figures import metric_figures, metric_gate_if_missing
from deepcompress.qualify._gates import budget_gates
from deepcompress.qualify._work import Compressed, Exported, Exports, measure_metric


def _exports(results: dict) -> Exports:
    out = Exports(examples={"source": "IDX test set (tiny)"})
    out.artifacts["dcz"] = Exported("dcz", Path("m.dcz"), "d" * 64, 100, 100, True, {})
    for fmt, result in results.items():
        out.artifacts[fmt] = Exported(fmt, Path(f"m.{fmt}"), fmt[0] * 64, 200, 150, True, result)
    return out


def _given() -> Compressed:
    return Compressed(dcz=Path("m.dcz"), recipe_sha256="?", metric=None, model=None,
                      model_kwargs=None)


def test_each_format_is_measured_and_core_ml_off_macos_is_a_skipped_gate():
    labels = np.array([0, 1, 2, 3])
    reference = np.eye(4)[[0, 1, 2, 0]]                     # the decoded model: 3 of 4 right
    examples = ValidationSet((torch.zeros(4, 1),), labels, {})
    exports = _exports({
        "tflite": {"ok": True, "examples": 4, "accuracy": 0.5, "torch_accuracy": 0.75},
        "coreml": {"ok": True, "weights_match": True,
                   "predictions": {"skipped": "Core ML predictions need macOS"}}})
    exports.measured = measure_metric(_given(), exports, SimpleNamespace(examples=examples,
                                                                      reference=reference))
    assert {f: m.value for f, m in exports.measured.items()} == {
        "dcz": 0.75, "tflite": 0.5, "coreml": None}
    assert "4 examples of IDX test set (tiny)" in exports.measured["tflite"].on
    budgets = Budgets(limits={"min_metric": 0.7})
    figures = metric_figures(exports)
    assert [(f.format, f.value) for f in figures] == [("dcz", 0.75), ("tflite", 0.5)]
    judged = {g.format: g.ok for g in budget_gates(figures, budgets)}
    assert judged == {"dcz": True, "tflite": False}     # the shipped .tflite is what fails
    (skipped,) = metric_gate_if_missing(exports, budgets)
    assert skipped.format == "coreml" and skipped.ok and "need macOS" in skipped.skipped


def test_nothing_measured_fails_the_metric_gate():
    exports = _exports({"coreml": {"ok": True, "predictions": {"skipped": "needs macOS"}}})
    examples = ValidationSet((torch.zeros(2, 1),), None, {})
    exports.measured = measure_metric(_given(), exports,
                                      lambda: SimpleNamespace(examples=examples, reference=None))
    (gate,) = metric_gate_if_missing(exports, Budgets(limits={"min_metric": 0.5}))
    assert not gate.ok and not gate.skipped and "no metric measured" in gate.message
    assert metric_gate_if_missing(exports, Budgets()) == []


def test_a_given_files_claim_is_never_a_figure(tmp_path, tiny_idx):
    from conftest import pack_shared_lenet300

    from deepcompress.qualify._config import ModelSpec
    from deepcompress.qualify._work import compress, plan

    meta = {"model": {"name": "lenet300", "kwargs": {}, "input_shape": [1, 28, 28]},
            "accuracy": {"baseline": 0.95, "final": 0.93}}
    dcz = pack_shared_lenet300(tmp_path / "m.dcz", {"fc3.weight": (0.5, 4)}, meta)
    compressed = compress(plan(ModelSpec(dcz=dcz)), tmp_path / "run")
    assert compressed.metric is None and compressed.claimed.final == 0.93
