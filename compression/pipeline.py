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
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from . import finetune, prune, share
from ._context import StageContext
from dccore.outputs import atomic_path, write_bytes_atomic, write_json_atomic
from ._state import CompressionState
from ._train import ProgressFn, evaluate, no_progress, predict, train
from .data import Split, load_split
from dccore.errors import CheckpointError, RecipeError
from .models import (build_model, check_finite, load_state_dict_file, load_torch_file,
                     load_weights)
from .recipe import EncodeConfig, Recipe

StageFn = Callable[[nn.Module, Any, StageContext], None]
# kind -> handler. A new technique registers its config (recipe.register_stage_config) and here.
STAGE_HANDLERS: dict[str, StageFn] = {
    "prune": prune.run,
    "share": share.run,
    "finetune_centroids": finetune.run,
}
BASELINE = "0_baseline"


@dataclass
class RunResult:
    out_dir: Path
    report: dict[str, Any]
    model: nn.Module
    state: CompressionState = field(repr=False)


def _checkpoint_path(out_dir: Path, name: str) -> Path:
    return out_dir / "checkpoints" / f"{name}.pt"


def save_checkpoint(path: Path, model: nn.Module, state: CompressionState, info: dict) -> None:
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


def load_data(recipe: Recipe, data_root: str | None) -> tuple[Split, Split]:
    root = data_root or recipe.data.root
    return (load_split("train", root, recipe.data.train_limit),
            load_split("test", root, recipe.data.test_limit))


def _same_prefix(saved: dict, recipe: Recipe, upto: int) -> str | None:
    """Why a saved resolved recipe can't be resumed with ``recipe`` before stage ``upto``."""
    now = recipe.to_dict()
    for key in ("seed", "data", "model", "baseline"):
        if saved.get(key) != now.get(key):
            return key
    if saved.get("stages", [])[:upto] != now.get("stages", [])[:upto]:
        return "stages before the resumed one"
    return None


def run_recipe(recipe: Recipe, out_dir: str | Path, *, recipe_text: str | None = None,
               resume_from: str | None = None, data_root: str | None = None,
               progress: ProgressFn = no_progress, log: Callable[[str], None] = lambda m: None,
               ) -> RunResult:
    """Run ``recipe``; write checkpoints, ``model.dcz`` and ``report.json`` into ``out_dir``."""
    out = Path(out_dir)
    torch.manual_seed(recipe.seed)
    model = build_model(recipe.model.name, recipe.model.kwargs)
    state = CompressionState.for_model(model)
    layer_types = {name: layer.type_name for name, layer in state.layers.items()}
    recipe.check_against_model(layer_types)       # before any training starts
    start = 0 if resume_from is None else _resume_index(recipe, resume_from)
    if resume_from is not None:                   # start > 0 only when resuming
        saved_path = out / "recipe.json"
        if saved_path.is_file():
            why = _same_prefix(json.loads(saved_path.read_text()).get("recipe", {}), recipe, start)
            if why:
                raise RecipeError(f"--resume-from {resume_from}: the recipe's {why} changed since "
                                  f"{out} was written; start a fresh run (another --out)")
    train_set, test_set = load_data(recipe, data_root)
    out.mkdir(parents=True, exist_ok=True)
    if recipe_text is not None:
        write_bytes_atomic(out / "recipe.toml", recipe_text.encode())
    write_json_atomic(out / "recipe.json", {"recipe": recipe.to_dict(), "sha256": recipe.sha256()})

    ctx = StageContext(state=state, train=train_set, test=test_set, baseline=recipe.baseline,
                       batch_size=recipe.data.batch_size, seed=recipe.seed, progress=progress,
                       log=log, teacher=_teacher(recipe, out, train_set))
    accuracies: dict[str, float] = {}
    seconds: dict[str, float] = {}
    stage_metrics: dict[str, dict] = {}

    # -- baseline ---------------------------------------------------------------------------
    if resume_from is None:
        t0 = time.perf_counter()
        _baseline(model, recipe, ctx)
        seconds[BASELINE] = time.perf_counter() - t0
        accuracies[BASELINE] = evaluate(model, test_set)
        log(f"baseline accuracy {accuracies[BASELINE]:.2%}")
        save_checkpoint(_checkpoint_path(out, BASELINE), model, state,
                        {"stage": BASELINE, "accuracy": accuracies[BASELINE],
                         "seconds": seconds[BASELINE], "recipe_sha256": recipe.sha256()})
    else:
        previous = [BASELINE] + [s.name for s in recipe.stages[:start]]
        for name in previous:   # figures of the stages that are not re-run
            info_path = _checkpoint_path(out, name).with_suffix(".json")
            if info_path.is_file():
                info = json.loads(info_path.read_text())
                accuracies[name] = info.get("accuracy")
                seconds[name] = info.get("seconds", 0.0)
                stage_metrics[name] = info.get("metrics", {})
        load_checkpoint(_checkpoint_path(out, previous[-1]), model, state)
        log(f"resumed from checkpoint {previous[-1]}")

    # -- stages -----------------------------------------------------------------------------
    encode_cfg = EncodeConfig()
    for stage in recipe.stages[start:]:
        if isinstance(stage, EncodeConfig):
            encode_cfg = stage
            continue
        t0 = time.perf_counter()
        ctx.metrics = {}
        STAGE_HANDLERS[stage.KIND](model, stage, ctx)
        state.check()       # every stage's invariants, here once rather than in each handler
        seconds[stage.name] = time.perf_counter() - t0
        accuracies[stage.name] = evaluate(model, test_set)
        stage_metrics[stage.name] = dict(ctx.metrics, sparsity=state.sparsity())
        log(f"{stage.name}: accuracy {accuracies[stage.name]:.2%}, "
            f"sparsity {state.sparsity():.1%}, {seconds[stage.name]:.1f} s")
        save_checkpoint(_checkpoint_path(out, stage.name), model, state,
                        {"stage": stage.name, "kind": stage.KIND, "accuracy": accuracies[stage.name],
                         "seconds": seconds[stage.name], "metrics": stage_metrics[stage.name],
                         "recipe_sha256": recipe.sha256()})

    check_finite(model, "final model")
    report = _report(recipe, state, accuracies, seconds, stage_metrics, test_set)
    t0 = time.perf_counter()
    report.update(_write_files(out, recipe, model, state, encode_cfg, report))
    report["seconds"]["encode"] = time.perf_counter() - t0
    report["seconds"]["total"] = sum(v for k, v in report["seconds"].items() if k != "total")
    write_json_atomic(out / "report.json", report)
    return RunResult(out, report, model, state)


