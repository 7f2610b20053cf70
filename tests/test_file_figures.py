"""The figures that claim to be the file's are the file's: report.json's ``final`` (and the
metric the .dcz's own metadata records) is measured on the model decoded from the model.dcz
written and rebuilt, not on the model in memory before encoding (float16 biases differ)."""
from __future__ import annotations

import pytest
import torch

import dcz as container
from compression.models import load_state_dict_file
from compression.pipeline import load_task, run_recipe
from compression.recipe import Recipe
from compression.tasks import predict
from deepcompress.loading import model_from_dcz


def test_final_is_measured_on_the_decoded_file_not_the_model_in_memory(tmp_path):
    g = torch.Generator().manual_seed(0)
    torch.save({"x": torch.rand(200, 1, 28, 28, generator=g)}, tmp_path / "samples.pt")
    recipe = Recipe.from_dict({
        "name": "fp16-biases", "seed": 0, "model": {"name": "lenet300"},
        "data": {"batch_size": 50},
        "task": {"kind": "distill", "inputs": str(tmp_path / "samples.pt"), "test_fraction": 0.25,
                 "metric": "cosine"},      # continuous: float16 biases show in it
        "stages": [{"kind": "prune", "name": "1_prune", "sparsity": 0.5, "rounds": 1,
                    "retrain_epochs": 0},
                   {"kind": "encode", "name": "2_encode", "plain_dtype": "float16",
                    "metadata": "minimal"}]})
    report = run_recipe(recipe, tmp_path / "run").report
    metric = report["primary_metric"]
    in_memory = report["scores"]["1_prune"]["cosine_mean"]

    # measured again here, independently: the loader's model against the dense baseline's outputs
    task, data = load_task(recipe, None)
    decoded, dcz = model_from_dcz(tmp_path / "run" / "model.dcz")
    teacher, _ = model_from_dcz(tmp_path / "run" / "model.dcz")
    teacher.load_state_dict(load_state_dict_file(tmp_path / "run" / "checkpoints" / "0_baseline.pt"))
    shipped = task.evaluate(decoded, data.test, predict(teacher, data.test.inputs))["cosine_mean"]

    assert shipped != in_memory          # float16 biases: the file is not the model in memory
    assert metric["final"] == shipped and metric["final_measured_on"] == "model.dcz, decoded"
    assert report["file_scores"]["cosine_mean"] == shipped
    assert metric["stages"]["1_prune"] == pytest.approx(in_memory)     # the stage's own figure
    # the file's own record of its metric is the same measured figure (rewritten once)
    assert dcz.meta["primary_metric"]["final"] == shipped
    assert container.load(tmp_path / "run" / "model.dcz").meta == dcz.meta
