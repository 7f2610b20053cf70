"""Recipe validation: every bad input is rejected before training, naming the field."""
import json
from pathlib import Path

import pytest

from dccore.errors import RecipeError
from compression.recipe import Recipe, load_recipe, resolve_recipe_path
from compression.stages.prune import PruneConfig
from compression.stages.share import ShareConfig

SHIPPED = ["lenet300", "lenet5", "mobilenet_tiny", "lenet5_auto", "mobilenet_tiny_auto",
           "lenet5_100x"]


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
    ({"stages": [{"kind": "share", "init": "kmeans"}]}, "stages[0].init: expected one of"),
    ({"stages": [{"kind": "share", "init": "random", "group_size": 8}]},
     "stages[0]: group_size, weighting and compensate work with init 'kmeans++' or 'linear'"),
    ({"stages": [{"kind": "share", "by_type": {"Conv2D": {"bits": 4}}}]}, "expected a layer type in"),
    ({"stages": [{"kind": "share", "by_name": {"fc1": {"bits": 99}}}]}, "stages[0].by_name.fc1.bits"),
    ({"stages": [{"kind": "share", "by_name": {"fc1": {"sparsity": 0.5}}}]},
     "stages[0].by_name.fc1.sparsity: unknown key; allowed keys are ['bits', 'compensate', "
     "'grid', 'group_size', 'init', 'weighting']"),
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
    assert cfg.for_layer("f", "Linear")["init"] == "kmeans++"   # fills the codebook (issue 10)
    assert cfg.for_layer("e", "Embedding")["bits"] == 5


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
    from deepcompress.runs import apply_override
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


# -- one generic builder and serialiser for every config --------------------------------------------

def _sample(check, default):
    """A valid value for a field, different from its default where the check allows one."""
    from dccore import config as c
    if isinstance(check, c.Int):
        lo = check.lo if check.lo is not None else 0
        return lo + 1 if default != lo + 1 else lo
    if isinstance(check, c.Num):
        lo, hi = check.lo or 0.0, check.hi if check.hi is not None else 1.0
        return lo + (hi - lo) / 4
    if isinstance(check, c.OneOf):
        return next(x for x in check.choices if x != default)
    if isinstance(check, c.Text):
        return "x"
    if isinstance(check, c.Shape):
        return (3, 4)
    if isinstance(check, c.FreeTable):
        return {"width": 8, "nested": {"a": [1, 2]}}
    if isinstance(default, bool):       # a true/false switch (projection's)
        return not default
    from compression.targets import Targets
    if isinstance(check, Targets):
        return ["coreml"]
    return None


def _every_field_set(cls, skip=()):
    import dataclasses
    from dccore.config import Section
    from compression.stages._base import Overrides
    d = {}
    for f in dataclasses.fields(cls):
        check = f.metadata["check"]
        if f.name in skip:
            continue
        if isinstance(check, Section):
            d[f.name] = _every_field_set(check.cls)
        elif isinstance(check, Overrides) and cls.LAYER_FIELDS:
            layer_field = cls.LAYER_FIELDS[-1]
            value = _sample(cls.__dataclass_fields__[layer_field].metadata["check"], None)
            d[f.name] = ({"Linear": {layer_field: value}, "Conv2d": False} if check.types
                         else {"fc*": {layer_field: value}, "head": False})
        elif (value := _sample(check, f.default)) is not None:
            d[f.name] = value
    return d


# prune takes quality or sparsity, not both
SKIP = {"prune": ("quality",)}
# what a stage needs at least
MINIMAL = {"prune": {"sparsity": 0.5}, "shrink": {"fraction": 0.5},
           "transfer": {"teacher": "lenet5", "weights": "teacher.pt"}}


@pytest.mark.parametrize("kind", ["prune", "share", "finetune_centroids", "encode", "shrink",
                                  "transfer", "projection"])
