"""The pipeline: baseline, then the recipe's stages in order, a checkpoint after each.

Run folder layout::

    DIR/recipe.toml              the recipe as given
    DIR/recipe.json              the resolved recipe (every default filled in) and its sha256
    DIR/checkpoints/NAME.pt      {"state_dict", "masks", "centroids", "assignments", "bits"}
    DIR/checkpoints/NAME.json    what the stage measured (accuracy, seconds, sparsity)
    DIR/stages/*.dcz             the model as a file after pruning alone and after sharing
    DIR/model.dcz                the final compressed model
    DIR/report.json              accuracies, sparsity, per-layer table, sizes, seconds per stage

Each file is written under a temporary name and renamed, so an interrupted stage leaves the
previous checkpoint intact for ``--resume-from``.

Stages are found by kind in the registry (``compression/stages/``): each training-phase stage runs,
is checked (the state's invariants, then the stage's own ``ensures``), scored and checkpointed;
the output-phase stage (``encode``, or its defaults when the recipe has none) then writes the
files. With ``data.val_fraction`` > 0 a seeded share of the training set is held out, never
trained on, and scored after every stage (``accuracy.validation`` in the report).
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from dccore.artifacts import artifact_sha256
from dccore.errors import CheckpointError, ModelError, RecipeError
from dccore.outputs import atomic_path, read_json_object, write_bytes_atomic, write_json_atomic

from . import distributed
from ._context import Output, StageContext, StageOutputs
from ._state import CompressionState
from ._train import ProgressFn, no_progress, train
from .models import build_model, check_finite, load_state_dict_file, load_torch_file, load_weights
from .recipe import Recipe
from .stages import STAGES, Stage, StageConfig
from .stages.encode import MODEL_FILE, EncodeConfig, decoded_model
from .tasks import DEFAULT_TASK, Examples, Task, TaskData, make_task, predict

BASELINE = "0_baseline"
DEFAULT_OUTPUT = EncodeConfig()   # a recipe without an output stage still gets its model.dcz
# what the baseline's weights (and so every checkpoint) depend on besides the stages: a saved run
# whose recipe differs in any of these trained other weights
TRAINED_WITH = ("seed", "data", "model", "baseline", "task")


@dataclass
class RunResult:
    out_dir: Path
    report: dict[str, Any]
    model: nn.Module
    state: CompressionState = field(repr=False)


def checkpoint_path(out_dir: str | Path, name: str) -> Path:
    """Where a run folder keeps stage ``name``'s checkpoint (``BASELINE``: the dense model's); its
    figures lie beside it, ``.json`` for ``.pt``."""
    return Path(out_dir) / "checkpoints" / f"{name}.pt"


def save_checkpoint(path: Path, model: nn.Module, state: CompressionState, info: dict) -> None:
    """Write the checkpoint (rank 0 under torchrun; the others wait until it is there)."""
    with distributed.main_first() as main:
        if main:
            with atomic_path(path) as tmp:
                torch.save({"state_dict": model.state_dict(), **state.to_tensors()}, tmp)
            write_json_atomic(path.with_suffix(".json"), info)


def load_checkpoint(path: Path, model: nn.Module, state: CompressionState) -> None:
    """Load a checkpoint's weights into ``model`` and its masks and codebooks into ``state``.

    The stage's figures beside it (NAME.json) are not read here: only run_recipe wants them.
    """
    blob = load_torch_file(path, hint="run without --resume-from, or resume from an earlier "
                                      "stage whose checkpoint is intact")
    if not isinstance(blob, dict) or "state_dict" not in blob:
        raise CheckpointError(f"checkpoint {path} is not a deepcompress checkpoint")
    load_weights(model, blob["state_dict"], source=str(path))
    state.load_tensors(blob, str(path))
    state.check()


def load_task(recipe: Recipe, data_root: str | None) -> tuple[Task, TaskData]:
    """The recipe's task and its splits (train, validation or None, test). The validation split
    is ``data.val_fraction`` of the training examples, drawn with the recipe's seed and removed
    from the training split."""
    task = make_task(recipe.task, seed=recipe.seed, data_root=data_root, data=recipe.data)
    return task, task.data()


def saved_recipe(out_dir: str | Path) -> dict[str, Any] | None:
    """The resolved recipe a run folder's ``recipe.json`` holds; None if it holds none."""
    saved = (read_json_object(Path(out_dir) / "recipe.json") or {}).get("recipe")
    return saved if isinstance(saved, dict) else None


