"""Autotune: the budget, the greedy on hand-made curves, the generated recipe (its TOML and what
it resolves to per layer), and the loop end to end on a tiny dataset."""
from __future__ import annotations

import json
import tomllib

import pytest

from compression.recipe import Recipe
from compression.tuning import SensitivitySettings, autotune, parse_budget
from compression.tuning._autotune import AutotuneSettings, plan_recipe
from compression.tuning._plan import Choice, LayerModel, greedy
from compression.tuning._toml import dumps
from dccore.errors import RecipeError


@pytest.mark.parametrize("text, value", [("0.5pt", 0.005), ("0.5 pt", 0.005), ("2points", 0.02),
                                         ("0.005", 0.005), (0.01, 0.01)])
def test_budget_in_points_or_metric_units(text, value):
    assert parse_budget(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["half a point", "-1pt", "100pt", ""])
def test_bad_budgets_are_refused(text):
    with pytest.raises(RecipeError, match="budget"):
        parse_budget(text)


def _layer(name, drops_s, drops_b, table, parameters=1000, positions=1):
    return LayerModel(name, parameters, positions, [0.0, 0.5, 0.9][:len(drops_s)],
                      [8, 4, 2][:len(drops_b)], drops_s, drops_b, table, 0.5, 4)


# a: big and robust (cutting it saves much for little loss); b: small and sensitive
A = _layer("a", [0.0, 0.001, 0.003], [0.0, 0.0, 0.004],
           [[4000, 2000, 1000], [2000, 1000, 500], [400, 200, 100]], parameters=10_000)
B = _layer("b", [0.0, 0.004, 0.02], [0.0, 0.001, 0.01],
           [[400, 200, 100], [200, 100, 50], [40, 20, 10]], parameters=1_000, positions=50)


def test_free_moves_only_with_no_budget():
    plan = greedy({"a": A, "b": B}, 0.0)
    assert plan.choices["a"].bits == 4 and plan.choices["a"].sparsity == 0.0   # 4 bits are free
    assert plan.choices["b"].sparsity == 0.0 and plan.choices["b"].bits == 8
    assert plan.predicted_drop == 0.0 and plan.predicted_bytes == 2000 + 400


def test_the_budget_goes_where_it_saves_most_per_point():
    plan = greedy({"a": A, "b": B}, 0.003)
    # a to 90% costs 0.3 pt for 1,800 B; b's cheapest step costs 0.1 pt for 200 B
    assert (plan.choices["a"].sparsity, plan.choices["a"].bits) == (0.9, 4)
    assert plan.choices["b"] == greedy({"b": B}, 0.0).choices["b"]
    assert plan.predicted_drop == pytest.approx(0.003)
    assert plan.predicted_bytes == 200 + 400
    assert [s["layer"] for s in plan.steps] == ["a", "a", "a"]   # 4 bits (free), 50%, 90%


def test_a_large_budget_reaches_the_harshest_options():
    plan = greedy({"a": A, "b": B}, 1.0)
    assert all((c.sparsity, c.bits) == (0.9, 2) for c in plan.choices.values())


def test_latency_objective_spends_on_the_layer_applied_most_then_on_bytes():
    plan = greedy({"a": A, "b": B}, 0.004, objective="latency")
    # b's weights are applied at 50 positions: cutting b to 50% saves 25,000 MACs for 0.4 pt,
    # a's 90% saves 9,000 for 0.3 pt
    assert plan.choices["b"].sparsity == 0.5 and plan.choices["a"].sparsity == 0.0
    assert plan.choices["a"].bits == 4       # free in bytes, done afterwards


def _entry(sparsity_drops, grid, table):
    """A curves entry: the path's drops at 0, 0.5 and 0.9, and bits (4, 2) measured at the
    sparsities ``grid`` maps to their drops."""
    path = [{"sparsity": s, "drop": d} for s, d in zip([0.0, 0.5, 0.9], sparsity_drops)]
    return {"type": "Linear", "parameters": 1000, "sparsity": path,
            "bits": {"at_sparsity": 0.0, "points": []},
            "bits_grid": {"sparsity": list(grid), "bits": [4, 2],
                          "drop": [list(v) for v in grid.values()]},
            "bytes": {"sparsity": [0.0, 0.5, 0.9], "bits": [4, 2], "table": table},
            "saturation_sparsity": 0.5, "saturation_bits": 4}


