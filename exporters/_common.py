"""What the two exporters share about the model: its inputs, which layers are compressed (and which
of them a converter will drop or fold), the PyTorch reference outputs, and which layer an
unsupported op came from.

The exporters (``ios_export``, ``android_export``) take a plain ``nn.Module`` and learn the
compression from the weights themselves: the distinct non-zero values of a layer are its codebook,
its zeros are the pruning mask. So they need nothing from the ``.dcz`` container; only the
``export`` command reads one. Nothing here imports coremltools or LiteRT.
"""
from __future__ import annotations

import contextlib
import inspect
import io
import logging
import math
import re
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

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

Inputs = tuple[torch.Tensor, ...]


# ----------------------------------------------------------------------------------------------
# Inputs: any number, any dtype and shape; the first axis is the batch.

def as_inputs(inputs: torch.Tensor | Sequence[torch.Tensor]) -> Inputs:
    """The model's positional inputs as a tuple of tensors (one tensor is a tuple of one)."""
    if isinstance(inputs, torch.Tensor):
        return (inputs,)
    if isinstance(inputs, (tuple, list)) and inputs and all(isinstance(t, torch.Tensor) for t in inputs):
        return tuple(inputs)
    raise ExportError("example inputs must be a tensor or a tuple of tensors (the model's "
                      f"positional inputs, each with a batch axis), not {type(inputs).__name__}")


def first_example(inputs: Inputs) -> Inputs:
    """The first example of each input, batch axis kept: what a model is exported with."""
    return tuple(t[:1] for t in inputs)


def forward_params(model: nn.Module) -> list[str]:
    """The names of the parameters ``model.forward`` takes positionally, in order ("input_ids",
    "attention_mask"); empty where its signature cannot be read."""
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def input_names(model: nn.Module, count: int) -> list[str]:
    """Names for the model's ``count`` positional inputs: its ``forward`` parameter names where
    they can be read ("input_ids", "attention_mask"), else ``input_0``, ``input_1``, ..."""
    names = [re.sub(r"\W", "_", p) for p in forward_params(model)[:count]]
    if len(names) < count or len(set(names)) < count:
        names = [f"input_{i}" for i in range(count)]
    return names


def _count(inputs: Inputs) -> int:
    sizes = {int(t.shape[0]) if t.dim() else -1 for t in inputs}
    if len(sizes) != 1 or -1 in sizes:
        raise ExportError(f"inputs of shapes {[list(t.shape) for t in inputs]}: each needs the same "
                          "number of examples on its first axis")
    return sizes.pop()


@torch.no_grad()
def torch_outputs(model: nn.Module, inputs: torch.Tensor | Sequence[torch.Tensor],
                  batch: int = 1000) -> np.ndarray:
    """The PyTorch model's outputs in eval mode, ``batch`` examples at a time: the reference an
    artifact must match. One output tensor; its first axis holds the examples."""
    inputs = as_inputs(inputs)
    n = _count(inputs)
    model.eval()
    outs = []
    for i in range(0, n, batch):
        out = model(*(t[i:i + batch] for t in inputs))
        if not isinstance(out, torch.Tensor):
            raise ExportError(f"{type(model).__name__} returns {type(out).__name__}; the exporters "
                              "need a model with one tensor output")
        outs.append(out.float().numpy())
    return np.concatenate(outs) if outs else np.empty((0,), dtype=np.float32)


# ----------------------------------------------------------------------------------------------
# Compressed layers: which weights carry a codebook / mask, and which a converter keeps.

@dataclass(frozen=True)
class CompressedLayer:
    """One weight-shared (and usually pruned) weight tensor, as read back from its values."""

    name: str                 # state_dict key, e.g. "fc1.weight"
    shape: tuple[int, ...]
    codebook: np.ndarray      # sorted distinct non-zero values, float32
    nnz: int                  # non-zero weights (the pruning mask's population)
    # rows (axis 0) per codebook when the share stage gave each group of rows its own (the .dcz
    # says); None: one codebook. ``codebook`` is then every group's values together.
    group_size: int | None = None

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def bits(self) -> int:
        """Index bits our codebook needs (the recipe's ``bits`` or fewer)."""
        return max(1, math.ceil(math.log2(max(len(self.codebook), 2))))