def _same_prefix(saved: dict, recipe: Recipe, upto: int) -> str | None:
    """Why a saved resolved recipe can't be resumed with ``recipe`` before stage ``upto``."""
    now = recipe.to_dict()
    for key in TRAINED_WITH:
        if saved.get(key) != now.get(key):
            return key
    if (saved.get("stages") or [])[:upto] != now.get("stages", [])[:upto]:
        return "stages before the resumed one"
    return None


def _stage_info(out: Path, name: str) -> dict[str, Any] | None:
    """The figures a checkpoint's stage left beside it (None: none there, or unreadable)."""
    return read_json_object(checkpoint_path(out, name).with_suffix(".json"))


def resume_point(out_dir: str | Path, recipe: Recipe) -> str | None:
    """The stage a run of ``recipe`` continues the run in ``out_dir`` from (its ``resume_from``):
    the first stage that differs from the saved recipe, lacks its checkpoint or trained with a
    teacher of its own (a checkpoint does not hold it), else the last stage; None when nothing
    there can be kept (no saved recipe, another baseline, no baseline checkpoint)."""
    out = Path(out_dir)
    saved = saved_recipe(out)
    if saved is None or _same_prefix(saved, recipe, 0) \
            or not checkpoint_path(out, BASELINE).is_file():
        return None
    for i, config in enumerate(recipe.stages):
        info = _stage_info(out, config.name)
        if STAGES.get(config.KIND).phase == "output" or _same_prefix(saved, recipe, i + 1) \
                or info is None or StageOutputs.from_info(info).brought_teacher \
                or not checkpoint_path(out, config.name).is_file():
            return config.name
    return recipe.stages[-1].name if recipe.stages else None


def run_recipe(recipe: Recipe, out_dir: str | Path, *, recipe_text: str | None = None,
               resume_from: str | None = None, data_root: str | None = None,
               progress: ProgressFn = no_progress, log: Callable[[str], None] = lambda m: None,
               ) -> RunResult:
    """Run ``recipe``; write checkpoints, ``model.dcz`` and ``report.json`` into ``out_dir``."""
    run = _Run(recipe, Path(out_dir), recipe_text, resume_from, data_root, progress, log)
    if resume_from is None:
        run.baseline()
    else:
        run.resume(resume_from)
    for config in recipe.stages[run.start:]:
        run.stage(config)
    return run.finish(run.write_files())


