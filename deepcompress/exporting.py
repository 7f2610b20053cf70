"""A ``.dcz`` model to an artifact of any registered format, validated and measured: what
``deepcompress export`` does for each format it is asked for, and qualify's export phase too.

``load`` rebuilds the model from the file (``deepcompress.loading``), reads back the layers the
file stores compressed, and loads the examples with their scorer and PyTorch's outputs on them;
``export_format`` exports through ``exporters.EXPORTERS``, measures the same model exported
uncompressed, validates, and (``beside``) scores and times the artifact beside those
uncompressed exports. Nothing here names a format.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Mapping, Sequence

import numpy as np

from dccore.artifacts import artifact_size
from dccore.errors import ExportError

from .examples import ValidationSet, file_examples, idx_examples

# timed runs per artifact for the host p50: enough for a stable median of a small model
LATENCY_RUNS = 50

Step = Callable[[str], ContextManager[Any]]


@dataclass(frozen=True)
class Loaded:
    """The model rebuilt from a .dcz, what the file holds compressed, and the examples."""

    model: Any                        # nn.Module, in eval mode
    dcz: Any                          # dcz.Dcz
    layers: Mapping[str, Any]         # name -> exporters.CompressedLayer
    examples: ValidationSet
    score: Any                        # exporters.Scorer: accuracy with labels, else cosine
    reference: np.ndarray             # PyTorch's outputs on the examples


def load(path: str | os.PathLike[str], *, model: str | None = None,
         model_kwargs: dict[str, Any] | None = None, inputs: str | os.PathLike[str] | None = None,
         data: str | None = None, input_shape: Sequence[int] | None = None,
         limit: int | None = None) -> Loaded:
    """``path``'s model (``model``/``model_kwargs``: the factory the user names, see
    ``loading.model_from_dcz``) with the examples of ``inputs``, else the IDX test set
    (``data``, ``input_shape``), the first ``limit`` of them."""
    from exporters import accuracy_scorer, cosine_scorer, torch_outputs  # noqa: PLC0415

    from .loading import model_from_dcz  # noqa: PLC0415

    built, dcz = model_from_dcz(path, model=model, model_kwargs=model_kwargs)
    layers = dcz_layers(built, dcz)
    examples = (file_examples(inputs, built, limit=limit) if inputs is not None else
                idx_examples(dcz.meta, path, input_shape=input_shape, data=data, limit=limit))
    score = accuracy_scorer(examples.labels) if examples.labels is not None else cosine_scorer()
    return Loaded(built, dcz, layers, examples, score, torch_outputs(built, examples.inputs))


def dcz_layers(model: Any, dcz: Any) -> dict[str, Any]:
    """The layers the .dcz stores compressed, read back from the weights and checked against the
    file's codebooks: the exporters see exactly what the container holds."""
    from exporters import compressed_layers  # noqa: PLC0415

    layers = compressed_layers(model, list(dcz.layers))
    for name, info in layers.items():
        codebook = dcz.layers[name].codebook
        if codebook is not None and not np.isin(info.codebook, codebook).all():
            raise ExportError(f"{dcz.path}: layer {name!r} holds values outside its codebook; "
                              "the file is inconsistent")
    # grouped codebooks (one per group_size rows): the exporters store them per group
    return {n: dataclasses.replace(info, group_size=dcz.layers[n].group_size)
            for n, info in layers.items()}


def export_format(loaded: Loaded, exporter: Any, path: Path, options: Any, *,
                  baseline: bool = True, beside: bool = False, latency_runs: int = LATENCY_RUNS,
                  latency_on: Sequence[str] = ("host",),
                  step: Step = contextlib.nullcontext) -> dict[str, Any]:
    """Export ``loaded``'s model with ``exporter`` (an ``EXPORTERS`` entry) to a checked ``path``,
    measure it uncompressed (``baseline``, and always with ``beside``), validate it on the
    examples, and with ``beside`` set it beside those uncompressed exports (``exporter.baselines``:
    bytes, zipped bytes, the task's metric through each on every example, p50 on each device of
    ``latency_on``; keyed by label, "ours" first). ``step``: a context for each phase, given a
    line saying what it does (a spinner, a log line). Returns what ``deepcompress export --json``
    reports for the format (``exporters.ExportResult.to_dict``, and ``beside``): plain JSON."""
    from exporters import export_and_validate, first_example  # noqa: PLC0415

    examples, rows = loaded.examples, {}

    def row(p: Path, score: Any) -> dict[str, Any]:
        return {**artifact_size(p).to_dict(), **(score.to_dict() if score else {}),
                "p50_ms": p50_ms(p, latency_runs, latency_on)}

    def beside_row(label: str, dense: Any, dense_path: Path) -> None:
        checked = exporter.validate(dense_path, loaded.model, examples.inputs, loaded.score,
                                    reference=loaded.reference)
        rows[getattr(dense, "variant", label)] = row(dense_path, checked.score)

    with step(f"{exporter.label}: converting, measuring, validating on {len(examples):,} examples"
              + (" (its uncompressed exports too, scored and timed)" if beside else "")):
        result = export_and_validate(exporter, loaded.model, first_example(examples.inputs), path,
                                     options, examples.inputs, loaded.score, layers=loaded.layers,
                                     reference=loaded.reference, baseline=baseline or beside,
                                     each_baseline=beside_row if beside else None)
        out = result.to_dict()
        if beside:
            out["beside"] = {"ours": row(path, result.validation.score), **rows}
        return plain(out)


def p50_ms(path: Path, runs: int, specs: Sequence[str]) -> dict[str, float]:
    """The artifact's median latency in ms on each device (``device_harness``: 1 thread, default
    delegates); empty when not timed."""
    if runs <= 0:
        return {}
    import device_harness  # noqa: PLC0415
    return {spec: float(device_harness.bench(path, spec, runs=runs, warmup=min(10, runs),
                                             threads=1, cooldown_max_s=0)["latency_ms"]["p50"])
            for spec in specs}


def plain(obj: Any) -> Any:
    """``obj`` as JSON's values: numpy numbers and arrays as Python's, paths and anything else a
    report may carry as text rather than a crash."""
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if obj is None or isinstance(obj, (str, int, float)):
        return obj
    if isinstance(obj, (np.generic, np.ndarray)):
        return obj.tolist()
    return str(obj)
