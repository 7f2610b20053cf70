"""Recurrent layers (LSTM, GRU, RNN): every weight matrix, both directions, every layer, is a
layer of its own, pruned and shared like a Linear, calibrated on the rows it multiplies, retrained
with its mask and codebook held, and stored in the .dcz that rebuilds the model."""
from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch
from torch import nn

SEQUENCE_MODEL = textwrap.dedent('''
    import torch
    from torch import nn

    class Tagger(nn.Module):
        """Per-step class scores from a recurrent layer: (batch, steps, features) in."""

        def __init__(self, kind="LSTM", layers=1, bidirectional=False, hidden=8):
            super().__init__()
            self.rnn = getattr(nn, kind)(6, hidden, num_layers=layers,
                                         bidirectional=bidirectional, batch_first=True)
            self.head = nn.Linear(hidden * (2 if bidirectional else 1), 5)

        def forward(self, x):
            return self.head(self.rnn(x)[0])

    def make(**kwargs):
        torch.manual_seed(7)
        return Tagger(**kwargs)
''')

CASES = {"LSTM": {"kind": "LSTM"}, "GRU": {"kind": "GRU"}, "RNN": {"kind": "RNN"},
         "bidirectional LSTM": {"kind": "LSTM", "bidirectional": True},
         "2-layer bidirectional GRU": {"kind": "GRU", "layers": 2, "bidirectional": True}}


def matrices(kwargs: dict) -> list[str]:
    suffixes = ["", "_reverse"] if kwargs.get("bidirectional") else [""]
    return [f"rnn.weight_{m}_l{layer}{s}" for layer in range(kwargs.get("layers", 1))
            for s in suffixes for m in ("ih", "hh")]


@pytest.fixture
def tagger_env(user_module):
    tmp_path = user_module("tiny_tagger", SEQUENCE_MODEL)
    x = torch.randn(96, 10, 6, generator=torch.Generator().manual_seed(0))
    torch.save(x, tmp_path / "samples.pt")
    return tmp_path


def _run(env, kwargs, stages, out):
    from compression.pipeline import run_recipe
    from compression.recipe import Recipe

    lines: list[str] = []
    recipe = {"name": "tagger", "seed": 0, "model": {"name": "tiny_tagger:make", "kwargs": kwargs},
              "data": {"batch_size": 32},
              "task": {"kind": "distill", "inputs": str(env / "samples.pt"), "test_fraction": 0.25},
              "stages": stages}
    return run_recipe(Recipe.from_dict(recipe), env / out, log=lines.append), lines


def _file_is_the_model(env, out, kwargs, result):
    from deepcompress.loading import model_from_dcz

    model, dcz = model_from_dcz(env / out / "model.dcz", model="tiny_tagger:make",
                                model_kwargs=kwargs)
    for name, tensor in result.model.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    return model, dcz


