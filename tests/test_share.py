"""Weight sharing: exact clusters on hand-computable weights, at most 2**bits distinct values."""
import torch

from compression.share import init_centroids, kmeans_1d, share_layer


def test_kmeans_finds_obvious_clusters():
    values = torch.tensor([-1.0, -1.1, -0.9, 2.0, 2.1, 1.9])
    centroids, assign = kmeans_1d(values, 2)
    assert torch.allclose(centroids, torch.tensor([-1.0, 2.0]))
    assert assign.tolist() == [0, 0, 0, 1, 1, 1]


def test_linear_init_skips_the_pruned_gap_and_keeps_extremes():
    values = torch.tensor([-0.9, -0.5, 0.5, 0.6, 0.7, 0.9])
    c = init_centroids(values, 4, "linear")
    assert c.min() == -0.9 and c.max() == 0.9
    assert not ((c > -0.5) & (c < 0.5)).any()


def test_share_layer_limits_distinct_values_and_keeps_zeros():
    torch.manual_seed(0)
    w = torch.randn(50, 40)
    mask = w.abs() > 0.5
    w = w * mask
    for bits in (1, 2, 3, 5):
        centroids, assign, _ = share_layer(w, mask, bits, "linear", 30)
        shared = torch.where(mask, centroids[assign], torch.zeros_like(w))
        distinct = torch.unique(shared[shared != 0]).numel()
        assert distinct <= 2 ** bits
        assert (shared[~mask] == 0).all()
        # every survivor went to its nearest centroid
        d = (w[mask].unsqueeze(1) - centroids.unsqueeze(0)).abs()
        assert torch.equal(d.argmin(1), assign[mask]) or torch.allclose(
            d.min(1).values, (w[mask] - centroids[assign[mask]]).abs())


def test_density_and_random_init_run():
    values = torch.randn(1000)
    for method in ("density", "random"):
        c, a = kmeans_1d(values, 8, init=method, generator=torch.Generator().manual_seed(0))
        assert 1 <= c.numel() <= 8 and a.max() < c.numel()


def test_kmeans_plusplus_fills_an_8_bit_codebook_where_linear_leaves_it_empty():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(256, 256, generator=g) * 0.05     # a pretrained layer's bell shape
    w[0, 0] = 1.0                                        # ... with one outlier
    linear, _, _ = share_layer(w, None, 8, "linear", 30)
    plusplus, assign, _ = share_layer(w, None, 8, "kmeans++", 30, torch.Generator().manual_seed(1))
    used = torch.unique(plusplus[assign]).numel()
    assert linear.numel() < 200 and used > 240        # linear merges empty clusters away
    err = lambda c, a: float(((c[a] - w) ** 2).mean())  # noqa: E731
    _, lin_assign = kmeans_1d(w.flatten(), 256, init="linear")
    assert err(plusplus, assign) < err(linear, lin_assign.view_as(w))


def test_sensitivity_pulls_centroids_to_the_weights_that_matter():
    from compression.share import share_grouped

    # two centroids for six evenly spaced weights: unweighted, each takes the mean of its three
    # (0.1 and 0.4), so the last weight is 0.1 off; weighted 1000x, its centroid moves onto it
    w = torch.tensor([[0.0, 0.1, 0.2, 0.3, 0.4, 0.5]])
    heavy = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0, 1000.0]])
    c, a, _ = share_grouped(w, None, 1, init="linear", iterations=30)
    plain = c[a][0]
    assert torch.allclose(plain, torch.tensor([0.1, 0.1, 0.1, 0.4, 0.4, 0.4]))
    c, a, _ = share_grouped(w, None, 1, init="linear", iterations=30, sensitivity=heavy)
    weighted = c[a][0]
    assert abs(float(weighted[5]) - 0.5) < 0.001                 # (0.3 + 0.4 + 500) / 1002
    assert torch.allclose(weighted[:3], torch.tensor(0.1))        # the other cluster unmoved


