"""``distill``: label-free. The dense model is the teacher; the compressed model learns (and is
judged) by how close its outputs stay to the teacher's on inputs the user provides.

This is the task for any model when the only promise is "same outputs, smaller file": a sentence
encoder, a detector's head, a keyword spotter without its labels. Inputs come from

- ``inputs = "samples.pt"``: a tensor, a list of tensors, or a dict of named tensors (one row per
  example), read with ``torch.load(weights_only=True)``; or ``.npz`` (``allow_pickle=False``);
- ``inputs = "folder/"`` of images (PNG/JPEG, resized to ``image_shape``), or a ``.txt`` file /
  folder of ``.txt`` files (one example per line) turned into tensors by the ``tokenizer`` the
  recipe names (``package.module:function``, called with a list of strings);
- ``factory = "package.module:function"``: your own code returning the inputs.

Loss: ``mse`` on the outputs, ``cosine`` (1 - cosine), or ``kl`` (softmax at ``temperature``,
scaled by T²). Metrics against the teacher on the held-out examples: mean and minimum output
cosine, relative error, top-1 (per position) and top-5 agreement, and for sequences the share of
identical decoded sequences and their token error rate (``_sequence.py``). With ``hidden`` > 0
the loss adds, for each module ``hidden_modules`` names, the student's output against the dense
teacher's (run beside it: the student learns where inside it went astray). The student learns in
eval mode by default (``student_mode``): the teacher's targets have no dropout in them.

Which figure leads (``metric``): what the user reads off the outputs. ``"agreement"``: the share
of positions whose top-1 class is the teacher's (logits: the user reads the argmax);
``"sequence"``: the share of examples whose decoded sequence is identical (``decoder``:
``"argmax"``, ``"ctc_greedy"`` or the user's ``package.module:function``); ``"cosine"``: the mean
output cosine (embeddings, whose geometry is what the user reads). ``"auto"`` (the default)
decides once, from the recipe and one call of the dense model on two training examples:

1. a ``decoder`` is named: ``sequence``;
2. ``loss = "cosine"``: ``cosine`` (the recipe treats the outputs as embeddings);
3. the model returns a mapping or ModelOutput: ``logits`` -> logits; ``sentence_embedding``,
   ``last_hidden_state``, ``pooler_output`` or ``embeddings`` -> ``cosine``;
4. one value per example, or rows of unit length (a normalised embedding): ``cosine``;
5. otherwise the outputs are logits: with a position axis (examples x steps x classes)
   ``sequence`` (the argmax path), else ``agreement``.

The report's ``primary_metric.why`` says which rule chose it; set ``metric`` to override.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np
import torch
from torch import nn

from dccore import metrics
from dccore.errors import DataError, RecipeError
from dccore.registry import user_callable

from dccore.config import Check, Int, Num, OneOf, Shape, Text, fail, setting
from ..models import load_torch_file
from ._base import (Examples, HiddenTerm, Task, TaskConfig, TaskData, model_outputs,
                    register_task)
from ._sequence import (BUILTIN_DECODERS, decode, position_agreement, sequence_figures)

LOSSES = ("mse", "cosine", "kl")
METRICS = ("auto", "agreement", "sequence", "cosine")
# the figure each metric leads with (the report's primary_metric.name)
LEADS = {"agreement": "top1_agreement", "sequence": "sequence_agreement", "cosine": "cosine_mean"}
_EMBEDDING_KEYS = ("sentence_embedding", "last_hidden_state", "pooler_output", "embeddings")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
MAX_TEXT_BYTES = 64 << 20    # a text sample file larger than this is refused, not read


class Names(Check):
    """A non-empty list of distinct names, stored as a tuple."""

    def __call__(self, path: str, value: Any, owner: type) -> tuple[str, ...]:
        if (not isinstance(value, (list, tuple)) or not value or len(set(value)) != len(value)
                or not all(isinstance(v, str) and v for v in value)):
            raise fail(path, "a list of distinct names", value)
        return tuple(value)


@dataclass(frozen=True)
class DistillConfig(TaskConfig):
    KIND: ClassVar[str] = "distill"
    inputs: str | None = setting(None, Text())      # .pt / .npz / image folder / text lines
    factory: str | None = setting(None, Text())     # or "package.module:function" -> inputs
    tokenizer: str | None = setting(None, Text())   # text inputs: "package.module:function"
    input_names: tuple[str, ...] | None = setting(None, Names())  # order of named inputs
    image_shape: tuple[int, ...] | None = setting(None, Shape())  # image folders: C, H, W
    loss: str = setting("mse", OneOf(LOSSES))       # mse: any output; cosine suits embeddings
    temperature: float = setting(1.0, Num(0.0, 100.0, lo_open=True))  # kl only
    test_fraction: float = setting(0.2, Num(0.0, 0.9, lo_open=True))  # held out for the figures
    limit: int | None = setting(None, Int(2))       # use at most this many examples
    # the figure that leads (see the module docstring); "auto": decided from the outputs
    metric: str = setting("auto", OneOf(METRICS))
    # sequences: "argmax" (the default), "ctc_greedy", or "package.module:function" (outputs ->
    # one sequence per example)
    decoder: str | None = setting(None, Text())
    # the student's mode while it learns: "eval" (dropout off, BatchNorm statistics the teacher's)
    # because its targets are the teacher's eval-mode outputs and dropout is noise it cannot fit
    # (MiniLM: the dense model's own train-mode embeddings are at cosine 0.959 to them)
    student_mode: str = setting("eval", OneOf(("eval", "train")))
    # weight of the hidden-state term: each module ``hidden_modules`` names (a glob per dotted
    # part of the model's module names) matches the dense teacher's same module, squared error relative
    # to the teacher's (per module, averaged). 0: the outputs only (which modules is the model's)
    hidden: float = setting(0.0, Num(0.0, 1000.0))
    hidden_modules: tuple[str, ...] | None = setting(None, Names())
    # the input (one of input_names) whose non-zero entries mark the positions the hidden-state
    # term counts, e.g. a padding mask; None: every position
    hidden_mask: str | None = setting(None, Text())

    def _check(self, path: str) -> None:   # input_names: its field's Names() checked it
        where = path or "task"
        if (self.inputs is None) == (self.factory is None):
            raise RecipeError(f"{where}: the distill task needs exactly one of inputs "
                              "(a file or folder of samples) or factory (package.module:function)")
        if self.decoder is not None and self.metric not in ("auto", "sequence"):
            raise RecipeError(f"{where}.decoder: a decoder is read by metric "
                              f"'sequence' (or 'auto'), not {self.metric!r}; drop one of them")
        if (self.hidden > 0) != (self.hidden_modules is not None):
            raise RecipeError(f"{where}.hidden: the hidden-state term needs both a weight "
                              "(hidden > 0) and the modules it matches (hidden_modules); "
                              f"got hidden = {self.hidden} and hidden_modules = "
                              f"{list(self.hidden_modules or [])}")
        if self.hidden_mask is not None and self.hidden_mask not in (self.input_names or ()):
            raise RecipeError(f"{where}.hidden_mask: {self.hidden_mask!r} is not one of "
                              f"input_names {list(self.input_names or [])}; name the mask input "
                              "there too")
        if self.hidden_mask is not None and self.hidden <= 0:
            raise RecipeError(f"{where}.hidden_mask: masks the hidden-state term, which is off "
                              "(hidden = 0); drop it or set hidden and hidden_modules")
        if (self.decoder is not None and self.decoder not in BUILTIN_DECODERS
                and ":" not in self.decoder):
            raise RecipeError(f"{where}.decoder: {self.decoder!r} is not one of "
                              f"{sorted(BUILTIN_DECODERS)} or 'package.module:function'")


def _named_callable(spec: str, what: str) -> Any:
    return user_callable(spec, f"task.{what} {spec!r}", RecipeError)


def as_inputs(obj: Any, names: tuple[str, ...] | None, where: str) -> tuple[torch.Tensor, ...]:
    """A tensor, a sequence of tensors or a mapping of named tensors -> a tuple of tensors."""
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        obj = (obj,)
    if isinstance(obj, Mapping):
        keys = list(names) if names else list(obj)
        missing = [k for k in keys if k not in obj]
        if missing:
            raise DataError(f"{where}: no input named {missing[0]!r}; it holds {sorted(obj)}")
        obj = tuple(obj[k] for k in keys)
    if not isinstance(obj, (tuple, list)) or not obj:
        raise DataError(f"{where}: expected tensors (one row per example), got "
                        f"{type(obj).__name__}")
    out = []
    for t in obj:
        if isinstance(t, np.ndarray):
            if t.dtype == object:
                raise DataError(f"{where}: arrays of Python objects are not data")
            t = torch.from_numpy(np.ascontiguousarray(t))
        if not isinstance(t, torch.Tensor):
            raise DataError(f"{where}: expected tensors, got {type(t).__name__}")
        out.append(t.float() if t.dtype == torch.float64 else t)
    return tuple(out)


def _read_text(path: Path) -> list[str]:
    files = sorted(path.glob("*.txt")) if path.is_dir() else [path]
    lines: list[str] = []
    for f in files:
        if f.stat().st_size > MAX_TEXT_BYTES:
            raise DataError(f"{f}: larger than {MAX_TEXT_BYTES >> 20} MiB; split it or set limit")
        lines += [ln.strip() for ln in f.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return lines


def _read_images(folder: Path, shape: tuple[int, ...] | None) -> torch.Tensor:
    from PIL import Image   # matplotlib's dependency, so always present

    if shape is None or len(shape) != 3:
        raise RecipeError("task.image_shape: an image folder needs [channels, height, width]")
    c, h, w = shape
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{folder}: no {', '.join(_IMAGE_SUFFIXES)} images")
    mode = {1: "L", 3: "RGB"}.get(c)
    if mode is None:
        raise RecipeError("task.image_shape: 1 or 3 channels")
    out = np.empty((len(files), c, h, w), dtype=np.float32)
    for i, f in enumerate(files):
        with Image.open(f) as img:
            arr = np.asarray(img.convert(mode).resize((w, h)), dtype=np.float32) / 255.0
        out[i] = arr.reshape(h, w, c).transpose(2, 0, 1)
    return torch.from_numpy(out)


class Distill(Task):
    KIND = "distill"
    needs_labels = False
    trains_baseline = False

    def __init__(self, config: Any, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self._lead: tuple[str, str] | None = None     # (metric, why), once decided
        self._decoder = None
        if config.metric != "auto":
            self._lead = (config.metric, f"metric = {config.metric!r} in the recipe")
        elif config.decoder is not None:
            self._lead = ("sequence", f"auto: the recipe names decoder {config.decoder!r}")
        elif config.loss == "cosine":
            self._lead = ("cosine", "auto: loss = 'cosine' treats the outputs as embeddings")

    @property
    def student_mode(self) -> str:
        return self.config.student_mode

    @property
    def hidden(self) -> HiddenTerm | None:
        cfg = self.config
        if cfg.hidden <= 0:
            return None
        mask = None if cfg.hidden_mask is None else list(cfg.input_names).index(cfg.hidden_mask)
        return HiddenTerm(cfg.hidden, tuple(cfg.hidden_modules), mask)

    # -- which figure leads ---------------------------------------------------------------------
    @property
    def primary(self) -> str:
        if self._lead is None:
            raise RuntimeError("the distill task decides its leading metric from the model's "
                               "outputs: call bind(model) or score the model first")
        return LEADS[self._lead[0]]

    @property
    def primary_reason(self) -> str:
        return self._lead[1] if self._lead is not None else ""

    def bind(self, model: nn.Module) -> None:
        """Decide the leading metric (rules 3-5 of the module docstring) from one call of the
        dense model on two training examples, unless the recipe already decided it."""
        if self._lead is not None:
            return
        inputs, _ = self.data().train.take(slice(0, 2))
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                raw = model(*inputs)
        finally:
            model.train(was_training)
        self._lead = _decide(raw)

    def _decide_from(self, outputs: torch.Tensor) -> None:
        if self._lead is None:     # scored before bind (tuning scores first, then reads primary)
            self._lead = _decide(outputs)

    def decoder(self):
        if self._decoder is None:
            name = self.config.decoder or "argmax"
            self._decoder = BUILTIN_DECODERS.get(name) or _named_callable(name, "decoder")
        return self._decoder

    def _samples(self) -> tuple[torch.Tensor, ...]:
        cfg = self.config
        names = tuple(cfg.input_names) if cfg.input_names else None
        if cfg.factory is not None:
            return as_inputs(_named_callable(cfg.factory, "factory")(), names, cfg.factory)
        path = Path(cfg.inputs).expanduser()
        if not path.exists():
            raise DataError(f"task.inputs {path}: no such file or folder")
        if path.suffix == ".pt":
            return as_inputs(load_torch_file(path), names, str(path))
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                return as_inputs({k: npz[k] for k in npz.files}, names, str(path))
        if path.suffix == ".txt" or (path.is_dir() and any(path.glob("*.txt"))):
            if cfg.tokenizer is None:
                raise RecipeError("task.tokenizer: text inputs need the function that turns a "
                                  "list of strings into tensors (package.module:function)")
            lines = _read_text(path)
            if cfg.limit is not None:
                lines = lines[:cfg.limit]
            return as_inputs(_named_callable(cfg.tokenizer, "tokenizer")(lines), names, str(path))
        if path.is_dir():
            return (_read_images(path, cfg.image_shape),)
        raise DataError(f"task.inputs {path}: expected a .pt, .npz or .txt file, or a folder of "
                        "images or .txt files")

    def load(self) -> TaskData:
        samples = Examples(self._samples())
        samples = samples.subset(self.config.limit)
        if len(samples) < 2:
            raise DataError("the distill task needs at least 2 examples")
        train, test = samples.split_off(self.config.test_fraction, self.seed)
        val = None
        d = self.data_config
        if d is not None and d.val_fraction > 0:
            train, val = train.split_off(d.val_fraction, self.seed + 1)
        if d is not None and d.train_limit is not None:
            train = train.subset(d.train_limit)
        if d is not None and d.test_limit is not None:
            test = test.subset(d.test_limit)
        return TaskData(train, val, test)

    def loss(self, outputs, targets, teacher, weight, temperature):
        if teacher is None:
            raise ValueError("the distill task's loss needs the teacher's outputs")
        kind = self.config.loss
        s, t = outputs.reshape(outputs.shape[0], -1), teacher.reshape(teacher.shape[0], -1)
        if kind == "mse":
            return nn.functional.mse_loss(s, t)
        if kind == "cosine":
            return (1.0 - nn.functional.cosine_similarity(s, t, dim=1)).mean()
        temp = self.config.temperature
        return nn.functional.kl_div(nn.functional.log_softmax(s / temp, dim=1),
                                    nn.functional.log_softmax(t / temp, dim=1),
                                    reduction="batchmean", log_target=True) * temp * temp

    def metrics(self, outputs, targets, reference):
        self._decide_from(outputs)
        if reference is None:       # the teacher itself: identical by definition
            reference = outputs
        if len(outputs) == 0:
            return {name: float("nan") for name in ("cosine_mean", LEADS[self._lead[0]])}
        got = outputs.reshape(outputs.shape[0], -1).double().numpy()
        ref = reference.reshape(reference.shape[0], -1).double().numpy()
        rel = np.linalg.norm(got - ref, axis=1) / np.maximum(np.linalg.norm(ref, axis=1), 1e-12)
        out = {"cosine_mean": metrics.mean_cosine(got, ref), "cosine_min": metrics.min_cosine(got, ref),
               "relative_error": float(rel.mean())}
        classes = outputs.shape[-1] if outputs.dim() > 1 else 1
        if classes > 1:     # per position: the last axis holds the classes
            out["top1_agreement"] = position_agreement(outputs, reference)
            if classes >= 5:
                out["top5_agreement"] = metrics.top_k_agreement(
                    outputs.reshape(-1, classes).double().numpy(),
                    reference.reshape(-1, classes).double().numpy(), 5)
        if self._lead[0] == "sequence":
            what = f"task.decoder {self.config.decoder or 'argmax'!r}"
            out.update(sequence_figures(decode(self.decoder(), outputs, what),
                                        decode(self.decoder(), reference, what)))
        elif self._lead[0] == "agreement" and "top1_agreement" not in out:
            raise DataError("task.metric 'agreement': the outputs hold one value per example, "
                            "no classes to agree on; use metric 'cosine'")
        return out


def _decide(raw: Any) -> tuple[str, str]:
    """(metric, why) by rules 3-5 of the module docstring, from one call's raw output."""
    if isinstance(raw, Mapping) or hasattr(raw, "keys"):
        keys = [k for k in raw.keys() if isinstance(raw[k], torch.Tensor)]
        if "logits" in keys:
            out = raw["logits"]
            return (("sequence", "auto: the model returns logits with a position axis "
                                 f"({_shape(out)}): the decoded sequences are what is read")
                    if out.dim() >= 3 else
                    ("agreement", f"auto: the model returns logits ({_shape(out)}): the top-1 "
                                  "class is what is read"))
        found = [k for k in _EMBEDDING_KEYS if k in keys]
        if found:
            return "cosine", f"auto: the model returns {found[0]!r}, an embedding"
    out = model_outputs(raw)
    if out.dim() < 2 or out.shape[-1] < 2:
        return "cosine", f"auto: one value per example ({_shape(out)}), no classes to agree on"
    norms = out.reshape(-1, out.shape[-1]).double().norm(dim=1)
    if bool(((norms - 1).abs() < 1e-3).all()):
        return "cosine", f"auto: the outputs ({_shape(out)}) are unit-length rows, an embedding"
    if out.dim() >= 3:
        return ("sequence", f"auto: the outputs ({_shape(out)}) are read as logits with a position "
                            "axis: the decoded sequences (argmax path) are what is read; set "
                            "decoder for CTC, or metric = 'cosine' for embeddings")
    return ("agreement", f"auto: the outputs ({_shape(out)}) are read as logits: the top-1 class "
                         "is what is read; set metric = 'cosine' for embeddings")


def _shape(t: torch.Tensor) -> str:
    return "examples x " + " x ".join(str(d) for d in t.shape[1:]) if t.dim() > 1 else "examples"


register_task(DistillConfig, Distill)