class _Run:
    """One run of a recipe into a run folder. Made, it has checked the recipe (and the folder it
    resumes), loaded the task's data and written the recipe files; its methods are the steps
    :func:`run_recipe` takes in order. The model, the state and each stage's figures so far live
    here (``ctx.state`` is the state: a stage that rebuilds layers replaces it)."""

    def __init__(self, recipe: Recipe, out: Path, recipe_text: str | None, resume_from: str | None,
                 data_root: str | None, progress: ProgressFn, log: Callable[[str], None]) -> None:
        self.recipe, self.out, self.log = recipe, out, log
        torch.manual_seed(recipe.seed)
        self.model = build_model(recipe.model.name, recipe.model.kwargs)
        state = CompressionState.for_model(self.model)
        layer_types = {name: layer.type_name for name, layer in state.layers.items()}
        for note in recipe.check_against_model(layer_types):   # before any training starts
            log(note)
        self.start = 0 if resume_from in (None, "baseline", BASELINE) \
            else recipe.stage_index(resume_from)
        if resume_from is not None and (out / "recipe.json").is_file():
            why = _same_prefix(saved_recipe(out) or {}, recipe, self.start)
            if why:
                raise RecipeError(f"--resume-from {resume_from}: the recipe's {why} changed since "
                                  f"{out} was written; start a fresh run (another --out)")
        self.task, data = load_task(recipe, data_root)
        self.test_set, self.val_set = data.test, data.val
        with distributed.main_first() as main:
            if main:
                out.mkdir(parents=True, exist_ok=True)
                if recipe_text is not None:
                    write_bytes_atomic(out / "recipe.toml", recipe_text.encode())
                write_json_atomic(out / "recipe.json", {"recipe": recipe.to_dict(),
                                                        "sha256": recipe.sha256()})
        self.teacher = _Teacher(recipe, out, data.train)
        self.ctx = StageContext(state=state, train=data.train, test=data.test,
                                baseline=recipe.baseline, task=self.task,
                                batch_size=recipe.data.batch_size, seed=recipe.seed,
                                progress=progress, log=log, teacher=self.teacher)
        # a stage that changes layer widths (shrink) hands them on: the files record the widths
        # the model has, so it is rebuilt from the zoo without the recipe's defaults
        self.model_kwargs = dict(recipe.model.kwargs)
        # by stage: the task's figures on the test and validation splits, seconds, own metrics
        self.scores, self.val_scores, self.seconds, self.stage_metrics = {}, {}, {}, {}
        self.output: tuple[Stage, StageConfig] = (STAGES.get(DEFAULT_OUTPUT.KIND), DEFAULT_OUTPUT)
        self.task.bind(self.model)   # a label-free task decides here which figure leads, and why
        self.primary = self.task.primary
        if self.task.primary_reason:
            log(f"leading metric: {self.primary} ({self.task.primary_reason})")

    def _scored(self, name: str, info: dict) -> dict:
        """Score the model after ``name``; the checkpoint's figures, with those scores. A
        label-free task is scored against the dense model's outputs (itself, at the baseline)."""
        against = (lambda split: None) if self.task.needs_labels or name == BASELINE \
            else self.teacher
        primary, model = self.primary, self.model
        self.scores[name] = self.task.evaluate(model, self.test_set, against(self.test_set))
        info = {"stage": name, **info, primary: self.scores[name][primary],
                "scores": self.scores[name]}
        if self.val_set is not None:
            self.val_scores[name] = self.task.evaluate(model, self.val_set, against(self.val_set))
            info[f"validation_{primary}"] = self.val_scores[name][primary]
            info["validation_scores"] = self.val_scores[name]
        return info

    def baseline(self) -> None:
        """The dense model: the recipe's weights, the model as given (a label-free task's
        teacher), or trained; scored and checkpointed."""
        recipe, ctx, model = self.recipe, self.ctx, self.model
        t0 = time.perf_counter()
        if recipe.model.weights:
            load_weights(model, load_state_dict_file(recipe.model.weights),
                         source=recipe.model.weights)
            self.log(f"baseline weights loaded from {recipe.model.weights}")
        elif not self.task.trains_baseline:
            self.log(f"the {self.task.describe()} task's baseline is the model as given (the "
                     "teacher)")
        else:
            b = recipe.baseline
            train(model, ctx.train, ctx.train_spec(b.epochs, b.lr, b.weight_decay), self.task,
                  generator=ctx.generator(0), progress=ctx.progress, description="baseline")
        self.seconds[BASELINE] = time.perf_counter() - t0
        info = self._scored(BASELINE, {})
        if not self.task.needs_labels:   # the reference its later scores compare with
            self.teacher.remember(model, [self.test_set] + (
                [self.val_set] if self.val_set is not None else []))
        self.log(f"baseline {self.primary} "
                 f"{show_metric(self.primary, self.scores[BASELINE][self.primary])}")
        save_checkpoint(checkpoint_path(self.out, BASELINE), model, ctx.state,
                        {**info, "seconds": self.seconds[BASELINE],
                         "recipe_sha256": recipe.sha256()})

    def resume(self, resume_from: str) -> None:
        """The figures of the stages not re-run, and the model and state of the last of them."""
        previous = [BASELINE] + [s.name for s in self.recipe.stages[:self.start]]
        outputs: dict[str, StageOutputs] = {}
        for name in previous:
            info = _stage_info(self.out, name)
            if info is not None:
                self.scores[name] = info.get("scores") or {self.primary: info.get(self.primary)}
                if self.val_set is not None:
                    self.val_scores[name] = info.get("validation_scores") or {
                        self.primary: info.get(f"validation_{self.primary}")}
                self.seconds[name] = info.get("seconds", 0.0)
                self.stage_metrics[name] = info.get("metrics", {})
                outputs[name] = StageOutputs.from_info(info)
        brought = [n for n in previous if outputs.get(n, StageOutputs()).brought_teacher]
        if brought:
            raise RecipeError(f"--resume-from {resume_from}: stage {brought[-1]!r} trained with a "
                              "teacher of its own, which later stages distil from and a checkpoint "
                              f"does not hold; resume from {brought[-1]!r} or an earlier stage")
        self.model_kwargs = _latest_kwargs(self.model_kwargs, list(outputs.values()))
        if self.model_kwargs != dict(self.recipe.model.kwargs):   # a shrunk model: its widths
            self.model = build_model(self.recipe.model.name, self.model_kwargs)
            self.ctx.state = CompressionState.for_model(self.model)
        load_checkpoint(checkpoint_path(self.out, previous[-1]), self.model, self.ctx.state)
        self.log(f"resumed from checkpoint {previous[-1]}")

    def stage(self, config: StageConfig) -> None:
        """One training-phase stage: run, checked, scored and checkpointed. The output-phase
        stage (its order rule makes it the last) is kept for :meth:`write_files`."""
        stage, ctx, name = STAGES.get(config.KIND), self.ctx, config.name
        if stage.phase == "output":
            self.output = (stage, config)
            return
        t0 = time.perf_counter()
        ctx.metrics, ctx.outputs = {}, StageOutputs()
        stage.apply(self.model, config, ctx)
        distributed.broadcast_state(ctx.state)     # one state on every rank (a no-op alone)
        self.seconds[name] = time.perf_counter() - t0
        if ctx.outputs.model_kwargs is not None:
            self.model_kwargs = _latest_kwargs(self.model_kwargs, [ctx.outputs])
            _check_rebuilds(self.recipe.model.name, self.model_kwargs, self.model, name)
        sparsity = ctx.state.sparsity()
        self.stage_metrics[name] = dict(ctx.metrics, sparsity=sparsity)
        info = self._scored(name, {"kind": config.KIND})
        self.log(f"{name}: {self.primary} "
                 f"{show_metric(self.primary, self.scores[name][self.primary])}, "
                 f"sparsity {sparsity:.1%}, {self.seconds[name]:.1f} s")
        save_checkpoint(checkpoint_path(self.out, name), self.model, ctx.state,
                        {**info, "seconds": self.seconds[name], "metrics": self.stage_metrics[name],
                         "outputs": ctx.outputs.to_dict(), "recipe_sha256": self.recipe.sha256()})

    def report(self) -> dict[str, Any]:
        """report.json's figures so far: the headline table, the scores, the layers and stages."""
        recipe, task, state = self.recipe, self.task, self.ctx.state
        final_name = ([BASELINE] + [s.name for s in recipe.stages
                                    if STAGES.get(s.KIND).phase != "output"])[-1]
        primary = task.primary

        def table(by_stage: dict) -> dict[str, Any]:
            figures = {k: (v or {}).get(primary) for k, v in by_stage.items()}
            return {"baseline": figures.get(BASELINE), "final": figures.get(final_name),
                    "stages": {k: v for k, v in figures.items() if k != BASELINE}}

        headline = table(self.scores)
        if self.val_set is not None:      # only when asked for: the default report is unchanged
            headline["validation"] = table(self.val_scores)
        report: dict[str, Any] = {
            "recipe": recipe.name,
            "recipe_sha256": recipe.sha256(),
            "model": recipe.model.name,
            "task": task.KIND,
            "test_examples": len(self.test_set),
        }
        if primary == "accuracy":   # the image classifier's report, as it always was
            report["accuracy"] = headline
        report["primary_metric"] = {"name": primary, "higher_is_better": task.higher_is_better,
                                    **headline}
        if task.primary_reason:
            report["primary_metric"]["why"] = task.primary_reason
        report["scores"] = self.scores
        report.update({
            "sparsity": state.sparsity(),
            "layers": state.layer_rows(),
            "stages": self.stage_metrics,
            "seconds": dict(self.seconds),
        })
        return report

    def write_files(self) -> dict[str, Any]:
        """The output stage writes model.dcz (and the size table's files); the figures that
        claim to be the file's are measured on it, decoded and rebuilt as a loader would (float16
        biases, say, are not the model in memory). The report so far."""
        recipe, task, ctx, model, out = self.recipe, self.task, self.ctx, self.model, self.out
        check_finite(model, "final model")
        report = self.report()
        stage, config = self.output
        t0 = time.perf_counter()
        rows = _size_rows(out, recipe)
        meta = copy.deepcopy(_meta(recipe, task, report, self.model_kwargs))   # as written, apart
        ctx.output = Output(out, meta, rows)
        with distributed.main_first() as main:    # only rank 0 writes the files
            if main:
                stage.apply(model, config, ctx)
                decoded = decoded_model(out / MODEL_FILE, recipe.model.name, self.model_kwargs)
                against = (lambda split: None) if task.needs_labels else self.teacher
                test = task.evaluate(decoded, self.test_set, against(self.test_set))
                val = None if self.val_set is None else task.evaluate(
                    decoded, self.val_set, against(self.val_set))
                _as_shipped(report, self.primary, test, val)
                self.log(f"{MODEL_FILE} decoded: {self.primary} "
                         f"{show_metric(self.primary, test[self.primary])}")
                if _meta(recipe, task, report, self.model_kwargs) != meta:   # the record, made true
                    ctx.output = Output(out, _meta(recipe, task, report, self.model_kwargs), rows)
                    stage.apply(model, config, ctx)
                _file_figures(report, test, val)
        report.update(ctx.metrics)
        report["seconds"][config.KIND] = time.perf_counter() - t0
        return report

    def finish(self, report: dict[str, Any]) -> RunResult:
        """The sections of report.json a stage adds (projection: bits), the total time, and
        report.json, written last."""
        for done in self.recipe.stages:
            summary = STAGES.get(done.KIND).report
            if summary is not None:
                report.update(summary(done, self.stage_metrics.get(done.name, {}), report))
        report["seconds"]["total"] = sum(v for k, v in report["seconds"].items() if k != "total")
        if distributed.is_main():
            write_json_atomic(self.out / "report.json", report)
        return RunResult(self.out, report, self.model, self.ctx.state)