def test_grouped_codebooks_stay_in_their_rows_and_beat_one_codebook():
    from compression._state import LayerState
    from compression.share import share_grouped

    g = torch.Generator().manual_seed(0)
    scale = torch.tensor([0.01, 0.01, 1.0, 1.0]).repeat_interleave(4)[:, None]
    w = torch.randn(16, 32, generator=g) * scale          # rows of very different scales
    mask = torch.rand(16, 32, generator=g) > 0.3
    c, a, _ = share_grouped(w, mask, 2, init="kmeans++", iterations=30, group_size=4,
                            generator=torch.Generator().manual_seed(0))
    assert c.numel() == 4 * 4
    layer = LayerState(torch.nn.Linear(32, 16), "Linear", mask=mask, centroids=c,
                       assignments=a, bits=2, group_size=4)
    layer.module.weight.data.copy_(w)
    layer.enforce()
    assert layer.grouped_ok()
    shared = layer.weight.detach()
    for rows in range(0, 16, 4):
        assert torch.unique(shared[rows:rows + 4][mask[rows:rows + 4]]).numel() <= 4
    one, a1, _ = share_grouped(w, mask, 2, init="kmeans++", iterations=30,
                               generator=torch.Generator().manual_seed(0))
    per_tensor = torch.where(mask, one[a1], torch.zeros_like(w))
    err = lambda x, rows: float(((x - w)[rows][mask[rows]] ** 2).sum())  # noqa: E731
    small = slice(0, 8)     # the small rows: one codebook spends nothing on them
    assert err(shared, small) < 0.05 * err(per_tensor, small)
    assert err(shared, slice(0, 16)) <= err(per_tensor, slice(0, 16))


