"""Sensitivity curves: saturation on hand numbers, the held-out split, the size table, the
report, and the dense baseline trained once and reused."""
from __future__ import annotations

import json

import pytest

from compression.recipe import Recipe
from compression.tuning import SensitivitySettings, sensitivity
from compression.tuning._sensitivity import monotone, saturation
from compression.tuning._workbench import baseline_mismatch, with_validation
from dccore.errors import RecipeError
from deepcompress.cli import main as cli

SMALL = SensitivitySettings(sparsities=(0.5, 0.9), bits=(5, 2), retrain_epochs=1)


def test_monotone_fit_averages_a_dip_with_the_step_before_it():
    assert monotone([0.0, 0.002, -0.001, 0.004]) == pytest.approx([0.0, 0.0005, 0.0005, 0.004])
    assert monotone([0.0, 0.001, 0.002]) == [0.0, 0.001, 0.002]       # already monotone
    fit = monotone([0.003, 0.0, 0.009, 0.006, 0.003, 0.012])
    assert fit == pytest.approx([0.0015, 0.0015, 0.006, 0.006, 0.006, 0.012])


@pytest.mark.parametrize("drops, expected", [
    ([0.0, 0.0005, 0.0009, 0.003, 0.01], 0.9),      # the last within 0.1 point
    ([0.0, 0.0005, 0.003, -0.001, 0.0], 0.99),      # a dip after a step is averaged with it
    ([0.0, 0.0005, 0.004, 0.001, 0.01], 0.8),       # ... and still too costly
    ([0.002, 0.003, 0.004, 0.005, 0.006], None),     # even the gentlest costs too much
])
def test_saturation_is_the_last_point_within_tolerance(drops, expected):
    assert saturation([0.5, 0.8, 0.9, 0.95, 0.99], drops, 0.001) == expected


def test_validation_split_defaults_and_is_required(make_recipe):
    r = Recipe.from_dict(make_recipe())
    assert with_validation(r).data.val_fraction == 0.1
    assert with_validation(r, 0.2).data.val_fraction == 0.2
    with pytest.raises(RecipeError, match="test set"):
        with_validation(r, 0.0)


@pytest.fixture(scope="module")
def curves(tmp_path_factory, tiny_idx):
    from conftest import tiny_recipe

    out = tmp_path_factory.mktemp("sens")
    scored = []
    recipe = Recipe.from_dict(tiny_recipe(tiny_idx))
    from compression.tasks import _base

    real_evaluate = _base.Task.evaluate

    def spy(self, model, split, reference=None):
        scored.append(len(split))
        return real_evaluate(self, model, split, reference)

    _base.Task.evaluate = spy
    try:
        result = sensitivity(recipe, out, settings=SMALL)
    finally:
        _base.Task.evaluate = real_evaluate
    return out, result, scored


def test_curves_are_scored_on_the_validation_split_only(curves):
    out, result, scored = curves
    assert result["validation_examples"] == 60           # 10% of the 600 training examples
    # the baseline run scores its test split twice (the pipeline's report: the model in memory,
    # then the model decoded from the model.dcz it wrote); the curves never do
    assert scored.count(200) == 2
    assert set(scored) == {60, 200}


def test_every_layer_has_both_curves_and_saturation_points_on_the_grid(curves):
    _, result, _ = curves
    assert set(result["layers"]) == {"fc1", "fc2", "fc3"}
    for entry in result["layers"].values():
        assert [p["sparsity"] for p in entry["sparsity"]] == [0.0, 0.5, 0.9]
        assert entry["sparsity"][0]["drop"] == 0.0        # the dense model itself
        assert entry["saturation_sparsity"] in (0.0, 0.5, 0.9)
        assert [p["bits"] for p in entry["bits"]["points"]] == [5, 2]
        assert entry["bits"]["at_sparsity"] == entry["saturation_sparsity"]
        assert entry["saturation_bits"] in (5, 2)


def test_bits_are_measured_at_each_sparsity_the_autotuner_could_choose(curves):
    _, result, _ = curves
    for entry in result["layers"].values():
        grid = entry["bits_grid"]
        fit = monotone([p["drop"] for p in entry["sparsity"]])
        within = [p["sparsity"] for p, d in zip(entry["sparsity"], fit)
                  if d <= SMALL.grid_drop or p["sparsity"] == entry["saturation_sparsity"]]
        assert grid["sparsity"] == within and grid["sparsity"][0] == 0.0
        assert grid["bits"] == [5, 2] and all(len(row) == 2 for row in grid["drop"])
        # the curve the plots show is the grid's row at the saturation sparsity
        row = grid["sparsity"].index(entry["bits"]["at_sparsity"])
        assert [p["drop"] for p in entry["bits"]["points"]] == grid["drop"][row]


