"""The TFLite ``auto`` variant: each layer in the smallest form LiteRT runs that holds it exactly
(int4 / int8 per channel, int4 in blocks of 32, sparse int8), read back bit for bit from the
.tflite and run through the interpreter; free k-means codebooks rounded to the nearest int grid
with the error reported. Tiny models built here, weights put on grids by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("ai_edge_quantizer")
pytest.importorskip("ai_edge_litert")


def _on_grid(shape: tuple[int, ...], qmax: int, *, qmin: int | None = None, seed: int = 0,
             sparsity: float = 0.0) -> torch.Tensor:
    """Each output channel (row) = its own float32 scale x integers in [qmin, qmax]."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.rand((shape[0],) + (1,) * (len(shape) - 1), generator=g) * 0.05 + 0.01
    q = torch.randint(-qmax if qmin is None else qmin, qmax + 1, shape, generator=g).float()
    if sparsity:
        q[torch.rand(shape, generator=g) < sparsity] = 0
    return scale * q


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.depthwise = nn.Conv2d(8, 8, 3, groups=8)
        self.fc1 = nn.Linear(8 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 48)
        self.fc3 = nn.Linear(48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.depthwise(torch.relu(self.conv(x)))).flatten(1)
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


@pytest.fixture(scope="module")
def gridded() -> ConvNet:
    torch.manual_seed(0)
    model = ConvNet().eval()
    with torch.no_grad():
        model.conv.weight.copy_(_on_grid(model.conv.weight.shape, 7, qmin=-8, seed=1))
        model.depthwise.weight.copy_(_on_grid(model.depthwise.weight.shape, 7, seed=2))
        model.fc1.weight.copy_(_on_grid(model.fc1.weight.shape, 127, seed=3))             # int8
        model.fc2.weight.copy_(_on_grid(model.fc2.weight.shape, 127, seed=4, sparsity=0.9))
        model.fc3.weight.copy_(_on_grid(model.fc3.weight.shape, 7, seed=5))               # int4
    return model


@pytest.fixture(scope="module")
def exported(gridded, tmp_path_factory):
    from android_export import export_tflite
    x = torch.randn(1, 3, 8, 8)
    return export_tflite(gridded, x, tmp_path_factory.mktemp("native") / "auto.tflite",
                         layers=[f"{n}.weight" for n in ("conv", "depthwise", "fc1", "fc2", "fc3")])


def test_grid_weights_are_stored_exactly_in_the_smallest_form(exported, gridded):
    forms = {n: s.form for n, s in exported.layers.items()}
    assert forms == {"conv.weight": "int4", "depthwise.weight": "int4", "fc1.weight": "int8",
                     "fc2.weight": "sparse-int8", "fc3.weight": "int4"}
    assert all(s.exact and s.max_abs_diff == 0 and "exactly, per channel" in s.why
               for n, s in exported.layers.items() if s.form != "int4-block32")


def test_one_scale_for_the_tensor_where_it_holds_the_layer_exactly(tmp_path):
    from android_export import export_tflite, weight_slots
    model = nn.Sequential(nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 4)).eval()
    with torch.no_grad():
        q = torch.randint(-7, 8, (30, 40), generator=torch.Generator().manual_seed(0)).float()
        model[0].weight.copy_(q * 0.0137)        # one int4 grid for the whole layer
    out = export_tflite(model, torch.randn(1, 40), tmp_path / "t.tflite", layers=["0.weight"])
    stored = out.layers["0.weight"]
    assert stored.form == "int4" and stored.exact and "per tensor" in stored.why
    slot = next(s for s in weight_slots(out.path.read_bytes()) if s.tensor == stored.tensor)
    assert np.array_equal(slot.weight, model[0].weight.detach().numpy())


def test_weights_read_back_from_the_file_equal_ours_bit_for_bit(exported, gridded):
    from android_export import weight_slots
    slots = {(s.op, s.weight.shape): s for s in weight_slots(exported.path.read_bytes())}
    state = gridded.state_dict()
    for name, stored in exported.layers.items():
        ours = state[name].numpy()
        slot = next(s for s in slots.values() if s.tensor == stored.tensor)
        assert slot.dtype == ("int4" if stored.form == "int4" else "int8")
        assert slot.sparse == (stored.form == "sparse-int8")
        assert np.array_equal(slot.weight.view(np.uint32), ours.view(np.uint32)), name


def test_the_interpreter_runs_it_as_pytorch_does(exported, gridded):
    from android_export import tflite_outputs
    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(9))
    got, ref = tflite_outputs(exported.path, x), gridded(x).detach().numpy()
    assert np.abs(got - ref).max() <= 1e-4 * max(1.0, float(np.abs(ref).max()))


def test_blockwise_int4_when_each_block_of_32_has_its_own_scale(tmp_path):
    import ml_dtypes
    from android_export import export_tflite, tflite_outputs
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    rng = np.random.default_rng(0)
    # one scale per block of 32 inputs, held in bfloat16 as the format stores it: rows differ
    # block to block, so no per-channel scale fits and int4-block32 is the only exact int form
    scales = (rng.random((16, 2, 1)) * 0.05 + 0.01).astype(ml_dtypes.bfloat16).astype(np.float32)
    codes = rng.integers(-8, 8, (16, 2, 32)).astype(np.float32)
    with torch.no_grad():
        model[0].weight.copy_(torch.from_numpy((codes * scales).reshape(16, 64)))
    x = torch.randn(1, 64)
    out = export_tflite(model, x, tmp_path / "b.tflite", layers=["0.weight"])
    stored = out.layers["0.weight"]
    assert stored.form == "int4-block32" and stored.exact and stored.max_abs_diff == 0
    xs = torch.randn(8, 64)
    ref = model(xs).detach().numpy()
    # the input is quantized to int8 at run time: close, not equal
    assert np.abs(tflite_outputs(out.path, xs) - ref).max() < 0.05 * np.abs(ref).max()


