"""The ``share`` stage: per-layer 1-D k-means weight sharing of the surviving weights
(Han et al. 2016, §3). The clustering itself is ``compression/share.py``."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from dccore.errors import ModelError, RecipeError

from dccore.config import Int, OneOf, setting
from .._context import StageContext
from ..share import GRID_BITS, share_grouped, share_layer, share_on_grid
from ._base import CONV_TYPES, Stage, StageConfig, register_stage


@dataclass(frozen=True)
class ShareConfig(StageConfig):
    """Per-layer 1-D k-means weight sharing of the surviving weights."""

    KIND: ClassVar[str] = "share"
    LAYER_FIELDS: ClassVar[tuple[str, ...]] = ("bits", "init", "group_size", "weighting",
                                                "compensate", "grid")
    INITS: ClassVar[tuple[str, ...]] = ("kmeans++", "linear", "density", "random")
    WEIGHTINGS: ClassVar[tuple[str, ...]] = ("none", "fisher", "activation")
    COMPENSATIONS: ClassVar[tuple[str, ...]] = ("none", "gptq")
    GRIDS: ClassVar[tuple[str, ...]] = ("none", "int4", "int8")
    # None: 8 for conv, 5 for fully connected (the paper's finding)
    bits: int | None = setting(None, Int(1, 16))
    # None: "kmeans++": seeds where weights are (linear init, the paper's, leaves most of an 8-bit
    # codebook empty on a pretrained transformer's bell-shaped weights)
    init: str | None = setting(None, OneOf(INITS))
    # rows per codebook (Core ML iOS 18's per-grouped-channel LUTs); None: one per tensor
    group_size: int | None = setting(None, Int(1, 1 << 20))
    # "fisher": each weight's error weighed by its sensitivity on calibration data (SqueezeLLM,
    # coremltools' SKM): centroids go where output error is costly; "activation": by the
    # squared norm of its input (the layer's own output error); "none": all alike
    weighting: str | None = setting(None, OneOf(WEIGHTINGS))
    # "gptq": assign weights to centroids column by column, pushing each column's error onto the
    # later columns through the inverse input curvature (GPTQ/SparseGPT; Linear and attention
    # layers), so the layer's outputs stay close without retraining; "none": nearest centroid
    compensate: str | None = setting(None, OneOf(COMPENSATIONS))
    # "int8" / "int4": each group's centroids are a scale times integers (int8 in [-127, 127],
    # int4 in [-8, 7], zero point 0): the int8 / int4 weights LiteRT holds exactly, so a .tflite
    # carries the .dcz's weights as they are. group_size is then rows per scale (None: one per
    # row, LiteRT's per-channel scale); bits <= the grid's width (None: the width: the whole grid,
    # only the scale fitted; fewer: a palette of 2**bits grid values per group). "none": free
    # centroids
    grid: str | None = setting(None, OneOf(GRIDS))
    iterations: int = setting(30, Int(1, 10000))   # Lloyd's; stops early once centroids settle
    # calibration examples for weighting = "fisher" (the first of the training split)
    calibration: int = setting(256, Int(1, 1 << 20))

    def defaults_for(self, type_name: str) -> dict[str, Any]:
        return {"bits": 8 if type_name in CONV_TYPES else 5, "init": "kmeans++",
                "group_size": None, "weighting": "none", "compensate": "none", "grid": "none"}

    def for_layer(self, name: str, type_name: str) -> dict[str, Any] | None:
        settings = super().for_layer(name, type_name)
        if settings is None or settings["grid"] == "none":
            return settings
        explicit = (self.bits is not None or "bits" in (self.by_type.get(type_name) or {})
                    or "bits" in (self._name_override(name) or {}))
        if not explicit:      # the paper's per-type default does not apply: the grid's width
            settings["bits"] = GRID_BITS[settings["grid"]]
        return settings

    def _check(self, path: str) -> None:
        """Each combination a layer can get (global, by_type, by_name) is checked: a grid
        with more bits than it holds is refused here, before any work."""
        super()._check(path)
        base = {f: getattr(self, f) for f in self.LAYER_FIELDS if getattr(self, f) is not None}
        types = [("", {})] + [(f".by_type.{t}", v) for t, v in self.by_type.items() if v]
        names = [("", {})] + [(f".by_name.{n}", v) for n, v in self.by_name.items() if v]
        for type_path, by_type in types:
            for name_path, by_name in names:
                _check_grid({**base, **by_type, **by_name}, path + (name_path or type_path))

    @classmethod
    def _check_layer(cls, settings, path: str) -> None:
        _check_grid(settings, path)
        plain = settings.get("init") in ("density", "random")
        if plain and (settings.get("group_size") is not None
                      or settings.get("weighting") in ("fisher", "activation")
                      or settings.get("compensate") == "gptq"):
            raise RecipeError(f"{path}: group_size, weighting and compensate work with init "
                              "'kmeans++' or 'linear'")


def _check_grid(settings: dict, path: str) -> None:
    grid = settings.get("grid")
    if grid in (None, "none"):
        return
    bits = settings.get("bits")
    if bits is not None and bits > GRID_BITS[grid]:
        raise RecipeError(f"{path}: grid {grid!r} holds {GRID_BITS[grid]}-bit values; bits = "
                          f"{bits} asks for more (set bits <= {GRID_BITS[grid]}, or grid = "
                          "'int8')" if grid == "int4" else
                          f"{path}: grid {grid!r} holds 8-bit values; bits = {bits} asks for "
                          "more (set bits <= 8)")
    if settings.get("init") in ("density", "random"):
        raise RecipeError(f"{path}: grid works with init 'kmeans++' or 'linear', not "
                          f"{settings['init']!r}")


def activation_sensitivity(module: torch.nn.Module, hessian: torch.Tensor,
                           shape: torch.Size) -> torch.Tensor:
    """Each weight's error weighed by the mean square of the input it multiplies (diag H): the
    layer's own output error. For an Embedding (diagonal H: its inputs are one-hot) a row's
    weight is the share of the calibration tokens that look it up."""
    from ..calibration import from_weight_matrix, weight_matrix

    if hessian.dim() == 1:
        return hessian.reshape(-1, *([1] * (len(shape) - 1))).expand(shape)
    view = weight_matrix(module, torch.empty(shape))
    diag = torch.diagonal(hessian).reshape(view.shape[0], 1, view.shape[2])
    return from_weight_matrix(module, diag.expand(view.shape).contiguous(), shape)


def compensate(module: torch.nn.Module, weight: torch.Tensor, mask: torch.Tensor | None,
               centroids: torch.Tensor, bits: int, group_size: int | None,
               hessian: torch.Tensor) -> torch.Tensor:
    """GPTQ-style assignments for any layer that multiplies its input features: on the matrix
    each convolution group multiplies (:func:`compression.calibration.weight_matrix`; a
    transposed convolution's codebooks then run across columns), with that group's block of H."""
    from ..calibration import from_weight_matrix, weight_matrix
    from ..share import gptq_assign

    rows = weight.shape[0]
    gs = group_size or rows
    group_ids = (torch.arange(rows) // gs).reshape(-1, *([1] * (weight.dim() - 1)))
    groups = weight_matrix(module, group_ids.expand(weight.shape))
    keep = weight_matrix(module, mask if mask is not None
                         else torch.ones_like(weight, dtype=torch.bool))
    matrix = weight_matrix(module, weight.detach())
    book = centroids.reshape(-1, 2 ** bits)
    cols = matrix.shape[2]
    out = torch.stack([gptq_assign(matrix[g], keep[g], book, groups[g],
                                   hessian[g * cols:(g + 1) * cols, g * cols:(g + 1) * cols])
                       for g in range(matrix.shape[0])])
    return from_weight_matrix(module, out, weight.shape)


def run(model: torch.nn.Module, config: ShareConfig, ctx: StageContext) -> None:
    """Cluster each chosen layer; its weights become their centroids.

    Layers without calibration statistics go first; then the layers weighed by their inputs or
    compensated (GPTQ) go in one forward pass of the calibration examples, each compressed when
    the pass reaches it, so each is measured on the model as compressed so far."""
    from ..calibration import has_features
    from ..progress import Countdown

    generator = ctx.generator(202)
    chosen = {name: s for name, layer in ctx.state.layers.items()
              if (s := config.for_layer(name, layer.type_name)) is not None}
    curved = {n: ctx.state.layers[n].module for n, s in chosen.items()
              if s["weighting"] == "activation" or s["compensate"] == "gptq"}
    for name, module in curved.items():     # every option applied, or refused before any work
        if not has_features(module):
            setting = "weighting 'activation'" if chosen[name]["weighting"] == "activation" \
                else "compensate 'gptq'"
            raise RecipeError(f"share: layer {name} ({ctx.state.layers[name].type_name}): "
                              f"{setting} needs the inputs the layer multiplies, which "
                              "calibration cannot measure for this type; set it to 'none' for "
                              "this layer (by_name or by_type)")
    for name, settings in chosen.items():
        if settings["grid"] != "none" and ctx.state.layers[name].type_name.startswith(
                "ConvTranspose"):
            raise RecipeError(f"share: layer {name} ({ctx.state.layers[name].type_name}): grid "
                              "scales are per row of the weight's first axis, a transposed "
                              "convolution's inputs, and LiteRT scales its outputs; set grid = "
                              "'none' for this layer (by_name or by_type)")
    sensitivity: dict[str, torch.Tensor] = {}
    weighted = [n for n, s in chosen.items() if s["weighting"] == "fisher"]
    if weighted:
        from ..calibration import task_sensitivity

        ctx.log(f"share: sensitivity (Fisher) of {len(weighted)} layers on "
                f"{min(config.calibration, len(ctx.train))} calibration examples")
        sensitivity = task_sensitivity(
            model, ctx.task, ctx.train.subset(config.calibration),
            {n: ctx.state.layers[n].weight for n in weighted}, seed=ctx.seed,
            progress=ctx.progress)
        ctx.metrics["calibration_examples"] = min(config.calibration, len(ctx.train))
    countdown = Countdown(ctx.progress, "share", {n: ctx.state.layers[n].weight.numel()
                                                   for n in chosen})

    def compress(name: str, hessian: torch.Tensor | None) -> None:
        settings, layer = chosen[name], ctx.state.layers[name]
        grid = settings["grid"] if settings["grid"] != "none" else None
        group_size = (settings["group_size"] or 1) if grid else settings["group_size"]
        notes = [f"{settings['bits']} bits"]
        if grid:
            notes.append(f"{grid} grid, a scale per "
                         + ("row" if group_size == 1 else f"{group_size} rows"))
        elif group_size:
            notes.append(f"{group_size} rows per codebook")
        if settings["weighting"] == "activation" and hessian is not None:
            sensitivity[name] = activation_sensitivity(layer.module, hessian, layer.weight.shape)
        if name in sensitivity:
            notes.append(f"{settings['weighting']}-weighted")
        scales = levels = None
        if grid:
            centroids, assign, scales, levels = share_on_grid(
                layer.weight, layer.mask, settings["bits"], grid, group_size=group_size,
                sensitivity=sensitivity.pop(name, None), iterations=config.iterations,
                generator=generator)
        elif (group_size is None and name not in sensitivity
                and settings["init"] != "kmeans++"):
            centroids, assign, _ = share_layer(layer.weight, layer.mask, settings["bits"],
                                               settings["init"], config.iterations, generator)
        else:
            centroids, assign, _ = share_grouped(
                layer.weight, layer.mask, settings["bits"], init=settings["init"],
                iterations=config.iterations, group_size=settings["group_size"],
                sensitivity=sensitivity.pop(name, None), generator=generator)
        if settings["compensate"] == "gptq" and hessian is not None:
            if hessian.dim() == 1:
                notes.append("GPTQ: nearest centroids (one-hot inputs, nothing to compensate)")
            else:
                assign = compensate(layer.module, layer.weight, layer.mask, centroids,
                                    settings["bits"], group_size, hessian)
                notes.append("GPTQ-compensated")
        if name in curved and hessian is None:
            notes.append("never reached by the calibration inputs: not weighted or compensated")
        layer.centroids, layer.assignments, layer.bits = centroids, assign, settings["bits"]
        layer.group_size = group_size
        layer.grid, layer.scales, layer.levels = grid, scales, levels
        layer.enforce()     # later layers' calibration inputs see this layer compressed
        ctx.log(f"{name}: {centroids.numel()} centroids ({', '.join(notes)}); layer "
                f"{countdown.done(name)}")

    try:
        for name in chosen:
            if name not in curved:
                compress(name, None)
        if curved:
            from ..calibration import sequential_hessians

            n = min(config.calibration, len(ctx.train))
            ctx.metrics["calibration_examples"] = n
            # the first n training examples in one batch: sequential GPTQ's one forward pass
            inputs = ctx.train.take(slice(0, n))[0]
            again = sequential_hessians(model, curved, inputs, compress)
            for name in again:
                ctx.log(f"{name}: its module runs more than once per forward; calibrated on "
                        "the inputs of its first call")
    finally:
        countdown.close()
    ctx.state.enforce()


def ensures_tied(names: list[str], ctx: StageContext, stage: str) -> None:
    """Each named layer's weight is its codebook read through its assignments (0 where masked),
    so it holds at most 2**bits distinct non-zero values."""
    for name in names:
        layer = ctx.state.layers[name]
        if layer.centroids is None:
            raise ModelError(f"{stage}: layer {name} has no codebook")
        w = layer.weight.detach()
        expected = layer.centroids[layer.assignments]
        if layer.mask is not None:
            expected = torch.where(layer.mask, expected, torch.zeros_like(expected))
        if not torch.equal(w, expected):
            raise ModelError(f"{stage}: layer {name} is not tied to its centroids")
        if layer.grid is not None and not layer.grid_ok():
            raise ModelError(f"{stage}: layer {name}'s centroids left its {layer.grid} grid "
                             "(each must be its group's scale x an integer level in range)")
        if layer.group_size is not None:   # the state's check covers the groups
            continue
        distinct = torch.unique(w[w != 0]).numel()
        if distinct > 2 ** layer.bits:
            raise ModelError(f"{stage}: layer {name} holds {distinct} distinct non-zero values, "
                             f"more than 2**{layer.bits}")


def ensures(model: torch.nn.Module, config: ShareConfig, ctx: StageContext) -> None:
    """Every chosen layer has a codebook of the bits asked for, and its weights hold at most
    2**bits distinct non-zero values."""
    chosen = []
    for name, layer in ctx.state.layers.items():
        settings = config.for_layer(name, layer.type_name)
        if settings is None:
            continue
        if layer.bits != settings["bits"]:
            raise ModelError(f"share: layer {name} has {layer.bits} bits, asked for "
                             f"{settings['bits']}")
        if (layer.grid or "none") != settings["grid"]:
            raise ModelError(f"share: layer {name} has grid {layer.grid or 'none'}, asked for "
                             f"{settings['grid']}")
        chosen.append(name)
    ensures_tied(chosen, ctx, "share")


register_stage(Stage(
    ShareConfig, run, ensures,
    provides=frozenset({"centroids"}),
    size_row="pruning + sharing",
))
