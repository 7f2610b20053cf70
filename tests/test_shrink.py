"""Neuron and filter shrinking: which layers a unit feeds (read from the graph), scores on
hand-made weights, surgery that leaves the function unchanged when a dead unit goes, and the
stage in a run: smaller shapes in model.dcz, rebuilt from the zoo with the widths it records."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from compression.models import LeNet5, LeNet300, MobileNetTiny, build_model
from compression.pipeline import run_recipe
from compression.recipe import Recipe
from compression.shrink import (effect_scores, lowest, norm_scores, shrink_layer, target_width,
                                trace_links)
from dccore.errors import ModelError, RecipeError


def test_links_follow_activations_pooling_and_flatten():
    links = trace_links(LeNet300())
    assert links["fc1"].consumers == [("fc2", 1)] and links["fc2"].consumers == [("fc3", 1)]
    assert "output" in links["fc3"].fixed
    links = trace_links(LeNet5())
    assert links["conv1"].consumers == [("conv2", 1)]
    assert links["conv2"].consumers == [("fc1", 16)]      # 50 channels x 4 x 4, flattened
    assert links["fc1"].consumers == [("fc2", 1)] and links["fc2"].fixed
    mobile = trace_links(MobileNetTiny(width=8))
    assert mobile["stem.0"].norms == ["stem.1"] and mobile["stem.0"].fixed   # feeds a depthwise


def _lenet300(h1=4, h2=3):
    torch.manual_seed(0)
    return build_model("lenet300", {"hidden": [h1, h2]}).eval()


def test_norm_score_is_incoming_times_outgoing_norm():
    model = _lenet300()
    with torch.no_grad():
        model.fc1.weight.zero_()
        for u, v in enumerate([1.0, 2.0, 3.0, 4.0]):
            model.fc1.weight[u, u] = v          # ‖w_in‖ = 1, 2, 3, 4
        model.fc2.weight.fill_(0.5)             # ‖w_out‖ = sqrt(3 x 0.25) for every unit
    link = trace_links(model)["fc1"]
    scores = norm_scores(model, link)
    torch.testing.assert_close(scores, torch.tensor([1.0, 2.0, 3.0, 4.0]) * 0.75 ** 0.5)
    assert lowest(scores, 3).tolist() == [1, 2, 3]
    assert lowest(torch.tensor([1.0, 1.0, 0.5, 1.0]), 2).tolist() == [0, 1]   # ties: lower index


def test_removing_a_dead_neuron_changes_nothing_and_shrinks_both_layers():
    model = _lenet300()
    with torch.no_grad():
        model.fc2.weight[:, 2] = 0.0            # fc1's unit 2 feeds nothing
    x = torch.rand(8, 1, 28, 28)
    before = model(x)
    link = trace_links(model)["fc1"]
    assert norm_scores(model, link)[2] == 0
    masks = {"fc1": torch.ones(4, 784, dtype=torch.bool), "fc2": torch.rand(3, 4) > 0.5}
    kept_mask = masks["fc2"][:, [0, 1, 3]].clone()
    shrink_layer(model, link, lowest(norm_scores(model, link), 3), masks)
    assert model.fc1.weight.shape == (3, 784) and model.fc2.weight.shape == (3, 3)
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-6)   # a zero term less
    assert masks["fc1"].shape == (3, 784) and torch.equal(masks["fc2"], kept_mask)


def test_removing_a_filter_cuts_its_block_of_flattened_columns():
    torch.manual_seed(0)
    model = LeNet5(channels=[3, 4], hidden=6).eval()
    with torch.no_grad():
        model.fc1.weight[:, 16:32] = 0.0        # conv2's filter 1 feeds nothing
    x = torch.rand(4, 1, 28, 28)
    before = model(x)
    link = trace_links(model)["conv2"]
    scores = norm_scores(model, link)
    assert scores[1] == 0 and (scores[[0, 2, 3]] > 0).all()
    shrink_layer(model, link, lowest(scores, 3))
    assert model.conv2.weight.shape == (3, 3, 5, 5) and model.fc1.weight.shape == (6, 48)
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-6)


def test_effect_is_the_loss_change_without_the_unit():
    model = _lenet300()
    with torch.no_grad():
        model.fc2.weight[:, 1] = 0.0
    x, y = torch.rand(32, 1, 28, 28), torch.randint(0, 10, (32,))
    scores = effect_scores(model, trace_links(model)["fc1"],
                           lambda out: nn.functional.cross_entropy(out, y), (x,))
    assert scores[1] == 0 and (scores[[0, 2, 3]] != 0).all()


def test_target_width_removes_the_fraction_in_equal_steps():
    assert [target_width(300, 0.5, r, 3) for r in range(3)] == [250, 200, 150]
    assert target_width(4, 0.99, 0, 1) == 1            # at least one unit stays


def _recipe(make_recipe, **shrink):
    return make_recipe(baseline={"epochs": 2, "lr": 3e-3}, stages=[
        {"kind": "shrink", "name": "1_shrink", "rounds": 2, "retrain_epochs": 1, "lr": 1e-3,
         **shrink},
        {"kind": "prune", "name": "2_prune", "sparsity": 0.5, "rounds": 1, "retrain_epochs": 1},
        {"kind": "share", "name": "3_share", "bits": 4},
        {"kind": "encode"}])


@pytest.fixture(scope="module")
def shrink_run(tiny_idx, tmp_path_factory):
    from conftest import tiny_recipe

    out = tmp_path_factory.mktemp("shrink")
    recipe = _recipe(lambda **kw: tiny_recipe(tiny_idx, **kw), fraction=0.5, criterion="effect",
                     calibration=128, by_name={"fc2": {"fraction": 0.8}})
    return run_recipe(Recipe.from_dict(recipe), out), out


def test_run_ships_the_smaller_shapes_and_records_them(shrink_run):
    import dcz

    from deepcompress.loading import model_from_dcz

    result, out = shrink_run
    report = json.loads((out / "report.json").read_text())
    assert report["stages"]["1_shrink"]["widths"] == {"fc1": [300, 150], "fc2": [100, 20]}
    assert [row["shape"] for row in report["layers"]] == [[150, 784], [20, 150], [10, 20]]
    loaded = dcz.load(out / "model.dcz")
    assert loaded.meta["model"]["kwargs"] == {"hidden": [150, 20]}
    assert loaded.meta["recipe"]["model"]["name"] == "lenet300"
    model, _ = model_from_dcz(out / "model.dcz")     # the zoo's constructor, the file's widths
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(model(x), result.model(x))
    assert report["accuracy"]["final"] > 0.5


def test_resume_after_shrinking_rebuilds_the_shrunk_model(shrink_run):
    result, out = shrink_run
    recipe = Recipe.from_dict(json.loads((out / "recipe.json").read_text())["recipe"])
    again = run_recipe(recipe, out, resume_from="3_share")
    assert again.model.fc1.weight.shape == (150, 784)
    assert json.loads((out / "report.json").read_text())["layers"][1]["shape"] == [20, 150]


def test_shrunk_export_is_smaller(shrink_run, tmp_path):
    from android_export import export_tflite

    result, out = shrink_run
    x = torch.rand(1, 1, 28, 28)
    small = export_tflite(result.model, x, tmp_path / "small.tflite", variant="float32")
    full = export_tflite(LeNet300().eval(), x, tmp_path / "full.tflite", variant="float32")
    assert small.path.stat().st_size < 0.55 * full.path.stat().st_size


class NoWidths(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(784, 8), nn.Linear(8, 10)

    def forward(self, x):
        return self.b(torch.relu(self.a(torch.flatten(x, 1))))


def test_refusals_name_the_layer_and_the_reason(make_recipe, tmp_path):
    with pytest.raises(RecipeError, match="needs fraction"):
        Recipe.from_dict(_recipe(make_recipe))
    with pytest.raises(RecipeError, match="fc3: this layer cannot shrink"):
        run_recipe(Recipe.from_dict(_recipe(make_recipe, by_name={"fc3": {"fraction": 0.5}})),
                   tmp_path / "a")
    with pytest.raises(RecipeError, match="before weight sharing"):
        Recipe.from_dict(make_recipe(stages=[{"kind": "prune", "sparsity": 0.5},
                                             {"kind": "share"},
                                             {"kind": "shrink", "fraction": 0.5}]))
    recipe = _recipe(make_recipe, fraction=0.5)
    recipe["model"] = {"name": "test_shrink:NoWidths"}
    with pytest.raises(ModelError, match="width_kwargs"):
        run_recipe(Recipe.from_dict(recipe), tmp_path / "b")


class ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn = nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 2, 3)

    def forward(self, x):
        return self.conv2(torch.relu(self.bn(self.conv1(x))))


def test_a_batchnorm_between_is_cut_with_its_channels():
    torch.manual_seed(0)
    model = ConvBN()
    with torch.no_grad():
        model.bn.running_mean.copy_(torch.tensor([0.1, 0.2, 0.3]))
        model.bn.running_var.copy_(torch.tensor([1.0, 2.0, 3.0]))
        model.conv2.weight[:, 1] = 0.0
    model.eval()
    x = torch.rand(2, 1, 8, 8)
    before = model(x)
    link = trace_links(model)["conv1"]
    assert link.norms == ["bn"] and link.consumers == [("conv2", 1)]
    shrink_layer(model, link, torch.tensor([0, 2]))
    assert model.bn.num_features == 2 and model.bn.running_var.tolist() == [1.0, 3.0]
    torch.testing.assert_close(model(x), before, rtol=0, atol=1e-6)
