"""The exporter interface: the registry, options, scorers, output checks, and a third format added
from this test module that the ``export`` command then writes like the built-in ones."""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import dcz as container
from compression.models import build_model
from compression.prune import magnitude_mask
from compression.share import share_layer
from dccore.artifacts import artifact_size
from dccore.config import Checked, build, dump
from dccore.errors import ConfigError, ExportError, UsageError
from dccore.outputs import MLPACKAGE, TFLITE, OutputKind, atomic_path
from dccore.registry import RegistryError
from deepcompress.cli import main
from exporters import (EXPORTERS, ArtifactReport, Exporter, Validation, accuracy_scorer,
                       cosine_scorer, option, torch_outputs)

pytestmark = pytest.mark.filterwarnings("ignore")


def test_builtin_exporters_are_registered_by_format():
    assert EXPORTERS.names()[:2] == ["tflite", "coreml"]
    tflite, coreml = EXPORTERS.get("tflite"), EXPORTERS.get("coreml")
    assert (tflite.suffix, tflite.kind) == (".tflite", TFLITE)
    assert (coreml.suffix, coreml.kind) == (".mlpackage", MLPACKAGE)
    with pytest.raises(RegistryError, match="known: .*coreml.*tflite"):
        EXPORTERS.get("onnx")


def test_options_are_validated_when_built():
    from android_export import TFLiteOptions
    from ios_export import CoreMLOptions
    with pytest.raises(ConfigError, match=r"^variant: expected one of .*sparse-float16.*got 'int4'"):
        TFLiteOptions(variant="int4")
    with pytest.raises(ConfigError, match=r"^target: expected one of \['iOS16'.*got 'iOS15'"):
        CoreMLOptions(target="iOS15")
    # from data (a qualification config's [export.coreml], the export command's flags): the
    # one builder, its errors naming the field at its path; "none" is the dense baseline's
    where = "q.toml: export.coreml"
    with pytest.raises(ConfigError, match=r"^q.toml: export.coreml.precision: expected one of"):
        build(CoreMLOptions, {"precision": "fp8"}, where)
    with pytest.raises(ConfigError, match=r"^q.toml: export.coreml.targt: unknown key; allowed "
                                          r"keys are \['method', 'precision', 'target'\]"):
        build(CoreMLOptions, {"targt": "iOS16"}, where)
    assert build(CoreMLOptions, {"method": "none"}, where) == CoreMLOptions(method="none")
    assert build(TFLiteOptions, dump(TFLiteOptions("float16")), where) == TFLiteOptions("float16")
    assert EXPORTERS.get("coreml").baseline(CoreMLOptions(target="iOS16")) == \
        CoreMLOptions(target="iOS16", precision="fp32", method="none")
    with pytest.raises(ExportError, match="TFLiteOptions"):
        EXPORTERS.get("tflite").options(CoreMLOptions())


def test_accuracy_scorer_holds_fractions_to_a_tenth_of_a_point():
    labels = np.arange(1000) % 10
    right = np.eye(10)[labels]                      # every example right: 1.000
    one_wrong, eleven_wrong = right.copy(), right.copy()
    one_wrong[0] = np.eye(10)[(labels[0] + 1) % 10]        # 0.999: 0.1 point under
    eleven_wrong[:11] = np.eye(10)[(labels[:11] + 1) % 10]  # 0.989: 1.1 points under
    score = accuracy_scorer(labels)
    result = score(one_wrong, right)
    assert result.ok and result.figures["accuracy"] == 0.999 and result.figures["torch_accuracy"] == 1.0
    assert result.limits == {"tolerance": 0.001} and result.figures["agreement"] == 0.999
    assert not score(eleven_wrong, right).ok
    with pytest.raises(ValueError, match="fraction"):
        accuracy_scorer(labels, tolerance=0.1 * 100)


def test_cosine_scorer_holds_every_example():
    ref = np.random.default_rng(0).normal(size=(8, 16))
    close = ref + 1e-4
    off = ref.copy()
    off[3] = -off[3]
    assert cosine_scorer()(close, ref).ok and cosine_scorer()(close, ref).figures["min_cosine"] > 0.999
    result = cosine_scorer()(off, ref)
    assert not result.ok and result.figures["min_cosine"] == pytest.approx(-1.0)
    nan = close.copy()
    nan[0, 0] = np.nan
    assert not cosine_scorer()(nan, ref).ok


# ---------------------------------------------------------------------------------------------
# A third format, registered from here: the weights in a NumPy archive, at a chosen precision.

NPZ = OutputKind("NumPy weights archive", recognise=lambda p: zipfile.is_zipfile(p))


