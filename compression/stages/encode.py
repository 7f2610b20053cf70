"""The ``encode`` stage: entropy coding into the ``.dcz`` container (Han et al. 2016, §4).

An output-phase stage: it runs once the model is final and the report's figures are known, and
writes ``model.dcz`` plus one uncoded file per row of the paper's per-stage size table (pruning
alone; + sharing), so every ratio in the report is a real file's size. The container checks its
own round trip (``decode(encode(w)) == w``) in its tests; :func:`ensures` reads the written file
back and compares it with the model.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from dccore.artifacts import artifact_sha256
from dccore.errors import ModelError

from dccore.config import Int, OneOf, setting
from .._context import StageContext
from .._state import CompressionState
from ..models import load_state_dict_file, weight_name
from ._base import Stage, StageConfig, register_stage

MODEL_FILE = "model.dcz"


@dataclass(frozen=True)
class EncodeConfig(StageConfig):
    """Entropy coding into the `.dcz` container (the last stage)."""

    KIND: ClassVar[str] = "encode"
    LAYER_FIELDS: ClassVar[tuple[str, ...]] = ("index_bits",)
    CODERS: ClassVar[tuple[str, ...]] = ("huffman", "ans", "none", "smallest")
    # the paper's method; "ans" gets closer to the entropy bound; "smallest": both are tried and
    # the smaller file kept (rANS wins on long streams, Huffman's smaller tables on short ones)
    coder: str = setting("huffman", OneOf(CODERS))
    # gap width; None: the width that minimises the file
    index_bits: int | None = setting(None, Int(1, 16))
    # biases and other uncompressed tensors: float32 keeps the model bit-exact
    plain_dtype: str = setting("float32", OneOf(("float32", "float16")))
    # what the file says besides the weights: "full" (the recipe and every stage's figures) or
    # "minimal" (the model to rebuild, the recipe's sha256, the final and baseline metric: about
    # 400 B less, which is 2-3% of a LeNet's file; the recipe stays in the run's recipe.json)
    metadata: str = setting("full", OneOf(("full", "minimal")))


def minimal_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The metadata a file needs to be rebuilt, traced and qualified: the model, the recipe's
    sha256, the data root, and the primary metric's final and baseline values."""
    out = {k: meta[k] for k in ("model", "recipe_sha256", "data") if k in meta}
    for key in ("accuracy", "primary_metric"):
        figures = meta.get(key)
        if isinstance(figures, dict):
            out[key] = {k: figures[k] for k in ("name", "baseline", "final", "higher_is_better")
                        if k in figures}
    return out


def compressed_weights(config: EncodeConfig, state: CompressionState) -> dict[str, dict]:
    """The weights stored sparse (pruned, shared or given a bit width, and not left alone by the
    config)."""
    out = {}
    for name, layer in state.layers.items():
        settings = config.for_layer(name, layer.type_name)
        if settings is None or (layer.mask is None and layer.centroids is None
                                and layer.bits is None):
            continue
        entry = {"bits": layer.bits, "index_bits": settings.get("index_bits")}
        if layer.group_size is not None:
            entry["group_size"] = layer.group_size
        out[weight_name(name, layer.module)] = entry
    return out


def pack(state_dict: dict, path: Path, *, coder: str, **options: Any):
    """``dcz.pack``; coder "smallest" packs with Huffman and with rANS and keeps the smaller
    file (ties: Huffman, the paper's). Returns the kept file's PackReport."""
    import dataclasses

    import dcz as container
    from dccore.outputs import DCZ, temporary_folder, write_bytes_atomic

    if coder != "smallest":
        return container.pack(state_dict, path, coder=coder, **options)
    with temporary_folder() as tmp:
        trials = [container.pack(state_dict, Path(tmp) / f"{c}.dcz", coder=c, **options)
                  for c in ("huffman", "ans")]
        best = min(trials, key=lambda r: r.bytes)
        write_bytes_atomic(path, best.path.read_bytes(), kind=DCZ)
    return dataclasses.replace(best, path=Path(path))


