"""``deepcompress qualify`` end to end on a tiny recipe, on the host and the emulated Android
device: a model that meets its budgets qualifies; the unchanged model qualifies again from the
cache; a budget that fails exits 1 with its numbers in the JUnit file; a changed stage resumes
from that stage and its growth is caught against the last passing run; an unreachable device
fails its own gates and not the others'; a label-free model is judged by its cosine."""
from __future__ import annotations

import contextlib
import io
import json
import xml.etree.ElementTree as ET

import pytest
import torch

import dcz as container
from deepcompress.cli import main
from deepcompress.qualify.history import open_history

emulator = pytest.importorskip("device_harness.emulator", reason="emulated device not available")
pytestmark = pytest.mark.emulator

RECIPE = """
name = "tiny"
seed = 3
[data]
root = "{root}"
batch_size = 64
train_limit = 300
test_limit = 100
[model]
name = "lenet300"
input_shape = [1, 28, 28]
[baseline]
epochs = 1
lr = 3e-3
[[stages]]
kind = "prune"
name = "1_prune"
sparsity = 0.8
rounds = 1
retrain_epochs = 1
[[stages]]
kind = "share"
name = "2_share"
bits = 3
[[stages]]
kind = "finetune_centroids"
name = "3_finetune"
epochs = 1
[[stages]]
kind = "encode"
name = "4_encode"
"""

CONFIG = """
name = "tiny"
[model]
recipe = "recipe.toml"
{set}
[export]
formats = ["tflite"]
examples = 50
dense = false
[bench]
devices = ["host", "{emulator}"]
runs = 10
warmup = 1
timeout_s = 60
[budgets]
max_size_bytes = 2_000_000
max_zipped_bytes = 1_000_000
min_metric = 0.3
max_latency_p50_ms = 50
max_latency_p90_ms = 100
max_peak_memory_mb = 2000
[budgets.regression]
size_pct = 1
metric_drop = 0.5
"""


def qualify(*argv: str) -> tuple[int, dict]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["qualify", *argv, "--json", "--quiet"])
    return code, json.loads(out.getvalue())


@pytest.fixture(scope="module")
def emu():
    with emulator.start(port=0) as handle:
        yield handle


@pytest.fixture(scope="module")
def story(tmp_path_factory, tiny_idx, emu):
    """One qualification folder through four runs: first, again unchanged, with a budget flag
    that fails, and with the share stage changed (4 bits instead of 3)."""
    root = tmp_path_factory.mktemp("qualify")
    (root / "recipe.toml").write_text(RECIPE.format(root=tiny_idx))
    config = root / "q.toml"
    config.write_text(CONFIG.format(set="", emulator=emu.serial))
    out = root / "out"
    runs = {"first": qualify(str(config), "--out", str(out))}
    checkpoints = {p.name: p.stat().st_mtime_ns for p in (out / "run" / "checkpoints").glob("*.pt")}
    runs["again"] = qualify(str(config), "--out", str(out))
    runs["tight"] = qualify(str(config), "--out", str(out), "--max-size-bytes", "1000")
    changed = root / "changed.toml"
    changed.write_text(CONFIG.format(set='set = ["stages.1.bits=5"]', emulator=emu.serial))
    runs["changed"] = qualify(str(changed), "--out", str(out))
    after = {p.name: p.stat().st_mtime_ns for p in (out / "run" / "checkpoints").glob("*.pt")}
    return {"out": out, "runs": runs, "checkpoints": (checkpoints, after), "emulator": emu.serial}


def gates(results: dict, **match) -> list[dict]:
    return [g for g in results["gates"] if all(g.get(k) == v for k, v in match.items())]


def test_a_model_that_meets_its_budgets_qualifies(story):
    code, r = story["runs"]["first"]
    assert code == 0 and r["ok"], r["verdict"]
    assert r["compress"]["how"] == "compressed" and r["metric"]["name"] == "accuracy"
    # the metric gate judges each shipped format, as measured on the 50 held-out examples
    measured = r["measured_metric"]
    floor = {g["format"]: g for g in gates(r, gate="min_metric")}
    assert set(floor) == {"dcz", "tflite"} and all(g["ok"] for g in floor.values())
    assert floor["tflite"]["actual"] == measured["tflite"]["value"] == \
        r["artifacts"]["tflite"]["validation"]["accuracy"]
    assert measured["dcz"]["value"] == r["artifacts"]["tflite"]["validation"]["torch_accuracy"]
    assert r["claimed_metric"] is None and "50 examples" in measured["dcz"]["on"]
    emu = story["emulator"]
    for device in ("host", emu):
        assert [g["ok"] for g in gates(r, gate="reachable", device=device)] == [True]
        p50 = gates(r, gate="max_latency_p50_ms", device=device)[0]
        assert p50["ok"] and 0 < p50["actual"] < 50
    assert gates(r, gate="export_valid")[0]["ok"]
    assert {g["subject"] for g in gates(r, gate="max_size_bytes")} == {"dcz", "tflite"}
    assert all(g["skipped"] == "no earlier passing run" for g in gates(r, gate="regression"))
    emulated = r["bench"][emu][0]["device"]
    assert emulated["kind"] == "adb" and emulated["model"] == "DeepCompress Emulated Device"
    out = story["out"]
    cases = ET.parse(out / "junit.xml").getroot().findall("testcase")
    assert len(cases) == len(story["runs"]["changed"][1]["gates"])   # the last run's file
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 5