def test_few_bits_cost_what_they_cost_at_the_sparsity_chosen():
    # 2 bits: free on the dense layer, 0.3 pt beyond the cut at 50%; 90% was past the grid
    m = LayerModel.from_curves("a", _entry([0.0, 0.001, 0.02],
                                           {0.0: (0.0, 0.0), 0.5: (0.001, 0.004)},
                                           [[40, 30], [20, 10], [4, 2]]))
    assert m.drop(0, 1) == pytest.approx(0.0)
    assert m.drop(1, 1) == pytest.approx(0.001 + 0.003)
    assert m.drop(2, 1) == pytest.approx(0.02 + 0.003)    # at least the harshest row measured
    # on the grid, the greedy no longer takes 2 bits on the pruned layer for free; it takes
    # them on the dense layer first (free there), then gives them back for the cut
    plan = greedy({"a": m}, 0.002)
    assert plan.choices["a"] == Choice(0.5, 4)
    assert [(s["sparsity"], s["bits"]) for s in plan.steps] == [(0.0, 2), (0.5, 4)]
    old = LayerModel.from_curves("a", {**_entry([0.0, 0.001, 0.02], {}, [[40, 30], [20, 10],
                                                                         [4, 2]]),
                                       "bits_grid": None,
                                       "bits": {"at_sparsity": 0.0, "points": [
                                           {"bits": 4, "drop": 0.0}, {"bits": 2, "drop": 0.0}]}})
    assert greedy({"a": old}, 0.002).choices["a"] == Choice(0.5, 2)   # one curve: "free"


def test_the_search_starts_as_bold_as_the_users_recipe(make_recipe):
    from compression.tuning._autotune import first_scale, recipe_point

    recipe = Recipe.from_dict(make_recipe())    # prune 0.8 (on this grid: 0.5), 3 bits (4)
    models = {n: LayerModel.from_curves(n, _entry([0.0, 0.004, 0.02],
                                                  {0.0: (0.0, 0.001), 0.5: (0.0, 0.002)},
                                                  [[40, 20], [20, 10], [4, 2]]))
              for n in ("fc1", "fc2", "fc3")}
    point = recipe_point(recipe, models, {"layers": {n: {"type": "Linear"} for n in models}})
    assert point["choices"]["fc1"] == {"sparsity": 0.5, "bits": 4}
    assert point["drop"] == pytest.approx(3 * 0.004) and point["bytes"] == 3 * 20
    # the first plan is the greedy's at the smallest scale whose bytes fit the recipe's own 60 B
    scale = first_scale(point, 0.001, models)
    assert greedy(models, 0.001 * scale).predicted_bytes <= 60
    assert greedy(models, 0.001 * scale / 1.02).predicted_bytes > 60
    assert first_scale(point, 0.02, models) == 1.0          # the budget alone is small enough
    assert first_scale(None, 0.005, models) == 1.0
    quality = make_recipe()
    quality["stages"][0] = {"kind": "prune", "name": "1_prune", "quality": 1.0}
    assert recipe_point(Recipe.from_dict(quality), models,
                        {"layers": {n: {"type": "Linear"} for n in models}}) is None


def test_toml_round_trips_with_comments():
    data = {"name": "x", "seed": 1, "version": 1,
            "data": {"batch_size": 64, "val_fraction": 0.1},
            "model": {"name": "m", "kwargs": {"width": 16, "tag": "a\"b"}, "input_shape": [1, 8]},
            "stages": [{"kind": "prune", "sparsity": 0.9, "lr": 1e-05,
                        "by_name": {"blocks.0.0": {"sparsity": 0.5}, "fc": False}},
                       {"kind": "encode", "coder": "ans"}]}
    text = dumps(data, {("stages", 0, "by_name", "blocks.0.0"): "why:\nbecause",
                        ("stages", 0, "sparsity"): "global"}, header="top")
    assert tomllib.loads(text) == data
    assert "# why:\n# because\n[stages.by_name.\"blocks.0.0\"]" in text
    assert "sparsity = 0.9  # global" in text and text.startswith("# top\n")


def _models():
    return {"fc1": _layer("fc1", [0.0, 0.001, 0.002], [0.0, 0.0, 0.003],
                          [[9, 8, 7], [6, 5, 4], [3, 2, 1]]),
            "fc2": _layer("fc2", [0.0, 0.001, 0.002], [0.0, 0.0, 0.003],
                          [[9, 8, 7], [6, 5, 4], [3, 2, 1]]),
            "fc3": _layer("fc3", [0.0, 0.001], [0.0, 0.0, 0.003], [[9, 8, 7], [6, 5, 4]])}


