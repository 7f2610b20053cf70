"""The pipeline end to end on a tiny dataset: report, checkpoints, resume, bad input."""
import json
import math
import shutil
import time

import pytest
import torch

from deepcompress.cli import main as cli
from dccore.errors import CheckpointError, ModelError, RecipeError
from compression.pipeline import resume_point, run_recipe
from compression.recipe import Recipe


@pytest.fixture(scope="module")
def full_run(tiny_idx, tmp_path_factory):
    from conftest import tiny_recipe
    out = tmp_path_factory.mktemp("run")
    t0 = time.perf_counter()
    result = run_recipe(Recipe.from_dict(tiny_recipe(tiny_idx)), out)
    result.wall_seconds = time.perf_counter() - t0
    return result, out


def test_report_has_the_promised_fields(full_run):
    result, out = full_run
    report = json.loads((out / "report.json").read_text())
    assert set(report["accuracy"]) >= {"baseline", "final", "stages"}
    assert 0.0 <= report["accuracy"]["final"] <= 1.0
    assert set(report["accuracy"]["stages"]) == {"1_prune", "2_share", "3_finetune"}
    zeros = sum(r["parameters"] - r["nonzeros"] for r in report["layers"])
    assert math.isclose(report["sparsity"], zeros / sum(r["parameters"] for r in report["layers"]))
    assert report["sparsity"] >= 0.79   # 0.8 asked per layer (rounding per layer)
    for row in report["layers"]:
        assert row["distinct_values"] <= 2 ** row["bits"]
    assert (out / "recipe.json").is_file() and (out / "model.dcz").is_file()
    assert report["compressed_bytes"] == (out / "model.dcz").stat().st_size
    assert report["compression_ratio"] == report["dense_bytes"] / report["compressed_bytes"]


def test_the_promise_on_a_separable_dataset(full_run):
    """Deep Compression's promise on the tiny separable set (class c lights up row block c):
    the compressed file's accuracy within 2 points of the dense baseline's, every layer at the
    80% sparsity and 3 bits asked, and a file no larger than the paper's accounting of that
    (each kept weight its 3 bits plus a 5-bit relative index, Han et al. 2016 §3; each bias 32
    bits) plus 2 KiB of tables and metadata."""
    result, out = full_run
    report = json.loads((out / "report.json").read_text())
    acc = report["accuracy"]
    assert acc["baseline"] >= 0.95                      # separable: the dense model learns it
    assert acc["final"] >= acc["baseline"] - 0.02 and acc["final_measured_on"] == "model.dcz, decoded"
    kept = 0
    for row in report["layers"]:
        assert row["sparsity"] >= 0.8 - 1 / row["parameters"] and row["bits"] == 3
        assert row["distinct_values"] <= 2 ** 3
        kept += row["nonzeros"]
    biases = sum(p.numel() for n, p in result.model.named_parameters() if n.endswith("bias"))
    budget = kept * (3 + 5) / 8 + biases * 4 + 2048
    assert (out / "model.dcz").stat().st_size == report["compressed_bytes"] <= budget
    assert report["compression_ratio"] >= 20


def test_seconds_are_those_of_the_stages_run(full_run):
    result, out = full_run
    seconds = json.loads((out / "report.json").read_text())["seconds"]
    # one entry per stage run (the output stage under its kind), and their total
    assert list(seconds) == ["0_baseline", "1_prune", "2_share", "3_finetune", "encode", "total"]
    parts = [v for k, v in seconds.items() if k != "total"]
    assert all(v > 0 for v in parts)
    assert math.isclose(seconds["total"], sum(parts))
    assert seconds["total"] <= result.wall_seconds      # timed inside the run, not made up
    for name in ("0_baseline", "1_prune", "2_share", "3_finetune"):   # what the checkpoints say
        info = json.loads((out / "checkpoints" / f"{name}.json").read_text())
        assert info["seconds"] == seconds[name]


def test_checkpoints_load_safely_and_hold_the_invariants(full_run):
    result, out = full_run
    blob = torch.load(out / "checkpoints" / "3_finetune.pt", weights_only=True)
    for name, mask in blob["masks"].items():
        w = blob["state_dict"][f"{name}.weight"]
        assert (w[~mask] == 0).all()
        assert torch.equal(w[mask], blob["centroids"][name][blob["assignments"][name]][mask])


def test_resume_gives_the_same_weights(full_run, tmp_path):
    result, out = full_run
    recipe = Recipe.from_dict(json.loads((out / "recipe.json").read_text())["recipe"])
    (tmp_path / "checkpoints").mkdir()
    for f in ("0_baseline", "1_prune"):
        for ext in (".pt", ".json"):
            shutil.copy(out / "checkpoints" / f"{f}{ext}", tmp_path / "checkpoints")
    shutil.copy(out / "recipe.json", tmp_path)
    resumed = run_recipe(recipe, tmp_path, resume_from="2_share")
    for key, value in result.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert resumed.report["accuracy"]["baseline"] == result.report["accuracy"]["baseline"]
    assert resumed.report["accuracy"]["final"] == result.report["accuracy"]["final"]