def test_every_row_carries_its_provenance(story):
    _code, r = story["runs"]["first"]
    with open_history(story["out"]) as h:
        run = h.run(r["run_id"])
    assert run["git_revision"] == r["git_revision"] != "" and run["recipe_sha256"] == r["recipe_sha256"]
    device_rows = [m for m in run["metrics"] if m["device"]]
    assert {m["device"] for m in device_rows} == {"host", story["emulator"]}
    for m in run["metrics"]:
        assert m["git_revision"] == r["git_revision"] and m["recipe_sha256"] == r["recipe_sha256"]
        assert m["artifact_sha256"] or m["figure"] == "metric"
    fingerprints = {m["device"]: m["device_fingerprint"] for m in device_rows}
    assert len(set(fingerprints.values())) == 2 and all(fingerprints.values())
    assert {d["fingerprint"] for d in run["devices"]} == set(fingerprints.values())
    assert {a["format"] for a in run["artifacts"]} == {"dcz", "tflite"}


def test_an_unchanged_model_qualifies_again_from_the_cache(story):
    code, r = story["runs"]["again"]
    assert code == 0 and r["ok"], r["verdict"]
    assert r["compress"]["how"] == "reused"
    assert all(a["cached"] for n, a in r["artifacts"].items() if n != "dcz")
    first = story["runs"]["first"][1]
    assert r["phases"]["compress"] + r["phases"]["export"] < 0.2 * (
        first["phases"]["compress"] + first["phases"]["export"])
    assert r["previous_passing_run"] == first["run_id"]
    regression = gates(r, gate="regression")
    assert regression and not any(g["skipped"] for g in regression if g["figure"] != "device_metric")


def test_a_budget_that_fails_exits_1_with_its_numbers_in_junit(story):
    code, r = story["runs"]["tight"]
    assert code == 1 and not r["ok"]
    failed = [g for g in r["gates"] if not g["ok"]]
    assert {(g["gate"], g["subject"]) for g in failed} == {("max_size_bytes", "dcz"),
                                                          ("max_size_bytes", "tflite")}
    assert "> max_size_bytes 1,000 B" in failed[0]["message"]
    assert r["verdict"].startswith("2/")


def test_a_changed_stage_resumes_from_it_and_its_growth_is_caught(story):
    code, r = story["runs"]["changed"]
    before, after = story["checkpoints"]
    assert r["compress"]["how"] == "resumed from 2_share"
    assert after["0_baseline.pt"] == before["0_baseline.pt"] and after["1_prune.pt"] == before["1_prune.pt"]
    assert after["2_share.pt"] != before["2_share.pt"]
    assert r["previous_passing_run"] == story["runs"]["again"][1]["run_id"]   # not the failed one
    grown = gates(r, gate="regression", figure="size_bytes", format="dcz")[0]
    assert code == 1 and not grown["ok"] and grown["actual"] > grown["baseline"] * 1.01
    root = ET.parse(story["out"] / "junit.xml").getroot()
    failure = next(c for c in root.findall("testcase")
                   if c.get("name") == "regression size_bytes" and c.get("classname") == "dcz").find("failure")
    assert failure is not None and "baseline" in failure.text and failure.get("type") == "Regression"
    with open_history(story["out"]) as h:
        assert [run["ok"] for run in h.runs(name="tiny")] == [False, False, True, True]


