"""The examples an artifact is exported with and validated on, and those a device scores.

- ``file_examples``: named tensors from a ``.pt`` or ``.npz`` file the user gives (``--inputs``,
  or ``[export] inputs`` of a qualify config), one per ``forward`` input, plus optional
  ``labels``; read without pickles.
- ``idx_examples``: the default for the built-in image models, the IDX test set, labelled.
- ``eval_data``: the first N labelled IDX test examples, for accuracy on a device.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from dccore.errors import DataError, RecipeError, UsageError


@dataclass(frozen=True)
class ValidationSet:
    """Examples to export with (the first) and validate on (all); ``labels`` when scored by
    accuracy, else the outputs are held to PyTorch's."""

    inputs: tuple[torch.Tensor, ...]
    labels: np.ndarray | None
    describe: dict[str, Any]          # for the report: where they come from, names and shapes

    def __len__(self) -> int:
        return int(self.inputs[0].shape[0])


def idx_examples(meta: dict, file: str | Path, *, input_shape: Sequence[int] | None = None,
                 data: str | None = None, limit: int | None = None) -> ValidationSet:
    """The IDX test set (``data``, else the folder ``meta`` records, else the default), each
    image reshaped to ``input_shape`` (default: the one ``meta`` records for the ``file``)."""
    from compression.data import load_split  # noqa: PLC0415

    shape = list(input_shape) if input_shape else _recorded_shape(meta, file)
    root = data or (meta.get("data") or {}).get("root")
    split = load_split("test", root=root, limit=limit)
    images = split.images
    if list(images.shape[1:]) != shape:
        if int(np.prod(shape)) != int(np.prod(images.shape[1:])):
            raise UsageError(f"the model takes examples of shape {shape}; the test set's are "
                             f"{list(images.shape[1:])}")
        images = images.reshape(len(images), *shape)
    return ValidationSet((images,), split.labels.numpy(),
                         {"source": f"IDX test set ({root or 'default'})", "names": ["images"],
                          "shapes": [shape], "input_shape": shape})


def _recorded_shape(meta: dict, file: str | Path) -> list[int]:
    shape = (meta.get("model") or {}).get("input_shape")
    if not shape:
        raise RecipeError(f"{file} records no input shape (meta['model']['input_shape']); "
                          "pass --input-shape C,H,W, or give the examples with --inputs FILE")
    return [int(d) for d in shape]


def read_named(path: Path) -> dict[str, Any]:
    """A file's named tensors (``.pt``: plain tensors only; ``.npz``: arrays, no pickles)."""
    if not path.is_file():
        raise UsageError(f"--inputs {path}: no such file")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as exc:
            raise DataError(f"--inputs {path}: not a readable .npz of arrays ({exc})") from None
    if path.suffix in (".pt", ".pth"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle/zip errors of many kinds: the file is not plain tensors
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataError(f"--inputs {path}: not a file of plain tensors ({first})") from None
        if isinstance(obj, torch.Tensor):
            return {"input": obj}
        if isinstance(obj, dict) and all(isinstance(k, str) for k in obj):
            return dict(obj)
        raise DataError(f"--inputs {path} holds a {type(obj).__name__}; save a dict of named "
                        "tensors, e.g. torch.save({'input_ids': ids, 'attention_mask': mask}, f)")
    raise UsageError(f"--inputs {path}: expected a .pt or .npz file")


def _forward_order(model: nn.Module, names: list[str]) -> list[str]:
    """The inputs' names in the order forward() takes them: by parameter name where the file
    names forward()'s first parameters, else as the file lists them."""
    from exporters import forward_params  # noqa: PLC0415

    params = forward_params(model)
    known = [n for n in names if n in params]
    if not known:
        return names
    if len(known) != len(names) or set(names) != set(params[:len(names)]):
        raise UsageError(f"--inputs names {names}; {type(model).__name__}.forward takes "
                         f"{params}: name the first {len(names)} of them, or none (file order)")
    return sorted(names, key=params.index)


def file_examples(path: str | Path, model: nn.Module, *, limit: int | None = None) -> ValidationSet:
    """The examples of ``path`` (see ``read_named``), in the order ``model.forward`` takes them."""
    path = Path(path)
    named = read_named(path)
    labels = named.pop("labels", None)
    tensors = {}
    for name, value in named.items():
        t = torch.as_tensor(np.asarray(value)) if not isinstance(value, torch.Tensor) else value
        if t.dim() == 0:
            raise DataError(f"--inputs {path}: {name!r} is a scalar; each input needs a batch axis")
        # float inputs as the weights are (a float64 array from numpy would not run)
        tensors[name] = t.float() if t.is_floating_point() else t
    if not tensors:
        raise DataError(f"--inputs {path} holds no inputs (only labels)")
    order = _forward_order(model, list(tensors))
    inputs = tuple(tensors[n][:limit] for n in order)
    counts = {n: int(tensors[n].shape[0]) for n in order}
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        counts["labels"] = int(labels.shape[0])
        labels = labels[:limit]
    if len(set(counts.values())) != 1:
        raise DataError(f"--inputs {path}: each entry needs the same number of examples; got {counts}")
    return ValidationSet(inputs, labels, {"source": str(path), "names": order,
                                          "shapes": [list(t.shape[1:]) for t in inputs],
                                          "dtypes": [str(t.dtype).removeprefix("torch.")
                                                     for t in inputs]})


def eval_data(n: int, *, data: str | None = None, input_shape: Sequence[int] | None = None):
    """The first ``n`` labelled IDX test examples (``data``: the folder, else the default), for
    accuracy on a device (``device_harness.runners.EvalData``)."""
    from compression.data import load_split  # noqa: PLC0415
    from device_harness.runners import EvalData  # noqa: PLC0415

    split = load_split("test", root=data, limit=n)
    images = split.images.numpy()
    if input_shape:
        images = images.reshape(len(images), *input_shape)
    return EvalData(images, split.labels.numpy(), source=f"test split, first {len(split)} examples")
