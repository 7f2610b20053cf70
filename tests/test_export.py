"""Exporters: contract tests written once and run for Core ML and TFLite, then what is particular
to each format. A tiny model compressed with the pipeline's own prune and share functions; each
conversion runs once per module."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from compression.data import load_split
from compression.prune import magnitude_mask
from compression.share import share_layer
from dccore.artifacts import artifact_size
from dccore.errors import ExportError, UsageError
from exporters import EXPORTERS, accuracy_scorer, compressed_layers, torch_outputs
from unsupported_op import Mystery

pytestmark = pytest.mark.filterwarnings("ignore")

SHAPE = (1, 28, 28)
EXAMPLE = torch.zeros(1, *SHAPE)   # what the models are exported with: one example, batch axis first


class TinyNet(nn.Module):
    """conv 100 weights and fc2 320 weights: both far below coremltools' 2048 default threshold."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 5)          # 4x1x5x5 = 100
        self.fc1 = nn.Linear(4 * 12 * 12, 32)   # 18,432
        self.fc2 = nn.Linear(32, 10)            # 320

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.conv(x)), 2)
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


# layer -> (sparsity, bits): the paper's pattern, FC pruned hardest
PLAN = {"conv.weight": (0.5, 4), "fc1.weight": (0.9, 5), "fc2.weight": (0.7, 3)}


def compress(model: nn.Module, plan: dict[str, tuple[float, int]]) -> nn.Module:
    """Prune by magnitude, then share weights by k-means: what the pipeline's stages do."""
    for name, (sparsity, bits) in plan.items():
        weight = model.get_parameter(name)
        mask = magnitude_mask(weight.data, sparsity=sparsity) if sparsity else None
        centroids, assign, mask = share_layer(weight.data, mask, bits, "linear", 20)
        weight.data = torch.where(mask, centroids[assign], torch.zeros(()))
    return model.eval()


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return compress(TinyNet(), PLAN)


def model_with_unsupported_op() -> nn.Module:
    model = TinyNet().eval()
    model.head = nn.Sequential(nn.Identity(), Mystery())
    forward = model.forward
    model.forward = lambda x: model.head(forward(x))   # the custom op runs in layer head.1
    return model


def weights(model: nn.Module) -> dict[str, np.ndarray]:
    state = model.state_dict()
    return {n: state[n].numpy() for n in PLAN}


# ---------------------------------------------------------------------------------------------
# The contract: one template, one subclass per exporter. Exports go through the registry, as the
# command's do; only what an artifact stores needs the format's own reader.

class Backend:
    name = ""

    @property
    def exporter(self):
        return EXPORTERS.get(self.name)

    @property
    def suffix(self) -> str:
        return self.exporter.suffix

    def export(self, model: nn.Module, out: Path, *, dense: bool = False) -> Path:
        exporter = self.exporter
        options = exporter.baseline(exporter.options()) if dense else exporter.options()
        return exporter.export(model, EXAMPLE, out, options).path

    def stored_compressed(self, path: Path, model: nn.Module) -> dict[str, bool]:
        """Per layer, read back from the artifact: is it stored in compressed form?"""
        raise NotImplementedError

    def check_numbers(self, path: Path, model: nn.Module, images: torch.Tensor) -> None:
        raise NotImplementedError


class CoreML(Backend):
    name = "coreml"

    def stored_compressed(self, path, model):
        from ios_export import verify_coreml
        return {n: c.compressed for n, c in verify_coreml(path, weights(model)).layers.items()}

    def check_numbers(self, path, model, images):
        from ios_export import verify_coreml
        check = verify_coreml(path, weights(model))
        assert check.weights_match, {n: c.max_abs_diff for n, c in check.layers.items()}
        if sys.platform == "darwin":   # the whole model, where Core ML can run it
            from ios_export import coreml_outputs
            got, ref = coreml_outputs(path, images), torch_outputs(model, images)
            assert np.max(np.abs(got - ref)) < 5e-2


class TFLite(Backend):
    name = "tflite"

    def stored_compressed(self, path, model):
        from android_export import weight_slots
        slots = weight_slots(path.read_bytes())
        out = {}
        for name, ours in weights(model).items():
            slot = next(s for s in slots if s.weight.shape == ours.shape)
            # the default ('auto'): an int form or sparse storage, per layer
            out[name] = slot.sparse or slot.dtype in ("int8", "int4")
        return out

    def check_numbers(self, path, model, images):
        from android_export import tflite_outputs
        got, ref = tflite_outputs(path, images), torch_outputs(model, images)
        assert np.max(np.abs(got - ref)) < 1e-2 * max(1.0, float(np.abs(ref).max()))
        assert np.array_equal(got.argmax(1), ref.argmax(1))