def _curves(models):
    return {"settings": {"retrain_epochs": 1},
            "layers": {n: {"type": "Linear", "sparsity": [{"sparsity": 0.0, "drop": 0.0}],
                           "bits": {"at_sparsity": 0.5, "points": []}}
                       for n in models}}


def test_generated_recipe_resolves_each_layer_to_its_choice(make_recipe):
    base = make_recipe()
    base["stages"][0]["by_name"] = {"fc*": {"sparsity": 0.3, "method": "wanda"}}
    base["stages"][1]["by_type"] = {"Linear": {"bits": 6, "init": "linear"}}
    recipe = Recipe.from_dict({**base, "data": {**base["data"], "val_fraction": 0.1}})
    models = _models()
    plan = greedy(models, 0.0025)
    data, comments = plan_recipe(base, recipe, plan, models, _curves(models),
                                 AutotuneSettings(budget=0.0025, coder="smallest",
                                                  plain_dtype="float16"))
    text = dumps(data, comments)
    tuned = Recipe.from_dict(tomllib.loads(text))
    prune, share = tuned.stages[0], tuned.stages[1]
    for name, choice in plan.choices.items():
        p = prune.for_layer(name, "Linear")
        if choice.sparsity == 0.0:
            assert p is None
        else:
            assert p["sparsity"] == choice.sparsity and p["method"] == "wanda"   # carried over
        s = share.for_layer(name, "Linear")
        assert s["bits"] == choice.bits and s["init"] == "linear"
    assert tuned.data.val_fraction == 0.1 and tuned.stages[-1].coder == "smallest"
    assert tuned.stages[-1].plain_dtype == "float16"
    assert tuned.stages[2] == recipe.stages[2]       # the schedule is the user's
    assert "# fc1:" in text and "bits" in comments[("stages", 1, "by_name", "fc1")]
    assert "\nversion = 1  # recipe schema version" in "\n" + text   # as the shipped ones say


def test_autotune_end_to_end(make_recipe, tmp_path):
    settings = SensitivitySettings(sparsities=(0.5, 0.8), bits=(4, 2), retrain_epochs=1)
    recipe = make_recipe()
    path = tmp_path / "tiny.toml"
    path.write_text(dumps(recipe))
    result = autotune(path, tmp_path / "auto", budget="5pt", max_runs=2,
                      sensitivity_settings=settings)
    out = tmp_path / "auto"
    assert (out / "sensitivity" / "report.html").is_file()
    assert 1 <= len(result["tries"]) <= 2
    final = result["final"]
    chosen = next(t for t in result["tries"] if t["try"] == final["try"])
    assert (out / "model.dcz").read_bytes() == (out / "tries" / str(final["try"]) /
                                                "model.dcz").read_bytes()
    assert final["bytes"] == (out / "model.dcz").stat().st_size == chosen["bytes"]
    text = (out / "recipe.toml").read_text()
    tuned = Recipe.from_dict(tomllib.loads(text))
    assert tuned.data.val_fraction == 0.1
    assert "Verified by the full pipeline" in text
    # decisions read the validation split; the test split is scored once, for the final model
    assert all("test" not in k for t in result["tries"] for k in t)
    assert 0.0 <= final["test"] <= 1.0 and "test" in result["baseline"]
    # within its budget: the chosen model's drop on validation, from the figures themselves
    drop = result["baseline"]["validation"] - final["validation"]
    assert result["within_budget"] and final["within_budget"]
    assert drop == pytest.approx(final["validation_drop"]) and drop <= 0.05 + 1e-12
    # and that validation figure is the shipped file's, measured again here on the same split
    from compression.pipeline import load_task
    from deepcompress.loading import model_from_dcz

    task, data = load_task(tuned, None)
    model, _ = model_from_dcz(out / "model.dcz")
    assert task.evaluate(model, data.val)[task.primary] == pytest.approx(final["validation"])
    assert json.loads((out / "autotune.json").read_text())["final"]["try"] == final["try"]
    # a second call reuses the curves and the baseline: no sensitivity work, same recipe
    again = autotune(path, tmp_path / "auto2", budget="5pt", max_runs=1,
                     curves=out / "sensitivity")
    assert not (tmp_path / "auto2" / "sensitivity").exists()
    assert again["tries"][0]["choices"] == result["tries"][0]["choices"]