def describe_weight(name: str, weight: np.ndarray) -> CompressedLayer:
    w = np.asarray(weight, dtype=np.float32)
    nonzero = w[w != 0]
    return CompressedLayer(name, tuple(w.shape), np.unique(nonzero), int(nonzero.size))


def compressed_layers(model: nn.Module, names: Iterable[str] | None = None) -> dict[str, CompressedLayer]:
    """The model's compressed weights, keyed by state_dict name.

    With ``names`` (e.g. the layers a ``.dcz`` file lists), each must exist. Without, every
    Linear/Conv/Embedding weight that is weight shared (at most ``MAX_CODEBOOK`` distinct non-zero
    values) or pruned (holds a zero) counts. A pruned layer with more distinct values than a LUT
    holds is still listed: the exporters then store only its sparsity.
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


# What a converter does with a weight, by how forward() uses it (see weight_usage).
UNUSED, CONSTANT, COMPUTED = "unused", "constant", "computed"
_SKIP_REASONS = {
    UNUSED: "not used by forward() on the example inputs: the converter drops it, so it is not "
            "in the artifact",
    CONSTANT: "forward() uses it only with constants (e.g. an embedding looked up at fixed "
              "positions): the converter folds it into a dense constant, so it cannot be stored "
              "compressed",
}


def weight_usage(model: nn.Module, example_inputs: Inputs) -> dict[str, str]:
    """How forward() uses each parameter and buffer (state_dict names), read from torch.export's
    graph: ``unused`` (no op reads it: a pooler the forward skips), ``constant`` (only ops that
    depend on no input read it, which converters fold), or ``computed``. Empty when the model
    cannot be exported; the converter will then say what is wrong."""
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(model, example_inputs, strict=False)
    except Exception:  # not exportable as a graph: nothing can be told, nothing is skipped
        return {}
    sig = program.graph_signature
    owner = {**sig.inputs_to_parameters, **sig.inputs_to_buffers}
    user_inputs = set(sig.user_inputs)
    depends: set[torch.fx.Node] = set()
    usage: dict[str, str] = {}
    for node in program.graph.nodes:   # topological order
        if node.op == "placeholder":
            if node.name in user_inputs:
                depends.add(node)
        elif any(n in depends for n in node.all_input_nodes):
            depends.add(node)
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in owner:
            users = list(node.users)
            usage[owner[node.name]] = (UNUSED if not users else
                                       COMPUTED if any(u in depends for u in users) else CONSTANT)
    # a tied weight has one placeholder; its other state_dict names share the verdict
    canonical = {id(p): n for n, p in model.named_parameters()}
    for name, p in model.named_parameters(remove_duplicate=False):
        if name not in usage and canonical.get(id(p)) in usage:
            usage[name] = usage[canonical[id(p)]]
    return usage


@dataclass(frozen=True)
class LayerSelection:
    """The compressed layers an artifact can store compressed, and the others with the reason."""

    layers: dict[str, CompressedLayer]
    skipped: dict[str, str] = field(default_factory=dict)   # layer -> why it is not stored compressed


def select_layers(model: nn.Module, example_inputs: Inputs,
                  layers: Iterable[str] | dict[str, CompressedLayer] | None = None) -> LayerSelection:
    """``layers`` (default: what the weights show), less those a converter drops or folds.

    A layer forward() never reads (an unused pooler) or reads only with constants (a position
    embedding) does not fail the export: it is skipped, with the reason, for the report."""
    if layers is None:
        layers = compressed_layers(model)
    elif not isinstance(layers, dict):
        layers = compressed_layers(model, list(layers))
    usage = weight_usage(model, example_inputs)
    kept, skipped = {}, {}
    for name, info in layers.items():
        how = usage.get(name, COMPUTED)
        if how == COMPUTED:
            kept[name] = info
        else:
            skipped[name] = _SKIP_REASONS[how]
    return LayerSelection(kept, skipped)


# ----------------------------------------------------------------------------------------------
# Unsupported ops: converters name the op; we name the layer too.

def _normalise_op(name: str) -> str:
    """'aten._linalg_det.default', 'linalg_det', 'dctest::mystery' -> 'linalg_det', 'mystery'."""
    name = name.replace("::", ".").strip("%'\" ")
    parts = [p for p in name.split(".") if p and p not in {"default", "aten", "Tensor", "int"}]
    return (parts[-1] if parts else name).lstrip("_").lower()


def describe_module(model: nn.Module, qualname: str) -> str:
    """'blocks.0.att (Attention)': a module's qualified name and type."""
    try:
        kind = type(model.get_submodule(qualname)).__name__
    except AttributeError:
        return qualname or "<root>"
    return f"{qualname or '<root>'} ({kind})"


