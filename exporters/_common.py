"""What the two exporters share: which layers are compressed, how an artifact's outputs score
against PyTorch's, and which layer an unsupported op came from.

The exporters (``ios_export``, ``android_export``) take a plain ``nn.Module`` and learn the
compression from the weights themselves: the distinct non-zero values of a layer are its codebook,
its zeros are the pruning mask. So they need nothing from the ``.dcz`` container; only the
``export`` command reads one. Nothing here imports coremltools or LiteRT.
"""
from __future__ import annotations

import contextlib
import io
import logging
import math
import re
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from dccore.errors import ExportError

# Core ML palettizes with at most 8-bit indices (n in {1,2,3,4,6,8}), so a layer with more than
# 256 distinct non-zero values is not weight-shared and is exported as it is.
MAX_CODEBOOK = 256
# Layers whose weight can carry pruning and a codebook into an artifact.
WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                 nn.Embedding)
# The bar: the artifact's test accuracy within 0.1 points of the PyTorch model's.
TOLERANCE_PTS = 0.1


@dataclass(frozen=True)
class CompressedLayer:
    """One weight-shared (and usually pruned) weight tensor, as read back from its values."""

    name: str                 # state_dict key, e.g. "fc1.weight"
    shape: tuple[int, ...]
    codebook: np.ndarray      # sorted distinct non-zero values, float32
    nnz: int                  # non-zero weights (the pruning mask's population)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def bits(self) -> int:
        """Index bits our codebook needs (the recipe's ``bits`` or fewer)."""
        return max(1, math.ceil(math.log2(max(len(self.codebook), 2))))

    @property
    def density(self) -> float:
        return self.nnz / self.size if self.size else 0.0


def describe_weight(name: str, weight: np.ndarray) -> CompressedLayer:
    w = np.asarray(weight, dtype=np.float32)
    nonzero = w[w != 0]
    return CompressedLayer(name, tuple(w.shape), np.unique(nonzero), int(nonzero.size))


def compressed_layers(model: nn.Module, names: Iterable[str] | None = None) -> dict[str, CompressedLayer]:
    """The model's compressed weights, keyed by state_dict name.

    With ``names`` (e.g. the layers a ``.dcz`` file lists), each must exist. Without, every
    Linear/Conv weight that is weight shared (at most ``MAX_CODEBOOK`` distinct non-zero values)
    or pruned (holds a zero) counts. A pruned layer with more distinct values than a LUT holds is
    still listed: the exporters then store only its sparsity.
    """
    state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    if names is None:
        candidates = [f"{n}.weight" for n, m in model.named_modules()
                      if isinstance(m, WEIGHT_LAYERS) and getattr(m, "weight", None) is not None]
        layers = {n: describe_weight(n, state[n]) for n in candidates}
        return {n: info for n, info in layers.items()
                if len(info.codebook) <= MAX_CODEBOOK or info.nnz < info.size}
    out = {}
    for name in names:
        if name not in state:
            raise ExportError(f"compressed layer {name!r} is not in the model; its state_dict has "
                              f"{sorted(k for k in state if k.endswith('weight'))}")
        out[name] = describe_weight(name, state[name])
    return out


def example_input(input_shape: Iterable[int]) -> torch.Tensor:
    """A batch of one zero example of ``input_shape`` (the recipe's shape, without batch axis)."""
    shape = tuple(int(d) for d in input_shape)
    if not shape or any(d <= 0 for d in shape):
        raise ExportError(f"input shape {list(shape)} is invalid; give the shape of one example "
                          "without the batch axis, e.g. [1, 28, 28]")
    return torch.zeros((1, *shape), dtype=torch.float32)


@dataclass(frozen=True)
class Evaluation:
    examples: int
    accuracy: float          # % correct through the exported artifact
    torch_accuracy: float    # % correct through the PyTorch model, same examples
    max_abs_diff: float      # largest |logit(artifact) - logit(torch)|, all examples and classes
    agreement: float         # % of examples where both predict the same class
    tolerance_pts: float = TOLERANCE_PTS

    @property
    def ok(self) -> bool:
        return abs(self.accuracy - self.torch_accuracy) <= self.tolerance_pts

    def to_dict(self) -> dict[str, Any]:
        rounded = {k: round(v, 4) if k in ("accuracy", "torch_accuracy", "agreement") else v
                   for k, v in asdict(self).items()}
        return {**rounded, "ok": self.ok}


def score_logits(got: np.ndarray, reference: np.ndarray, labels: np.ndarray) -> Evaluation:
    """Score an artifact's logits against the PyTorch model's on the same examples: both
    exporters' validations (LiteRT everywhere, Core ML on macOS) compare the same way."""
    return Evaluation(
        examples=len(labels),
        accuracy=100.0 * float(np.mean(got.argmax(1) == labels)),
        torch_accuracy=100.0 * float(np.mean(reference.argmax(1) == labels)),
        max_abs_diff=float(np.max(np.abs(got - reference))),
        agreement=100.0 * float(np.mean(got.argmax(1) == reference.argmax(1))),
    )


# ----------------------------------------------------------------------------------------------
# Unsupported ops: converters name the op; we name the layer too.

def _normalise_op(name: str) -> str:
    """'aten._linalg_det.default', 'linalg_det', 'dctest::mystery' -> 'linalg_det', 'mystery'."""
    name = name.replace("::", ".").strip("%'\" ")
    parts = [p for p in name.split(".") if p and p not in {"default", "aten", "Tensor", "int"}]
    return (parts[-1] if parts else name).lstrip("_")


def locate_op(model: nn.Module, example: torch.Tensor, op_name: str) -> str | None:
    """The qualified name and type of the module that calls ``op_name`` ("layer 2 (Det)"), found
    through torch.export's module stack; None if it cannot be told."""
    wanted = _normalise_op(op_name)
    try:
        program = torch.export.export(model, (example,), strict=False)
    except Exception:  # the model may not be exportable at all; the op name alone must do
        return None
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        target = getattr(node.target, "name", lambda: str(node.target))()
        if _normalise_op(str(target)) != wanted:
            continue
        stack = node.meta.get("nn_module_stack") or {}
        if stack:
            qualname, kind = list(stack.values())[-1]
            return f"{qualname or '<root>'} ({str(kind).rsplit('.', 1)[-1]})"
    return None


_OP_PATTERNS = (
    re.compile(r"convert function for op '([^']+)' not implemented"),   # coremltools
    re.compile(r"Lowering not found: (\S+)"),                           # litert-torch
    re.compile(r"(?:unsupported|not supported)[^']*'([^']+)'", re.I),
)


def unsupported_op_error(exc: BaseException, model: nn.Module, example: torch.Tensor,
                         converter: str) -> ExportError:
    """Turn a converter's exception into an ExportError that names the layer and the op."""
    text = str(exc)
    op = next((m.group(1) for p in _OP_PATTERNS if (m := p.search(text))), None)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    if op is None:
        return ExportError(f"{converter} could not convert {type(model).__name__}: {first}")
    layer = locate_op(model, example, op)
    where = f"layer {layer}" if layer else f"{type(model).__name__} (layer not found)"
    return ExportError(f"{where}: op '{_normalise_op(op)}' is not supported by {converter} "
                       f"({first}); replace it with supported ops or export without this target")


@contextlib.contextmanager
def quiet_backend(*logger_names: str) -> Iterator[None]:
    """Silence a converter's progress lines, warnings and the named loggers for the block."""
    loggers = [logging.getLogger(n) for n in ("root", *logger_names)]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(sink), \
                contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