def _headlines(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's figure tables: ``accuracy`` (the classifier's) and ``primary_metric``."""
    return [t for t in (report.get("accuracy"), report.get("primary_metric")) if isinstance(t, dict)]


def _as_shipped(report: dict[str, Any], primary: str, test: dict[str, float],
                val: dict[str, float] | None) -> None:
    """``final`` (and the validation split's) becomes the decoded file's figure."""
    for table in _headlines(report):
        table["final"] = test.get(primary)
        if val is not None and isinstance(table.get("validation"), dict):
            table["validation"] = {**table["validation"], "final": val.get(primary)}


def _file_figures(report: dict[str, Any], test: dict[str, float],
                  val: dict[str, float] | None) -> None:
    """Every figure of the decoded file, beside the stages' own (each stage's scores are the
    model in memory after it; ``final`` and these are the file's)."""
    for table in _headlines(report):
        table["final_measured_on"] = f"{MODEL_FILE}, decoded"
    report["file_scores"] = test
    if val is not None:
        report["file_validation_scores"] = val


def read_report(out_dir: str | Path) -> dict[str, Any]:
    """A finished run's report, checked against the folder: the report is written last and names
    the sha256 of the model.dcz it describes, so a run killed half-way through a re-run (a new
    model.dcz beside an old report) is caught here instead of being read as finished."""
    out = Path(out_dir)
    path = out / "report.json"
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{out} holds no finished run (no report.json); run it again or "
                              "resume it with --resume-from") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is unreadable ({exc}); run again with --force") from None
    want = report.get("model_sha256") if isinstance(report, dict) else None
    model = out / MODEL_FILE
    if not isinstance(want, str) or not model.is_file() or artifact_sha256(model) != want:
        raise CheckpointError(f"{out}: report.json does not describe the {MODEL_FILE} beside it "
                              "(a re-run was interrupted?); run again with --force")
    return report