def test_size_table_is_real_files_and_shrinks_with_sparsity_and_bits(curves):
    _, result, _ = curves
    sizes = result["layers"]["fc1"]["bytes"]
    assert sizes["sparsity"] == [0.0, 0.5, 0.9] and sizes["bits"] == [5, 2]
    t = sizes["table"]
    assert t[0][0] > t[1][0] > t[2][0]                   # sparser: smaller
    assert all(row[0] > row[1] for row in t)            # fewer bits: smaller
    # 235,200 weights at 10% kept and 2 bits: gaps + indices, far below 4 bytes each
    assert t[2][1] < 0.1 * 235_200


def test_report_has_a_png_per_layer_a_summary_and_html(curves):
    out, result, _ = curves
    for name in ("summary", "fc1", "fc2", "fc3"):
        png = (out / "plots" / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4
    assert json.loads((out / "sensitivity.json").read_text())["layers"].keys() == \
        result["layers"].keys()


def test_the_baseline_is_trained_once_then_reused(curves, tiny_idx, tmp_path):
    from conftest import tiny_recipe

    out, result, _ = curves
    recipe = with_validation(Recipe.from_dict(tiny_recipe(tiny_idx)))
    assert baseline_mismatch(out / "baseline", recipe) is None
    logs: list[str] = []
    again = sensitivity(recipe, tmp_path / "again", settings=SensitivitySettings(
        sparsities=(0.5,), bits=(4,), retrain_epochs=0, layers=("fc3",)),
        from_run=out / "baseline", log=logs.append)
    assert not (tmp_path / "again" / "baseline").exists()
    assert any("dense baseline:" in line and str(out / "baseline") in line for line in logs)
    assert again["baseline"]["validation"] == result["baseline"]["validation"]
    assert list(again["layers"]) == ["fc3"]


def test_a_baseline_that_saw_the_validation_examples_is_refused(curves, tiny_idx, tmp_path):
    from conftest import tiny_recipe

    out, _, _ = curves
    other = with_validation(Recipe.from_dict(tiny_recipe(tiny_idx)), 0.2)
    assert "val_fraction" in baseline_mismatch(out / "baseline", other)
    with pytest.raises(RecipeError, match="val_fraction"):
        sensitivity(other, tmp_path / "x", settings=SMALL, from_run=out / "baseline")


def test_unknown_layer_is_refused_before_any_work(curves, tiny_idx, tmp_path):
    from conftest import tiny_recipe

    out, _, _ = curves
    with pytest.raises(RecipeError, match="fc9"):
        sensitivity(Recipe.from_dict(tiny_recipe(tiny_idx)), tmp_path / "y",
                    settings=SensitivitySettings(layers=("fc9",)), from_run=out / "baseline")


def test_cli_writes_the_report_and_refuses_a_foreign_folder(curves, tiny_idx, tmp_path, capsys):
    from conftest import tiny_recipe

    out, _, _ = curves
    path = tmp_path / "tiny.toml"
    from compression.tuning._toml import dumps

    path.write_text(dumps(tiny_recipe(tiny_idx)))
    rc = cli(["sensitivity", str(path), "--out", str(tmp_path / "s"), "--from-run",
              str(out / "baseline"), "--sparsities", "0.9", "--bits", "3", "--retrain-epochs",
              "0", "--layer", "fc2", "--json"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert list(result["layers"]) == ["fc2"] and (tmp_path / "s" / "report.html").is_file()
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert cli(["sensitivity", str(path), "--out", str(foreign), "--json"]) == 2
    assert (foreign / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("command, flags, message", [
    ("sensitivity", ["--sparsities", "0.5,1.5"], "--sparsities: expected a number in (0, 1), got 1.5"),
    ("sensitivity", ["--bits", "0-3"], "--bits: expected an integer in [1, 16], got 0"),
    ("sensitivity", ["--retrain-epochs", "-1"], "--retrain-epochs: expected an integer in [0, "),
    ("sensitivity", ["--train-examples", "0"], "--train-examples: expected an integer in [1, "),
    ("sensitivity", ["--layer", ""], "--layer: expected a non-empty string, got ''"),
    ("autotune", ["--budget", "1pt", "--max-runs", "0"], "--max-runs: expected an integer in [1, "),
    ("autotune", ["--budget", "1pt", "--margin", "2pt"], "--margin: expected 0 to the budget"),
])
def test_a_bad_setting_is_refused_naming_its_flag_before_the_baseline_is_trained(
        command, flags, message, tmp_path, capsys):
    out = tmp_path / "s"
    assert cli([command, "lenet300", "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert f"error: {message}" in err and "Traceback" not in err
    assert not out.exists()


def test_a_missing_recipe_and_a_bad_budget_are_one_line_errors(tmp_path, capsys):
    assert cli(["sensitivity", str(tmp_path / "nosuch.toml"), "--out", str(tmp_path / "a")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli(["autotune", "lenet300", "--out", str(tmp_path / "b"), "--budget", "banana"]) == 2
    err = capsys.readouterr().err
    assert "--budget 'banana'" in err and "Traceback" not in err
    assert not (tmp_path / "b" / "sensitivity").exists()
