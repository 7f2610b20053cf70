"""ProjectionNet (Ravi 2017): a small network on T x d bits of locality-sensitive hashing.

The projection network maps its input ``x`` (any shape; flattened to ``in_features`` values) to
``T`` projection functions of ``d`` bits each: bit ``(t, j)`` is 1 when ``x . h_tj > 0`` for a
random hyperplane ``h_tj``. The hyperplanes are never stored: they are regenerated from an
integer ``seed`` (which a ``.dcz`` records as data, in its model kwargs), so they cost no
parameters. Small fully connected layers (``hidden``) then map the bits to the output.

The hyperplanes are exactly those of TFLite's ``LSH_PROJECTION`` op (``DENSE``), so the
exporter can store the projection as that op and its ``T x d`` float seeds (a few hundred bytes)
instead of a matrix: entry ``k`` of hyperplane ``(t, j)`` is FarmHash's ``Fingerprint64`` of the
8 bytes ``seed_tj`` (float32) followed by ``k`` (int32), read as a signed 64-bit integer. Here
they are scaled by 2**-63 (the sign of a dot product does not change with a positive scale) and
held in float32; the LiteRT kernel sums in float64 over the unscaled integers, so a bit can
differ only where ``x . h`` is within float32 rounding of zero.

The joint training with a larger trainer network (``λ1 L(trainer) + λ2 distill(projection <-
trainer) + λ3 L(projection)``) is the ``projection`` stage (``compression/stages/projection.py``);
this module holds the networks and their sizes.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from dccore.errors import ModelError

# in_features x T x d hyperplane entries built on load: 2**24 float32 is 64 MiB. A .dcz's model
# kwargs choose T and d, and the hyperplanes are not in its tensors (so the shape check on the
# meta device cannot bound them): the constructor refuses more.
MAX_PROJECTION_ENTRIES = 1 << 24
MAX_BITS = 1 << 14          # T x d: the paper's largest setting is 70 x 14 = 980 bits
MAX_HIDDEN_LAYERS = 8

_K2 = np.uint64(0x9AE16A3B2F90404F)     # FarmHash's k2
_GOLDEN = 0x9E3779B1                    # odd: multiplying by it permutes the integers mod 2**24


def _rotate(v: np.ndarray, shift: int) -> np.ndarray:
    return (v >> np.uint64(shift)) | (v << np.uint64(64 - shift))


def fingerprint64_8(keys: np.ndarray) -> np.ndarray:
    """FarmHash ``Fingerprint64`` of 8-byte keys given as little-endian uint64 (what TFLite's
    LSH_PROJECTION hashes): the ``HashLen0to16`` branch for length 8, vectorised."""
    keys = np.asarray(keys, dtype=np.uint64)
    with np.errstate(over="ignore"):
        mul = _K2 + np.uint64(16)
        a = keys + _K2
        b = keys
        c = _rotate(b, 37) * mul + a
        d = (_rotate(a, 25) + b) * mul
        # HashLen16(c, d, mul)
        x = (c ^ d) * mul
        x ^= x >> np.uint64(47)
        y = (d ^ x) * mul
        y ^= y >> np.uint64(47)
        return y * mul


def lsh_seeds(seed: int, n_hash: int, n_bits: int) -> np.ndarray:
    """The ``(T, d)`` float32 seeds of the projection functions, from one integer ``seed``:
    distinct integers below 2**24 (exact in float32), a permutation of the functions' index."""
    if not 0 <= seed < 2**32:
        raise ModelError(f"projection seed {seed}: expected an integer in [0, 2**32)")
    offset = int(fingerprint64_8(np.array([seed], dtype=np.uint64))[0]) & 0xFFFFFF
    index = np.arange(n_hash * n_bits, dtype=np.int64)
    values = (index * _GOLDEN + offset) % (1 << 24)
    return values.astype(np.float32).reshape(n_hash, n_bits)


def hyperplanes(seeds: np.ndarray, in_features: int) -> np.ndarray:
    """The ``(T*d, in_features)`` hyperplanes of LSH_PROJECTION's seeds, as float64 integers
    (each row's entries are int64 hash values)."""
    seed_bits = np.asarray(seeds, dtype=np.float32).reshape(-1).view(np.uint32).astype(np.uint64)
    index = np.arange(in_features, dtype=np.uint64) << np.uint64(32)
    keys = seed_bits[:, None] | index[None, :]   # bytes: seed (float32), then k (int32)
    return fingerprint64_8(keys).view(np.int64).astype(np.float64)