class _Teacher:
    """The dense baseline's outputs on a split, computed once per split: the soft targets of
    distillation (train) and the reference a label-free task is scored against (test, val).
    Right after the baseline they are taken from the model itself; a resumed run rebuilds the
    baseline from its checkpoint when first asked. It is the stages' ``ctx.teacher`` too: called
    with no split, its outputs on the training set; ``use(model)`` makes ``model`` the teacher of
    the later stages (their distillation, a label-free task's scores)."""

    def __init__(self, recipe: Recipe, out: Path, train: Examples) -> None:
        self.recipe, self.out, self._train = recipe, out, train
        self._cache: dict[int, torch.Tensor] = {}
        self._model: nn.Module | None = None

    def use(self, model: nn.Module) -> None:
        """From now on the teacher is ``model`` (a stage's own: transfer, projection)."""
        self._model = model.eval()
        self._cache.clear()

    def remember(self, model: nn.Module, splits: list[Examples]) -> None:
        for split in splits:
            self._cache[id(split)] = predict(model, split.inputs)

    def __call__(self, split: Examples | None = None) -> torch.Tensor:
        split = self._train if split is None else split
        if id(split) not in self._cache:
            self._cache[id(split)] = predict(self.model(), split.inputs)
        return self._cache[id(split)]

    def model(self) -> nn.Module:
        """The teacher itself (in eval mode): the baseline, rebuilt from its checkpoint when
        first asked, or the model a stage made the teacher."""
        if self._model is None:
            self._model = build_model(self.recipe.model.name, self.recipe.model.kwargs)
            load_checkpoint(checkpoint_path(self.out, BASELINE), self._model,
                            CompressionState.for_model(self._model))
        return self._model.eval()