@pytest.mark.parametrize("case", list(CASES))
def test_post_training_prunes_and_shares_every_matrix_with_its_own_inputs(tagger_env, case):
    kwargs = CASES[case]
    stages = [{"kind": "prune", "sparsity": 0.5, "rounds": 1, "retrain_epochs": 0,
               "method": "wanda", "calibration": 48},
              {"kind": "share", "bits": 4, "weighting": "activation", "compensate": "gptq",
               "calibration": 48},
              {"kind": "encode"}]
    result, lines = _run(tagger_env, kwargs, stages, "post")
    rows = {r["name"]: r for r in result.report["layers"]}
    names = matrices(kwargs)
    assert [n for n in rows if n.startswith("rnn.")] == names     # every matrix, torch's order
    for name in names:
        assert rows[name]["type"] == kwargs["kind"]
        # Wanda cuts per output row (gate row): each row of the matrix keeps exactly half
        w = result.state.layers[name].weight.detach()
        assert ((w != 0).sum(1) == w.shape[1] // 2).all(), name
        assert rows[name]["bits"] == 4 and rows[name]["distinct_values"] <= 16
        note = next(line for line in lines if line.startswith(f"{name}:"))
        assert "activation-weighted" in note and "GPTQ-compensated" in note, note
    model, dcz = _file_is_the_model(tagger_env, "post", kwargs, result)
    for name in names:
        assert dcz.layers[name].bits == 4
    assert 0.5 < result.report["scores"]["2_share"]["cosine_mean"] < 1.0   # changed, related


@pytest.mark.parametrize("case", list(CASES))
def test_retraining_keeps_masks_and_codebooks_of_every_matrix(tagger_env, case):
    kwargs = CASES[case]
    stages = [{"kind": "prune", "sparsity": 0.6, "rounds": 2, "retrain_epochs": 1, "lr": 3e-3},
              {"kind": "share", "bits": 3, "name": "share"},
              {"kind": "finetune_centroids", "epochs": 2, "lr": 3e-3, "name": "tune"}]
    result, _ = _run(tagger_env, kwargs, stages, "retrained")
    shared = torch.load(tagger_env / "retrained" / "checkpoints" / "share.pt", weights_only=True)
    for name in matrices(kwargs):
        layer = result.state.layers[name]
        w = layer.weight.detach()
        assert torch.equal(layer.mask, shared["masks"][name])          # the cut held
        assert float((w == 0).float().mean()) >= 0.6 - 1 / w.numel()
        assert torch.equal(layer.assignments, shared["assignments"][name])
        assert not torch.equal(layer.centroids, shared["centroids"][name])   # they trained
        assert torch.equal(w, torch.where(layer.mask, layer.centroids[layer.assignments],
                                          torch.zeros_like(w)))
        # the module computes with the enforced matrix (not a stale copy of it)
        assert getattr(result.model.rnn, name.split(".")[1]) is layer.weight
    _file_is_the_model(tagger_env, "retrained", kwargs, result)


def test_gate_inputs_are_the_rows_each_matrix_multiplies():
    """Layer 1 reads layer 0's outputs (both directions side by side); W_hh reads h0 and then
    each previous hidden state, in the direction's own order; an LSTM's projection reads
    o * tanh(c) before it."""
    from compression._recurrent import gate_inputs

    torch.manual_seed(0)
    two = nn.LSTM(3, 4, num_layers=2, bidirectional=True).eval()
    first = nn.LSTM(3, 4, num_layers=1, bidirectional=True).eval()
    first.load_state_dict({k: v for k, v in two.state_dict().items() if "_l0" in k})
    x = torch.randn(5, 2, 3)
    rows = gate_inputs(two, (x,), two(x))
    below = first(x)[0]                           # (steps, batch, 2 x hidden)
    assert torch.allclose(rows["weight_ih_l1"], below.reshape(-1, 8), atol=1e-6)
    assert torch.equal(rows["weight_ih_l0"], x.reshape(-1, 3))
    forward_h, backward_h = below[..., :4], below[..., 4:]
    want = torch.cat([torch.zeros(1, 2, 4), forward_h[:-1]])     # h_{t-1}, h_{-1} = 0
    assert torch.allclose(rows["weight_hh_l0"], want.reshape(-1, 4), atol=1e-6)
    want = torch.cat([backward_h[1:], torch.zeros(1, 2, 4)])     # reverse: h_{t+1}
    assert torch.allclose(rows["weight_hh_l0_reverse"], want.reshape(-1, 4), atol=1e-6)

    proj = nn.LSTM(3, 4, proj_size=2).eval()
    rows = gate_inputs(proj, (x,), proj(x))
    assert rows["weight_hr_l0"].shape == (10, 4) and rows["weight_hh_l0"].shape == (10, 2)


def test_a_recurrent_layer_that_is_not_torchs_recurrence_is_refused():
    from compression.calibration import input_norms
    from dccore.errors import ModelError

    class Scaled(nn.GRU):
        def forward(self, x, hx=None):
            out, h = super().forward(x, hx)
            return 2 * out, h

    model = Scaled(3, 4).eval()
    with pytest.raises(ModelError, match="not torch's GRU recurrence"):
        input_norms(model, {"weight_hh_l0": model}, [(torch.randn(5, 2, 3),)])


def test_recipes_scope_recurrent_layers_by_type_and_by_matrix():
    from compression.api import compress

    torch.manual_seed(0)
    model = nn.Sequential(nn.LSTM(4, 6, bidirectional=True))
    comp = compress(model, {"stages": [{"kind": "prune", "sparsity": 0.5, "rounds": 1,
                                        "retrain_epochs": 0,
                                        "by_name": {"0.weight_hh_*": False}},
                                       {"kind": "share", "bits": 5, "by_type": {"LSTM": {"bits": 3}}}]})
    layers = comp.state.layers
    assert layers["0.weight_ih_l0"].mask is not None and layers["0.weight_hh_l0"].mask is None
    assert layers["0.weight_hh_l0_reverse"].mask is None
    assert {layer.bits for layer in layers.values()} == {3}


# -- exports: what each format does with the compressed matrices today ----------------------------

def _compressed_tagger():
    from compression.api import compress

    torch.manual_seed(0)
    model = nn.Sequential()
    model.rnn = nn.LSTM(6, 8, bidirectional=True, batch_first=True)
    comp = compress(model, {"stages": [{"kind": "prune", "sparsity": 0.5, "rounds": 1,
                                        "retrain_epochs": 0}, {"kind": "share", "bits": 4}]})
    return _Tagger(model.rnn).eval(), sorted(comp.state.layers)


class _Tagger(nn.Module):
    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x):
        return self.rnn(x)[0]


@pytest.mark.filterwarnings("ignore")
def test_tflite_stores_every_lstm_matrix_sparse_with_its_zeros(tmp_path):
    from android_export import export_tflite, tflite_outputs

    model, names = _compressed_tagger()
    x = torch.randn(4, 5, 6)
    report = export_tflite(model, (x[:1],), tmp_path / "m.tflite", variant="sparse-float16",
                           layers=names)
    for name in names:
        stored = report.layers[name]
        assert stored.stored_as == "sparse float16" and stored.zeros_kept, (name, stored)
    got = tflite_outputs(tmp_path / "m.tflite", (x[:1],))
    assert np.allclose(got, model(x[:1]).detach().numpy(), atol=1e-2)


