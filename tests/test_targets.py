"""A recipe that declares its target format has its codebook widths checked before any work."""
from __future__ import annotations

import pytest

from compression.recipe import Recipe
from compression.targets import ExportConfig, check_targets
from dccore.errors import RecipeError

LENET300 = {"fc1": "Linear", "fc2": "Linear", "fc3": "Linear"}
SHARE = {"kind": "share", "bits": 4, "by_name": {"fc2": {"bits": 5}}}


def test_a_width_core_ml_lacks_is_refused_with_the_layer_named():
    config = ExportConfig.from_dict({"targets": ["coreml"]}, "export")
    with pytest.raises(RecipeError, match=r"stages\[0\] \(1_share\) layer fc2: 5-bit codebooks.*"
                                          r"coreml.*1, 2, 3, 4, 6, 8.*pad_bits = true"):
        check_targets(config, [Recipe.from_dict({"stages": [SHARE]}).stages[0]], LENET300)


def test_padding_allowed_is_said_per_layer():
    config = ExportConfig.from_dict({"targets": ["coreml"], "pad_bits": True}, "export")
    stages = Recipe.from_dict({"stages": [SHARE]}).stages
    notes = check_targets(config, stages, LENET300)
    assert len(notes) == 1 and "layer fc2: 5-bit codebooks stored as 6-bit" in notes[0]
    # the share stage's default for a Linear (5 bits) counts too
    assert len(check_targets(config, Recipe.from_dict({"stages": [{"kind": "share"}]}).stages,
                             LENET300)) == 3


def test_widths_the_target_holds_pass_and_no_target_checks_nothing():
    held = {"kind": "share", "bits": 3, "by_name": {"fc2": {"bits": 6}, "fc3": False}}
    stages = Recipe.from_dict({"stages": [held]}).stages
    assert check_targets(ExportConfig(targets=("coreml",)), stages, LENET300) == []
    assert check_targets(ExportConfig(), Recipe.from_dict({"stages": [SHARE]}).stages,
                         LENET300) == []


@pytest.mark.parametrize("data, message", [
    ({"targets": ["onnx"]}, "export.targets[0]: expected one of ['coreml']"),
    ({"targets": "coreml"}, "export.targets: expected a list of formats"),
    ({"pad_bits": True}, "export.pad_bits: name the formats"),
])
def test_bad_export_sections_are_refused(data, message):
    with pytest.raises(RecipeError) as err:
        ExportConfig.from_dict(data, "export")
    assert message in str(err.value)


def test_a_run_is_refused_before_any_work(tmp_path):
    from compression.pipeline import run_recipe

    recipe = Recipe.from_dict({"export": {"targets": ["coreml"]},
                               "stages": [{"kind": "prune", "sparsity": 0.5}, SHARE]})
    out = tmp_path / "run"
    with pytest.raises(RecipeError, match="layer fc2: 5-bit codebooks"):
        run_recipe(recipe, out, data_root=str(tmp_path / "no-data"))
    assert not out.exists()


def test_the_section_round_trips_and_is_not_written_when_empty():
    plain = Recipe.from_dict({"stages": [SHARE]})
    assert "export" not in plain.to_dict()
    declared = Recipe.from_dict({"export": {"targets": ["coreml"], "pad_bits": True},
                                 "stages": [SHARE]})
    assert declared.to_dict()["export"] == {"targets": ["coreml"], "pad_bits": True}
    assert Recipe.from_dict(declared.to_dict()) == declared