def test_free_kmeans_codebooks_are_rounded_to_int8_with_the_error_reported(tmp_path):
    from android_export import export_tflite
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 4)).eval()
    codebook = torch.tensor([-0.31, -0.173, -0.0521, 0.0437, 0.129, 0.2718, 0.3333, 0.41])
    with torch.no_grad():
        model[0].weight.copy_(codebook[torch.randint(0, 8, (24, 32))])
    out = export_tflite(model, torch.randn(1, 32), tmp_path / "k.tflite", layers=["0.weight"])
    stored = out.layers["0.weight"]
    assert stored.form == "int8" and not stored.exact and stored.zeros_kept
    assert 0 < stored.max_abs_diff <= 0.41 / 127 / 2 * 1.001   # half an int8 step of the row
    # one codebook for the layer: one scale holds it as well as 24 would, 276 bytes less
    assert "on no int4/int8 grid" in stored.why and "rounded to int8, per tensor" in stored.why


def test_fit_grid_finds_the_scale_or_says_there_is_none():
    from android_export._native import fit_grid
    rows = _on_grid((6, 40), 7, seed=3).numpy()
    grid = fit_grid(rows, 4)
    assert grid.exact and grid.error == 0
    assert np.array_equal(grid.codes.astype(np.float32) * grid.scales[:, None], rows)
    assert np.abs(grid.codes).max() <= 8
    assert fit_grid(rows, 8).exact                  # an int4 grid is an int8 grid too
    wide = _on_grid((6, 40), 127, seed=3).numpy()
    assert fit_grid(wide, 8).exact and not fit_grid(wide, 4).exact
    noise = np.random.default_rng(0).standard_normal((6, 40)).astype(np.float32)
    off = fit_grid(noise, 8)
    assert not off.exact and 0 < off.error < 0.01


def test_sparse_only_where_smaller_and_never_int4():
    from android_export._native import _sizes
    dense = np.ones((48, 64), np.float32)
    pruned = dense.copy()
    pruned[:, 6:] = 0
    sizes = _sizes(pruned, "FULLY_CONNECTED", 48, 48)
    assert sizes["sparse-int8"] < sizes["int8"] and "sparse-int4" not in sizes  # DENSIFY: no int4
    assert _sizes(dense, "FULLY_CONNECTED", 48, 48)["sparse-int8"] > sizes["int8"]
    # an embedding table stays dense behind DEQUANTIZE (XNNPACK misreads it sparse)
    assert "sparse-int8" not in _sizes(pruned, "EMBEDDING_LOOKUP", 48, 48)
    # a scale per channel costs a float32 and an int64 zero point
    assert sizes["int8"] - _sizes(pruned, "FULLY_CONNECTED", 1, 1)["int8"] == 47 * 12


def test_a_float16_codebook_is_still_rounded_to_int8_where_that_is_smaller(tmp_path):
    from android_export import export_tflite
    model = nn.Sequential(nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 4)).eval()
    # a k-means codebook whose values happen to be float16 numbers: float16 holds it exactly in
    # 2 bytes a weight, int8 within ~0.3% in 1; the artifact must carry the compression
    codebook = torch.tensor([-0.31, -0.173, -0.0521, 0.0437, 0.129, 0.2718, 0.3333, 0.41]).half().float()
    with torch.no_grad():
        model[0].weight.copy_(codebook[torch.randint(0, 8, (24, 32), generator=torch.Generator().manual_seed(0))])
    stored = export_tflite(model, torch.randn(1, 32), tmp_path / "h.tflite",
                           layers=["0.weight"]).layers["0.weight"]
    assert stored.form == "int8" and not stored.exact and "exact needs float16" in stored.why


def test_a_scale_folded_into_a_linear_by_the_converter_is_unfolded(tmp_path):
    """litert-torch folds a LayerNorm's scale g into the next Linear (stores W * g): the weight is
    off its grid. The exporter finds g among the model's vectors, stores W and multiplies the
    input by g instead. Here the fold is made by hand on a converted file."""
    from android_export import convert_float32, tflite_outputs, weight_slots
    from android_export._flatbuffer import read_model, write_model
    from android_export._native import folded_scale, unfold_scales
    model = nn.Sequential(nn.Linear(16, 8)).eval()
    with torch.no_grad():
        model[0].weight.copy_(_on_grid((8, 16), 7, seed=6))
    ours = model[0].weight.detach().numpy()
    g = np.linspace(0.5, 1.5, 16, dtype=np.float32)
    content = convert_float32(model, torch.randn(1, 16))
    slot = next(s for s in weight_slots(content) if s.weight.shape == (8, 16))
    fm = read_model(content)
    tensor = next(t for t in fm.subgraphs[0].tensors if t.name.decode() == slot.tensor)
    fm.buffers[tensor.buffer].data = np.frombuffer((ours * g).astype(np.float32).tobytes(), np.uint8)
    folded = write_model(fm)
    assert folded_scale(ours, ours * g, {"ln.weight": g, "other": g[::-1].copy()}) == "ln.weight"
    assert folded_scale(ours, ours, {"ln.weight": g}) is None
    path = tmp_path / "u.tflite"
    path.write_bytes(unfold_scales(folded, {slot.tensor: (ours, g)}))
    stored = next(s for s in weight_slots(path.read_bytes()) if s.weight.shape == (8, 16))
    assert np.array_equal(stored.weight, ours)
    x = torch.randn(5, 16)
    ref = model(x * torch.from_numpy(g)).detach().numpy()
    assert np.abs(tflite_outputs(path, x) - ref).max() < 1e-5