def test_every_stage_config_round_trips_with_every_field_set(kind):
    from compression.stages import STAGES
    cls = STAGES.get(kind).config
    d = {"kind": kind, **_every_field_set(cls, SKIP.get(kind, ()))}
    cfg = cls.from_dict(d, "s")
    assert cfg.to_dict() == d                       # every value set survived, nothing added
    assert cls.from_dict(cfg.to_dict(), "s") == cfg
    minimal = cls.from_dict({"kind": kind, **MINIMAL.get(kind, {})}, "s")
    assert cls.from_dict(minimal.to_dict(), "s") == minimal


def test_every_registered_stage_round_trips_in_a_recipe():
    from compression.stages import STAGES
    stages = [{"kind": "projection"}, {"kind": "transfer", **MINIMAL["transfer"]},
              {"kind": "shrink", "fraction": 0.5},
              {"kind": "prune", "sparsity": 0.5}, {"kind": "share"}, {"kind": "finetune_centroids"},
              {"kind": "encode"}]
    assert {s["kind"] for s in stages} == set(STAGES.names()), "a new stage belongs here"
    recipe = Recipe.from_dict({"stages": stages})
    assert Recipe.from_dict(recipe.to_dict()) == recipe


@pytest.mark.parametrize("section", ["DataConfig", "ModelConfig", "TrainConfig", "Recipe"])
def test_every_section_round_trips_with_every_field_set(section):
    import compression.recipe as r
    cls = getattr(r, section)
    d = _every_field_set(cls, ("stages", "version"))
    cfg = cls.from_dict(d)
    assert cls.from_dict(cfg.to_dict()) == cfg
    assert cls.from_dict(cls().to_dict()) == cls()
    plain = json.loads(json.dumps(d))               # tuples as lists, as to_dict writes them
    assert {k: v for k, v in cfg.to_dict().items() if k in d} == plain   # every value survived


def test_schema_version():
    assert Recipe.from_dict({}).version == 1
    assert Recipe.from_dict({"version": 1}) == Recipe.from_dict({})
    assert "version" not in Recipe.from_dict({"version": 1}).to_dict()   # v1 hashes unchanged
    with pytest.raises(RecipeError, match="version: this recipe is schema version 2, newer than "
                                          "this deepcompress reads \\(up to 1\\); upgrade"):
        Recipe.from_dict({"version": 2, "a_key_from_the_future": 1})
    with pytest.raises(RecipeError, match="version: expected an integer"):
        Recipe.from_dict({"version": "1"})
    for name in SHIPPED:
        assert "\nversion = 1 " in (Path(__file__).parent.parent / "recipes" / f"{name}.toml").read_text()


# -- hardening: limits, folders, flags ---------------------------------------------------------------

def test_deep_nesting_is_a_one_line_recipe_error(tmp_path):
    deep = tmp_path / "deep.toml"
    deep.write_text("a = " + "[" * 100_000)
    with pytest.raises(RecipeError) as err:
        load_recipe(deep)
    assert "nested too deeply" in str(err.value) and len(str(err.value).splitlines()) == 1
    moderate = tmp_path / "moderate.toml"       # parses, but deeper than any recipe needs
    moderate.write_text("[model]\nkwargs = { a = " + "[" * 30 + "]" * 30 + " }\n")
    with pytest.raises(RecipeError, match=r"moderate.toml: model.kwargs.a(\[0\])+: nested more "
                                          r"than 16 tables or arrays deep"):
        load_recipe(moderate)