def _latest_kwargs(kwargs: dict[str, Any], outputs: list[StageOutputs]) -> dict[str, Any]:
    """The model's constructor kwargs after the stages whose ``outputs`` are given (a shrink
    stage hands on the widths it left, over the recipe's)."""
    for o in outputs:
        if o.model_kwargs is not None:
            kwargs = {**kwargs, **o.model_kwargs}
    return kwargs


def _check_rebuilds(name: str, kwargs: dict[str, Any], model: nn.Module, stage: str) -> None:
    """The zoo constructor with ``kwargs`` builds ``model``'s shapes (on the meta device: nothing
    is allocated), so the file the run writes can be loaded."""
    with torch.device("meta"):
        skeleton = build_model(name, kwargs)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    if want != got:
        diff = sorted(set(want.items()) ^ set(got.items()))[:3]
        raise ModelError(f"{stage}: {name} with {kwargs} does not rebuild the model the stage "
                         f"left (first differences: {diff})")


def show_metric(metric: str, value: float | None) -> str:
    """A figure as the logs show it: accuracy in percent, any other metric to 5 decimals."""
    if value is None:
        return "-"
    return f"{value:.2%}" if metric == "accuracy" else f"{value:.5f}"


def _meta(recipe: Recipe, task: Task, report: dict,
          model_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """What model.dcz records besides the weights: enough to trace it to what produced it, and
    the kwargs that rebuild the model it holds (a shrunk model's widths, not the recipe's)."""
    kwargs = recipe.model.kwargs if model_kwargs is None else model_kwargs
    model: dict[str, Any] = {"name": recipe.model.name, "kwargs": kwargs,
                             "input_shape": list(recipe.model.input_shape)}
    if recipe.task.KIND != DEFAULT_TASK:   # any inputs: each one's shape (no batch axis), dtype
        model["inputs"] = [{"shape": list(t.shape[1:]), "dtype": str(t.dtype).removeprefix("torch.")}
                           for t in task.example_inputs()]
        del model["input_shape"]
    meta = {
        "model": model,
        "recipe": recipe.to_dict(),
        "recipe_sha256": recipe.sha256(),
        "accuracy" if "accuracy" in report else "primary_metric":
            report.get("accuracy") or report["primary_metric"],
        "data": {"root": recipe.data.root},
    }
    return meta


def _size_rows(out: Path, recipe: Recipe) -> list[tuple[str, str, Path]]:
    """The paper's per-stage size table (pruning alone; + sharing): each row's file is made from
    the checkpoint of the last stage that declares it ends that row."""
    last: dict[str, str] = {}
    for config in recipe.stages:
        row = STAGES.get(config.KIND).size_row
        if row is not None and STAGES.get(config.KIND).phase == "train":
            last[row] = config.name
    rows = [(row, name, checkpoint_path(out, name)) for row, name in last.items()]
    return [r for r in rows if r[2].is_file()]
