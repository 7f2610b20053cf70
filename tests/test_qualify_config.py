"""Qualification configs, budgets, the metric reader, gates and JUnit, on hand-made inputs:
everything that is refused is refused before any work (exit 2, the output folder untouched)."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from dccore.errors import BudgetError, UsageError
from deepcompress.cli import main
from deepcompress.qualify import primary_metric
from deepcompress.qualify._config import (Budgets, Rolling, Tolerance, load_matrix,
                                          load_qualify_config)
from deepcompress.qualify._gates import (Figure, budget_gates, regression_gates, rolling_baseline,
                                         rolling_gate, verdict)
from deepcompress.qualify._outputs import Folder, junit_xml

CONFIG = """
name = "q"
[model]
recipe = "lenet300"
[export]
formats = ["tflite"]
[bench]
devices = ["host", "127.0.0.1:5555"]
[budgets]
max_size_bytes = 100_000
min_metric = 0.85
max_latency_p50_ms = 2.0
[budgets.formats.dcz]
max_size_bytes = 30_000
[budgets.devices."127.0.0.1:5555"]
max_latency_p50_ms = 5.0
[budgets.regression]
size_pct = 1.0
"""

# a nightly matrix of one model on one device, with a rolling baseline
MATRIX = """
name = "n"
lease_s = 60
[devices]
cpu = "host"
[[models]]
name = "a"
model = { recipe = "lenet300" }
[regression]
window = 5
min_samples = 3
"""


def write(tmp_path: Path, text: str, name: str = "q.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def refused(tmp_path: Path, capsys, argv: list[str]) -> str:
    out = tmp_path / "out"
    assert main(["qualify", *argv, "--out", str(out), "--json"]) == 2
    assert not out.exists(), "a refused config must not create the output folder"
    return json.loads(capsys.readouterr().out)["error"]


# -- configs -----------------------------------------------------------------------------------

def test_a_config_reads_with_per_format_and_per_device_budgets(tmp_path):
    config = load_qualify_config(write(tmp_path, CONFIG))
    assert config.name == "q" and config.model.recipe == "lenet300"
    assert config.bench.devices == ("host", "127.0.0.1:5555")
    b = config.budgets
    assert b.for_artifact("dcz") == {"max_size_bytes": 30_000}
    assert b.for_artifact("tflite") == {"max_size_bytes": 100_000}
    assert b.for_device("host") == {"min_metric": 0.85, "max_latency_p50_ms": 2.0}
    assert b.for_device("127.0.0.1:5555")["max_latency_p50_ms"] == 5.0
    assert b.regression == {"size_pct": 1.0}


def test_a_flag_overrides_every_entry_of_its_budget(tmp_path):
    config = load_qualify_config(write(tmp_path, CONFIG),
                                 flags={"--max-size-bytes": 1234, "--max-latency-p50-ms": 0.5,
                                        "--max-latency-regression-pct": 7, "--min-metric": None})
    b = config.budgets
    assert b.for_artifact("dcz")["max_size_bytes"] == 1234
    assert b.for_artifact("tflite")["max_size_bytes"] == 1234
    assert b.for_device("127.0.0.1:5555")["max_latency_p50_ms"] == 0.5
    assert b.regression == {"size_pct": 1.0, "latency_pct": 7.0}
    assert b.min_metric() == 0.85


@pytest.mark.parametrize("edit, words", [
    (lambda t: t.replace("[budgets]\n", "[budgets]\nmax_sise_bytes = 1\n"), "max_sise_bytes"),
    (lambda t: t.replace("max_latency_p50_ms = 5.0", "max_latency_p95_ms = 5.0"), "max_latency_p95_ms"),
    (lambda t: t.replace("size_pct = 1.0", "size = 1.0"), "size"),
    (lambda t: t.replace("[budgets.formats.dcz]", "[budgets.formats.onnx]"), "onnx"),
    (lambda t: t.replace('[budgets.devices."127.0.0.1:5555"]', '[budgets.devices.pixel]'), "pixel"),
    (lambda t: t.replace("max_size_bytes = 100_000", "max_size_bytes = 1.5"), "whole number"),
    (lambda t: t.replace("min_metric = 0.85", "min_metric = -1"), "min_metric"),
])
def test_a_bad_budget_is_an_error_before_any_work(tmp_path, capsys, edit, words):
    error = refused(tmp_path, capsys, [str(write(tmp_path, edit(CONFIG)))])
    assert words in error and "budgets" in error


@pytest.mark.parametrize("edit, words", [
    (lambda t: "colour = 'red'\n" + t, "colour"),
    (lambda t: t.replace('recipe = "lenet300"', 'recipe = "lenet300"\ndcz = "m.dcz"'), "exactly one"),
    (lambda t: t.replace('formats = ["tflite"]', 'formats = ["onnx"]'), "onnx"),
    (lambda t: t.replace('"host", "127.0.0.1:5555"', '"host", "phone one"'), "phone one"),
    (lambda t: t.replace("[bench]", "[bench]\nruns = 0"), "runs"),
    (lambda t: t.replace('recipe = "lenet300"', 'recipe = "no_such_recipe"'), "no_such_recipe"),
    (lambda t: t.replace('recipe = "lenet300"', 'recipe = "lenet300"\nset = ["baseline.epoch=1"]'),
     "epoch"),
])
def test_a_bad_config_is_an_error_before_any_work(tmp_path, capsys, edit, words):
    assert words in refused(tmp_path, capsys, [str(write(tmp_path, edit(CONFIG)))])


def test_a_budgets_file_with_an_unknown_key_is_refused(tmp_path, capsys):
    config = write(tmp_path, CONFIG)
    budgets = write(tmp_path, "max_size_bytes = 1000\nmax_sizes = 3\n", "b.toml")
    error = refused(tmp_path, capsys, [str(config), "--budgets", str(budgets)])
    assert "max_sizes" in error and "b.toml" in error


def test_a_device_that_runs_no_exported_format_is_refused(tmp_path, capsys):
    text = CONFIG.replace('"host", "127.0.0.1:5555"', '"host", "simctl:booted"').replace(
        '[budgets.devices."127.0.0.1:5555"]\nmax_latency_p50_ms = 5.0\n', "")
    assert "simctl:booted" in refused(tmp_path, capsys, [str(write(tmp_path, text))])


def test_a_config_without_budgets_is_refused(tmp_path):
    text = CONFIG[:CONFIG.index("[budgets]")]
    with pytest.raises(BudgetError, match="no budgets"):
        load_qualify_config(write(tmp_path, text))


def test_a_folder_of_the_users_files_is_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["qualify", str(write(tmp_path, CONFIG)), "--out", str(out), "--json"]) == 2
    assert "notes.txt" in json.loads(capsys.readouterr().out)["error"]
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("name, content", [("report.html", "<html>my own page</html>"),
                                           ("junit.xml", "not xml"), ("results.json", "text")])
def test_an_output_file_that_is_not_ours_is_refused(tmp_path, name, content):
    folder = Folder(tmp_path / "out", "qualify")
    folder.claim()
    (folder.root / name).write_text(content)
    with pytest.raises(UsageError, match=name):
        folder.check()
    assert (folder.root / name).read_text() == content


def test_matrix_reads_and_refuses_what_it_does_not_know(tmp_path):
    text = MATRIX + "[regression.tolerance.latency_p50_ms]\nrel = 0.08\n"
    matrix = load_matrix(write(tmp_path, text, "m.toml"), device_overrides={"cpu": "127.0.0.1:5557"})
    assert matrix.devices == {"cpu": "127.0.0.1:5557"}
    assert matrix.regression.tolerances["latency_p50_ms"].rel == 0.08
    assert matrix.regression.tolerances["latency_p50_ms"].abs == 0.0005   # the default kept
    with pytest.raises(UsageError, match="slot 'gpu'"):
        load_matrix(write(tmp_path, text, "m.toml"), device_overrides={"gpu": "host"})
    with pytest.raises(UsageError, match="latency_p50"):
        load_matrix(write(tmp_path, text.replace("[regression.tolerance.latency_p50_ms]",
                                                 "[regression.tolerance.latency_p50]"), "m.toml"))
    with pytest.raises(BudgetError, match="rolling baseline"):
        load_matrix(write(tmp_path, text.replace('model = { recipe = "lenet300" }',
                                                 'model = { recipe = "lenet300" }\n'
                                                 'budgets = { regression = { size_pct = 1 } }'),
                          "m.toml"))


# -- the metric reader ---------------------------------------------------------------------------

def test_metric_falls_back_to_accuracy():
    m = primary_metric({"accuracy": {"baseline": 0.9, "final": 0.88,
                                     "stages": {"1_prune": 0.89, "2_share": 0.87}}})
    assert (m.name, m.final, m.baseline, m.higher_is_better) == ("accuracy", 0.88, 0.9, True)
    assert list(m.stages) == ["0_baseline", "1_prune", "2_share"]


@pytest.mark.parametrize("per_stage", ["scores", "metrics"])
def test_metric_prefers_primary_metric(per_stage):
    report = {"accuracy": {"baseline": 0.1, "final": 0.1, "stages": {}},
              "primary_metric": {"name": "cosine_mean", "baseline": 1.0, "final": 0.993,
                                 "higher_is_better": True},
              per_stage: {"0_baseline": {"cosine_mean": 1.0}, "1_prune": {"cosine_mean": 0.996, "mse": 0.1},
                          "2_share": {"cosine_mean": 0.994}}}
    m = primary_metric(report)
    assert (m.name, m.final, m.baseline) == ("cosine_mean", 0.993, 1.0)
    assert m.stages == {"0_baseline": 1.0, "1_prune": 0.996, "2_share": 0.994}
    assert list(m.stages)[0] == "0_baseline"


def test_metric_reads_the_stages_of_primary_metric():
    """The pipeline's report: primary_metric with its own stages, and every figure in scores."""
    report = {"primary_metric": {"name": "accuracy", "higher_is_better": True, "baseline": 0.9,
                                 "final": 0.89, "stages": {"1_prune": 0.895, "3_finetune": 0.89}},
              "scores": {"0_baseline": {"accuracy": 0.9}, "1_prune": {"accuracy": 0.5}}}
    m = primary_metric(report)
    assert m.stages == {"0_baseline": 0.9, "1_prune": 0.895, "3_finetune": 0.89}