COREML, TFLITE = CoreML(), TFLite()
coreml_only = pytest.mark.parametrize("exporter", [COREML], indirect=True, ids=["coreml"])


@pytest.fixture(scope="module", params=[COREML, TFLITE], ids=lambda e: e.name)
def exporter(request) -> Backend:
    return request.param


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return tiny_model()


@pytest.fixture(scope="module")
def artifacts(exporter, model, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp(exporter.name)
    return {"folder": folder,
            "compressed": exporter.export(model, folder / f"model{exporter.suffix}"),
            "dense": exporter.export(model, folder / f"dense{exporter.suffix}", dense=True)}


@pytest.fixture(scope="module")
def images(tiny_idx) -> torch.Tensor:
    return load_split("test", root=tiny_idx, limit=48).images


def test_artifact_is_written_atomically(exporter, artifacts):
    assert artifacts["compressed"].exists() and artifacts["dense"].exists()
    leftovers = [p.name for p in artifacts["folder"].iterdir() if p.name.startswith(".")]
    assert leftovers == []   # atomic_path's temporaries are renamed or removed


def test_compressed_artifact_is_smaller_than_dense(exporter, artifacts):
    small, dense = artifact_size(artifacts["compressed"]), artifact_size(artifacts["dense"])
    assert small.bytes * 4 < dense.bytes, (small, dense)


def test_every_compressed_layer_is_stored_compressed(exporter, artifacts, model):
    stored = exporter.stored_compressed(artifacts["compressed"], model)
    assert stored == {n: True for n in PLAN}   # includes the 100- and 320-weight layers
    assert not any(exporter.stored_compressed(artifacts["dense"], model).values())


def test_artifact_computes_what_pytorch_computes(exporter, artifacts, model, images):
    exporter.check_numbers(artifacts["compressed"], model, images)


def test_validation_scores_fractions_through_the_interface(exporter, artifacts, model, tiny_idx):
    split = load_split("test", root=tiny_idx, limit=100)
    labels = split.labels.numpy()
    check = exporter.exporter.validate(artifacts["compressed"], model, split.images,
                                       accuracy_scorer(labels))
    assert check.ok and check.examples == 100
    report = check.to_dict()
    scored = report if check.decides else report["predictions"]
    if check.score is None:   # Core ML off macOS: the verdict is the decoded weights
        assert scored == {"skipped": "Core ML predictions need macOS"} and report["weights_match"]
        return
    torch_acc = float(np.mean(torch_outputs(model, split.images).argmax(1) == labels))
    assert scored["torch_accuracy"] == pytest.approx(torch_acc) and 0 <= scored["accuracy"] <= 1
    assert abs(scored["accuracy"] - scored["torch_accuracy"]) <= 0.001 == scored["tolerance"]


def test_unsupported_op_names_layer_and_op(exporter, tmp_path):
    out = tmp_path / f"bad{exporter.suffix}"
    with pytest.raises(ExportError) as err:
        exporter.export(model_with_unsupported_op(), out)
    assert "head.1" in str(err.value) and "mystery" in str(err.value)
    assert list(tmp_path.iterdir()) == []   # nothing half-written


def test_an_output_that_is_not_ours_is_refused_before_converting(exporter, model, tmp_path, monkeypatch):
    import android_export
    import android_export._convert
    import ios_export
    import ios_export._convert

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted before checking the output")
    monkeypatch.setattr(android_export._convert._last, "convert", no_conversion)
    monkeypatch.setattr(ios_export._convert, "_convert", no_conversion)
    folder = tmp_path / f"mine{exporter.suffix}"
    folder.mkdir() if exporter.name == "tflite" else folder.write_text("mine")
    direct = {"tflite": android_export.export_tflite, "coreml": ios_export.export_coreml}[exporter.name]
    for export in (exporter.exporter.export, direct):   # through the interface, and the package's verb
        with pytest.raises(UsageError, match="not a"):
            export(model, EXAMPLE, folder)
        with pytest.raises(UsageError, match="does not exist"):
            export(model, EXAMPLE, tmp_path / "no" / f"m{exporter.suffix}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name]


def test_compressed_layers_come_from_the_weights(model):
    layers = compressed_layers(model)
    assert set(layers) == set(PLAN)
    for name, (sparsity, bits) in PLAN.items():
        info = layers[name]
        assert info.nnz == round((1 - sparsity) * info.size)
        assert 1 < len(info.codebook) <= 2 ** bits


# ---------------------------------------------------------------------------------------------
# Core ML

def expected_lut_entries(codebook: np.ndarray, target: str = "iOS18") -> int:
    """Smallest LUT Core ML allows that holds the fp16 codebook (no 3-bit LUT before iOS 18)."""
    k = len(set(codebook.astype(np.float16).tolist()))
    widths = (1, 2, 3, 4, 6, 8) if target == "iOS18" else (1, 2, 4, 6, 8)
    return next(2 ** n for n in widths if 2 ** n >= k)


@coreml_only
def test_coreml_joint_ops_hold_exactly_our_codebooks(exporter, artifacts, model):
    from ios_export import verify_coreml
    check = verify_coreml(artifacts["compressed"], weights(model))
    for name, info in compressed_layers(model).items():
        layer = check.layers[name]
        assert layer.storage == "constexpr_lut_to_sparse -> constexpr_sparse_to_dense"
        assert layer.match and layer.dtype == "float16" and layer.nnz == info.nnz
        # the LUT indexes non-zero values only: zero does not cost an entry
        assert layer.lut_entries == expected_lut_entries(info.codebook)


def test_coreml_ios16_picks_sparse_or_palettized_per_layer(tmp_path):
    from ios_export import export_coreml, verify_coreml
    torch.manual_seed(1)
    model = compress(TinyNet(), {"conv.weight": (0.0, 2), "fc1.weight": (0.9, 5), "fc2.weight": (0.0, 3)})
    out = tmp_path / "m16.mlpackage"
    result = export_coreml(model, EXAMPLE, out, target="iOS16")
    check = verify_coreml(out, {n: p.numpy() for n, p in model.state_dict().items()
                                if n in ("conv.weight", "fc1.weight", "fc2.weight")})
    assert check.ok
    # fc1 keeps 10%: mask + fp16 values (2,304 + 3,688 B) beat 6-bit indices (13,824 B)
    assert check.layers["fc1.weight"].storage == "constexpr_sparse_to_dense"
    # unpruned, 3-bit shared: iOS16 has no 3-bit LUT, so 4-bit indices into a 16-entry LUT
    assert check.layers["fc2.weight"].storage == "constexpr_lut_to_dense"
    assert check.layers["fc2.weight"].lut_entries == 16 == result.layers["fc2.weight"].lut_entries


def test_coreml_fp32_ios17_keeps_codebooks_bit_exact(model, tmp_path):
    from ios_export import export_coreml, verify_coreml
    out = tmp_path / "m17.mlpackage"
    export_coreml(model, EXAMPLE, out, target="iOS17", precision="fp32")
    check = verify_coreml(out, weights(model))
    assert check.ok
    assert all(c.dtype == "float32" and c.max_abs_diff == 0.0 for c in check.layers.values())


def test_coreml_fp16_merges_centroids_that_fp16_cannot_tell_apart(tmp_path):
    from ios_export import export_coreml, verify_coreml
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 8)).eval()
    values = torch.tensor([0.5, 0.5 + 2 ** -14, -0.25, 0.0])   # 0.5 + 2**-14 is 0.5 in fp16
    model[1].weight.data = values[torch.arange(8 * 784) % 4].reshape(8, 784)
    out = tmp_path / "m.mlpackage"
    export_coreml(model, EXAMPLE, out)
    check = verify_coreml(out, {"1.weight": model[1].weight.detach().numpy()})
    assert check.ok and check.layers["1.weight"].lut_entries == 2   # {0.5, -0.25}: 1-bit indices
    assert check.layers["1.weight"].max_abs_diff == pytest.approx(2 ** -14)


