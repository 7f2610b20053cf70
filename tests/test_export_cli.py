"""``deepcompress export`` end to end: a .dcz written by the container, both formats, JSON."""
from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import pack_shared_lenet300, place_users_own
from deepcompress.cli import main

pytestmark = pytest.mark.filterwarnings("ignore")

# LeNet-300-100 as the paper left it: 8% / 9% / 26% kept, 6 bits everywhere
PLAN = {"fc1.weight": (0.92, 6), "fc2.weight": (0.91, 6), "fc3.weight": (0.74, 6)}


@pytest.fixture(scope="module")
def dcz(tmp_path_factory, tiny_idx) -> Path:
    meta = {"model": {"name": "lenet300", "kwargs": {}, "input_shape": [1, 28, 28]},
            "data": {"root": str(tiny_idx)}}
    return pack_shared_lenet300(tmp_path_factory.mktemp("dcz") / "model.dcz", PLAN, meta)


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


# The bytes this .dcz exported to before the exporters moved behind one interface, with these
# converters (another version may lay the files out differently: then re-measure, don't guess).
# tflite: the default "auto" (sparse-float16 was 92,924); coreml: short internal names (was 57,516)
PINNED_SIZES = {"tflite": 71_248, "coreml": 55_683}
PINNED_VERSIONS = {"coremltools": "9.0", "litert-torch": "0.10.0", "ai-edge-quantizer": "0.10.0",
                   "ai-edge-litert": "2.3.0"}


def test_export_sizes_are_what_they_were(report):
    from importlib.metadata import version
    have = {p: version(p) for p in PINNED_VERSIONS}
    if have != PINNED_VERSIONS:
        pytest.skip(f"sizes were pinned with {PINNED_VERSIONS}; installed {have}")
    _, rep, _ = report
    assert {fmt: rep[fmt]["bytes"] for fmt in PINNED_SIZES} == PINNED_SIZES


def test_export_json_reports_validation(report):
    _, rep, _ = report
    t, c = rep["tflite"], rep["coreml"]
    assert rep["examples"] == t["examples"] == 120
    # accuracies are fractions of the examples; the tolerance is 0.001 (0.1 point)
    assert 0 <= t["accuracy"] <= 1 and 0 <= t["torch_accuracy"] <= 1 and t["tolerance"] == 0.001
    assert abs(t["accuracy"] - t["torch_accuracy"]) <= 0.001 and t["agreement"] >= 0.99
    assert 0 < t["max_abs_diff"] < 1e-2 and t["variant"] == "auto"
    # 6-bit k-means codebooks lie on no int grid: each layer rounded to int8, the error reported
    assert all(layer["form"] in ("int8", "sparse-int8") and not layer["exact"]
               and "rounded to" in layer["why"] for layer in t["layers"].values())
    # beside the float32 and float16 exports, each scored on the same examples and timed
    assert list(t["beside"]) == ["ours", "float32", "float16"]
    for b in t["beside"].values():
        assert b["zipped_bytes"] < b["bytes"] and abs(b["accuracy"] - t["torch_accuracy"]) <= 0.01
        assert b["p50_ms"]["host"] > 0
    assert t["beside"]["ours"]["bytes"] == t["bytes"] < t["beside"]["float16"]["bytes"]
    assert c["weights_match"] is True and c["all_compressed"] is True
    assert set(c["layers"]) == set(PLAN)
    assert all(layer["lut_entries"] <= 64 and layer["method"] == "joint" for layer in c["layers"].values())
    if sys.platform != "darwin":
        assert c["predictions"] == {"skipped": "Core ML predictions need macOS"}


def test_export_needs_an_output(dcz, capsys):
    assert main(["export", str(dcz)]) == 2
    err = capsys.readouterr().err
    assert "--tflite" in err and "--coreml" in err


def test_export_prints_accuracy_in_percent(dcz, tmp_path, capsys):
    assert main(["export", str(dcz), "--tflite", str(tmp_path / "m.tflite"), "--limit", "40"]) == 0
    err = capsys.readouterr().err
    assert "TFLite ok" in err and "% vs PyTorch" in err and "limit 0.1 pt" in err


# ---------------------------------------------------------------------------------------------
# Output paths: checked before any work; nothing that is not ours is ever replaced or created.

def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>"
            for p in sorted(folder.rglob("*"))}


def _refused(capsys, argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err   # one line, no traceback
    return err


def test_a_directory_named_as_tflite_output_survives(dcz, tmp_path, capsys):
    scratch = tmp_path / "scratch"
    (scratch / "sub").mkdir(parents=True)
    (scratch / "notes.txt").write_text("mine")
    (scratch / "sub" / "data.bin").write_bytes(b"\x00" * 10)
    before = _tree(scratch)
    err = _refused(capsys, ["export", str(dcz), "--tflite", str(scratch)])
    assert "--tflite" in err and "folder" in err
    assert _tree(scratch) == before


@pytest.mark.parametrize("what", ["folder", "file"])
def test_coreml_output_that_is_not_a_package_survives(dcz, tmp_path, capsys, what):
    target = tmp_path / "x.mlpackage"
    place_users_own(target, what)
    before = _tree(tmp_path)
    tflite = tmp_path / "ok.tflite"
    err = _refused(capsys, ["export", str(dcz), "--tflite", str(tflite), "--coreml", str(target)])
    assert "--coreml" in err and "not a Core ML package" in err
    assert _tree(tmp_path) == before and not tflite.exists()   # refused before any conversion


def test_a_plain_file_as_coreml_output_survives(dcz, tmp_path, capsys):
    plain = tmp_path / "report.txt"
    plain.write_text("mine")
    _refused(capsys, ["export", str(dcz), "--coreml", str(plain)])
    assert plain.read_text() == "mine"


def test_a_missing_output_folder_is_not_created(dcz, tmp_path, capsys):
    err = _refused(capsys, ["export", str(dcz), "--tflite", str(tmp_path / "no" / "such" / "x.tflite")])
    assert "does not exist" in err and not (tmp_path / "no").exists()


def test_our_own_artifacts_are_replaced(dcz, report, tmp_path, capsys):
    _, _, first = report
    out = tmp_path / "again"
    shutil.copytree(first, out)
    old_tflite = (out / "m.tflite").read_bytes()
    (out / "m.mlpackage" / "stale.txt").write_text("from the last export")
    code = main(["export", str(dcz), "--tflite", str(out / "m.tflite"), "--coreml",
                 str(out / "m.mlpackage"), "--limit", "20", "--json"])
    assert code == 0, capsys.readouterr().err
    assert (out / "m.tflite").read_bytes() == old_tflite   # same model: same bytes, rewritten
    assert not (out / "m.mlpackage" / "stale.txt").exists()   # the package was swapped whole
    assert (out / "m.mlpackage" / "Manifest.json").is_file()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


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


def test_export_refuses_bad_latency_flags_before_any_work(dcz, tmp_path, capsys):
    out = tmp_path / "m.tflite"
    assert main(["export", str(dcz), "--tflite", str(out), "--latency-runs", "-1"]) == 2
    assert "--latency-runs" in capsys.readouterr().err
    assert main(["export", str(dcz), "--tflite", str(out), "--latency-on", "host,x:y:z"]) == 2
    assert "--latency-on" in capsys.readouterr().err and not out.exists()