def test_a_report_without_a_metric_is_refused():
    with pytest.raises(UsageError, match="primary_metric"):
        primary_metric({"layers": []})


# -- gates -------------------------------------------------------------------------------------

def test_budget_gates_judge_each_figure_by_its_budget():
    budgets = Budgets(limits={"max_size_bytes": 1000, "min_metric": 0.8, "max_latency_p50_ms": 2.0},
                      formats={"dcz": {"max_size_bytes": 500}},
                      devices={"phone": {"max_latency_p50_ms": 10.0}})
    figures = [Figure("size_bytes", 600, format="dcz"), Figure("size_bytes", 600, format="tflite"),
               Figure("metric", 0.79, task_metric="accuracy"),
               Figure("latency_p50_ms", 3.0, format="tflite", device="host"),
               Figure("latency_p50_ms", 3.0, format="tflite", device="phone")]
    gates = budget_gates(figures, budgets)
    assert [(g.gate, g.subject, g.ok) for g in gates] == [
        ("max_size_bytes", "dcz", False), ("max_size_bytes", "tflite", True),
        ("min_metric", "accuracy", False), ("max_latency_p50_ms", "tflite on host", False),
        ("max_latency_p50_ms", "tflite on phone", True)]
    assert gates[0].message == "dcz: size_bytes 600 B > max_size_bytes 500 B"
    assert gates[2].limit == 0.8 and gates[2].actual == 0.79
    ok, line = verdict(gates)
    assert not ok and line.startswith("3/5 gates failed: dcz: size_bytes 600 B")


