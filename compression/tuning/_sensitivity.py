"""Per-layer sensitivity: the task metric against sparsity and against bits, one layer at a time.

For each compressible layer the recipe compresses, alone (every other layer dense):

- **sparsity**: the recipe's own prune stage (its method, retraining rate and distillation) cuts
  the layer to each sparsity of a grid in turn, each cut continuing from the last and followed by
  ``retrain_epochs`` of retraining (0: none, the one-shot curve). One path of gradual pruning, as
  the pipeline's rounds are: a point far along it has been cut and retrained several times, as
  it would be in a run, for the price of one retraining per point;
- **bits**: at each sparsity of that path whose drop is at most ``grid_drop`` (and always at the
  saturation sparsity), the recipe's share stage clusters the layer to each bit width, then its
  centroids are fine-tuned ``retrain_epochs``. A table, not one curve: the loss of few bits
  grows as a layer is pruned (each surviving weight carries more), and the autotuner has to know
  what 3 bits cost at the sparsity it chooses, not on the dense layer;
- **bytes**: what the layer's tensor costs in a ``.dcz`` file at every (sparsity, bits) pair,
  measured by packing the baseline weight cut and clustered that way (real files, the recipe's
  coder): the autotuner's size model.

Each point is scored on the validation split. The **saturation point** of a curve is the last
grid point before the metric falls by more than ``tolerance``: the largest sparsity, the
fewest bits, that cost (nearly) nothing. Drops are read on the curve's monotone fit (isotonic
regression: a harsher point never costs less than a gentler one), since a short retraining can
land a noisy hair above the baseline, and a point far along the pruning path has had more
retraining than the one before it.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from dccore.config import Checked, Int, List, Num, Text, setting
from dccore.errors import RecipeError

from .._state import CompressionState
from ..models import weight_name
from ..prune import magnitude_mask
from ..share import share_grouped, share_layer
from ..stages import STAGES, StageConfig
from ..pipeline import show_metric
from ._workbench import Workbench, show_drop

SPARSITIES = (0.5, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.96, 0.97, 0.98, 0.99)
BITS = (8, 7, 6, 5, 4, 3, 2)
TOLERANCE = 0.001   # 0.1 point of accuracy: below the resolution of a 6,000-example split
GRID_DROP = 0.02    # 2 points: a layer alone costing more than this is past any sensible budget


@dataclass(frozen=True)
class SensitivitySettings(Checked):
    """The grid and the judgement of ``sensitivity``, checked when made (ConfigError, exit 2)."""

    sparsities: tuple[float, ...] = setting(SPARSITIES, List(Num(0, 1, lo_open=True, hi_open=True),
                                                             nonempty=True))
    bits: tuple[int, ...] = setting(BITS, List(Int(1, 16), nonempty=True))
    # epochs of retraining per point (prune: the survivors; bits: the centroids); 0: one-shot
    retrain_epochs: int = setting(1, Int(0))
    # retrain on the first N training examples only (None: all); the curves' cost is N x points
    train_examples: int | None = setting(None, Int(1))
    tolerance: float = setting(TOLERANCE, Num(0))     # metric units: the drop a saturation point may cost
    # bits are measured at every sparsity of the path that costs at most this (metric units):
    # beyond it the autotuner would not cut anyway; 0: at the saturation sparsity only
    grid_drop: float = setting(GRID_DROP, Num(0, 1, hi_open=True))
    layers: tuple[str, ...] | None = setting(None, List(Text()))  # None: every layer the recipe compresses


def stage_of(recipe, kind: str) -> StageConfig | None:
    return next((s for s in recipe.stages if s.KIND == kind), None)


def _config(kind: str, data: Mapping[str, Any]) -> StageConfig:
    return STAGES.get(kind).config.from_dict(dict(data), f"sensitivity {kind}")


def monotone(drops: Sequence[float]) -> list[float]:
    """The closest non-decreasing sequence in least squares (isotonic regression, pool adjacent
    violators): a harsher point never costs less than a gentler one, and a point measured a
    little better than its neighbours (noise, or more retraining along the path) is averaged
    with them rather than believed or ignored."""
    blocks: list[list[float]] = []          # [mean, count]
    for d in drops:
        blocks.append([float(d), 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m2, n2), (m1, n1) = blocks.pop(), blocks.pop()
            blocks.append([(m1 * n1 + m2 * n2) / (n1 + n2), n1 + n2])
    return [m for m, n in blocks for _ in range(int(n))]


def saturation(values: Sequence[Any], drops: Sequence[float], tolerance: float) -> Any:
    """The last of ``values`` (ordered gentle to harsh) whose drop, on the monotone fit, is
    within ``tolerance``; None when even the first costs more."""
    best = None
    for v, d in zip(values, monotone(drops)):
        if d > tolerance + 1e-12:
            break
        best = v
    return best


def layer_plan(recipe, state: CompressionState, only: Sequence[str] | None
               ) -> dict[str, dict[str, Any]]:
    """Each layer the recipe compresses: its prune and share settings (None: that stage leaves
    it alone)."""
    prune, share = stage_of(recipe, "prune"), stage_of(recipe, "share")
    plan = {}
    for name, layer in state.layers.items():
        p = prune.for_layer(name, layer.type_name) if prune is not None else None
        s = share.for_layer(name, layer.type_name) if share is not None else None
        if p is None and s is None:
            continue
        plan[name] = {"type": layer.type_name, "parameters": layer.weight.numel(),
                      "prune": p, "share": s}
    if only:
        unknown = sorted(set(only) - set(plan))
        if unknown:
            raise RecipeError(f"--layer {unknown[0]}: not a layer this recipe compresses; it "
                              f"compresses {sorted(plan)}")
        plan = {n: v for n, v in plan.items() if n in only}
    if not plan:
        raise RecipeError("the recipe compresses no layer: nothing to measure (it needs a prune "
                          "or share stage)")
    return plan


def positions(bench: Workbench) -> dict[str, int]:
    """How many times each layer's weights are applied per example (output positions of a
    convolution, 1 for a fully connected layer): a sparse kernel's work is nnz x this."""
    model = bench.fresh_model()
    state = CompressionState.for_model(model)
    seen: dict[str, int] = {}
    hooks = []
    for name, layer in state.layers.items():
        def hook(module, args, out, name=name):
            t = out[0] if isinstance(out, tuple) else out
            channels = layer_out_channels(module)
            seen[name] = max(1, int(t[:1].numel()) // max(channels, 1))
        hooks.append(layer.module.register_forward_hook(hook))
    try:
        inputs, _ = bench.val.take(slice(0, 1))
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in hooks:
            h.remove()
    return seen


def layer_out_channels(module: torch.nn.Module) -> int:
    for attr in ("out_features", "out_channels", "embedding_dim", "embed_dim"):
        if hasattr(module, attr):
            return int(getattr(module, attr))
    return 1


# --------------------------------------------------------------------------------------------

def measure(bench: Workbench, settings: SensitivitySettings = SensitivitySettings(),
            coder: str = "ans") -> dict[str, Any]:
    """The curves of every layer (see the module docstring), as plain data."""
    recipe = bench.recipe
    t_start = time.perf_counter()
    probe = CompressionState.for_model(bench.fresh_model())
    plan = layer_plan(recipe, probe, settings.layers)
    prune, share = stage_of(recipe, "prune"), stage_of(recipe, "share")
    finetune = stage_of(recipe, "finetune_centroids")
    where = positions(bench)
    sparsities = tuple(sorted(set(settings.sparsities)))
    bits = tuple(sorted(set(settings.bits), reverse=True))
    layers: dict[str, Any] = {}
    for name, info in plan.items():
        others = {n: False for n in probe.layers if n != name}
        entry: dict[str, Any] = {"type": info["type"], "parameters": info["parameters"],
                                 "positions": where.get(name, 1)}
        kept: dict[float, tuple[dict, torch.Tensor | None]] = {0.0: (bench.baseline_state, None)}
        if info["prune"] is not None:
            points = [{"sparsity": 0.0, "metric": bench.baseline_metric, "drop": 0.0,
                       "seconds": 0.0}]
            model = bench.fresh_model()
            state = CompressionState.for_model(model)
            for s in sparsities:    # one path: each cut continues from the last (masks shrink)
                config = _config("prune", {
                    **_prune_training(prune), "sparsity": s, "rounds": 1,
                    "retrain_epochs": settings.retrain_epochs, "by_name": others,
                    **({"method": info["prune"]["method"]} if info["prune"].get("method") else {})})
                seconds = bench.run_stage(model, state, config)
                value = bench.evaluate(model)
                points.append({"sparsity": s, "metric": value, "drop": bench.drop(value),
                               "seconds": seconds})
                kept[s] = ({k: v.clone() for k, v in model.state_dict().items()},
                           state.layers[name].mask.clone())
                bench.log(f"{name} sparsity {s:.2f}: {show_metric(bench.metric, value)} "
                          f"({show_drop(bench.drop(value))}), {seconds:.1f} s")
            entry["sparsity"] = points
            sat = saturation([p["sparsity"] for p in points], [p["drop"] for p in points],
                             settings.tolerance)
            entry["saturation_sparsity"] = sat if sat is not None else 0.0
        else:
            entry["sparsity"] = None
            entry["saturation_sparsity"] = 0.0
        if info["share"] is not None:
            at = entry["saturation_sparsity"]
            path = entry["sparsity"] or [{"sparsity": 0.0, "drop": 0.0}]
            fit = monotone([p["drop"] for p in path])
            rows = [p["sparsity"] for p, d in zip(path, fit)
                    if p["sparsity"] == at or (settings.grid_drop > 0
                                               and d <= settings.grid_drop + 1e-12)]
            grid = []
            for s in rows:
                points = []
                for b in bits:
                    model = bench.fresh_model()
                    sd, mask = kept[s]
                    model.load_state_dict(sd)
                    state = CompressionState.for_model(model)
                    state.layers[name].mask = mask.clone() if mask is not None else None
                    config = _config("share", {**_share_layer(info["share"]), "bits": b,
                                               "by_name": others})
                    seconds = bench.run_stage(model, state, config)
                    if settings.retrain_epochs > 0:
                        seconds += bench.run_stage(model, state, _config("finetune_centroids", {
                            **_finetune_training(finetune), "epochs": settings.retrain_epochs}))
                    value = bench.evaluate(model)
                    points.append({"bits": b, "metric": value, "drop": bench.drop(value),
                                   "seconds": seconds})
                    bench.log(f"{name} {b} bits at sparsity {s:.2f}: "
                              f"{show_metric(bench.metric, value)} "
                              f"({show_drop(bench.drop(value))}), {seconds:.1f} s")
                grid.append(points)
            points = grid[rows.index(at)]
            entry["bits"] = {"at_sparsity": at, "points": points}
            entry["bits_grid"] = {"sparsity": rows, "bits": list(bits),
                                  "drop": [[p["drop"] for p in row] for row in grid],
                                  "metric": [[p["metric"] for p in row] for row in grid]}
            sat = saturation([p["bits"] for p in points], [p["drop"] for p in points],
                             settings.tolerance)
            entry["saturation_bits"] = sat if sat is not None else max(bits)
        else:
            entry["bits"] = None
            entry["bits_grid"] = None
            entry["saturation_bits"] = None
        entry["bytes"] = size_table(bench, name, info, sparsities, bits, share, coder)
        layers[name] = entry
    return {
        "recipe": recipe.name,
        "recipe_sha256": recipe.sha256(),
        "metric": bench.metric,
        "higher_is_better": bench.task.higher_is_better,
        "validation_examples": len(bench.val),
        "train_examples": len(bench.train),
        "baseline": {"validation": bench.baseline_metric},
        "settings": {**asdict(settings), "sparsities": list(sparsities), "bits": list(bits),
                     "coder": coder},
        "layers": layers,
        "seconds": time.perf_counter() - t_start,
    }


def _prune_training(prune: StageConfig | None) -> dict[str, Any]:
    """The recipe's retraining settings for pruning (its rate and distillation)."""
    if prune is None:
        return {}
    keys = ("lr", "weight_decay", "distill", "temperature", "calibration")
    return {k: getattr(prune, k) for k in keys if getattr(prune, k) is not None}


def _finetune_training(finetune: StageConfig | None) -> dict[str, Any]:
    if finetune is None:
        return {}
    return {k: getattr(finetune, k) for k in ("lr", "distill", "temperature")
            if getattr(finetune, k) is not None}


def _share_layer(settings: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in settings.items() if k in ("init", "group_size", "weighting")
            and v is not None}


def size_table(bench: Workbench, name: str, info: Mapping[str, Any],
               sparsities: Sequence[float], bits: Sequence[int], share: StageConfig | None,
               coder: str) -> dict[str, Any]:
    """Bytes of the layer's tensor in a .dcz file at each (sparsity, bits): the baseline weight
    cut by magnitude and clustered as the recipe's share stage would, packed with ``coder``.
    ``bits`` None (the recipe does not share the layer): the survivors stored raw."""
    import dcz as container

    model = bench.fresh_model()
    state = CompressionState.for_model(model)
    layer = state.layers[name]
    weight = layer.weight.detach().clone()
    key = weight_name(name, layer.module)
    grid_s = [0.0] + [s for s in sparsities if info["prune"] is not None]
    grid_b: list[int | None] = list(bits) if info["share"] is not None else [None]
    init = (info["share"] or {}).get("init") or "kmeans++"
    group = (info["share"] or {}).get("group_size")
    iterations = share.iterations if share is not None else 30
    table = []
    with tempfile.TemporaryDirectory(prefix="deepcompress-sizes-") as tmp:
        path = Path(tmp) / "layer.dcz"
        for s in grid_s:
            mask = magnitude_mask(weight, sparsity=s) if s > 0 else torch.ones_like(
                weight, dtype=torch.bool)
            row = []
            for b in grid_b:
                w = torch.where(mask, weight, torch.zeros_like(weight))
                if b is not None:
                    gen = torch.Generator().manual_seed(bench.recipe.seed * 1000 + 202)
                    if group is None and init != "kmeans++":
                        c, a, _ = share_layer(weight, mask, b, init, iterations, gen)
                    else:
                        c, a, _ = share_grouped(weight, mask, b, init=init, iterations=iterations,
                                                group_size=group, generator=gen)
                    w = torch.where(mask, c[a], torch.zeros_like(weight))
                spec = {"bits": b, **({"group_size": group} if group else {})}
                report = container.pack({key: w}, path, compressed={key: spec}, coder=coder)
                row.append(report.tensors[0].bytes)
            table.append(row)
    return {"sparsity": grid_s, "bits": grid_b, "table": table}
