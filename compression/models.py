"""Built-in models and the loader for user models given as ``package.module:factory``."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from dccore.errors import CheckpointError, ModelError
from dccore.registry import user_callable


class LeNet300(nn.Module):
    """LeNet-300-100 (Han et al. 2016, Table 2): 784-300-100-10, 266K weights."""

    # the widths are arguments so that a shrunk model (compression/stages/shrink.py) is rebuilt
    # from the zoo with the widths its .dcz records
    def __init__(self, num_classes: int = 10, in_features: int = 784,
                 hidden: tuple[int, int] | list[int] = (300, 100)) -> None:
        super().__init__()
        h1, h2 = _widths("lenet300 hidden", hidden, 2)
        self.fc1 = nn.Linear(in_features, h1)
        self.fc2 = nn.Linear(h1, h2)
        self.fc3 = nn.Linear(h2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)

    def width_kwargs(self) -> dict[str, tuple[str, int | None]]:
        """Layer -> (constructor argument, index) that sets its width (see shrink)."""
        return {"fc1": ("hidden", 0), "fc2": ("hidden", 1)}


class LeNet5(nn.Module):
    """LeNet-5, Caffe variant (Han et al. 2016, Table 3): conv 20/50 5x5, FC 500, 431K weights."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1,
                 channels: tuple[int, int] | list[int] = (20, 50), hidden: int = 500) -> None:
        super().__init__()
        c1, c2 = _widths("lenet5 channels", channels, 2)
        (hidden,) = _widths("lenet5 hidden", [hidden], 1)
        self.conv1 = nn.Conv2d(in_channels, c1, 5)
        self.conv2 = nn.Conv2d(c1, c2, 5)
        self.fc1 = nn.Linear(c2 * 4 * 4, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(self.conv1(x), 2)
        x = torch.max_pool2d(self.conv2(x), 2)
        x = torch.flatten(x, 1)
        x = torch.relu(self.fc1(x))
        return self.fc2(x)

    def width_kwargs(self) -> dict[str, tuple[str, int | None]]:
        return {"conv1": ("channels", 0), "conv2": ("channels", 1), "fc1": ("hidden", None)}


# A .dcz's model kwargs choose these widths; the shapes are checked against the file's tensors
# on the meta device before anything is allocated (deepcompress/loading.py).
MAX_WIDTH = 1 << 16


def _widths(what: str, values: Any, n: int) -> list[int]:
    values = list(values) if isinstance(values, (list, tuple)) else values
    if (not isinstance(values, list) or len(values) != n
            or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_WIDTH
                       for v in values)):
        raise ModelError(f"{what}={values!r}: expected {n} integer width(s) in [1, {MAX_WIDTH}]")
    return values


def _separable(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin, bias=False),
        nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
        nn.Conv2d(cin, cout, 1, bias=False),
        nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class MobileNetTiny(nn.Module):
    """A small MobileNet-style CNN: one stem conv, four depthwise-separable blocks, global pool."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.blocks = nn.Sequential(
            _separable(width, 2 * width, 2),       # 28 -> 14
            _separable(2 * width, 2 * width, 1),
            _separable(2 * width, 4 * width, 2),   # 14 -> 7
            _separable(4 * width, 4 * width, 1),
        )
        self.classifier = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        x = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(x, 1), 1)
        return self.classifier(x)


def _projectionnet(**kwargs: Any) -> nn.Module:
    """ProjectionNet (Ravi 2017; compression/projection.py): T x d LSH bits, small FC layers."""
    from .projection import ProjectionNet

    return ProjectionNet(**kwargs)


BUILTIN: dict[str, Callable[..., nn.Module]] = {
    "lenet300": LeNet300,
    "lenet5": LeNet5,
    "mobilenet_tiny": MobileNetTiny,
    "projectionnet": _projectionnet,
}


def build_model(name: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Build a built-in model by name, or a user model from ``package.module:factory``."""
    kwargs = dict(kwargs or {})
    if name in BUILTIN:
        factory = BUILTIN[name]
    elif ":" in name:
        factory = user_callable(name, f"model {name!r}", ModelError)
    else:
        raise ModelError(f"unknown model {name!r}; built-in models are {sorted(BUILTIN)}, "
                         "or give a user model as 'package.module:factory'")
    try:
        model = factory(**kwargs)
    except TypeError as exc:
        raise ModelError(f"model {name!r}: factory rejected arguments {kwargs} ({exc})") from exc
    if not isinstance(model, nn.Module):
        raise ModelError(f"model {name!r}: factory returned {type(model).__name__}, not nn.Module")
    return model