@pytest.mark.filterwarnings("ignore")
def test_coreml_refuses_a_compressed_lstm_naming_the_matrix(tmp_path):
    """coremltools' lstm op takes the gates reordered (i, f, o, g: a concat of torch's row
    blocks), so no constant of the program equals the matrix: refused, never stored dense."""
    from dccore.errors import ExportError
    from ios_export import export_coreml

    model, names = _compressed_tagger()
    with pytest.raises(ExportError, match=r"layer 'rnn\.weight_[hi]h_l0(_reverse)?'.*not a constant"):
        export_coreml(model, (torch.randn(1, 5, 6),), tmp_path / "m.mlpackage",
                      layers=names)
    assert not (tmp_path / "m.mlpackage").exists()


SHRINKABLE = textwrap.dedent('''
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self, hidden=12):
            super().__init__()
            self.rnn = nn.GRU(6, 8, batch_first=True)
            self.fc1 = nn.Linear(8, hidden)
            self.fc2 = nn.Linear(hidden, 5)

        def forward(self, x):
            return self.fc2(torch.relu(self.fc1(self.rnn(x)[0])))

        def width_kwargs(self):
            return {"fc1": ("hidden", None)}

    def make(**kwargs):
        torch.manual_seed(0)
        return Net(**kwargs)
''')


def test_shrink_then_share_a_model_with_a_recurrent_layer(tagger_env, user_module):
    """Shrinking a Linear after a GRU: the stage's check that the state's layers are the model's
    modules holds for the GRU's matrices (each names its module plus the matrix)."""
    user_module("tiny_shrinkable", SHRINKABLE)
    from compression.pipeline import run_recipe
    from compression.recipe import Recipe

    recipe = {"name": "shrink", "seed": 0, "model": {"name": "tiny_shrinkable:make"},
              "task": {"kind": "distill", "inputs": str(tagger_env / "samples.pt")},
              "stages": [{"kind": "shrink", "fraction": 0.5, "rounds": 1, "retrain_epochs": 0},
                         {"kind": "share", "bits": 4}]}
    result = run_recipe(Recipe.from_dict(recipe), tagger_env / "shrunk")
    assert result.model.fc1.out_features == 6
    assert result.state.layers["rnn.weight_hh_l0"].bits == 4


def test_wanda_and_gptq_on_a_gate_matrix_read_its_own_inputs():
    """weight_ih_l0's inputs are the model's features: with feature scales 100, 10, 1, 0.1 and
    weights growing with the column (1, 2, 3, 4), magnitude keeps columns 2-3 of every gate row
    and Wanda (scores 100, 20, 3, 0.4) keeps 0-1. GPTQ lowers the gate pre-activation error on
    those inputs below plain nearest-centroid rounding."""
    from compression.api import compress

    def lstm():
        torch.manual_seed(0)
        m = nn.LSTM(4, 3, batch_first=True)
        with torch.no_grad():
            m.weight_ih_l0.copy_(torch.arange(1.0, 5.0).expand(12, 4))
        return m

    x = torch.randn(64, 6, 4) * torch.tensor([100.0, 10.0, 1.0, 0.1])
    cut = {"kind": "prune", "sparsity": 0.5, "rounds": 1, "retrain_epochs": 0}
    kept = {method: compress(lstm(), {"stages": [{**cut, "method": method}]}, calibration=(x,))
            .state.layers["weight_ih_l0"].mask for method in ("magnitude", "wanda")}
    assert kept["magnitude"][:, 2:].all() and not kept["magnitude"][:, :2].any()
    assert kept["wanda"][:, :2].all() and not kept["wanda"][:, 2:].any()

    torch.manual_seed(1)        # correlated features: what GPTQ's compensation works through
    base = torch.randn(64, 6, 2)
    x = torch.stack([base[..., 0], base[..., 0] + 0.05 * torch.randn(64, 6), base[..., 1],
                     base[..., 1] + 0.05 * torch.randn(64, 6)], -1)

    def gate_error(compensate: str) -> float:
        model = nn.LSTM(4, 3, batch_first=True)
        model.load_state_dict(dense)
        comp = compress(model, {"stages": [{"kind": "share", "bits": 2, "init": "linear",
                                            "compensate": compensate}]}, calibration=(x,))
        w = comp.state.layers["weight_ih_l0"].weight.detach()
        return float((x.reshape(-1, 4) @ (dense["weight_ih_l0"] - w).T).pow(2).sum())

    torch.manual_seed(2)
    dense = {k: v.clone() for k, v in nn.LSTM(4, 3, batch_first=True).state_dict().items()}
    assert gate_error("gptq") < 0.9 * gate_error("none")