@coreml_only
def test_coreml_verify_fails_on_other_weights_and_on_corruption(exporter, artifacts, model, tmp_path):
    from ios_export import verify_coreml
    other = weights(model)
    other["fc2.weight"] = np.where(other["fc2.weight"] != 0, other["fc2.weight"] * 1.01, 0)
    check = verify_coreml(artifacts["compressed"], other)
    assert not check.weights_match and not check.layers["fc2.weight"].match
    assert check.layers["fc1.weight"].match

    broken = tmp_path / "broken.mlpackage"
    shutil.copytree(artifacts["compressed"], broken)
    blob = next(broken.rglob("weight.bin"))
    data = bytearray(blob.read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = bytes(b ^ 0xFF for b in data[len(data) // 2: len(data) // 2 + 64])
    blob.write_bytes(bytes(data))
    assert not verify_coreml(broken, weights(model)).weights_match


@coreml_only
def test_coreml_dense_package_is_reported_uncompressed(exporter, artifacts, model):
    from ios_export import verify_coreml
    check = verify_coreml(artifacts["dense"], weights(model))
    assert check.weights_match and not check.all_compressed and not check.ok
    assert {c.storage for c in check.layers.values()} == {"const (dense)"}


@pytest.mark.macos
@pytest.mark.skipif(sys.platform != "darwin", reason="Core ML predictions need macOS (Core ML "
                    "compiles and runs models through the OS); elsewhere the weights are decoded")
@coreml_only
def test_coreml_predictions_match_pytorch(exporter, artifacts, model, images):
    from ios_export import coreml_outputs
    got, ref = coreml_outputs(artifacts["compressed"], images), torch_outputs(model, images)
    assert np.array_equal(got.argmax(1), ref.argmax(1))
    assert np.max(np.abs(got - ref)) < 5e-2


# ---------------------------------------------------------------------------------------------
# TFLite

@pytest.fixture(scope="module")
def float32(model) -> bytes:
    from android_export import convert_float32
    return convert_float32(model, EXAMPLE)


@pytest.mark.parametrize("variant", ["float32", "float16", "int8", "sparse-float32",
                                     "sparse-float16", "sparse-int8"])
def test_tflite_variant_stores_what_it_says(variant, model, float32, images, tmp_path):
    from android_export import build_variant, tflite_outputs, weight_slots
    path = tmp_path / f"{variant}.tflite"
    path.write_bytes(build_variant(float32, variant))
    dtype = variant.removeprefix("sparse-")
    for name, ours in weights(model).items():
        slot = next(s for s in weight_slots(path.read_bytes()) if s.weight.shape == ours.shape)
        assert slot.dtype == dtype, name
        if variant.startswith("sparse-"):   # sparse unless even 1-byte indices would not pay
            nnz, itemsize = int(np.count_nonzero(ours)), np.dtype(dtype).itemsize
            assert slot.sparse or slot.stored_bytes <= nnz * (itemsize + 1), name
        else:
            assert not slot.sparse, name
        assert np.all(slot.weight[ours == 0] == 0)   # pruned weights stay exactly zero
        if dtype != "int8":   # float variants hold our weights exactly in their dtype
            assert np.array_equal(slot.weight, ours.astype(dtype).astype(np.float32)), name
    got, ref = tflite_outputs(path, images), torch_outputs(model, images)
    tolerance = {"float32": 1e-5, "float16": 1e-2, "int8": 5e-2}[dtype] * max(1.0, float(np.abs(ref).max()))
    assert np.max(np.abs(got - ref)) < tolerance


def test_tflite_sparse_is_smaller_than_each_dense_precision(float32):
    from android_export import build_variant
    sizes = {v: len(build_variant(float32, v)) for v in ("float16", "int8", "sparse-float16", "sparse-int8")}
    assert sizes["sparse-float16"] < sizes["float16"] and sizes["sparse-int8"] < sizes["int8"]


def test_tflite_leaves_a_weight_dense_when_sparse_would_be_larger(float32):
    from android_export import build_variant, sparsify
    _, made_sparse = sparsify(float32)
    assert len(made_sparse) == 3
    # int8 conv: 50 of 100 weights kept; 50 values + 50 indices + 26 segments > 100 dense bytes
    _, made_sparse = sparsify(build_variant(float32, "int8"))
    assert len(made_sparse) == 2 and not any("conv" in name for name in made_sparse)


def test_tflite_validation_reports_accuracy_as_a_fraction(model, float32, tiny_idx, tmp_path):
    from android_export import TFLiteExporter, build_variant
    path = tmp_path / "m.tflite"
    path.write_bytes(build_variant(float32, "sparse-float16"))
    split = load_split("test", root=tiny_idx, limit=100)
    result = TFLiteExporter().validate(path, model, split.images, accuracy_scorer(split.labels.numpy()))
    figures = result.score.figures
    assert result.examples == 100 and result.ok and result.score.limits == {"tolerance": 0.001}
    assert abs(figures["accuracy"] - figures["torch_accuracy"]) <= 0.001
    assert 0 <= figures["accuracy"] <= 1 and 0.99 <= figures["agreement"] <= 1
    assert 0 < figures["max_abs_diff"] < 1e-2


# ---------------------------------------------------------------------------------------------
# Both

class BatchNormNet(TinyNet):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


def test_batchnorm_does_not_undo_a_conv_codebook(tmp_path, images):
    """Core ML keeps BatchNorm as its own op (folding it would rescale the conv's codebook per
    channel); litert-torch folds it, which keeps the zeros but not the values."""
    from android_export import export_tflite, tflite_outputs
    from ios_export import export_coreml, verify_coreml
    torch.manual_seed(2)
    model = BatchNormNet()
    model.bn.running_mean.uniform_(-0.5, 0.5)
    model.bn.running_var.uniform_(0.5, 2.0)
    model.bn.weight.data.uniform_(0.5, 1.5)
    compress(model, PLAN)
    check = verify_coreml(export_coreml(model, EXAMPLE, tmp_path / "bn.mlpackage").path, weights(model))
    assert check.ok, check.layers
    tfl = export_tflite(model, EXAMPLE, tmp_path / "bn.tflite")
    assert tfl.layers["conv.weight"].zeros_kept and tfl.layers["conv.weight"].max_abs_diff > 1e-3
    got, ref = tflite_outputs(tfl.path, images), torch_outputs(model, images)
    assert np.max(np.abs(got - ref)) < 1e-2 * max(1.0, float(np.abs(ref).max()))


@pytest.mark.parametrize("module, package, export", [
    ("coremltools", "coremltools", lambda m, p: __import__("ios_export").export_coreml(m, EXAMPLE, p / "m.mlpackage")),
    ("litert_torch", "litert-torch", lambda m, p: __import__("android_export").export_tflite(m, EXAMPLE, p / "m.tflite")),
])
def test_missing_backend_names_the_package_to_install(monkeypatch, tmp_path, model, module, package, export):
    monkeypatch.setitem(sys.modules, module, None)   # makes `import module` raise ImportError
    with pytest.raises(ExportError, match=f"pip install {package}"):
        export(model, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_coreml_falls_back_to_torch_export_when_the_trace_fails(tmp_path, monkeypatch):
    """A model TorchScript cannot trace (a Hugging Face BERT) converts through torch.export; its
    weights are still found and stored compressed."""
    from ios_export import export_coreml, verify_coreml
    torch.manual_seed(0)
    model = compress(nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10)),
                     {"1.weight": (0.8, 4), "3.weight": (0.0, 5)})

    def no_trace(*args, **kwargs):
        raise RuntimeError("this model cannot be traced")
    monkeypatch.setattr(torch.jit, "trace", no_trace)
    out = tmp_path / "exported.mlpackage"
    export_coreml(model, EXAMPLE, out, target="iOS17", precision="fp32")
    state = model.state_dict()
    check = verify_coreml(out, {n: state[n].numpy() for n in ("1.weight", "3.weight")})
    assert check.ok and set(check.layers) == {"1.weight", "3.weight"}
    assert all(c.max_abs_diff == 0.0 for c in check.layers.values())


class WithDeadLayer(nn.Module):
    """A layer computed but never reaching the output (a BERT's pooler under mean pooling)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(784, 10)
        self.pooler = nn.Linear(10, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x.flatten(1))
        self.pooler(h)
        return h


def test_coreml_fallback_skips_a_layer_the_output_ignores(tmp_path, monkeypatch):
    from ios_export import export_coreml, verify_coreml

    def no_trace(*args, **kwargs):
        raise RuntimeError("this model cannot be traced")
    monkeypatch.setattr(torch.jit, "trace", no_trace)
    torch.manual_seed(0)
    model = compress(WithDeadLayer(), {"fc.weight": (0.8, 4), "pooler.weight": (0.0, 3)})
    result = export_coreml(model, EXAMPLE, tmp_path / "dead.mlpackage", target="iOS17",
                           precision="fp32")
    assert set(result.layers) == {"fc.weight"}
    assert "does not depend on it" in result.skipped["pooler.weight"]
    check = verify_coreml(result.path, {"fc.weight": model.state_dict()["fc.weight"].numpy()})
    assert check.ok and check.layers["fc.weight"].max_abs_diff == 0.0