def test_minimal_metadata_is_smaller_and_still_rebuilds_and_qualifies(full_run, tmp_path):
    import dcz as container
    from deepcompress.loading import model_spec
    from deepcompress.qualify._metric import primary_metric

    result, out = full_run
    shutil.copytree(out, tmp_path / "run")
    recipe = json.loads((out / "recipe.json").read_text())["recipe"]
    recipe["stages"][-1]["metadata"] = "minimal"
    small = run_recipe(Recipe.from_dict(recipe), tmp_path / "run", resume_from="4_encode")
    full = container.load(out / "model.dcz")
    mini = container.load(tmp_path / "run" / "model.dcz")
    assert "recipe" in full.meta and "recipe" not in mini.meta
    # the same weights, bit for bit; only what the file says about them is shorter
    for key, value in full.state_dict.items():
        assert torch.equal(value, mini.state_dict[key]), key
    assert small.report["compressed_bytes"] == (tmp_path / "run" / "model.dcz").stat().st_size
    assert small.report["compressed_bytes"] < result.report["compressed_bytes"] - 200
    # still enough to rebuild the model and to qualify it without its run folder
    assert model_spec(mini.meta, "m") == model_spec(full.meta, "m")
    assert mini.meta["recipe_sha256"] == Recipe.from_dict(recipe).sha256()   # the recipe run
    metric = primary_metric(mini.meta)
    assert metric.final == result.report["accuracy"]["final"]
    assert metric.baseline == result.report["accuracy"]["baseline"]


def test_resume_refuses_a_changed_recipe(full_run, tmp_path):
    result, out = full_run
    shutil.copytree(out, tmp_path / "run")
    changed = json.loads((out / "recipe.json").read_text())["recipe"]
    changed["stages"][0]["sparsity"] = 0.5
    with pytest.raises(RecipeError, match="changed since"):
        run_recipe(Recipe.from_dict(changed), tmp_path / "run", resume_from="2_share")


def test_resume_point_is_the_first_stage_the_folder_cannot_give(full_run, tmp_path):
    result, out = full_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    saved = json.loads((out / "recipe.json").read_text())["recipe"]
    recipe = Recipe.from_dict(saved)
    assert resume_point(run, recipe) == "4_encode"          # all kept: only the files again
    changed = json.loads(json.dumps(saved))
    changed["stages"][1]["bits"] = 4
    assert resume_point(run, Recipe.from_dict(changed)) == "2_share"
    assert resume_point(run, Recipe.from_dict({**saved, "seed": 7})) is None   # other weights
    kept = (run / "recipe.json").read_text()
    (run / "recipe.json").write_text(json.dumps({"recipe": {**saved, "task": {"kind": "other"}}}))
    assert resume_point(run, recipe) is None        # the baseline was trained for another task
    (run / "recipe.json").write_text(kept)
    info = run / "checkpoints" / "2_share.json"
    outputs = json.loads(info.read_text())
    info.write_text(json.dumps({**outputs, "outputs": {"brought_teacher": True}}))
    assert resume_point(run, recipe) == "2_share"   # its teacher is in no checkpoint: redo it
    info.write_text("{not json")                    # figures unreadable or missing: run again
    assert resume_point(run, recipe) == "2_share"
    info.unlink()
    assert resume_point(run, recipe) == "2_share"
    (run / "checkpoints" / "1_prune.pt").unlink()
    assert resume_point(run, recipe) == "1_prune"
    (run / "checkpoints" / "0_baseline.pt").unlink()
    assert resume_point(run, recipe) is None
    assert resume_point(tmp_path / "nothing", recipe) is None


def test_interrupt_keeps_the_previous_checkpoint(make_recipe, tmp_path):
    from compression._train import ProgressTask

    class Interrupt(ProgressTask):
        def advance(self, n=1, **fields):
            raise KeyboardInterrupt

    def progress(description, total):
        return Interrupt() if description == "fine-tune centroids" else ProgressTask()

    recipe = Recipe.from_dict(make_recipe())
    with pytest.raises(KeyboardInterrupt):
        run_recipe(recipe, tmp_path, progress=progress)
    assert (tmp_path / "checkpoints" / "2_share.pt").is_file()
    assert not (tmp_path / "checkpoints" / "3_finetune.pt").exists()
    assert not list(tmp_path.rglob("*.tmp"))
    done = run_recipe(recipe, tmp_path, resume_from="3_finetune")
    assert (tmp_path / "model.dcz").is_file() and done.report["accuracy"]["final"] is not None