def test_regression_gates_compare_with_the_last_passing_run():
    host = dict(format="tflite", device="host", fingerprint="f1")
    now = [Figure("size_bytes", 1020, format="tflite"), Figure("metric", 0.880, task_metric="accuracy"),
           Figure("latency_p50_ms", 1.30, **host), Figure("latency_p90_ms", 1.0, **host),
           Figure("latency_p50_ms", 9.0, format="tflite", device="host", fingerprint="other")]
    before = {f.compare_key: v for f, v in zip(now[:4], (1000, 0.890, 1.0, 1.0))}
    gates = regression_gates(now, before, {"size_pct": 1.0, "metric_drop": 0.005, "latency_pct": 25},
                             previous_run=7)
    verdicts = [(g.figure, g.ok, g.skipped) for g in gates]
    assert verdicts == [("size_bytes", False, ""), ("metric", False, ""),
                        ("latency_p50_ms", False, ""), ("latency_p90_ms", True, ""),
                        ("latency_p50_ms", True, "not measured in the last passing run")]
    assert gates[0].limit == pytest.approx(1010) and gates[1].limit == pytest.approx(0.885)
    assert "+30.0%" in gates[2].message and "run 7" in gates[2].message
    assert all(g.skipped == "no earlier passing run" for g in regression_gates(now, None, {"size_pct": 1}))