def test_size_and_length_limits(tmp_path):
    big = tmp_path / "big.toml"
    big.write_text("# " + "x" * (1 << 20) + "\n")
    with pytest.raises(RecipeError, match="big.toml: larger than 1024 KiB"):
        load_recipe(big)
    long = tmp_path / "long.toml"
    long.write_text(f'name = "{"n" * 5000}"\n')
    with pytest.raises(RecipeError, match="long.toml: name: a string of 5,000 characters; at most "
                                          "4,096 are allowed"):
        load_recipe(long)
    with pytest.raises(RecipeError, match=r"model.kwargs.k\[1\]: a string of 5,000 characters"):
        Recipe.from_dict({"model": {"kwargs": {"k": ["ok", "y" * 5000]}}})
    with pytest.raises(RecipeError, match="stages: 101 stages; at most 100 are allowed"):
        Recipe.from_dict({"stages": [{"kind": "share"}] * 101})
    with pytest.raises(RecipeError, match=r"stages\[0\].by_name: 1,001 entries; at most 1,000"):
        Recipe.from_dict({"stages": [{"kind": "share",
                                      "by_name": {f"l{i}": {"bits": 3} for i in range(1001)}}]})


def test_a_folder_is_not_a_recipe_file(tmp_path):
    with pytest.raises(RecipeError, match=f"{tmp_path} is a folder, not a recipe file"):
        resolve_recipe_path(tmp_path)
    (tmp_path / "r.toml").mkdir()
    with pytest.raises(RecipeError, match="r.toml is a folder, not a recipe file"):
        load_recipe(tmp_path / "r.toml")


def test_set_typo_blames_the_flag_not_the_file():
    from deepcompress.runs import apply_override
    data = {"baseline": {"epochs": 20}, "stages": [{"kind": "prune", "sparsity": 0.9}]}
    with pytest.raises(RecipeError) as err:
        apply_override(data, "baseline.epoch=1")
    assert str(err.value) == ("--set baseline.epoch=1: unknown key 'epoch' in baseline; allowed: "
                              "['epochs', 'lr', 'momentum', 'optimizer', 'schedule', 'weight_decay']")
    with pytest.raises(RecipeError, match=r"--set stages.0.by_name.fc1.bits=3: unknown key 'bits' "
                                          r"in stages.0.by_name.fc1; allowed: \['method', 'quality', 'sparsity'\]"):
        apply_override(data, "stages.0.by_name.fc1.bits=3")
    with pytest.raises(RecipeError, match=r"--set baseline.epochs=-1: baseline.epochs: expected an "
                                          r"integer in \[0, 10000\], got -1"):
        apply_override(data, "baseline.epochs=-1")
    with pytest.raises(RecipeError, match="--set baseline.epochs.x=1: baseline.epochs is a single "
                                          "value, not a table"):
        apply_override(data, "baseline.epochs.x=1")
    with pytest.raises(RecipeError, match="--set a=...: the value is nested too deeply"):
        apply_override(data, "a=" + "[" * 100_000)
    assert data == {"baseline": {"epochs": 20}, "stages": [{"kind": "prune", "sparsity": 0.9}]}
    apply_override(data, "model.kwargs.width=3")     # a model's kwargs are its own business
    assert data["model"] == {"kwargs": {"width": 3}}


def test_cli_names_the_flag_and_the_folder(tmp_path, capsys):
    from deepcompress.cli import main as cli
    assert cli(["run", "lenet300", "--out", str(tmp_path / "o"), "--set", "baseline.epoch=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--set baseline.epoch=1: unknown key 'epoch' in baseline; allowed:" in err
    assert "lenet300.toml" not in err and len(err.splitlines()) == 1
    assert cli(["run", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "is a folder, not a recipe file" in err and "does not exist" not in err


def test_a_named_layer_is_chosen_even_when_its_type_is_off():
    cfg = ShareConfig.from_dict({"bits": 4, "by_type": {"Linear": False},
                                 "by_name": {"fc1": {"bits": 6}}}, "s")
    assert cfg.for_layer("fc1", "Linear")["bits"] == 6      # name beats type
    assert cfg.for_layer("fc2", "Linear") is None           # the type is off
    off = ShareConfig.from_dict({"by_name": {"fc1": False}}, "s")
    assert off.for_layer("fc1", "Linear") is None