def test_missing_and_corrupt_baseline_weights(make_recipe, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        run_recipe(Recipe.from_dict(make_recipe(model={"name": "lenet300", "weights": str(tmp_path / "nope.pt")})), tmp_path)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="corrupt"):
        run_recipe(Recipe.from_dict(make_recipe(model={"name": "lenet300", "weights": str(bad)})), tmp_path)


def test_nan_weights_are_rejected(make_recipe, tmp_path):
    from compression.models import LeNet300
    sd = LeNet300().state_dict()
    sd["fc2.weight"][0, 0] = float("nan")
    torch.save(sd, tmp_path / "nan.pt")
    with pytest.raises(ModelError, match="'fc2.weight' holds NaN"):
        run_recipe(Recipe.from_dict(make_recipe(model={"name": "lenet300", "weights": str(tmp_path / "nan.pt")})), tmp_path)


def test_user_model_factory_and_no_prunable_layers(make_recipe, tmp_path, user_module):
    user_module("usermodels", "import torch\n"
                "def mlp(hidden=16):\n"
                "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, hidden),"
                " torch.nn.ReLU(), torch.nn.Linear(hidden, 10))\n"
                "def nothing():\n    return torch.nn.Sequential(torch.nn.Flatten())\n")
    recipe = make_recipe(model={"name": "usermodels:mlp", "kwargs": {"hidden": 8}},
                         stages=[{"kind": "prune", "sparsity": 0.5, "rounds": 1, "retrain_epochs": 0}])
    result = run_recipe(Recipe.from_dict(recipe), tmp_path / "ok")
    assert [r["name"] for r in result.report["layers"]] == ["1", "3"]
    with pytest.raises(ModelError, match="no prunable layers"):
        run_recipe(Recipe.from_dict(make_recipe(model={"name": "usermodels:nothing"})), tmp_path / "no")


def test_cli_run_json_and_errors(make_recipe, tmp_path, capsys):
    import tomllib  # noqa: F401  (recipe written as TOML below)
    recipe = tmp_path / "r.toml"
    d = make_recipe()
    root = d["data"]["root"]
    recipe.write_text(f'''name = "cli"
[data]
root = "{root}"
[baseline]
epochs = 1
[[stages]]
kind = "prune"
sparsity = 0.5
rounds = 1
retrain_epochs = 0
''')
    assert cli(["run", str(recipe), "--out", str(tmp_path / "o"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["recipe"] == "cli" and report["compressed_bytes"] > 0
    # a typo in --set is a usage error naming the flag and the field, exit 2, one line
    assert cli(["run", str(recipe), "--out", str(tmp_path / "o2"), "--set", "baseline.epoks=1"]) == 2
    err = capsys.readouterr().err
    assert "--set baseline.epoks=1: unknown key 'epoks' in baseline" in err
    assert "Traceback" not in err and str(recipe) not in err
    assert len(err.strip().splitlines()) == 1
    assert cli(["run", str(recipe), "--out", str(tmp_path / "o3"), "--data", str(tmp_path)]) == 1
    assert "not found" in capsys.readouterr().err


def test_validation_split_is_held_out_and_scored(make_recipe, tmp_path):
    from compression._train import ProgressTask
    totals = {}

    def progress(description, total):
        totals[description] = total
        return ProgressTask()

    recipe = Recipe.from_dict(make_recipe(
        data={**make_recipe()["data"], "val_fraction": 0.25}, baseline={"epochs": 1, "lr": 2e-3},
        stages=[{"kind": "prune", "sparsity": 0.5, "rounds": 1, "retrain_epochs": 1}]))
    result = run_recipe(recipe, tmp_path, progress=progress)
    # 600 training examples, 150 held out: 450 trained on, in batches of 64
    assert totals == {"baseline": 8, "prune round 1/1": 8}
    val = result.report["accuracy"]["validation"]
    assert set(val) == {"baseline", "final", "stages"} and set(val["stages"]) == {"1_prune"}
    assert val["final"] == val["stages"]["1_prune"]
    for acc in (val["baseline"], val["final"]):
        assert 0.0 <= acc <= 1.0 and acc * 150 == pytest.approx(round(acc * 150))  # of 150
    info = json.loads((tmp_path / "checkpoints" / "1_prune.json").read_text())
    assert info["validation_accuracy"] == val["final"]


def test_no_validation_split_by_default(full_run):
    result, out = full_run
    assert "validation" not in result.report["accuracy"]
    assert "validation_accuracy" not in json.loads((out / "checkpoints" / "1_prune.json").read_text())
