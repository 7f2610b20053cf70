"""What the pipeline knows about each compressible layer besides its weights: mask and codebook.

The invariants are enforced here and checked by :meth:`CompressionState.check`:
- a pruned weight (mask False) is exactly 0 in every later stage;
- a shared layer's weight equals ``centroids[assignments]`` where the mask is set, so it holds at
  most ``2**bits`` distinct non-zero values.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from dccore.errors import CheckpointError, ModelError
from .models import compressible_layers, layer_type, weight_param


@dataclass
class LayerState:
    module: nn.Module
    type_name: str
    mask: torch.Tensor | None = None          # bool, weight's shape; None = not pruned
    centroids: torch.Tensor | None = None     # float32 (k,); None = not shared
    assignments: torch.Tensor | None = None   # int64, weight's shape (0 where pruned)
    bits: int | None = None
    # rows (axis 0) per codebook; None: one codebook. Grouped codebooks sit flat in
    # ``centroids``, 2**bits per group, and assignments index that flat table
    group_size: int | None = None
    # the parameter of ``module`` this layer is: None, the module's one weight (weight_param);
    # a recurrent layer's entries each name one matrix ("weight_hh_l0")
    param: str | None = None
    # a codebook on an integer grid (the share stage's grid = "int4" / "int8", what LiteRT's
    # quantized weights hold): group g's 2**bits centroids are exactly scales[g] * levels[g's
    # entries] in float32, the levels integers in the grid's range (int8 [-127, 127], int4
    # [-8, 7]; zero point 0). None: free centroids
    grid: str | None = None
    scales: torch.Tensor | None = None        # float32 (groups,), > 0
    levels: torch.Tensor | None = None        # int8, like ``centroids`` (groups x 2**bits,)

    @property
    def weight(self) -> torch.Tensor:
        return getattr(self.module, self.param or weight_param(self.module) or "weight")

    def cluster_sums(self, values: torch.Tensor) -> torch.Tensor:
        """Per centroid, the sum of ``values`` (weight-shaped) over its kept weights."""
        keep = self.mask if self.mask is not None else torch.ones_like(values, dtype=torch.bool)
        return torch.zeros(self.centroids.numel(), dtype=values.dtype).index_add_(
            0, self.assignments[keep], values[keep])

    def grouped_ok(self) -> bool:
        """Every kept weight of a grouped layer reads a centroid of its own rows' codebook."""
        k = 2 ** self.bits
        rows = torch.arange(self.weight.shape[0]).reshape(-1, *([1] * (self.weight.dim() - 1)))
        group = (rows // self.group_size).expand_as(self.assignments)
        ok = (self.assignments // k) == group
        if self.mask is not None:
            ok |= ~self.mask
        return bool(ok.all()) and self.centroids.numel() == k * -(-self.weight.shape[0]
                                                                  // self.group_size)

    def grid_centroids(self) -> torch.Tensor:
        """The centroids a grid codebook stands for: each group's scale times its levels."""
        k = 2 ** self.bits
        return self.scales.repeat_interleave(k) * self.levels.float()

    def grid_ok(self) -> bool:
        """A grid layer's centroids are exactly its scales times integer levels in range."""
        from .share import GRIDS

        if self.grid not in GRIDS or self.scales is None or self.levels is None:
            return False
        lo, hi = GRIDS[self.grid]
        return (self.levels.numel() == self.centroids.numel()
                and self.scales.numel() * 2 ** self.bits == self.levels.numel()
                and bool((self.scales > 0).all())
                and int(self.levels.min()) >= lo and int(self.levels.max()) <= hi
                and torch.equal(self.centroids, self.grid_centroids()))

    def enforce(self) -> None:
        """Write the constraints into the weight (after every optimiser step)."""
        with torch.no_grad():
            if self.centroids is not None:
                w = self.centroids[self.assignments]
                if self.mask is not None:
                    w = torch.where(self.mask, w, torch.zeros_like(w))
                self.weight.copy_(w)
            elif self.mask is not None:
                self.weight.masked_fill_(~self.mask, 0.0)


@dataclass
class CompressionState:
    layers: dict[str, LayerState] = field(default_factory=dict)

    @classmethod
    def for_model(cls, model: nn.Module) -> "CompressionState":
        return cls({name: LayerState(m, layer_type(m), param=weight_param(m, name))
                    for name, m in compressible_layers(model).items()})

    def enforce(self) -> None:
        for layer in self.layers.values():
            layer.enforce()

    def mask_gradients(self) -> None:
        """Zero the gradients of pruned weights so the optimiser's state ignores them."""
        for layer in self.layers.values():
            if layer.mask is not None and layer.weight.grad is not None:
                layer.weight.grad.masked_fill_(~layer.mask, 0.0)

    def check(self) -> None:
        """Raise ModelError if an invariant does not hold (a bug, or a corrupt checkpoint)."""
        for name, layer in self.layers.items():
            w = layer.weight.detach()
            if not torch.isfinite(w).all():
                raise ModelError(f"layer {name}: weights hold NaN or infinite values")
            if layer.mask is not None and bool((w[~layer.mask] != 0).any()):
                raise ModelError(f"layer {name}: a pruned weight is non-zero")
            if layer.centroids is not None and layer.group_size is None:
                distinct = torch.unique(w[w != 0]).numel()
                if distinct > 2 ** (layer.bits or 32):
                    raise ModelError(f"layer {name}: {distinct} distinct values exceed "
                                     f"2**{layer.bits}")
            elif layer.centroids is not None and not layer.grouped_ok():
                raise ModelError(f"layer {name}: a weight points outside its group's codebook")
            if layer.grid is not None and not layer.grid_ok():
                raise ModelError(f"layer {name}: its centroids are not its {layer.grid} grid "
                                 "(scale x integer levels)")

    # -- checkpoints: plain tensors only, so torch.load(weights_only=True) reads them ---------
    def to_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        out: dict[str, dict[str, torch.Tensor]] = {"masks": {}, "centroids": {}, "assignments": {},
                                                   "bits": {}}
        groups = {n: torch.tensor(layer.group_size) for n, layer in self.layers.items()
                  if layer.centroids is not None and layer.group_size is not None}
        if groups:   # only then: checkpoints of one-codebook layers stay as they were
            out["group_size"] = groups
        grids = {n: layer for n, layer in self.layers.items()
                 if layer.centroids is not None and layer.grid is not None}
        if grids:    # likewise: only checkpoints with grid codebooks carry these
            from .share import GRID_BITS

            out["grid"] = {n: torch.tensor(GRID_BITS[layer.grid]) for n, layer in grids.items()}
            out["scales"] = {n: layer.scales.detach().clone() for n, layer in grids.items()}
            out["levels"] = {n: layer.levels.clone() for n, layer in grids.items()}
        for name, layer in self.layers.items():
            if layer.mask is not None:
                out["masks"][name] = layer.mask.clone()
            if layer.centroids is not None:
                out["centroids"][name] = layer.centroids.detach().clone()
                out["assignments"][name] = layer.assignments.clone()
                out["bits"][name] = torch.tensor(layer.bits)
        return out

    def load_tensors(self, data: dict[str, dict[str, torch.Tensor]], source: str) -> None:
        for section in ("masks", "centroids", "assignments", "bits", "group_size", "grid",
                        "scales", "levels"):
            for name in data.get(section, {}):
                if name not in self.layers:
                    raise CheckpointError(f"{source}: {section} for unknown layer {name!r}")
        for name, layer in self.layers.items():
            mask = data.get("masks", {}).get(name)
            if mask is not None:
                if mask.shape != layer.weight.shape or mask.dtype != torch.bool:
                    raise CheckpointError(f"{source}: mask of {name} has the wrong shape or dtype")
                layer.mask = mask
            if name in data.get("centroids", {}):
                layer.centroids = data["centroids"][name].float()
                layer.assignments = data["assignments"][name].long()
                layer.bits = int(data["bits"][name])
                gs = data.get("group_size", {}).get(name)
                layer.group_size = int(gs) if gs is not None else None
                if layer.group_size is not None and (layer.group_size < 1
                                                     or not layer.grouped_ok()):
                    raise CheckpointError(f"{source}: grouped codebooks of {name} do not fit")
                width = data.get("grid", {}).get(name)
                layer.grid = layer.scales = layer.levels = None
                if width is not None:
                    layer.grid = {4: "int4", 8: "int8"}.get(int(width))
                    layer.scales = data.get("scales", {}).get(name)
                    layer.levels = data.get("levels", {}).get(name)
                    if layer.scales is not None:
                        layer.scales = layer.scales.float()
                    if layer.levels is not None:
                        layer.levels = layer.levels.to(torch.int8)
                    if not layer.grid_ok():
                        raise CheckpointError(f"{source}: the grid codebook of {name} does not "
                                              "fit (scales x levels must be its centroids)")
                if layer.assignments.shape != layer.weight.shape or (
                        layer.assignments.numel() and int(layer.assignments.max()) >= layer.centroids.numel()):
                    raise CheckpointError(f"{source}: assignments of {name} do not fit its codebook")

    # -- reporting ------------------------------------------------------------------------
    def layer_rows(self) -> list[dict]:
        rows = []
        for name, layer in self.layers.items():
            w = layer.weight.detach()
            n = w.numel()
            nnz = int((w != 0).sum())
            rows.append({
                "name": name, "type": layer.type_name, "shape": list(w.shape),
                "parameters": n, "nonzeros": nnz, "sparsity": 1 - nnz / n if n else 0.0,
                "bits": layer.bits, "distinct_values": int(torch.unique(w[w != 0]).numel()),
            })
        return rows

    def sparsity(self) -> float:
        total = sum(layer.weight.numel() for layer in self.layers.values())
        zeros = sum(int((layer.weight == 0).sum()) for layer in self.layers.values())
        return zeros / total if total else 0.0