def test_rolling_baseline_is_the_median_with_tolerances_and_a_minimum():
    rolling = Rolling(window=5, min_samples=3,
                      tolerance={"latency_p50_ms": Tolerance(0.06, 0.001), "metric": Tolerance(0, 0.005)})
    assert rolling_baseline([1.0, 1.1], rolling, "latency_p50_ms", False).limit is None
    base = rolling_baseline([1.0, 1.02, 0.98, 5.0, 1.01, 9.9, 9.9], rolling, "latency_p50_ms", False)
    assert base.median == 1.01 and base.samples == 5          # the window: the newest 5
    assert base.limit == pytest.approx(1.01 * 1.06)
    lat = dict(format="tflite", device="host")
    assert rolling_gate(Figure("latency_p50_ms", 1.05, **lat), base, rolling).ok          # noise
    flagged = rolling_gate(Figure("latency_p50_ms", 1.111, **lat), base, rolling)         # +10%
    assert not flagged.ok and "+10.0%" in flagged.message
    metric = rolling_baseline([0.90, 0.91, 0.90], rolling, "metric", True)
    assert metric.limit == pytest.approx(0.895)
    assert not rolling_gate(Figure("metric", 0.894, task_metric="accuracy"), metric, rolling).ok
    skipped = rolling_gate(Figure("latency_p50_ms", 7.0, **lat),
                           rolling_baseline([1.0], rolling, "latency_p50_ms", False), rolling)
    assert skipped.ok and "needs 3" in skipped.skipped


def test_junit_has_one_testcase_per_gate_and_failures_carry_the_numbers():
    budgets = Budgets(limits={"max_size_bytes": 500})
    gates = budget_gates([Figure("size_bytes", 600, format="dcz"), Figure("size_bytes", 400, format="tflite")],
                         budgets)
    gates += regression_gates([Figure("size_bytes", 400, format="tflite")], None, {"size_pct": 1})
    root = ET.fromstring(junit_xml("suite", gates, 1.5))
    assert (root.get("tests"), root.get("failures"), root.get("skipped")) == ("3", "1", "1")
    cases = root.findall("testcase")
    assert [(c.get("classname"), c.get("name")) for c in cases] == [
        ("dcz", "max_size_bytes"), ("tflite", "max_size_bytes"), ("tflite", "regression size_bytes")]
    failure = cases[0].find("failure")
    assert "600 B > max_size_bytes 500 B" in failure.get("message")
    assert "actual 600, limit 500" in failure.text
    assert cases[2].find("skipped") is not None