@dataclasses.dataclass(frozen=True)
class NpzOptions(Checked):
    dtype: str = option("float16", choices=("float16", "float32"), help="weight precision")


class NpzExporter(Exporter):
    name, label, suffix, kind = "npz", "NumPy", ".npz", NPZ
    Options = NpzOptions
    help = "write the weights as a NumPy archive (a format for tests)"
    writes = 0

    def write(self, model, example_inputs, out, options, layers):
        type(self).writes += 1
        state = {k: v.detach().numpy().astype(options.dtype) for k, v in model.state_dict().items()}
        with atomic_path(out, suffix=".npz", kind=NPZ) as tmp:
            np.savez(tmp, **state)
        return ArtifactReport(self.name, out, dataclasses.asdict(options), options.dtype,
                              artifact_size(out))

    def validate(self, artifact, model, inputs, score, *, reference=None, layers=None):
        path = artifact.path if isinstance(artifact, ArtifactReport) else Path(artifact)
        clone = copy.deepcopy(model)
        with np.load(path) as npz:
            clone.load_state_dict({k: torch.from_numpy(npz[k].astype(np.float32)) for k in npz.files})
        ref = torch_outputs(model, inputs) if reference is None else reference
        result = score(torch_outputs(clone, inputs), ref)
        return Validation(result.ok, len(ref), result)

    def baseline(self, options):
        return dataclasses.replace(options, dtype="float32")


@pytest.fixture
def npz_format():
    EXPORTERS.register("npz", NpzExporter())
    yield EXPORTERS.get("npz")
    EXPORTERS.unregister("npz")


@pytest.fixture(scope="module")
def dcz(tmp_path_factory, tiny_idx) -> Path:
    torch.manual_seed(0)
    model = build_model("lenet300").eval()
    for name in ("fc1.weight", "fc2.weight", "fc3.weight"):
        weight = model.get_parameter(name)
        centroids, assign, mask = share_layer(weight.data, magnitude_mask(weight.data, sparsity=0.9),
                                              4, "linear", 10)
        weight.data = torch.where(mask, centroids[assign], torch.zeros(()))
    path = tmp_path_factory.mktemp("dcz") / "model.dcz"
    container.pack(model.state_dict(), path, compressed={n: {"bits": 4} for n in ("fc1.weight",)},
                   meta={"model": {"name": "lenet300", "input_shape": [1, 28, 28]},
                         "data": {"root": str(tiny_idx)}})
    return path


def test_a_registered_format_is_exported_by_the_command(npz_format, dcz, tmp_path):
    out = tmp_path / "weights.npz"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["export", str(dcz), "--npz", str(out), "--npz-dtype", "float16",
                     "--limit", "50", "--json"])
    report = json.loads(stdout.getvalue())
    assert code == 0 and report["ok"] and set(report) >= {"npz"} and "tflite" not in report
    npz = report["npz"]
    assert npz["format"] == "npz" and npz["dtype"] == "float16" and npz["bytes"] == out.stat().st_size
    assert npz["dense_bytes"] > 1.9 * npz["bytes"]   # its float32 baseline, measured
    assert npz["examples"] == 50 and abs(npz["accuracy"] - npz["torch_accuracy"]) <= 0.001


def test_the_output_is_checked_before_any_work(npz_format, dcz, tmp_path, capsys):
    folder = tmp_path / "mine.npz"
    folder.mkdir()
    writes = NpzExporter.writes
    with pytest.raises(UsageError, match="not a NumPy weights archive"):
        npz_format.export(nn.Linear(2, 2), torch.zeros(1, 2), folder)
    assert main(["export", str(dcz), "--npz", str(folder)]) == 2
    assert "--npz" in capsys.readouterr().err
    assert NpzExporter.writes == writes and list(folder.iterdir()) == []


@pytest.mark.parametrize("module, requirement", [
    ("ai_edge_litert.interpreter", "ai-edge-litert>=2.3"), ("litert_torch", "litert-torch>=0.10")])
def test_a_missing_runtime_names_the_package_to_install(monkeypatch, module, requirement):
    """The error names pip's requirement for the package a submodule belongs to (it named the
    submodule, which pip cannot install)."""
    import importlib

    from android_export._backend import require
    from dccore.errors import ExportError

    def missing(name, *args, **kwargs):
        raise ModuleNotFoundError(f"No module named {name!r}")

    monkeypatch.setattr(importlib, "import_module", missing)
    with pytest.raises(ExportError, match=f"'pip install {re.escape(requirement)}'"):
        require(module)