def test_compensated_assignments_keep_the_layers_outputs_closer():
    from compression.share import compensated_assignments, share_grouped

    g = torch.Generator().manual_seed(0)
    w = torch.randn(32, 120, generator=g)
    x = torch.randn(800, 120, generator=g) @ torch.randn(120, 120, generator=g) * 0.1
    h = x.T @ x / 800
    mask = torch.rand(32, 120, generator=g) > 0.25
    c, a, _ = share_grouped(w, mask, 3, init="kmeans++", iterations=20, group_size=8,
                            generator=torch.Generator().manual_seed(0))
    a2 = compensated_assignments(w, mask, c, 3, 8, h)
    plain = torch.where(mask, c[a], torch.zeros_like(w))
    comp = torch.where(mask, c[a2], torch.zeros_like(w))
    out_err = lambda q: float(((x @ (q - w).T) ** 2).mean())  # noqa: E731
    assert out_err(comp) < 0.8 * out_err(plain)     # the cut and the rounding both compensated
    rows = torch.arange(32)[:, None] // 8
    assert bool(((a2 // 8) == rows)[mask].all())      # still its own rows' codebook


CONV_MODEL = '''
import torch
from torch import nn

class Convs(nn.Module):
    """Every kind of convolution in a row: (batch, 2, 4, 6, 6) in, 5 scores out."""

    def __init__(self):
        super().__init__()
        self.c3 = nn.Conv3d(2, 4, 3, padding=1)
        self.c2 = nn.Conv2d(16, 8, 3, padding=1, groups=2)
        self.t2 = nn.ConvTranspose2d(8, 4, 2, stride=2)
        self.c1 = nn.Conv1d(48, 6, 3, padding="same")
        self.t1 = nn.ConvTranspose1d(6, 4, 3, stride=2, groups=2)
        self.head = nn.Linear(4, 5)

    def forward(self, x):
        x = torch.relu(self.c3(x)).flatten(1, 2)
        x = torch.relu(self.t2(torch.relu(self.c2(x))))
        x = torch.relu(self.c1(x.flatten(1, 2)))
        return self.head(self.t1(x).mean(-1))

def make():
    torch.manual_seed(3)
    return Convs()
'''
CONVS = ["c3", "c2", "t2", "c1", "t1"]


def test_post_training_weighs_and_compensates_every_convolution(user_module):
    """Wanda, activation weighting and GPTQ run on Conv1d/2d/3d and transposed convolutions
    (through their unfolded inputs) and the log says so for each; before, a convolution was
    shared without them, silently (or calibration raised TypeError)."""
    from compression.calibration import weight_matrix
    from compression.pipeline import run_recipe
    from compression.recipe import Recipe

    tmp_path = user_module("tiny_convs", CONV_MODEL)
    torch.save(torch.randn(64, 2, 4, 6, 6, generator=torch.Generator().manual_seed(0)),
               tmp_path / "x.pt")
    lines: list[str] = []
    recipe = {"name": "convs", "seed": 0, "model": {"name": "tiny_convs:make"},
              "data": {"batch_size": 32},
              "task": {"kind": "distill", "inputs": str(tmp_path / "x.pt"),
                       "test_fraction": 0.25},
              "stages": [{"kind": "prune", "sparsity": 0.5, "rounds": 1, "retrain_epochs": 0,
                          "method": "wanda", "calibration": 32},
                         {"kind": "share", "bits": 3, "group_size": 2, "weighting": "activation",
                          "compensate": "gptq", "calibration": 32}]}
    result = run_recipe(Recipe.from_dict(recipe), tmp_path / "out", log=lines.append)
    for name in CONVS:
        note = next(line for line in lines if line.startswith(f"{name}:"))
        assert "activation-weighted" in note and "GPTQ-compensated" in note, note
        layer = result.state.layers[name]
        assert layer.grouped_ok()
        # Wanda cut each output's own row of the matrix the layer multiplies by (a transposed
        # convolution's outputs are its weight's second axis)
        kept = weight_matrix(layer.module, layer.mask).sum(-1)
        assert (kept == round(0.5 * weight_matrix(layer.module, layer.mask).shape[-1])).all()
    assert 0.5 < result.report["scores"]["2_share"]["cosine_mean"] < 1.0
    assert [line.rsplit("; layer ", 1)[1].split(",")[0] for line in lines
            if "; layer " in line] == [f"{k}/6" for k in range(1, 7)]     # k of n, in order


def _lloyd_reference(values, weights, centroids, iterations):
    """The Lloyd loop as it was before the sorted/prefix-sum rewrite: assign every value, sum
    per cluster."""
    w64, wx = weights.double(), weights.double() * values.double()
    for _ in range(iterations):
        assign = torch.searchsorted((centroids[:, 1:] + centroids[:, :-1]).contiguous() / 2,
                                    values.contiguous())
        sums = torch.zeros(centroids.shape, dtype=torch.float64).scatter_add_(1, assign, wx)
        mass = torch.zeros(centroids.shape, dtype=torch.float64).scatter_add_(1, assign, w64)
        updated = torch.where(mass > 0, (sums / mass.clamp(min=1e-300)).float(), centroids)
        updated = updated.sort(dim=1).values.contiguous()
        if torch.equal(updated, centroids):
            break
        centroids = updated
    return centroids


def test_sorted_lloyd_matches_assigning_every_value():
    """The prefix-sum iterations are the old ones: from the same seeds, the same centroids (to
    float64 rounding of the sums, which float32 centroids do not see here)."""
    from compression.share import _linear_seeds, kmeans_groups

    g = torch.Generator().manual_seed(0)
    values = torch.randn(6, 3000, generator=g) * 0.05
    weights = torch.rand(6, 3000, generator=g) * (torch.rand(6, 3000, generator=g) > 0.2)
    for k in (4, 16, 64):
        seeds = _linear_seeds(values, weights, k)
        want = _lloyd_reference(values, weights, seeds, 30)
        got, assign = kmeans_groups(values, weights, k, init="linear", iterations=30)
        assert torch.equal(got, want), k
        nearest = (values[..., None] - got[:, None, :]).abs().argmin(-1)
        assert torch.equal(got.gather(1, assign), got.gather(1, nearest))


def test_plusplus_draws_from_the_exact_d2_distribution():
    """k-means++ on sorted values draws the second seed with probability weight x D^2: for
    values 0, 1, 3 (weights 1, 1, 2) and a first seed at 0 that is 0 : 1 : 18."""
    from compression.share import _plusplus_sorted

    rows = 20000
    xs = torch.tensor([0.0, 1.0, 3.0]).expand(rows, 3).contiguous()
    w = torch.tensor([1.0, 1.0, 2.0]).expand(rows, 3).contiguous()
    seeds = _plusplus_sorted(xs, w, 2, torch.Generator().manual_seed(0))
    first_zero = seeds[:, 0] == 0
    assert abs(float(first_zero.float().mean()) - 0.25) < 0.02     # first: by weight alone
    second = seeds[first_zero, 1]
    assert float((second == 0).float().mean()) == 0.0
    assert abs(float((second == 3).float().mean()) - 18 / 19) < 0.02


def test_grouped_kmeans_is_no_worse_than_before():
    """Within-cluster error of the new grouped k-means++ against the old sampled one (the loop
    above from the old seeding), averaged over seeds: the same or lower."""
    from compression.share import kmeans_groups

    g = torch.Generator().manual_seed(1)
    values = torch.randn(4, 2048, generator=g) * 0.05
    values[0, :3] = torch.tensor([0.9, -0.7, 0.5])          # rare large weights
    weights = torch.rand(4, 2048, generator=g)

    def err(c, a):
        return float((weights.double() * (values - c.gather(1, a)).double() ** 2).sum())

    def old(seed):   # the pre-rewrite seeding: D^2 passes over every value, then Lloyd
        gen = torch.Generator().manual_seed(seed)
        w = weights.double()
        seeds = torch.empty(4, 64)
        seeds[:, 0] = values.gather(1, torch.multinomial(w, 1, generator=gen)).squeeze(1)
        d2 = (values - seeds[:, :1]).double().pow(2)
        for j in range(1, 64):
            seeds[:, j] = values.gather(1, torch.multinomial(w * d2, 1, generator=gen)).squeeze(1)
            d2 = torch.minimum(d2, (values - seeds[:, j:j + 1]).double().pow(2))
        c = _lloyd_reference(values, weights, seeds.sort(1).values.contiguous(), 30)
        return c, torch.searchsorted((c[:, 1:] + c[:, :-1]).contiguous() / 2, values)

    old_err = sum(err(*old(s)) for s in range(8)) / 8
    new_err = sum(err(*kmeans_groups(values, weights, 64, iterations=30,
                                     generator=torch.Generator().manual_seed(s)))
                  for s in range(8)) / 8
    assert new_err <= old_err * 1.02, (new_err, old_err)


# ---- grid codebooks (grid = "int4" | "int8"): what LiteRT's int weights hold exactly


def _on_grid(values: torch.Tensor, scales: torch.Tensor, lo: int, hi: int) -> bool:
    """Every value of each row is exactly float32(scale x q) for an integer q in [lo, hi]."""
    q = torch.round(values / scales[:, None])
    return bool(((q >= lo) & (q <= hi)).all()) and torch.equal(values, scales[:, None] * q)


def test_grid_codebooks_are_a_trained_scale_times_integers():
    from compression.share import GRIDS, share_on_grid

    g = torch.Generator().manual_seed(0)
    w = torch.randn(24, 96, generator=g) * 0.05
    w[3, 7] = 0.8                                           # an outlier the max scale chases
    for grid, bits in (("int4", 4), ("int8", 8), ("int8", 5), ("int4", 3)):
        lo, hi = GRIDS[grid]
        c, a, scales, levels = share_on_grid(w, None, bits, grid)
        k = 2 ** bits
        assert torch.equal(c, scales.repeat_interleave(k) * levels.float())    # exact, float32
        assert levels.dtype == torch.int8 and int(levels.min()) >= lo and int(levels.max()) <= hi
        shared = c[a]
        assert _on_grid(shared, scales, lo, hi), grid           # per row: scale x integer
        assert all(torch.unique(row).numel() <= k for row in shared)
        assert bool(((a // k) == torch.arange(24)[:, None]).all())     # a scale per row
        if bits == {"int4": 4, "int8": 8}[grid]:   # the whole grid: trained scale beats max/hi
            naive = torch.maximum(w.amax(1) / hi, w.amin(1) / lo)
            rounded = torch.clamp(torch.round(w / naive[:, None]), lo, hi) * naive[:, None]
            assert float(((shared - w) ** 2).sum()) < float(((rounded - w) ** 2).sum())


def test_grid_settings_that_contradict_are_refused_before_any_work():
    import pytest

    from compression.stages.share import ShareConfig
    from dccore.errors import RecipeError

    with pytest.raises(RecipeError, match="grid 'int4' holds 4-bit values; bits = 5"):
        ShareConfig.from_dict({"kind": "share", "grid": "int4", "bits": 5}, "stages[0]")
    with pytest.raises(RecipeError, match=r"by_type.Linear.*bits = 6"):    # across levels
        ShareConfig.from_dict({"kind": "share", "grid": "int4",
                               "by_type": {"Linear": {"bits": 6}}}, "stages[0]")
    with pytest.raises(RecipeError, match="init 'kmeans\\+\\+' or 'linear'"):
        ShareConfig.from_dict({"kind": "share", "grid": "int8", "init": "random"}, "s")
    config = ShareConfig.from_dict({"kind": "share", "grid": "int8"}, "s")
    assert config.for_layer("fc", "Linear")["bits"] == 8        # the grid's width, not 5
    assert ShareConfig.from_dict({"kind": "share", "grid": "int8", "bits": 5},
                                 "s").for_layer("fc", "Linear")["bits"] == 5


def test_grid_holds_through_gptq_fine_tuning_checkpoints_and_the_dcz(tmp_path):
    """A grid layer stays scale x integer levels through GPTQ, through fine-tuning (the scales
    train, the levels stay) and a checkpoint round trip; the .dcz carries the scales, and every
    value it decodes is exactly scale x q with q in range."""
    import base64

    import numpy as np

    from compression._state import CompressionState
    from compression.pipeline import run_recipe
    from compression.recipe import Recipe
    from dcz import load

    torch.save(torch.randn(96, 12, generator=torch.Generator().manual_seed(0)), tmp_path / "x.pt")
    recipe = {"name": "grid", "seed": 0, "model": {"name": "lenet300",
                                                    "kwargs": {"in_features": 12,
                                                               "hidden": [16, 8]}},
              "data": {"batch_size": 32},
              "task": {"kind": "distill", "inputs": str(tmp_path / "x.pt"), "test_fraction": 0.25},
              "stages": [{"kind": "share", "grid": "int8", "bits": 5, "name": "share",
                          "weighting": "activation", "compensate": "gptq", "calibration": 64,
                          "by_name": {"fc3": {"grid": "int4", "bits": 3, "group_size": 2}}},
                         {"kind": "finetune_centroids", "epochs": 2, "lr": 0.01, "name": "tune"},
                         {"kind": "encode"}]}
    lines: list[str] = []
    result = run_recipe(Recipe.from_dict(recipe), tmp_path / "out", log=lines.append)
    shared = torch.load(tmp_path / "out" / "checkpoints" / "share.pt", weights_only=True)
    assert any("int8 grid, a scale per row" in line and "GPTQ-compensated" in line
               for line in lines)
    meta = load(tmp_path / "out" / "model.dcz").meta["grids"]
    back = load(tmp_path / "out" / "model.dcz").state_dict
    for name, (grid, lo, hi, gs) in {"fc1": ("int8", -127, 127, 1), "fc3": ("int4", -8, 7, 2)
                                     }.items():
        layer = result.state.layers[name]
        assert layer.grid == grid and layer.group_size == gs and layer.grid_ok()
        assert torch.equal(layer.levels, shared["levels"][name])          # levels held
        assert not torch.equal(layer.scales, shared["scales"][name])      # the scales trained
        entry = meta[f"{name}.weight"]
        scales = torch.from_numpy(np.frombuffer(base64.b64decode(entry["scales"]), "<f4").copy())
        assert entry["grid"] == grid and entry["group_size"] == gs
        assert torch.equal(scales, layer.scales)
        w = back[f"{name}.weight"]
        assert torch.equal(w, layer.weight.detach())
        assert _on_grid(w, scales.repeat_interleave(gs)[:w.shape[0]], lo, hi)
    state = CompressionState.for_model(result.model)
    state.load_tensors(result.state.to_tensors(), "round trip")
    assert state.layers["fc3"].grid == "int4" and state.layers["fc3"].grid_ok()


def test_a_transposed_convolution_on_a_grid_is_refused_with_the_reason():
    import pytest

    from compression import compress
    from dccore.errors import RecipeError

    model = torch.nn.Sequential(torch.nn.ConvTranspose1d(2, 3, 2))
    with pytest.raises(RecipeError, match="transposed convolution.*grid = 'none'"):
        compress(model, {"stages": [{"kind": "share", "grid": "int8"}]},
                 calibration=torch.randn(4, 2, 5))
    assert model[0].weight.unique().numel() == model[0].weight.numel()     # untouched


def test_pack_grid_shares_a_checkpoint_on_the_grid(tmp_path, capsys):
    import base64

    import numpy as np

    from compression.models import LeNet300
    from dcz import load
    from deepcompress.cli import main as cli_main

    torch.manual_seed(0)
    torch.save(LeNet300().state_dict(), tmp_path / "ckpt.pt")
    out = tmp_path / "m.dcz"
    assert cli_main(["pack", str(tmp_path / "ckpt.pt"), "--model", "lenet300", "--out", str(out),
                     "--grid", "int4", "--layer", "fc3:grid=int8,bits=6"]) == 0
    dcz = load(out)
    for name, (lo, hi) in {"fc1": (-8, 7), "fc3": (-127, 127)}.items():
        entry = dcz.meta["grids"][f"{name}.weight"]
        scales = torch.from_numpy(np.frombuffer(base64.b64decode(entry["scales"]), "<f4").copy())
        assert _on_grid(dcz.state_dict[f"{name}.weight"], scales, lo, hi)
    assert torch.unique(dcz.state_dict["fc3.weight"][0]).numel() <= 64
    assert cli_main(["pack", str(tmp_path / "ckpt.pt"), "--model", "lenet300", "--out",
                     str(tmp_path / "n.dcz"), "--grid", "int4", "--bits", "5"]) != 0
    assert "--grid int4 holds 4-bit values; bits 5" in capsys.readouterr().err
    assert not (tmp_path / "n.dcz").exists()


def test_countdown_says_which_layer_of_how_many_and_the_time_left():
    """Progress of the share stage: k of n and an estimate from the time per weight so far (an
    injected clock: no dependence on the machine's speed); the bar gets the same fields."""
    from compression.progress import Countdown, ProgressTask

    ticks = iter([100.0, 105.0, 125.0])
    seen = []

    class Bar(ProgressTask):
        def advance(self, n=1, **fields):
            seen.append(fields)

    countdown = Countdown(lambda description, total: Bar(), "share", {"a": 10, "b": 40, "c": 50},
                          clock=lambda: next(ticks))
    assert countdown.done("a") == "1/3, about 45 s left"        # 5 s for 10 of 100 weights
    assert countdown.done("b") == "2/3, about 25 s left"        # 25 s for 50: 25 s for 50 more
    assert seen == [{"item": "a", "left_s": 45.0}, {"item": "b", "left_s": 25.0}]


def test_a_grid_stays_a_grid_in_the_users_own_training_loop():
    """Compressor in a user's loop: fine-tuned grid layers keep their integer levels and get
    the scale that fits their moved weights best (levels are what LiteRT stores)."""
    from compression import Compressor

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    x = torch.randn(64, 8)
    comp = Compressor(model, {"stages": [{"kind": "share", "grid": "int4"},
                                         {"kind": "finetune_centroids", "epochs": 1}]},
                      calibration=x)
    model = comp.prepare(steps_per_epoch=4)
    before = {n: (layer.levels.clone(), layer.scales.clone())
              for n, layer in comp.state.layers.items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(4):
        optimizer.zero_grad()
        model(x).pow(2).mean().backward()
        optimizer.step()
        comp.step()
    comp.finalize()
    for name, layer in comp.state.layers.items():
        assert layer.grid == "int4" and layer.grid_ok()
        assert torch.equal(layer.levels, before[name][0])
        assert not torch.equal(layer.scales, before[name][1])