class LSHProjection(nn.Module):
    """``x`` -> ``T*d`` bits (0.0 / 1.0) by random hyperplanes regenerated from ``seed``.

    The hyperplanes are a non-persistent buffer: not in the state_dict, so not in a ``.dcz``.
    ``tflite_lsh_projection()`` tells the TFLite exporter what to store instead (the seeds)."""

    def __init__(self, in_features: int, n_hash: int, n_bits: int, seed: int = 0) -> None:
        super().__init__()
        check_projection(in_features, n_hash, n_bits)
        self.in_features, self.n_hash, self.n_bits, self.seed = in_features, n_hash, n_bits, seed
        self.seeds = lsh_seeds(seed, n_hash, n_bits)
        planes = hyperplanes(self.seeds, in_features) / 2.0**63
        self.register_buffer("planes", torch.from_numpy(planes.astype(np.float32)),
                             persistent=False)

    @property
    def out_features(self) -> int:
        return self.n_hash * self.n_bits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        return (nn.functional.linear(x, self.planes) > 0).to(x.dtype)

    def tflite_lsh_projection(self) -> dict[str, Any]:
        """For the TFLite exporter (which imports no training code): the op's seeds, and the
        matrix the converted graph multiplies by, to find and replace that multiplication."""
        return {"seeds": self.seeds.copy(), "planes": self.planes.numpy().copy(),
                "in_features": self.in_features}

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, T={self.n_hash}, d={self.n_bits}, seed={self.seed}"


def check_projection(in_features: int, n_hash: int, n_bits: int) -> None:
    for name, v in (("in_features", in_features), ("T", n_hash), ("d", n_bits)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ModelError(f"projection {name}={v!r}: expected a positive integer")
    if n_hash * n_bits > MAX_BITS or in_features * n_hash * n_bits > MAX_PROJECTION_ENTRIES:
        raise ModelError(f"projection T={n_hash} x d={n_bits} on {in_features} inputs: at most "
                         f"{MAX_BITS} bits and {MAX_PROJECTION_ENTRIES:,} hyperplane entries")


class ProjectionNet(nn.Module):
    """The shipped network: LSH projection (T x d bits), ``hidden`` FC layers with ReLU, output.

    Every argument is a plain number (or a list of them), so a ``.dcz`` records it in its model
    kwargs and the model is rebuilt from the built-in zoo ("projectionnet") without any code
    named by the file."""

    def __init__(self, T: int = 60, d: int = 10, hidden: Sequence[int] = (),  # noqa: N803
                 num_classes: int = 10, in_features: int = 784, seed: int = 0) -> None:
        super().__init__()
        hidden = [int(h) for h in hidden]
        if len(hidden) > MAX_HIDDEN_LAYERS or any(h < 1 for h in hidden):
            raise ModelError(f"projectionnet hidden={hidden}: at most {MAX_HIDDEN_LAYERS} "
                             "positive widths")
        self.projection = LSHProjection(in_features, T, d, seed)
        widths = [self.projection.out_features, *hidden]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:]))
        self.out = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.projection(x)
        for layer in self.hidden:
            h = torch.relu(layer(h))
        return self.out(h)

    def width_kwargs(self) -> dict[str, tuple[str, int | None]]:
        """Which constructor argument sets each layer's width (the shrink stage records the new
        widths there): hidden.i -> hidden[i]."""
        return {f"hidden.{i}": ("hidden", i) for i in range(len(self.hidden))}


def parameter_bits(model: nn.Module, bits_per_parameter: int = 32) -> int:
    """The model's size in bits with every parameter stored as float32 (the hyperplanes of a
    projection are buffers regenerated from the seed, and cost nothing)."""
    return bits_per_parameter * sum(p.numel() for p in model.parameters())


def projection_modules(model: nn.Module) -> list[LSHProjection]:
    return [m for m in model.modules() if isinstance(m, LSHProjection)]


def projection_bits(model: nn.Module) -> int:
    """T x d summed over the model's projections: the paper's "neural projection bits"."""
    return sum(m.out_features for m in projection_modules(model))


def describe(model: nn.Module) -> dict[str, Any]:
    """T, d, bits and hidden widths of a ProjectionNet, for reports."""
    projs = projection_modules(model)
    out: dict[str, Any] = {"bits": projection_bits(model), "parameters": sum(
        p.numel() for p in model.parameters()), "float32_bits": parameter_bits(model)}
    if len(projs) == 1:
        out.update(T=projs[0].n_hash, d=projs[0].n_bits, seed=projs[0].seed)
    hidden = getattr(model, "hidden", None)
    if isinstance(hidden, nn.ModuleList):
        out["hidden"] = [m.out_features for m in hidden]
    return out