def write_model_file(state_dict: dict, state: CompressionState, path: Path,
                     config: EncodeConfig, meta: dict[str, Any]):
    """The one ``.dcz`` writer: the encode stage, ``Compressor.save`` and ``deepcompress pack``
    all come here, so one model, state and config give the same bytes whichever wrote them
    (the coder, "smallest" included, the plain dtype, the index widths and the metadata level)."""
    meta = dict(meta) if config.metadata == "full" else minimal_meta(meta)
    grids = grid_meta(state)
    if grids:     # at every metadata level: an exporter needs them to write the int tensors
        meta["grids"] = grids
    return pack(state_dict, Path(path), compressed=compressed_weights(config, state), meta=meta,
                coder=config.coder, plain_dtype=config.plain_dtype)


def grid_meta(state: CompressionState) -> dict[str, dict[str, Any]]:
    """Per weight on an integer grid (share's grid): {"grid": "int4" | "int8", "group_size":
    rows per scale, "scales": the float32 scales, little-endian, base64}. The tensor's values
    are exactly scale x an integer of the grid's range (zero point 0), so a LiteRT exporter
    writes q = value / scale (exact) and the scale, and the runtime multiplies back the same
    float32 weights."""
    import base64

    out = {}
    for name, layer in state.layers.items():
        if layer.grid is None or layer.centroids is None:
            continue
        raw = layer.scales.detach().float().contiguous().numpy().astype("<f4").tobytes()
        out[weight_name(name, layer.module)] = {
            "grid": layer.grid, "group_size": layer.group_size,
            "scales": base64.b64encode(raw).decode("ascii")}
    return out


def decoded_model(path: Path, name: str, kwargs: dict[str, Any]) -> torch.nn.Module:
    """The model as a loader of ``path`` gets it: built from its constructor (``name`` with
    ``kwargs``) and given the weights decoded from the file. Every figure that claims to be the
    file's is measured on this, not on the model in memory (float16 biases, say, differ)."""
    import dcz as container

    from ..models import build_model, load_weights

    model = build_model(name, kwargs)
    load_weights(model, container.load(path).state_dict, source=str(path))
    return model.eval()


def run(model: torch.nn.Module, config: EncodeConfig, ctx: StageContext) -> None:
    """Write model.dcz and the size table's files; their sizes go into ``ctx.metrics``."""
    import dcz as container   # the file format: no training code; imported here to keep `run` lean

    out = ctx.output
    if out is None:
        raise RuntimeError("encode: the pipeline gave no output folder")
    compressed = compressed_weights(config, ctx.state)
    final = write_model_file(model.state_dict(), ctx.state, out.folder / MODEL_FILE, config,
                             out.meta)
    rows = []
    for label, name, checkpoint in out.rows:
        rep = container.pack(load_state_dict_file(checkpoint),
                             out.folder / "stages" / f"{name}.dcz",
                             compressed=compressed, meta=out.meta, coder="none")
        rows.append({"stage": label, "file": str(rep.path), "bytes": rep.bytes,
                     "ratio": rep.dense_bytes / rep.bytes})
    rows.append({"stage": STAGE.size_row, "file": str(final.path), "bytes": final.bytes,
                 "ratio": final.dense_bytes / final.bytes})
    ctx.metrics.update(dense_bytes=final.dense_bytes, compressed_bytes=final.bytes,
                       compression_ratio=final.dense_bytes / final.bytes, stage_ratios=rows,
                       model_sha256=artifact_sha256(final.path))


def ensures(model: torch.nn.Module, config: EncodeConfig, ctx: StageContext) -> None:
    """The file decodes to the model: every weight bit-exact (plain tensors too when stored as
    float32)."""
    import dcz as container

    decoded = container.load(ctx.output.folder / MODEL_FILE).state_dict
    exact = config.plain_dtype == "float32"
    for name, tensor in model.state_dict().items():
        if name not in decoded:
            raise ModelError(f"encode: {MODEL_FILE} lacks tensor {name!r}")
        got = decoded[name]
        same = torch.equal(got, tensor) if exact or not tensor.is_floating_point() else \
            torch.allclose(got.float(), tensor.float(), rtol=1e-3, atol=1e-4)
        if not same:
            raise ModelError(f"encode: {MODEL_FILE} does not decode to the model's {name!r}")


STAGE = register_stage(Stage(
    EncodeConfig, run, ensures,
    last=True,
    size_row="pruning + sharing + coding",
    phase="output",
))
