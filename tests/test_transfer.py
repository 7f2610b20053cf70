"""Knowledge transfer: any teacher (zoo, factory; .pt or .dcz weights), its outputs computed
once, the task's loss deciding (soft weight, labels' weight), and the label-free task."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from compression._context import StageContext
from compression._state import CompressionState
from compression.models import LeNet300, build_model
from compression.pipeline import run_recipe
from compression.recipe import Recipe, TrainConfig
from compression.stages.transfer import TransferConfig, run as transfer
from compression.tasks import Examples, make_task, default_task_config
from dccore.errors import RecipeError

CALLS = {"forward": 0}


class CountingTeacher(LeNet300):
    """A LeNet-300-100 that counts the examples it is asked about."""

    def forward(self, x):
        CALLS["forward"] += x.shape[0]
        return super().forward(x)


@pytest.fixture(scope="module")
def teacher_file(tiny_idx, tmp_path_factory):
    """A LeNet-300-100 trained on the toy data, as a state_dict and as a .dcz."""
    import dcz

    from compression._train import TrainSpec, train

    torch.manual_seed(0)
    model = LeNet300()
    task = make_task(default_task_config(), data_root=str(tiny_idx))
    train(model, task.data().train, TrainSpec(epochs=3, lr=3e-3), task)
    folder = tmp_path_factory.mktemp("teacher")
    torch.save(model.state_dict(), folder / "teacher.pt")
    dcz.pack(model.state_dict(), folder / "teacher.dcz", meta={"model": {"name": "lenet300"}})
    return folder


def _ctx(tiny_idx, model, labels_shuffled=False):
    task = make_task(default_task_config(), data_root=str(tiny_idx))
    data = task.data()
    train_set = data.train
    if labels_shuffled:
        train_set = Examples(train_set.inputs, train_set.targets[torch.randperm(len(train_set))])

    class Teacher:          # ctx.teacher as the pipeline gives it: called, and use(model)
        model = None

        def __call__(self):
            return self.model(*train_set.inputs).detach()

        def use(self, m):
            self.model = m

    return StageContext(state=CompressionState.for_model(model), train=train_set, test=data.test,
                        baseline=TrainConfig(lr=3e-3), task=task, batch_size=64, seed=1,
                        teacher=Teacher())


def _student():
    torch.manual_seed(5)
    return build_model("lenet300", {"hidden": [16, 8]})


@pytest.mark.parametrize("soft, same", [(1.0, True), (0.5, False)])
def test_with_all_weight_on_the_teacher_the_labels_play_no_part(tiny_idx, teacher_file, soft,
                                                                  same):
    config = TransferConfig(teacher="lenet300", weights=str(teacher_file / "teacher.pt"),
                            epochs=1, soft=soft, temperature=3.0)
    a, b = _student(), _student()
    transfer(a, config, _ctx(tiny_idx, a))
    transfer(b, config, _ctx(tiny_idx, b, labels_shuffled=True))
    assert torch.equal(a.fc1.weight, b.fc1.weight) is same


def test_teacher_outputs_are_computed_once_and_serve_later_stages(make_recipe, teacher_file,
                                                                   tmp_path):
    CALLS["forward"] = 0
    recipe = make_recipe(
        model={"name": "lenet300", "kwargs": {"hidden": [16, 8]}},
        baseline={"epochs": 0, "lr": 3e-3},
        stages=[{"kind": "transfer", "teacher": "test_transfer:CountingTeacher",
                 "weights": str(teacher_file / "teacher.dcz"), "epochs": 3},
                {"kind": "prune", "sparsity": 0.5, "rounds": 2, "retrain_epochs": 1,
                 "distill": 0.8},
                {"kind": "encode"}])
    run_recipe(Recipe.from_dict(recipe), tmp_path)
    # the training set (600) once, for 3 epochs of transfer and 2 rounds of distillation; the
    # test set (200) once, for the teacher's own score in the report
    assert CALLS["forward"] == 600 + 200
    report = json.loads((tmp_path / "report.json").read_text())
    teacher = report["stages"]["1_transfer"]["teacher"]
    assert teacher["model"] == "test_transfer:CountingTeacher"
    assert teacher["parameters"] == 266610 and teacher["accuracy"] > 0.9
    assert report["accuracy"]["stages"]["1_transfer"] > 0.4     # 10 classes: chance 0.1


def test_label_free_task_learns_the_teachers_outputs(tiny_idx, teacher_file, tmp_path):
    from compression.data import load_split

    torch.save(load_split("train", str(tiny_idx)).images[:400], tmp_path / "inputs.pt")
    student = {"name": "lenet300", "kwargs": {"hidden": [16, 8]}}
    recipe = {"name": "free", "seed": 0, "model": student, "baseline": {"lr": 3e-3},
              "data": {"batch_size": 32},
              "task": {"kind": "distill", "inputs": str(tmp_path / "inputs.pt"), "loss": "mse"},
              "stages": [{"kind": "transfer", "teacher": "lenet300", "epochs": 8,
                          "weights": str(teacher_file / "teacher.pt")}]}
    result = run_recipe(Recipe.from_dict(recipe), tmp_path / "run")
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    # scored against the teacher the stage brought, not against the untrained student
    teacher = build_model("lenet300")
    teacher.load_state_dict(torch.load(teacher_file / "teacher.pt"))
    task = make_task(Recipe.from_dict(recipe).task, data_root=None)
    test = task.data().test
    untrained = build_model("lenet300", student["kwargs"])
    before = task.evaluate(untrained.eval(), test, teacher.eval()(*test.inputs).detach())
    after = report["primary_metric"]["stages"]["1_transfer"]
    lead = report["primary_metric"]["name"]
    assert lead == "top1_agreement"          # logits: the decisions lead (distill's metric auto)
    assert after == pytest.approx(task.evaluate(result.model, test, teacher(*test.inputs).detach())
                                  [lead])
    assert after > before[lead] + 0.1


def test_transfer_needs_a_teacher_and_its_weights():
    with pytest.raises(RecipeError, match="teacher"):
        Recipe.from_dict({"stages": [{"kind": "transfer", "weights": "t.pt"}]})
    with pytest.raises(RecipeError, match="weights"):
        Recipe.from_dict({"stages": [{"kind": "transfer", "teacher": "lenet5"}]})
