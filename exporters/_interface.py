"""One interface for every exporter, and the registry the ``export`` command dispatches through.

An exporter is one object, registered under its format name from its own package
(``android_export`` registers "tflite", ``ios_export`` "coreml")::

    exporter = EXPORTERS.get("tflite")
    report = exporter.export(model, example_inputs, "m.tflite", exporter.Options(variant="float16"))
    check = exporter.validate(report, model, inputs, accuracy_scorer(labels))

``example_inputs`` is a tuple of tensors, one per positional input of ``forward`` (any dtype and
shape, batch axis first: token ids and an attention mask as well as images); the artifact is
exported for one example. ``validate`` runs the caller's examples through the artifact (where this
OS can) and through PyTorch and lets the caller's scorer judge; it checks what only the format can
(Core ML: the weights decoded back from the package). A third format is one new module: an
``Exporter`` subclass with its ``Options`` config (a ``dccore.config.Checked`` dataclass of
``option`` fields: checked when made by keyword, and ``build(Options, data, path)`` turns a dict
into one, its errors naming the field), registered in ``EXPORTERS``; the command takes its flags
from that config (``--NAME`` for the output, ``--NAME-FIELD`` for each option).
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from dccore.artifacts import ArtifactSize, artifact_size
from dccore.config import Check, OneOf, setting
from dccore.errors import ExportError, UsageError
from dccore.outputs import OutputKind, check_output, temporary_folder
from dccore.registry import Registry

from ._common import CompressedLayer, as_inputs
from ._scoring import Score, Scorer

# The built-in exporters register themselves when their package is imported; the registry imports
# them on first lookup, so importing ``exporters`` loads neither converter.
EXPORTERS: Registry["Exporter"] = Registry("exporter", builtins=("android_export", "ios_export"))


def option(default: Any, check: Check | None = None, *, choices: Sequence[str] = (),
           help: str = "") -> Any:  # noqa: A002
    """A field of an exporter's Options config: its check (default: one of ``choices``), and what
    the command line shows for it (``choices``: the values its flag offers)."""
    check = check or (OneOf(tuple(choices)) if choices else None)
    return field(default=default, metadata={**setting(default, check).metadata, "help": help,
                                            "choices": tuple(choices) or None})


@dataclass(frozen=True)
class ArtifactReport:
    """What an export wrote: where, with which options, how each compressed layer is stored, the
    compressed layers it could not store compressed (with the reason), and its measured size."""

    format: str
    path: Path
    options: Mapping[str, Any]
    stores: str                  # a few words, for a table: "sparse-float16", "iOS18 fp16 joint"
    size: ArtifactSize
    layers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    skipped: Mapping[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "path": str(self.path), **self.options, "stores": self.stores,
                **self.size.to_dict(), "layers": {k: dict(v) for k, v in self.layers.items()},
                "skipped": dict(self.skipped)}


@dataclass(frozen=True)
class Validation:
    """An artifact against its PyTorch model.

    ``score``: the caller's scorer on the artifact's outputs (None where this OS cannot run the
    artifact; ``note`` says why). ``decides``: whether the score is part of ``ok`` (Core ML's
    verdict is the decoded weights; its predictions, on macOS, are reported beside it).
    ``checks`` and ``layers``: what the format checks itself, overall and per layer."""

    ok: bool
    examples: int
    score: Score | None = None
    decides: bool = True
    checks: Mapping[str, Any] = field(default_factory=dict)
    layers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": self.ok, **self.checks}
        if self.layers:
            out["layers"] = {k: dict(v) for k, v in self.layers.items()}
        scored = {"examples": self.examples, **self.score.to_dict()} if self.score else None
        if scored and self.decides:
            out.update(scored)
        else:
            out["predictions"] = scored or {"skipped": self.note}
        return out


class Exporter(ABC):
    """One artifact format. Subclasses set the class attributes and implement ``write``,
    ``validate`` and ``baseline``; ``export`` checks the output path before any work."""

    name: ClassVar[str]               # registry key and command-line flag: "tflite"
    label: ClassVar[str]              # for people: "TFLite"
    suffix: ClassVar[str]             # the artifact's suffix: ".tflite"
    suffix_required: ClassVar[bool] = False   # the backend writes nothing else (Core ML)
    kind: ClassVar[OutputKind]        # how an artifact of ours is recognised (dccore.outputs)
    Options: ClassVar[type]           # a dccore.config.Checked dataclass of ``option`` fields
    help: ClassVar[str] = ""

    def options(self, options: Any = None) -> Any:
        if options is None:
            return self.Options()
        if not isinstance(options, self.Options):
            raise ExportError(f"{self.label} export takes {self.Options.__name__}, not "
                              f"{type(options).__name__}")
        return options

    def check_output(self, out: str | os.PathLike[str], *, flag: str | None = None) -> Path:
        """Refuse (UsageError) an output path that would destroy something not ours, whose folder
        is missing, or (where the backend insists) that lacks our suffix. Call before any work."""
        flag = flag or f"{self.label} output"
        path = check_output(out, self.kind, flag=flag)
        if self.suffix_required and path.suffix != self.suffix:
            raise UsageError(f"{flag} {path}: a {self.kind.name} must end with {self.suffix}")
        return path

    def export(self, model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor],
               out: str | os.PathLike[str], options: Any = None, *,
               layers: Iterable[str] | Mapping[str, CompressedLayer] | None = None) -> ArtifactReport:
        """Write ``model`` to ``out``. ``layers``: the compressed layers (default: what the
        weights show); those the converter drops or folds are skipped with a note."""
        path = self.check_output(out)
        return self.write(model.eval(), as_inputs(example_inputs), path, self.options(options),
                          layers)

    @abstractmethod
    def write(self, model: nn.Module, example_inputs: tuple[torch.Tensor, ...], out: Path,
              options: Any, layers: Iterable[str] | Mapping[str, CompressedLayer] | None
              ) -> ArtifactReport:
        """The conversion itself, to a checked path, written atomically."""

    @abstractmethod
    def validate(self, artifact: ArtifactReport | str | os.PathLike[str], model: nn.Module,
                 inputs: torch.Tensor | Sequence[torch.Tensor], score: Scorer, *,
                 reference: np.ndarray | None = None,
                 layers: Iterable[str] | None = None) -> Validation:
        """Compare the artifact with ``model`` on ``inputs`` (N examples each). ``reference``:
        PyTorch's outputs on them, when the caller has them already; ``layers``: the compressed
        layers to check (default: those the report lists, or what the weights show)."""

    @abstractmethod
    def baseline(self, options: Any) -> Any:
        """The options of the same export uncompressed (what "dense bytes" measure)."""

    def baselines(self, options: Any) -> dict[str, Any]:
        """The uncompressed exports a report sets the artifact beside, by label: ``baseline``'s
        first (what "dense bytes" and the ratio measure); a format adds others (float16)."""
        return {"dense": self.baseline(options)}


@dataclass(frozen=True)
class ExportResult:
    artifact: ArtifactReport
    validation: Validation
    dense: ArtifactSize | None = None
    others: Mapping[str, ArtifactSize] = field(default_factory=dict)   # further baselines, by label

    @property
    def ok(self) -> bool:
        return self.validation.ok

    def to_dict(self) -> dict[str, Any]:
        out = self.artifact.to_dict()
        if self.dense is not None:
            out.update(dense_bytes=self.dense.bytes, dense_zipped_bytes=self.dense.zipped_bytes,
                       ratio=self.dense.bytes / self.artifact.size.bytes)
        if self.others:
            out["baselines"] = {k: v.to_dict() for k, v in self.others.items()}
        checked = self.validation.to_dict()
        stored, verified = out.pop("layers"), checked.pop("layers", {})
        out.update(checked)
        out["layers"] = {n: {**stored.get(n, {}), **verified.get(n, {})}
                         for n in {**stored, **verified}}
        return out


def export_and_validate(exporter: str | Exporter, model: nn.Module,
                        example_inputs: torch.Tensor | Sequence[torch.Tensor],
                        out: str | os.PathLike[str], options: Any, inputs: Sequence[torch.Tensor],
                        score: Scorer, *, layers: Iterable[str] | Mapping[str, CompressedLayer] | None = None,
                        reference: np.ndarray | None = None, baseline: bool = True,
                        each_baseline: Callable[[str, Any, Path], None] | None = None) -> ExportResult:
    """Export, measure the same export uncompressed (``baseline``), validate: what the ``export``
    command does for each format it is asked for. ``each_baseline(label, options, path)``: called
    with each uncompressed export while it exists (to score and time it beside the artifact)."""
    if isinstance(exporter, str):
        exporter = EXPORTERS.get(exporter)
    artifact = exporter.export(model, example_inputs, out, options, layers=layers)
    sizes: dict[str, ArtifactSize] = {}
    if baseline:
        for i, (label, dense_options) in enumerate(
                exporter.baselines(exporter.options(options)).items()):
            with temporary_folder() as tmp:
                dense_path = Path(tmp) / f"dense{i}{exporter.suffix}"
                exporter.export(model, example_inputs, dense_path, dense_options)
                sizes[label] = artifact_size(dense_path)
                if each_baseline is not None:
                    each_baseline(label, dense_options, dense_path)
    validation = exporter.validate(artifact, model, inputs, score, reference=reference)
    dense = next(iter(sizes.values()), None)
    return ExportResult(artifact, validation, dense, dict(list(sizes.items())[1:]))