def _teacher(recipe: Recipe, out: Path, train_set: Split) -> Callable[[], torch.Tensor]:
    """The dense baseline's logits on the training set, computed once on first use."""
    cache: list[torch.Tensor] = []

    def logits() -> torch.Tensor:
        if not cache:
            teacher = build_model(recipe.model.name, recipe.model.kwargs)
            load_checkpoint(_checkpoint_path(out, BASELINE), teacher,
                            CompressionState.for_model(teacher))
            cache.append(predict(teacher, train_set.images))
        return cache[0]
    return logits


def _resume_index(recipe: Recipe, resume_from: str) -> int:
    if resume_from in ("baseline", BASELINE):
        return 0
    return recipe.stage_index(resume_from)


def _baseline(model: nn.Module, recipe: Recipe, ctx: StageContext) -> None:
    if recipe.model.weights:
        load_weights(model, load_state_dict_file(recipe.model.weights), source=recipe.model.weights)
        ctx.log(f"baseline weights loaded from {recipe.model.weights}")
        return
    b = ctx.baseline
    spec = ctx.train_spec(b.epochs, b.lr, b.weight_decay)
    train(model, ctx.train, spec, generator=ctx.generator(0), progress=ctx.progress,
          description="baseline")


def _report(recipe: Recipe, state: CompressionState, accuracies: dict, seconds: dict,
            stage_metrics: dict, test_set: Split) -> dict[str, Any]:
    final_name = ([BASELINE] + [s.name for s in recipe.stages if s.KIND != "encode"])[-1]
    return {
        "recipe": recipe.name,
        "recipe_sha256": recipe.sha256(),
        "model": recipe.model.name,
        "test_examples": len(test_set),
        "accuracy": {
            "baseline": accuracies.get(BASELINE),
            "final": accuracies.get(final_name),
            "stages": {k: v for k, v in accuracies.items() if k != BASELINE},
        },
        "sparsity": state.sparsity(),
        "layers": state.layer_rows(),
        "stages": stage_metrics,
        "seconds": dict(seconds),
    }


def _write_files(out: Path, recipe: Recipe, model: nn.Module, state: CompressionState,
                 encode: EncodeConfig, report: dict) -> dict[str, Any]:
    """Pack the final model (and the per-stage files of the paper's table); real bytes on disk."""
    import dcz as container   # the file format: no training code; imported here to keep `run` lean

    meta = {
        "model": {"name": recipe.model.name, "kwargs": recipe.model.kwargs,
                  "input_shape": list(recipe.model.input_shape)},
        "recipe": recipe.to_dict(),
        "recipe_sha256": recipe.sha256(),
        "accuracy": report["accuracy"],
        "data": {"root": recipe.data.root},
    }
    compressed = {}
    for name, layer in state.layers.items():
        settings = encode.for_layer(name, layer.type_name)
        if settings is None or (layer.mask is None and layer.centroids is None):
            continue
        compressed[f"{name}.weight"] = {"bits": layer.bits, "index_bits": settings.get("index_bits")}
    final = container.pack(model.state_dict(), out / "model.dcz", compressed=compressed, meta=meta,
                           coder=encode.coder, plain_dtype=encode.plain_dtype)
    sizes = {"dense_bytes": final.dense_bytes, "compressed_bytes": final.bytes,
             "compression_ratio": final.dense_bytes / final.bytes}
    sizes["stage_ratios"] = _stage_ratios(out, recipe, model, meta, compressed, final)
    return sizes


def _stage_ratios(out: Path, recipe: Recipe, model: nn.Module, meta: dict, compressed: dict,
                  final: Any) -> list[dict[str, Any]]:
    """The paper's per-stage table: pruning alone; + sharing; + coding, each a real file."""
    import dcz as container

    rows = []
    last_of = {}
    for stage in recipe.stages:
        if stage.KIND in ("prune",):
            last_of["prune"] = stage.name
        if stage.KIND in ("share", "finetune_centroids"):
            last_of["share"] = stage.name
    stage_dir = out / "stages"
    for label, key in (("pruning", "prune"), ("pruning + sharing", "share")):
        name = last_of.get(key)
        path = _checkpoint_path(out, name) if name else None
        if path is None or not path.is_file():
            continue
        sd = load_state_dict_file(path)
        rep = container.pack(sd, stage_dir / f"{name}.dcz", compressed=compressed, meta=meta,
                             coder="none")
        rows.append({"stage": label, "file": str(rep.path), "bytes": rep.bytes,
                     "ratio": rep.dense_bytes / rep.bytes})
    rows.append({"stage": "pruning + sharing + coding", "file": str(final.path),
                 "bytes": final.bytes, "ratio": final.dense_bytes / final.bytes})
    return rows
