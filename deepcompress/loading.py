"""Rebuilding a model for a ``.dcz`` file: the one place where a file's weights meet code.

A ``.dcz`` is data. It may say which built-in model it holds (``lenet300``), and with which
keyword arguments, because that only picks among constructors this project ships; it may never
choose code to import. A model of the user's own is rebuilt only from a factory the *user* names
(``--model package.module:factory``), never from the file. Before anything real is allocated the
model is built on PyTorch's ``meta`` device and its tensor shapes are checked against the file's,
so a file cannot make a built-in constructor allocate more than the file itself decodes to.
"""
from __future__ import annotations

import os
from typing import Any

from dccore.errors import ContainerError, UsageError


def model_spec(meta: dict[str, Any], path: str, model: str | None = None,
               model_kwargs: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """(factory name, kwargs) to rebuild the model of a file whose metadata is ``meta``."""
    from compression.models import BUILTIN

    recorded = meta.get("model") if isinstance(meta.get("model"), dict) else {}
    recorded_name = recorded.get("name") if isinstance(recorded.get("name"), str) else None
    if model is not None:   # the user's own choice, on the command line or in a recipe
        kwargs = model_kwargs if model_kwargs is not None else (
            recorded.get("kwargs") if recorded_name == model else None) or {}
        return model, dict(kwargs)
    if recorded_name is None:
        raise UsageError(f"{path} does not say which model it holds; pass --model NAME (a "
                         f"built-in: {', '.join(sorted(BUILTIN))}) or --model package.module:factory")
    if recorded_name not in BUILTIN:
        raise UsageError(f"{path} names the model factory {recorded_name!r}: a file may not choose "
                         "code to run. If you trust that factory, name it yourself: "
                         f"--model {recorded_name}")
    kwargs = recorded.get("kwargs") or {}
    if not isinstance(kwargs, dict) or not all(
            isinstance(k, str) and _plain(v) for k, v in kwargs.items()):
        raise ContainerError(f"{path}: meta['model']['kwargs'] must map names to plain numbers, "
                             "strings or booleans, or short lists of numbers (layer widths)")
    return recorded_name, dict(kwargs)


MAX_LIST_KWARG = 64     # a list kwarg is a few layer widths (a shrunk LeNet, a ProjectionNet)


def _plain(value: Any) -> bool:
    """A value a file may pass to a built-in constructor: a number, string or boolean, or a short
    list of numbers (a shrunk model's widths; their tensors' shapes are checked on the meta
    device before anything is allocated)."""
    if isinstance(value, list):
        return len(value) <= MAX_LIST_KWARG and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    return isinstance(value, (int, float, str, bool))


def model_from_dcz(path: str | os.PathLike[str], *, model: str | None = None,
                   model_kwargs: dict[str, Any] | None = None):
    """Load ``path`` and rebuild its model (see the module docstring). Returns (model, Dcz)."""
    import torch

    import dcz as container
    from compression.models import BUILTIN, build_model, load_weights
    from dccore.errors import DeepCompressError

    loaded = container.load(path)
    name, kwargs = model_spec(loaded.meta, str(path), model, model_kwargs)
    built = None
    try:
        with torch.device("meta"):   # shapes only: nothing is allocated
            skeleton = build_model(name, kwargs)
    except DeepCompressError:
        raise
    except Exception:
        # a factory of the user's own that loads its weights (a Hugging Face from_pretrained)
        # cannot run on the meta device; the user chose that code, so build it for real
        if name in BUILTIN:
            raise
        skeleton = built = build_model(name, kwargs)
    want = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in loaded.state_dict.items()}
    if want != have:
        diff = sorted(set(want.items()) ^ set(have.items()))[:3]
        raise ContainerError(f"{path}: its tensors do not fit model {name!r} with {kwargs} "
                             f"(first differences: {diff}); pass the right --model/--model-kwargs")
    if built is None:
        built = build_model(name, kwargs)
    load_weights(built, loaded.state_dict, source=str(path))
    return built.eval(), loaded
