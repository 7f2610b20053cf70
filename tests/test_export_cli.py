"""``deepcompress export`` end to end: a .dcz written by the container, both formats, JSON."""
from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dcz as container
from deepcompress.cli import main
from compression.models import build_model
from compression.prune import magnitude_mask
from compression.share import share_layer

pytestmark = pytest.mark.filterwarnings("ignore")

# LeNet-300-100 as the paper left it: 8% / 9% / 26% kept, 6 bits everywhere
PLAN = {"fc1.weight": (0.92, 6), "fc2.weight": (0.91, 6), "fc3.weight": (0.74, 6)}


@pytest.fixture(scope="module")
def dcz(tmp_path_factory, tiny_idx) -> Path:
    torch.manual_seed(0)
    model = build_model("lenet300").eval()
    for name, (sparsity, bits) in PLAN.items():
        weight = model.get_parameter(name)
        centroids, assign, mask = share_layer(weight.data, magnitude_mask(weight.data, sparsity=sparsity),
                                              bits, "linear", 20)
        weight.data = torch.where(mask, centroids[assign], torch.zeros(()))
    path = tmp_path_factory.mktemp("dcz") / "model.dcz"
    meta = {"model": {"name": "lenet300", "kwargs": {}, "input_shape": [1, 28, 28]},
            "data": {"root": str(tiny_idx)}}
    container.pack(model.state_dict(), path, compressed={n: {"bits": b} for n, (_, b) in PLAN.items()},
                   meta=meta)
    return path


@pytest.fixture(scope="module")
def report(dcz, tmp_path_factory) -> tuple[int, dict, Path]:
    out = tmp_path_factory.mktemp("out")
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["export", str(dcz), "--tflite", str(out / "m.tflite"), "--coreml",
                     str(out / "m.mlpackage"), "--limit", "120", "--json"])
    return code, json.loads(stdout.getvalue()), out


def test_export_json_reports_measured_sizes(report):
    code, rep, out = report
    assert code == 0 and rep["ok"]
    t, c = rep["tflite"], rep["coreml"]
    assert t["bytes"] == (out / "m.tflite").stat().st_size
    assert c["bytes"] == sum(p.stat().st_size for p in (out / "m.mlpackage").rglob("*") if p.is_file())
    for fmt in (t, c):
        assert fmt["zipped_bytes"] < fmt["bytes"] < fmt["dense_bytes"]
        assert fmt["dense_bytes"] > 266_000 * 4   # LeNet-300-100's float32 weights
    # The package holds what the format implies: 1 mask bit per weight, 6 bits per survivor,
    # the LUTs, fp16 biases, and a few KB of program and manifest. (At these densities that is
    # 18-19x under dense fp32: the mask alone is 1/32 of it. BENCHMARKS.md has the real runs.)
    payload = sum(layer["payload_bytes"] for layer in c["layers"].values())
    assert payload == sum(n // 8 + -(-round(n * (1 - s)) * 6 // 8) + 64 * 2
                          for n, (s, _) in zip((235_200, 30_000, 1_000), PLAN.values()))
    assert payload < c["bytes"] < payload + 410 * 2 + 8_000
    assert rep["dcz_bytes"] == Path(rep["model"]).stat().st_size


def test_export_json_reports_validation(report):
    _, rep, _ = report
    t, c = rep["tflite"], rep["coreml"]
    assert t["examples"] == 120 and abs(t["accuracy"] - t["torch_accuracy"]) <= 0.1
    assert 0 < t["max_abs_diff"] < 1e-2 and t["variant"] == "sparse-float16"
    assert all(layer["stored_as"] == "sparse float16" for layer in t["layers"].values())
    assert c["weights_match"] is True and c["all_compressed"] is True
    assert set(c["layers"]) == set(PLAN)
    assert all(layer["lut_entries"] <= 64 and layer["method"] == "joint" for layer in c["layers"].values())
    if sys.platform != "darwin":
        assert c["predictions"] == {"skipped": "Core ML predictions need macOS"}


def test_export_needs_an_output(dcz, capsys):
    assert main(["export", str(dcz)]) == 2
    assert "--tflite" in capsys.readouterr().err


def test_export_names_a_missing_model(tmp_path, capsys):
    assert main(["export", str(tmp_path / "none.dcz"), "--tflite", str(tmp_path / "x.tflite")]) != 0
    assert "none.dcz" in capsys.readouterr().err
    assert not (tmp_path / "x.tflite").exists()


def test_importing_the_exporters_loads_no_backend():
    code = ("import sys, compression, exporters, deepcompress.commands.export, "
            "deepcompress.commands.check, ios_export, android_export\n"
            "heavy = [m for m in sys.modules if m.split('.')[0] in "
            "('coremltools', 'litert_torch', 'ai_edge_litert', 'ai_edge_quantizer')]\n"
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120,
                   cwd=Path(__file__).resolve().parents[1])
