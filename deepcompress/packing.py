"""Writing a ``.dcz`` from a checkpoint (``deepcompress pack``) and decoding one back to a
state_dict (``unpack``).

``pack`` turns per-layer settings (sparsity, bits, group size, an integer grid) into a
post-training recipe run through ``compression.api.compress``, whose ``save`` is the one .dcz
writer; what the checkpoint already holds (zeros, few distinct values) is stored as such.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

from compression.share import GRID_BITS    # the bits of each integer grid's values
from dccore.errors import ContainerError


@dataclass(frozen=True)
class PackSettings:
    """What to do to every compressible layer (None: keep what the checkpoint holds), and per
    layer: ``layer`` items ``NAME:KEY=V[,KEY=V]`` (``--layer``), ``bits_for`` items ``LAYER=B``."""

    sparsity: float | None = None
    bits: int | None = None
    group_size: int | None = None
    grid: str | None = None           # "int4" | "int8": share on an integer grid LiteRT holds
    layer: Sequence[str] = ()
    bits_for: Sequence[str] = ()

    def for_layers(self, names: Sequence[str]) -> dict[str, dict]:
        """Each layer's sparsity / bits / group_size / grid, the per-layer items beating the
        global settings."""
        settings = {n: {"sparsity": self.sparsity, "bits": self.bits,
                        "group_size": self.group_size, "grid": self.grid} for n in names}
        items = [f"{spec.partition('=')[0]}:bits={spec.partition('=')[2]}"
                 for spec in self.bits_for]
        for item in [*self.layer, *items]:
            name, _, pairs = item.partition(":")
            layer = name[:-len(".weight")] if name.endswith(".weight") else name
            if layer not in settings or not pairs:
                raise ContainerError(f"--layer/--bits-for {item!r}: expected LAYER:KEY=VALUE with "
                                     f"LAYER one of {', '.join(names)}")
            for pair in pairs.split(","):
                key, _, value = pair.partition("=")
                if key == "grid":
                    if value not in ("int4", "int8", "none"):
                        raise ContainerError(f"--layer {item!r}: grid must be int4, int8 or none, "
                                             f"got {value!r}")
                    settings[layer]["grid"] = None if value == "none" else value
                    continue
                try:
                    settings[layer][key] = float(value) if key == "sparsity" else int(value)
                except ValueError:
                    raise ContainerError(f"--layer {item!r}: {key} needs a number, got "
                                         f"{value!r}") from None
                if key not in ("sparsity", "bits", "group_size"):
                    raise ContainerError(f"--layer {item!r}: unknown key {key!r}; allowed: "
                                         "sparsity, bits, group_size, grid")
        for layer, s in settings.items():
            if s["sparsity"] is not None and not 0 <= s["sparsity"] < 1:
                raise ContainerError(f"{layer}: sparsity must be in [0, 1), got "
                                     f"{s['sparsity']}")
            if s["bits"] is not None and not 1 <= s["bits"] <= 16:
                raise ContainerError(f"{layer}: bits must be in 1..16, got {s['bits']}")
            if s["grid"] is not None:
                width = GRID_BITS[s["grid"]]
                if s["bits"] is not None and s["bits"] > width:
                    raise ContainerError(f"{layer}: --grid {s['grid']} holds {width}-bit values; "
                                         f"bits {s['bits']} asks for more (at most {width})")
        return settings


def pack(checkpoint: str | os.PathLike[str], out: str | os.PathLike[str], *, model: str,
         model_kwargs: dict[str, Any], settings: PackSettings, coder: str = "huffman",
         index_bits: int | None = None, plain_dtype: str = "float32",
         metadata: str = "full") -> tuple[Any, list[str]]:
    """Write ``checkpoint``'s weights, built into ``model``, to ``out`` (checked before any
    work) with each layer's ``settings``. Returns the file's report
    (``dcz.PackReport``) and notes on settings that changed nothing."""
    import torch

    from compression.api import compress
    from compression.models import (build_model, compressible_layers, load_state_dict_file,
                                    load_weights, weight_name)
    from compression.stages import LAYER_TYPES
    from dccore.outputs import DCZ, check_output

    check_output(out, DCZ, flag="--out")
    state = load_state_dict_file(checkpoint)
    built = build_model(model, model_kwargs)
    load_weights(built, state, source=str(checkpoint))  # fail early if it is the wrong model
    layers = compressible_layers(built)
    chosen = settings.for_layers(list(layers))
    notes, cut, share = [], {}, {}
    for name, module in layers.items():
        s, w = chosen[name], state[weight_name(name, module)]
        zeros = float((w == 0).float().mean())
        if s["sparsity"] is not None:
            if zeros >= s["sparsity"]:
                notes.append(f"{name}: already {zeros:.1%} zeros; --sparsity {s['sparsity']} "
                             "changes nothing there")
            else:
                cut[name] = {"sparsity": s["sparsity"]}
        if s["grid"] is not None:    # values on the grid are fitted, whatever they were
            share[name] = {"bits": s["bits"] or GRID_BITS[s["grid"]],
                           "group_size": s["group_size"], "grid": s["grid"]}
        elif s["bits"] is not None:
            distinct = torch.unique(w[w != 0]).numel()
            if distinct <= 2 ** s["bits"]:
                notes.append(f"{name}: already {distinct} distinct values (<= 2**{s['bits']}): "
                             "kept exactly, stored with "
                             f"{s['bits']}-bit indices")
            else:
                share[name] = {"bits": s["bits"], "group_size": s["group_size"]}
        elif s["group_size"] is not None:
            notes.append(f"{name}: --group-size without --bits or --grid changes nothing")
    off = {t: False for t in LAYER_TYPES}
    stages = []
    if cut:
        stages.append({"kind": "prune", "sparsity": 0.5, "rounds": 1, "retrain_epochs": 0,
                       "by_type": off, "by_name": cut})
    if share:
        stages.append({"kind": "share", "by_type": off, "by_name": share})
    # the flags are a post-training recipe; Compressor.save is the one .dcz writer
    stages.append({"kind": "encode", "coder": coder, "index_bits": index_bits,
                   "plain_dtype": plain_dtype, "metadata": metadata})
    comp = compress(built, {"stages": stages})
    for name in layers:
        # what the checkpoint already holds is stored as such: its zeros sparse (a pruned
        # checkpoint packs without --sparsity), its few distinct values with --bits indices
        layer = comp.state.layers[name]
        if layer.mask is None and bool((layer.weight == 0).any()):
            layer.mask = layer.weight.detach() != 0
        if layer.bits is None and chosen[name]["bits"] is not None:
            layer.bits = chosen[name]["bits"]
    report = comp.save(out, meta={"model": {"name": model, "kwargs": model_kwargs},
                                  "source": {"checkpoint": str(checkpoint)}})
    return report, notes


def unpack(file: str | os.PathLike[str], out: str | os.PathLike[str]) -> dict[str, Any]:
    """Decode ``file`` to a state_dict saved with ``torch.save`` at ``out`` (checked before any
    work); returns a summary (tensors, bytes written)."""
    import torch

    from dccore.outputs import TORCH_FILE, atomic_path, check_output
    from dcz import load

    check_output(out, TORCH_FILE, flag="--out")
    dcz = load(file)
    with atomic_path(out, kind=TORCH_FILE) as tmp:
        with open(tmp, "wb") as fh:   # a read-only folder: PermissionError naming it (torch
            torch.save(dcz.state_dict, fh)   # would say RuntimeError "open file failed")
    return {"file": str(dcz.path), "out": str(out), "tensors": len(dcz.state_dict),
            "bytes": os.stat(out).st_size}