def locate_op(model: nn.Module, example_inputs: Inputs, op_name: str) -> str | None:
    """The qualified name and type of the module that calls ``op_name`` ("layer 2 (Det)"), found
    through torch.export's module stack; None if it cannot be told."""
    wanted = _normalise_op(op_name)
    try:
        program = torch.export.export(model, as_inputs(example_inputs), strict=False)
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


def locate_in_trace(model: nn.Module, traced: torch.jit.ScriptModule, op_name: str) -> str | None:
    """Like ``locate_op``, in a TorchScript trace (what coremltools converts: an op such as the
    fused ``_transformer_encoder_layer_fwd`` of an eval-mode TransformerEncoderLayer appears only
    there, not in torch.export's graph)."""
    wanted = _normalise_op(op_name)
    for node in traced.inlined_graph.nodes():
        if _normalise_op(node.kind()) == wanted:
            scope = node.scopeName().rsplit("/", 1)[-1]   # "__module.enc/__module.enc.0" -> "enc.0"
            return describe_module(model, scope.removeprefix("__module").removeprefix("."))
    return None


_OP_PATTERNS = (
    re.compile(r"convert function for op '([^']+)' not implemented"),   # coremltools
    re.compile(r"converting '([^']+)' op \(located at"),                # coremltools' log line
    re.compile(r"Lowering not found: (\S+)"),                           # litert-torch
    re.compile(r"(?:unsupported|not supported)[^']*'([^']+)'", re.I),
)


def unsupported_op_error(exc: BaseException, model: nn.Module, example_inputs: Inputs,
                         converter: str, *, said: str = "",
                         locate: Callable[[str], str | None] | None = None) -> ExportError:
    """Turn a converter's exception into one ExportError that names the layer and the op.

    ``said``: what the converter logged before failing (coremltools names the op there when its
    exception does not). ``locate``: op name -> layer, for a converter that converts a graph of its
    own (coremltools: the TorchScript trace); default: torch.export's module stack."""
    text = str(exc)
    op = next((m.group(1) for p in _OP_PATTERNS for t in (text, said) if (m := p.search(t))), None)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    first = lines[0] if lines else type(exc).__name__
    if op is None:
        return ExportError(f"{converter} could not convert {type(model).__name__}: {first}")
    layer = (locate or (lambda o: locate_op(model, example_inputs, o)))(op)
    where = f"layer {layer}" if layer else f"{type(model).__name__} (layer not found)"
    return ExportError(f"{where}: op '{_normalise_op(op)}' is not supported by {converter} "
                       f"({first}); replace it with supported ops or export without this target")


@contextlib.contextmanager
def quiet_backend(*logger_names: str) -> Iterator[io.StringIO]:
    """Silence a converter's progress lines, warnings and the named loggers for the block; yields
    what they printed (an error message may need it)."""
    loggers = [logging.getLogger(n) for n in ("root", *logger_names)]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(sink), \
                contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore")
            yield sink
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
