"""Recipe validation: every bad input is rejected before training, naming the field."""
import pytest

from dccore.errors import RecipeError
from compression.recipe import (PruneConfig, Recipe, ShareConfig, load_recipe,
                                resolve_recipe_path)

SHIPPED = ["lenet300", "lenet5", "mobilenet_tiny"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_recipes_load_and_round_trip(name):
    recipe = load_recipe(name)
    again = Recipe.from_dict(recipe.to_dict(), name=recipe.name)
    assert again == recipe
    assert again.sha256() == recipe.sha256()


def _base(**stage):
    return {"model": {"name": "lenet300"}, "stages": [{"kind": "prune", "sparsity": 0.5, **stage}]}


@pytest.mark.parametrize("data, message", [
    ({"modle": {}}, "modle: unknown key"),
    ({"data": {"batch_sise": 3}}, "data.batch_sise: unknown key"),
    ({"baseline": {"optimizer": "adagrad"}}, "baseline.optimizer: expected one of ['adam', 'sgd'], got 'adagrad'"),
    ({"baseline": {"epochs": -1}}, "baseline.epochs: expected an integer in [0"),
    ({"baseline": {"lr": "fast"}}, "baseline.lr: expected a finite number, got 'fast'"),
    ({"seed": 1.5}, "seed: expected an integer"),
    (_base(sparsity=1.0), "stages[0].sparsity: expected a number in [0.0, 1.0)"),
    (_base(quality=0.5), "stages[0]: give either quality or sparsity, not both"),
    ({"stages": [{"kind": "prune"}]}, "stages[0]: a prune stage needs quality"),
    ({"stages": [{"kind": "quantise"}]}, "stages[0].kind: expected one of"),
    ({"stages": [{"kind": "share", "bits": 0}]}, "stages[0].bits: expected an integer in [1, 16], got 0"),
    ({"stages": [{"kind": "share", "init": "kmeans++"}]}, "stages[0].init: expected one of"),
    ({"stages": [{"kind": "share", "by_type": {"Conv2D": {"bits": 4}}}]}, "expected a layer type in"),
    ({"stages": [{"kind": "share", "by_name": {"fc1": {"bits": 99}}}]}, "stages[0].by_name.fc1.bits"),
    ({"stages": [{"kind": "share", "by_name": {"fc1": {"sparsity": 0.5}}}]},
     "stages[0].by_name.fc1.sparsity: unknown key; allowed keys are ['bits', 'init']"),
    ({"stages": [{"kind": "share"}, {"kind": "prune", "sparsity": 0.5}]}, "'prune' after 'share' is not allowed"),
    ({"stages": [{"kind": "finetune_centroids"}]}, "needs a 'share' stage before it"),
    ({"stages": [{"kind": "encode"}, {"kind": "share"}]}, "'encode' must be the last stage"),
    ({"stages": [{"kind": "share", "name": "a"}, {"kind": "finetune_centroids", "name": "a"}]},
     "two stages are named 'a'"),
    ({"model": {"input_shape": [1, 0]}}, "model.input_shape[1]: expected an integer in [1"),
    ({"stages": {"kind": "prune"}}, "stages: expected an array of tables"),
])
def test_bad_recipes_are_rejected_with_the_field_named(data, message):
    with pytest.raises(RecipeError) as err:
        Recipe.from_dict(data)
    assert message in str(err.value)


def test_layer_name_that_matches_nothing_is_rejected():
    recipe = Recipe.from_dict({"stages": [{"kind": "share", "by_name": {"fc9": {"bits": 3}}}]})
    with pytest.raises(RecipeError, match=r"stages\[0\].by_name.fc9: matches no compressible layer"):
        recipe.check_against_model({"fc1": "Linear", "fc2": "Linear"})


def test_scoping_name_beats_type_beats_global_and_false_skips():
    cfg = ShareConfig.from_dict({"bits": 4, "by_type": {"Conv2d": {"bits": 7}},
                                 "by_name": {"conv1": {"bits": 2}, "fc*": False}}, "s")
    assert cfg.for_layer("conv2", "Conv2d")["bits"] == 7
    assert cfg.for_layer("conv1", "Conv2d")["bits"] == 2
    assert cfg.for_layer("head", "Linear")["bits"] == 4
    assert cfg.for_layer("fc1", "Linear") is None


def test_paper_defaults_8_bits_conv_5_bits_fc():
    cfg = ShareConfig.from_dict({}, "s")
    assert cfg.for_layer("c", "Conv2d")["bits"] == 8
    assert cfg.for_layer("f", "Linear")["bits"] == 5
    assert cfg.for_layer("f", "Linear")["init"] == "linear"


def test_prune_false_override_leaves_layer_alone():
    cfg = PruneConfig.from_dict({"sparsity": 0.9, "by_name": {"fc3": False}}, "p")
    assert cfg.for_layer("fc3", "Linear") is None
    assert cfg.for_layer("fc1", "Linear") == {"sparsity": 0.9}


def test_recipe_files_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nname=1")
    with pytest.raises(RecipeError, match="not valid TOML"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="does not exist"):
        resolve_recipe_path(tmp_path / "missing.toml")
    with pytest.raises(RecipeError, match="neither a file nor a shipped recipe"):
        resolve_recipe_path("lenet999")


def test_example_user_recipe_validates_against_its_model(monkeypatch):
    from pathlib import Path
    from compression.models import build_model, compressible_layers
    examples = Path(__file__).resolve().parent.parent / "examples"
    monkeypatch.syspath_prepend(str(examples))
    recipe = load_recipe(examples / "user_model.toml")
    model = build_model(recipe.model.name, recipe.model.kwargs)
    recipe.check_against_model({n: type(m).__name__ for n, m in compressible_layers(model).items()})


def test_set_overrides_reach_nested_tables_and_stages():
    from deepcompress.commands.run import apply_override
    data = {"baseline": {"epochs": 20}, "stages": [{"kind": "prune", "sparsity": 0.9}]}
    apply_override(data, "baseline.epochs=2")
    apply_override(data, "stages.0.sparsity=0.5")
    apply_override(data, "stages.0.by_name.fc1.sparsity=0.7")
    apply_override(data, "model.name=lenet5")        # bare strings are accepted
    assert data["baseline"]["epochs"] == 2 and data["model"]["name"] == "lenet5"
    assert data["stages"][0] == {"kind": "prune", "sparsity": 0.5,
                                 "by_name": {"fc1": {"sparsity": 0.7}}}
    with pytest.raises(RecipeError, match="no item 3"):
        apply_override(data, "stages.3.bits=4")
    with pytest.raises(RecipeError, match="expected KEY=VALUE"):
        apply_override(data, "baseline.epochs")