def load_torch_file(path: str | Path, hint: str | None = None) -> Any:
    """Load a torch file onto the CPU safely (``weights_only=True``: no code is unpickled).

    The one place that opens checkpoints, so a missing or unreadable file reads the same whoever
    loads it; ``hint`` (what the user can do about it) ends both messages.
    """
    p = Path(path)
    tail = f"; {hint}" if hint else ""
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist{tail}")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe files
        first = str(exc).strip().splitlines()[0].rstrip(" .") if str(exc).strip() else ""
        raise CheckpointError(f"checkpoint {p} is corrupt or unsafe to load "
                              f"({first or type(exc).__name__}){tail}") from exc


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A plain state_dict, or the one inside a pipeline checkpoint, loaded by load_torch_file."""
    p = Path(path)
    obj = load_torch_file(p)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint {p} does not hold a state_dict of tensors")
    return obj


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str = "state_dict") -> None:
    """Load ``state`` into ``model`` strictly, with an error naming the mismatching keys."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = "; ".join(lines[1:4]) if len(lines) > 1 else lines[0]
        raise CheckpointError(f"{source} does not fit the model: {detail}") from exc
    check_finite(model, source)


def check_finite(model: nn.Module, source: str = "model") -> None:
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ModelError(f"{source}: tensor {name!r} holds NaN or infinite values; "
                             "retrain or restore a good checkpoint")


# Layers whose weight the pipeline prunes and shares, and the parameter that is that weight:
# Linear (also inside attention: nn.MultiheadAttention's out_proj is one), convolutions of every
# kind (depthwise ones are Conv with groups), transposed convolutions, embeddings, and
# nn.MultiheadAttention's packed query/key/value projection.
WEIGHT_PARAM = {
    nn.Linear: "weight", nn.Conv1d: "weight", nn.Conv2d: "weight", nn.Conv3d: "weight",
    nn.ConvTranspose1d: "weight", nn.ConvTranspose2d: "weight", nn.ConvTranspose3d: "weight",
    nn.Embedding: "weight", nn.MultiheadAttention: "in_proj_weight",
}
# Recurrent layers hold several weight matrices each (every layer and direction: weight_ih_l0,
# weight_hh_l0, weight_ih_l1_reverse, and an LSTM's projection weight_hr_l0); each matrix is a
# layer of its own, named by its state_dict key ("rnn.weight_hh_l1_reverse"), its rows the gates
# stacked as torch stores them. Biases stay dense, as everywhere.
RECURRENT_TYPES = (nn.LSTM, nn.GRU, nn.RNN)
LAYER_TYPES = tuple(t.__name__ for t in WEIGHT_PARAM) + tuple(t.__name__ for t in RECURRENT_TYPES)


def recurrent_weights(module: nn.Module) -> list[str]:
    """The weight matrices of a recurrent layer, in torch's order; [] for any other module."""
    if not isinstance(module, RECURRENT_TYPES):
        return []
    return [n for n in module._flat_weights_names if n.startswith("weight_")
            and getattr(module, n, None) is not None]


def weight_param(module: nn.Module, layer: str = "") -> str | None:
    """The name of ``module``'s compressible weight, or None (not a layer we compress). A
    recurrent layer's entries are named by their matrix, which ``layer`` ends with."""
    if isinstance(module, RECURRENT_TYPES):
        param = layer.rsplit(".", 1)[-1]
        return param if param in recurrent_weights(module) else None
    for cls, param in WEIGHT_PARAM.items():
        if isinstance(module, cls):
            return param if getattr(module, param, None) is not None else None
    return None


def layer_type(module: nn.Module) -> str:
    """The type recipes scope settings by (``by_type``): the built-in class the layer is an
    instance of, so attention's NonDynamicallyQuantizableLinear out_proj is a "Linear"."""
    for cls in (*WEIGHT_PARAM, *RECURRENT_TYPES):
        if isinstance(module, cls):
            return cls.__name__
    return type(module).__name__


def weight_name(layer: str, module: nn.Module) -> str:
    """The state_dict key of a layer's weight: "fc1.weight", "attn.in_proj_weight"; a recurrent
    layer's entry is already named by its key ("rnn.weight_ih_l0")."""
    if isinstance(module, RECURRENT_TYPES):
        return layer
    param = weight_param(module) or "weight"
    return f"{layer}.{param}" if layer else param


def module_name(layer: str, module: nn.Module) -> str:
    """The qualified name of the module a layer belongs to: the layer's own name, or for a
    recurrent layer's matrix ("rnn.weight_ih_l0") its module's ("rnn")."""
    if isinstance(module, RECURRENT_TYPES):
        return layer.rsplit(".", 1)[0] if "." in layer else ""
    return layer


def compressible_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Layers whose weight the pipeline prunes and shares, by qualified name (see WEIGHT_PARAM);
    a recurrent layer gives one entry per weight matrix, all naming the same module."""
    layers: dict[str, nn.Module] = {}
    for name, m in model.named_modules():
        for param in recurrent_weights(m):
            layers[f"{name}.{param}" if name else param] = m
        if weight_param(m) is not None:
            layers[name] = m
    if not layers:
        raise ModelError(f"model {type(model).__name__} has no prunable layers (no Linear, "
                         "convolution, embedding, attention or recurrent weights)")
    return layers
