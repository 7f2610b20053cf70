"""Tasks: data from the user's files, losses and metrics on hand-computable outputs, the registry."""
from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch

from dccore.errors import DataError, RecipeError
from compression.tasks import TASKS, Examples, make_task, model_outputs
from compression.tasks._base import TaskSection
from compression.tasks.distill import DistillConfig


def test_examples_hold_any_number_of_inputs_and_split_reproducibly():
    ids = torch.arange(20).reshape(10, 2)
    mask = torch.ones(10, 2, dtype=torch.int64)
    ex = Examples((ids, mask))
    rest, held = ex.split_off(0.3, seed=5)
    again_rest, again_held = ex.split_off(0.3, seed=5)
    assert len(held) == 3 and len(rest) == 7
    assert torch.equal(held.inputs[0], again_held.inputs[0])
    assert set(held.inputs[0][:, 0].tolist()).isdisjoint(rest.inputs[0][:, 0].tolist())
    with pytest.raises(DataError, match="one row per example"):
        Examples((ids, torch.ones(3, 2)))


def test_split_off_is_seeded_disjoint_and_keeps_order():
    ex = Examples((torch.arange(100.0).view(100, 1),), torch.arange(100))
    rest, held = ex.split_off(0.2, seed=7)
    assert (len(rest), len(held)) == (80, 20)
    assert sorted(rest.targets.tolist() + held.targets.tolist()) == list(range(100))
    assert rest.targets.tolist() == sorted(rest.targets.tolist())      # original order kept
    assert torch.equal(ex.split_off(0.2, seed=7)[1].targets, held.targets)
    assert not torch.equal(ex.split_off(0.2, seed=8)[1].targets, held.targets)
    before = torch.get_rng_state()
    ex.split_off(0.2, seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    with pytest.raises(DataError, match="leaves an empty split"):
        ex.split_off(0.001, seed=7)


def test_model_outputs_finds_the_tensor():
    t = torch.ones(2, 3)
    assert model_outputs(t) is t
    assert model_outputs((t, None)) is t
    assert model_outputs({"last_hidden_state": t, "other": 1}) is t
    with pytest.raises(DataError, match="holds no output tensor"):
        model_outputs("text")


def _distill(tmp_path, **cfg):
    config = DistillConfig.from_dict({"kind": "distill", **cfg}, "task")
    return make_task(config, seed=0)


def test_distill_reads_named_tensors_in_the_order_given(tmp_path):
    path = tmp_path / "samples.pt"
    torch.save({"attention_mask": torch.ones(10, 4, dtype=torch.int64),
                "input_ids": torch.arange(40).reshape(10, 4)}, path)
    task = _distill(tmp_path, inputs=str(path), input_names=["input_ids", "attention_mask"],
                    test_fraction=0.2)
    data = task.data()
    assert len(data.train) == 8 and len(data.test) == 2
    assert data.train.inputs[0].dtype == torch.int64 and data.train.inputs[0].max() < 40
    assert torch.equal(data.train.inputs[1], torch.ones(8, 4, dtype=torch.int64))
    assert task.example_inputs()[0].shape == (1, 4)


def test_distill_reads_npz_images_and_text_lines(tmp_path, user_module):
    np.savez(tmp_path / "x.npz", x=np.random.rand(6, 3).astype(np.float32))
    assert len(_distill(tmp_path, inputs=str(tmp_path / "x.npz")).data().test) == 1

    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(np.full((10, 12), 60 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    data = _distill(tmp_path, inputs=str(folder), image_shape=[1, 8, 8]).data()
    assert data.train.inputs[0].shape[1:] == (1, 8, 8)
    values = torch.cat([data.train.inputs[0], data.test.inputs[0]]).flatten().unique()
    assert torch.allclose(values, torch.tensor([0, 60, 120, 180]) / 255.0)

    (tmp_path / "lines.txt").write_text("one two\n\nthree four five\nsix\n")
    user_module("tok", textwrap.dedent("""
        import torch
        def tokenize(lines):
            return {"ids": torch.tensor([[len(s.split()), len(s)] for s in lines])}
    """))
    data = _distill(tmp_path, inputs=str(tmp_path / "lines.txt"), tokenizer="tok:tokenize",
                    test_fraction=0.34).data()
    rows = sorted(torch.cat([data.train.inputs[0], data.test.inputs[0]]).tolist())
    assert rows == [[1, 3], [2, 7], [3, 15]]
    with pytest.raises(RecipeError, match="tokenizer"):
        _distill(tmp_path, inputs=str(tmp_path / "lines.txt")).data()


def test_distill_needs_exactly_one_source(tmp_path):
    with pytest.raises(RecipeError, match="exactly one of inputs"):
        DistillConfig.from_dict({"kind": "distill"}, "task")
    with pytest.raises(RecipeError, match="exactly one of inputs"):
        DistillConfig.from_dict({"kind": "distill", "inputs": "a.pt", "factory": "m:f"}, "task")
    with pytest.raises(DataError, match="no such file"):
        _distill(tmp_path, inputs=str(tmp_path / "missing.pt")).data()


def test_distill_losses_and_metrics_on_known_outputs(tmp_path):
    torch.save(torch.zeros(4, 2), tmp_path / "s.pt")
    task = _distill(tmp_path, inputs=str(tmp_path / "s.pt"))
    teacher = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    student = torch.tensor([[1.0, 1.0], [0.0, 2.0]])
    assert float(task.loss(student, None, teacher, 1.0, 1.0)) == pytest.approx(0.25)   # mse
    cos = _distill(tmp_path, inputs=str(tmp_path / "s.pt"), loss="cosine")
    assert float(cos.loss(student, None, teacher, 1.0, 1.0)) == pytest.approx(
        (1 - 2 ** -0.5) / 2)
    m = task.metrics(student, None, teacher)
    assert m["cosine_mean"] == pytest.approx((2 ** -0.5 + 1) / 2)
    assert m["cosine_min"] == pytest.approx(2 ** -0.5)
    assert m["relative_error"] == pytest.approx(0.5)
    assert m["top1_agreement"] == pytest.approx(1.0)   # row 0: tie -> index 0 both


def test_the_recipe_task_table_defaults_and_refuses_unknown_kinds():
    assert TaskSection()("task", {}, object).KIND == "idx-classification"
    with pytest.raises(RecipeError, match="task.kind"):
        TaskSection()("task", {"kind": "regression"}, object)
    assert {"idx-classification", "distill", "factory"} <= set(TASKS.names())


def test_a_factory_task_must_return_a_task(user_module):
    user_module("mytask", "def make(size=1):\n    return [size]\n")
    config = TaskSection()("task", {"kind": "factory", "factory": "mytask:make",
                                    "kwargs": {"size": 3}}, object)
    with pytest.raises(RecipeError, match="returned list, not a compression.tasks.Task"):
        make_task(config)