def test_curves_of_another_recipe_are_refused(make_recipe, tmp_path):
    curves = {"recipe_sha256": "0" * 64, "baseline_run": str(tmp_path)}
    with pytest.raises(RecipeError, match="another recipe"):
        autotune(Recipe.from_dict(make_recipe()), tmp_path / "o", budget="1pt", curves=curves)


def test_next_scale_steps_by_the_measured_drop_then_bisects():
    from compression.tuning._autotune import next_scale

    assert next_scale(1.0, 0.002, 0.005, 1.0, None) == pytest.approx(2.5)   # 0.2 of 0.5 pt used
    assert next_scale(1.0, 0.0049, 0.005, 1.0, None) == pytest.approx(1.25)  # at least x1.25
    assert next_scale(1.0, -0.001, 0.005, 1.0, None) == 4.0                 # improved: x4
    assert next_scale(2.0, 0.01, 0.005, None, 2.0) == pytest.approx(1.0)    # twice over: halve
    assert next_scale(2.0, 0.1, 0.005, None, 2.0) == pytest.approx(0.5)     # at most /4
    assert next_scale(2.0, 0.01, 0.005, 1.0, 4.0) == pytest.approx(2.0)     # bracket: bisect
    assert next_scale(2.0, 0.01, 0.005, 1.0, 1.05) is None                  # nothing to learn
    # with both ends measured: where the drop meets the limit, within the bracket's middle half
    drops = {1.0: 0.002, 4.0: 0.012}                       # 0.5 pt is 30% of the way
    assert next_scale(4.0, 0.012, 0.005, 1.0, 4.0, drops) == pytest.approx(4.0 ** 0.3)
    drops = {3.09: 0.0022, 7.13: 0.0235}                   # the limit is close to the low end
    assert next_scale(7.13, 0.0235, 0.005, 3.09, 7.13, drops) == pytest.approx(
        3.09 * (7.13 / 3.09) ** 0.25)


def test_an_interrupted_autotune_folder_is_taken_back_and_a_foreign_one_refused(tmp_path):
    from dccore.errors import UsageError
    from dccore.outputs import check_folder, claim_folder

    out = tmp_path / "auto"
    claim_folder(out, "autotune")                                  # what autotune's main does
    (out / "sensitivity").mkdir(parents=True)
    (out / "sensitivity" / "sensitivity.json").write_text("{}")   # curves done, tries not
    (out / "tries").mkdir()
    check_folder(out, "autotune")          # what autotune's main checks
    foreign = tmp_path / "mine"
    (foreign / "sensitivity").mkdir(parents=True)
    (foreign / "sensitivity" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="no deepcompress marker"):
        check_folder(foreign, "autotune")


def test_cli_autotune_writes_what_its_flags_ask(make_recipe, tmp_path, capsys):
    import dcz as container
    from deepcompress.cli import main as cli

    path = tmp_path / "tiny.toml"
    path.write_text(dumps(make_recipe()))
    out = tmp_path / "auto"
    rc = cli(["autotune", str(path), "--out", str(out), "--budget", "50pt", "--max-runs", "1",
              "--sparsities", "0.5", "--bits", "4,2", "--retrain-epochs", "0", "--grid-drop", "0",
              "--coder", "smallest", "--plain-dtype", "float16", "--metadata", "minimal",
              "--json"])
    result = json.loads(capsys.readouterr().out)
    assert rc == 0 and result["within_budget"] and len(result["tries"]) == 1
    tuned = Recipe.from_dict(tomllib.loads((out / "recipe.toml").read_text()))
    assert tuned.stages[-1].metadata == "minimal" and tuned.stages[-1].coder == "smallest"
    meta = container.load(out / "model.dcz").meta
    assert "recipe" not in meta and meta["model"]["name"] == "lenet300"
    curves = json.loads((out / "sensitivity" / "sensitivity.json").read_text())
    assert curves["settings"]["grid_drop"] == 0.0
    for entry in curves["layers"].values():     # --grid-drop 0: bits at the saturation only
        assert entry["bits_grid"]["sparsity"] == [entry["saturation_sparsity"]]
    assert result["recipe_on_curves"]["bytes"] > 0 and result["first_scale"] >= 1.0