def test_an_unreachable_device_fails_its_own_gates_and_a_label_free_model_its_cosine(
        story, tmp_path, tiny_idx):
    """A ready .dcz whose metadata claims its primary metric, output cosine 0.9962, exported with
    label-free examples, on the host and on an address where no device answers. With nothing to
    measure its metric on, a metric gate is a configuration error (exit 2, saying what to pass);
    without one, the artifact is held to the decoded model's outputs and the claim is shown as a
    claim, gating nothing."""
    src = container.load(story["out"] / "run" / "model.dcz")
    dcz = tmp_path / "encoder.dcz"
    meta = {**src.meta, "primary_metric": {"name": "cosine_mean", "baseline": 1.0, "final": 0.9962,
                                           "higher_is_better": True}}
    meta.pop("accuracy", None)
    container.pack(src.state_dict, dcz, compressed={n: {"bits": l.bits} for n, l in src.layers.items()
                                                    if l.codebook is not None}, meta=meta)
    torch.save({"x": torch.rand(16, 1, 28, 28)}, tmp_path / "inputs.pt")
    text = """
name = "encoder"
[model]
dcz = "encoder.dcz"
factory = "lenet300"
[export]
formats = ["tflite"]
inputs = "inputs.pt"
dense = false
[bench]
devices = ["host", "127.0.0.1:9"]
runs = 5
retries = 0
timeout_s = 10
[budgets]
max_latency_p50_ms = 50
"""
    config = tmp_path / "q.toml"
    config.write_text(text + "min_metric = 0.99\n")
    code, r = qualify(str(config), "--out", str(tmp_path / "out"))
    assert code == 2 and r["error_type"] == "UsageError"
    assert "min_metric = 0.99" in r["error"] and "'labels'" in r["error"] and "claims" in r["error"]
    assert not (tmp_path / "out").exists()             # refused before any work

    config.write_text(text)
    code, r = qualify(str(config), "--out", str(tmp_path / "out"))
    assert code == 1
    assert r["claimed_metric"]["name"] == "cosine_mean" and r["claimed_metric"]["final"] == 0.9962
    assert r["metric"] is None and not gates(r, figure="metric")
    assert r["measured_metric"]["dcz"]["value"] is None and "no labels" in r["measured_metric"]["dcz"]["note"]
    assert all(g["ok"] for g in r["gates"] if g.get("device") in ("host", None))
    dead = [g for g in r["gates"] if g.get("device") == "127.0.0.1:9"]
    assert {(g["gate"], g["ok"]) for g in dead} == {("reachable", False), ("max_latency_p50_ms", False)}
    assert "127.0.0.1:9" in r["verdict"]
    valid = gates(r, gate="export_valid")[0]
    assert valid["ok"] and "min cosine" in valid["message"]


def test_a_files_claimed_metric_never_gates_the_measured_one_does(tmp_path, tiny_idx):
    """Untrained weights in a .dcz whose metadata claims 0.93 accuracy: ``min_metric = 0.9`` is
    judged on the accuracy measured on the held-out IDX examples through the decoded file and the
    LiteRT interpreter, each its own figure, and fails; the claim is shown beside them."""
    from compression.data import load_split
    from conftest import pack_shared_lenet300
    from dccore.metrics import accuracy
    from deepcompress.loading import model_from_dcz

    meta = {"model": {"name": "lenet300", "kwargs": {}, "input_shape": [1, 28, 28]},
            "data": {"root": str(tiny_idx)}, "accuracy": {"baseline": 0.95, "final": 0.93}}
    plan = {"fc1.weight": (0.9, 4), "fc2.weight": (0.9, 4), "fc3.weight": (0.7, 5)}
    pack_shared_lenet300(tmp_path / "claims.dcz", plan, meta)
    (tmp_path / "q.toml").write_text("""
name = "claims"
[model]
dcz = "claims.dcz"
[export]
formats = ["tflite"]
examples = 60
dense = false
[bench]
devices = ["host"]
runs = 3
warmup = 1
[budgets]
min_metric = 0.9
""")
    code, r = qualify(str(tmp_path / "q.toml"), "--out", str(tmp_path / "out"))
    assert code == 1 and r["claimed_metric"]["final"] == 0.93

    model, _ = model_from_dcz(tmp_path / "claims.dcz")
    test = load_split("test", root=str(tiny_idx), limit=60)
    with torch.no_grad():
        truth = accuracy(model(test.images.reshape(-1, 1, 28, 28)).numpy(), test.labels.numpy())
    measured = r["measured_metric"]
    assert measured["dcz"]["value"] == pytest.approx(truth) and truth < 0.5
    assert abs(measured["tflite"]["value"] - truth) <= 0.001 + 1e-9      # the same examples
    floor = {g["format"]: g for g in gates(r, gate="min_metric")}
    assert set(floor) == {"dcz", "tflite"}
    assert not any(g["ok"] for g in floor.values())
    assert floor["dcz"]["actual"] == measured["dcz"]["value"] and floor["dcz"]["limit"] == 0.9
    assert {f["format"] for f in r["figures"] if f["figure"] == "metric"} == {"dcz", "tflite"}
