"""The stage registry: stages are found by kind, declare their own order rules, size-table row and
invariant, and a new stage is one registration with no edit to a central file."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch import nn

from dccore.config import Num, setting
from compression._context import StageContext
from compression._state import CompressionState
from compression.pipeline import run_recipe
from compression.recipe import Recipe, TrainConfig
from compression.stages import STAGES, Stage, StageConfig, register_stage
from dccore.errors import ModelError, RecipeError


def test_builtin_stages_are_registered_by_their_declared_kind():
    assert set(STAGES.names()) >= {"encode", "finetune_centroids", "prune", "share"}
    for kind, stage in STAGES.items():
        assert stage.kind == kind == stage.config.KIND


# -- a toy stage, registered from this module alone ----------------------------------------------

@dataclass(frozen=True)
class ScaleBiasesConfig(StageConfig):
    """Multiply every bias by ``factor`` (harmless to the masks and codebooks)."""

    KIND: ClassVar[str] = "toy_scale_biases"
    factor: float = setting(1.0, Num(0.0, 10.0))


CALLS: list[str] = []


def _scale(model: nn.Module, config: ScaleBiasesConfig, ctx: StageContext) -> None:
    CALLS.append("run")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.mul_(config.factor)
    ctx.metrics["factor"] = config.factor


def _biases_scaled(model: nn.Module, config: ScaleBiasesConfig, ctx: StageContext) -> None:
    CALLS.append("ensures")
    if config.factor == 0.0 and any(p.abs().sum() > 0 for n, p in model.named_parameters()
                                    if n.endswith("bias")):
        raise ModelError("toy: a bias survived a factor of 0")


@pytest.fixture
def toy_stage():
    stage = register_stage(Stage(
        ScaleBiasesConfig, _scale, _biases_scaled,
        requires={"masks": "it only runs on pruned models (a rule declared on the toy stage)"},
        size_row="pruning + toy",
    ))
    CALLS.clear()
    yield stage
    STAGES.unregister(stage.kind)


def _toy_recipe(make_recipe, **toy):
    return make_recipe(baseline={"epochs": 1, "lr": 2e-3}, stages=[
        {"kind": "prune", "sparsity": 0.5, "rounds": 1, "retrain_epochs": 0},
        {"kind": "toy_scale_biases", "factor": 0.0, **toy},
        {"kind": "encode"},
    ])


def test_a_stage_registered_from_a_test_module_runs_in_a_recipe(toy_stage, make_recipe, tmp_path):
    recipe = Recipe.from_dict(_toy_recipe(make_recipe))
    assert recipe.stages[1] == ScaleBiasesConfig(name="2_toy_scale_biases", factor=0.0)
    assert Recipe.from_dict(recipe.to_dict()) == recipe
    result = run_recipe(recipe, tmp_path)
    assert CALLS == ["run", "ensures"]
    assert all(p.abs().sum() == 0 for n, p in result.model.named_parameters() if n.endswith("bias"))
    report = result.report
    assert report["stages"]["2_toy_scale_biases"]["factor"] == 0.0
    assert report["accuracy"]["final"] == report["accuracy"]["stages"]["2_toy_scale_biases"]
    assert (tmp_path / "checkpoints" / "2_toy_scale_biases.pt").is_file()
    # its declared row of the size table is written from its checkpoint, after pruning's
    rows = [r["stage"] for r in report["stage_ratios"]]
    assert rows == ["pruning", "pruning + toy", "pruning + sharing + coding"]


def test_a_registered_stage_is_validated_and_ordered_by_its_own_declarations(toy_stage, make_recipe):
    with pytest.raises(RecipeError, match=r"stages\[1\].factor: expected a number in \[0.0, 10.0\]"):
        Recipe.from_dict(_toy_recipe(make_recipe, factor=11))
    with pytest.raises(RecipeError, match=r"stages\[1\].fcator: unknown key; allowed keys are "
                                          r"\['by_name', 'by_type', 'factor', 'kind', 'name'\]"):
        Recipe.from_dict(_toy_recipe(make_recipe, fcator=1))
    with pytest.raises(RecipeError, match=r"stages\[0\].kind: 'toy_scale_biases' needs a 'prune' "
                                          r"stage before it \(it only runs on pruned models"):
        Recipe.from_dict(make_recipe(stages=[{"kind": "toy_scale_biases"}]))
    # encode's own rule (last) holds against the newcomer too
    with pytest.raises(RecipeError, match="'encode' must be the last stage"):
        Recipe.from_dict(make_recipe(stages=[{"kind": "prune", "sparsity": 0.5}, {"kind": "encode"},
                                             {"kind": "toy_scale_biases"}]))


def test_a_broken_promise_stops_the_run(toy_stage, make_recipe, tmp_path):
    def breaks(model, config, ctx):
        CALLS.append("run")          # leaves the biases alone: ensures must object

    STAGES.unregister(toy_stage.kind)
    register_stage(Stage(ScaleBiasesConfig, breaks, _biases_scaled))
    with pytest.raises(ModelError, match="toy: a bias survived a factor of 0"):
        run_recipe(Recipe.from_dict(_toy_recipe(make_recipe)), tmp_path)
    assert not (tmp_path / "checkpoints" / "2_toy_scale_biases.pt").exists()


def test_a_kind_registered_twice_is_refused(toy_stage):
    with pytest.raises(ValueError, match="registered twice"):
        register_stage(Stage(ScaleBiasesConfig, lambda *a: None))


# -- the built-in stages' promises on hand-made states ---------------------------------------------

def _ctx(model: nn.Module) -> StageContext:
    return StageContext(state=CompressionState.for_model(model), train=None, test=None,
                        baseline=TrainConfig(), task=None)


def test_prune_promise_target_sparsity_and_zeros():
    from compression.stages.prune import PruneConfig, ensures
    model = nn.Sequential(nn.Linear(4, 2))
    ctx = _ctx(model)
    layer = ctx.state.layers["0"]
    with torch.no_grad():
        layer.weight.copy_(torch.arange(1.0, 9.0).view(2, 4))
    config = PruneConfig(sparsity=0.5)
    layer.mask = torch.tensor([[False, False, True, True], [True, True, True, True]])
    with pytest.raises(ModelError, match="masked weight is non-zero"):
        ensures(model, config, ctx)              # masked but not zeroed
    ctx.state.enforce()
    with pytest.raises(ModelError, match="reached sparsity 0.2500, below its target 0.5"):
        ensures(model, config, ctx)
    layer.mask[1, :2] = False
    ctx.state.enforce()
    ensures(model, config, ctx)                  # 4 of 8 cut: holds


def test_share_promise_at_most_2_to_the_bits_values():
    from compression.stages.share import ShareConfig, ensures
    model = nn.Sequential(nn.Linear(4, 2))
    ctx = _ctx(model)
    layer = ctx.state.layers["0"]
    layer.centroids = torch.tensor([-1.0, 0.5, 2.0])
    layer.assignments = torch.tensor([[0, 1, 2, 0], [1, 1, 2, 0]])
    layer.bits = 1                               # 3 centroids cannot be 1 bit
    ctx.state.enforce()
    with pytest.raises(ModelError, match="3 distinct non-zero values, more than 2\\*\\*1"):
        ensures(model, ShareConfig(bits=1), ctx)
    with pytest.raises(ModelError, match="has 1 bits, asked for 2"):
        ensures(model, ShareConfig(bits=2), ctx)
    layer.bits = 2
    ensures(model, ShareConfig(bits=2), ctx)
    with torch.no_grad():
        layer.weight[0, 0] = 0.25                # untied from its codebook
    with pytest.raises(ModelError, match="not tied to its centroids"):
        ensures(model, ShareConfig(bits=2), ctx)


def test_stage_generators_leave_the_global_rng_alone():
    ctx = _ctx(nn.Sequential(nn.Linear(2, 2)))
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    a = torch.randperm(50, generator=ctx.generator(101))
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(a, torch.randperm(50, generator=ctx.generator(101)))      # repeatable
    assert not torch.equal(a, torch.randperm(50, generator=ctx.generator(202)))  # per stage


def test_run_report_names_the_rows_each_stage_declared(make_recipe, tmp_path):
    result = run_recipe(Recipe.from_dict(make_recipe(baseline={"epochs": 1}, stages=[
        {"kind": "prune", "sparsity": 0.5, "rounds": 1, "retrain_epochs": 0},
        {"kind": "share", "bits": 2},
        {"kind": "finetune_centroids", "epochs": 0},
    ])), tmp_path)
    rows = {r["stage"]: r for r in result.report["stage_ratios"]}
    assert list(rows) == ["pruning", "pruning + sharing", "pruning + sharing + coding"]
    # the sharing row is the last stage that declared it: fine-tuning, not sharing
    assert rows["pruning + sharing"]["file"].endswith("3_finetune_centroids.dcz")
    assert rows["pruning + sharing + coding"]["bytes"] == (tmp_path / "model.dcz").stat().st_size
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["stage_ratios"] == result.report["stage_ratios"]


def test_encode_promise_the_file_decodes_to_the_model(tmp_path):
    from compression._context import Output
    from compression.stages.encode import EncodeConfig, ensures, run
    model = nn.Sequential(nn.Linear(6, 3))
    ctx = _ctx(model)
    layer = ctx.state.layers["0"]
    layer.mask = torch.rand(3, 6, generator=torch.Generator().manual_seed(0)) > 0.5
    ctx.state.enforce()
    ctx.output = Output(tmp_path, {"note": "test"}, [])
    run(model, EncodeConfig(), ctx)
    assert ctx.metrics["compressed_bytes"] == (tmp_path / "model.dcz").stat().st_size
    assert [r["stage"] for r in ctx.metrics["stage_ratios"]] == ["pruning + sharing + coding"]
    ensures(model, EncodeConfig(), ctx)
    with torch.no_grad():
        model[0].bias[1] += 1.0                  # the model moved on; the file did not
    with pytest.raises(ModelError, match="does not decode to the model's '0.bias'"):
        ensures(model, EncodeConfig(), ctx)


def test_a_toy_stage_owns_its_schedule_in_the_users_loop():
    """Compressor names no stage kind: a stage registered here says, through its schedule, what
    happens at which step of the user's own loop (before: api.py branched on "prune" and
    "finetune_centroids")."""
    from compression.api import Compressor

    seen: list[tuple[str, int]] = []

    def schedule(config):
        yield lambda loop: seen.append(("start", loop.report()["step"]))
        yield 2          # two epochs of the user's training
        yield lambda loop: seen.append(("end", loop.report()["step"]))

    stage = register_stage(Stage(ScaleBiasesConfig, _scale, None, schedule=schedule))
    try:
        model = nn.Sequential(nn.Linear(4, 3))
        comp = Compressor(model, {"stages": [{"kind": "toy_scale_biases", "factor": 1.0}]})
        comp.prepare(steps_per_epoch=3)
        for _ in range(7):
            comp.step()
        comp.finalize()
    finally:
        STAGES.unregister(stage.kind)
    assert seen == [("start", 0), ("end", 6)]


def test_what_a_stage_hands_on_is_typed_not_a_metrics_key():
    """The run acts on StageOutputs (shrink's widths, a teacher brought by a stage); a figure in
    metrics named like one changes nothing. Checkpoints from before still resume right."""
    from compression._context import StageOutputs

    typed = StageOutputs(model_kwargs={"hidden": [150, 50]}, brought_teacher=True)
    assert StageOutputs.from_info({"outputs": typed.to_dict(),
                                   "metrics": {"model_kwargs": {"hidden": [1]}}}) == typed
    assert StageOutputs.from_info({"outputs": {}, "metrics": {"teacher": {"accuracy": 0.9}}}) \
        == StageOutputs()
    old = {"metrics": {"model_kwargs": {"hidden": [150, 50]}, "teacher": {"accuracy": 0.9}}}
    assert StageOutputs.from_info(old) == typed
