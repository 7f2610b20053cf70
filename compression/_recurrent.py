"""What each weight matrix of a recurrent layer multiplies, for calibration.

An LSTM, GRU or RNN layer ``l`` in direction ``d`` computes at every step ``x_t W_ih^T`` (its input:
the model's sequence for ``l = 0``, both directions' outputs side by side above that) and
``h_{t-1} W_hh^T`` (its own previous hidden state, zeros or the given ``h0`` first); an LSTM with
``proj_size`` also projects ``o_t * tanh(c_t)`` through ``W_hr``. Each matrix is a layer of its own
in the pipeline (``compression.models.recurrent_weights``), a Linear whose inputs are those rows,
so Wanda's input norms, activation weighting and GPTQ's input curvature read them like a Linear's.

A forward hook sees only the module's input and output, so the sequences each matrix reads are
rebuilt by running the recurrence again from the hook's input and the module's own weights (eval
mode: no dropout between layers). The rebuilt output is compared with the module's: a layer whose
forward is not torch's recurrence is refused with the reason, never measured wrong.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch
from torch import nn
from torch.nn import functional as F

from dccore.errors import ModelError

from .models import RECURRENT_TYPES, layer_type, module_name, weight_param

_TOLERANCE = 1e-3     # relative: float32 rounding through a few hundred steps stays far below


def _direction(module: nn.Module, layer: int, reverse: bool, seq: torch.Tensor,
               h: torch.Tensor, c: torch.Tensor | None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Run one layer in one direction over ``seq`` (T, B, features). Returns (outputs (T, B, H),
    the hidden state each step read (T, B, H), the LSTM projection's inputs (T, B, hidden) or
    None), all in the sequence's own time order."""
    suffix = f"_l{layer}" + ("_reverse" if reverse else "")
    w_ih, w_hh = getattr(module, "weight_ih" + suffix), getattr(module, "weight_hh" + suffix)
    b_ih, b_hh = getattr(module, "bias_ih" + suffix, None), getattr(module, "bias_hh" + suffix, None)
    w_hr = getattr(module, "weight_hr" + suffix, None)
    from_input = F.linear(seq, w_ih, b_ih)
    steps = seq.shape[0]
    outs: list[torch.Tensor | None] = [None] * steps
    read: list[torch.Tensor | None] = [None] * steps
    projected: list[torch.Tensor | None] = [None] * steps
    for t in (range(steps - 1, -1, -1) if reverse else range(steps)):
        read[t] = h
        gates = F.linear(h, w_hh, b_hh)
        if isinstance(module, nn.LSTM):
            i, f, g, o = (from_input[t] + gates).chunk(4, -1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            if w_hr is not None:
                projected[t] = h
                h = F.linear(h, w_hr)
        elif isinstance(module, nn.GRU):
            ir, iz, inew = from_input[t].chunk(3, -1)
            hr, hz, hnew = gates.chunk(3, -1)
            r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
            h = (1 - z) * torch.tanh(inew + r * hnew) + z * h
        else:
            pre = from_input[t] + gates
            h = torch.tanh(pre) if module.nonlinearity == "tanh" else torch.relu(pre)
        outs[t] = h
    return (torch.stack(outs), torch.stack(read),
            torch.stack(projected) if w_hr is not None else None)


def gate_inputs(module: nn.Module, args: tuple, output: object, name: str = "recurrent layer"
                ) -> dict[str, torch.Tensor]:
    """Each weight matrix's input rows (steps x batch, its in_features), by parameter name, for
    one call of ``module`` with positional ``args`` that returned ``output``."""
    x = args[0]
    if isinstance(x, nn.utils.rnn.PackedSequence):
        raise ModelError(f"{name}: calibration of a recurrent layer fed a PackedSequence is not "
                         "supported; calibrate with padded batches (or leave its weighting, "
                         "compensation and Wanda off)")
    hx = args[1] if len(args) > 1 else None
    batched = x.dim() == 3
    seq = x if batched else x.unsqueeze(1)
    if batched and module.batch_first:
        seq = seq.transpose(0, 1)
    seq = seq.detach().float()
    dirs = 2 if module.bidirectional else 1
    size = (module.proj_size or module.hidden_size) if isinstance(module, nn.LSTM) \
        else module.hidden_size
    h0 = hx[0] if isinstance(hx, tuple) else hx
    c0 = hx[1] if isinstance(hx, tuple) else None
    batch = seq.shape[1]

    def initial(state: torch.Tensor | None, index: int, width: int) -> torch.Tensor:
        if state is None:
            return seq.new_zeros(batch, width)
        state = state if batched else state.unsqueeze(1)
        return state[index].detach().float()

    rows: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for layer in range(module.num_layers):
            outs = []
            for d in range(dirs):
                suffix = f"_l{layer}" + ("_reverse" if d else "")
                index = layer * dirs + d
                c = initial(c0, index, module.hidden_size) if isinstance(module, nn.LSTM) else None
                out, read, projected = _direction(module, layer, bool(d), seq,
                                                  initial(h0, index, size), c)
                rows["weight_ih" + suffix] = seq.reshape(-1, seq.shape[-1])
                rows["weight_hh" + suffix] = read.reshape(-1, read.shape[-1])
                if projected is not None:
                    rows["weight_hr" + suffix] = projected.reshape(-1, projected.shape[-1])
                outs.append(out)
            seq = torch.cat(outs, -1)
    _check_rebuilt(module, seq, output, batched, name)
    return rows


def _check_rebuilt(module: nn.Module, seq: torch.Tensor, output: object, batched: bool,
                   name: str) -> None:
    got = output[0] if isinstance(output, tuple) else output
    if not isinstance(got, torch.Tensor):
        return
    want = got.detach().float()
    if batched and module.batch_first:
        want = want.transpose(0, 1)
    if not batched:
        want = want.unsqueeze(1)
    if want.shape != seq.shape or (want.numel() and float((want - seq).abs().max())
                                   > _TOLERANCE * max(float(want.abs().max()), 1.0)):
        raise ModelError(f"{name}: its output is not torch's {layer_type(module)} recurrence "
                         "(a subclass with its own forward?), so its gate inputs cannot be "
                         "measured; leave its weighting, compensation and Wanda off")


def recurrent_hooks(layers: Mapping[str, nn.Module],
                    take: Callable[[str, nn.Module, torch.Tensor], None]) -> list:
    """One forward hook per recurrent module among ``layers`` (name -> module): each call gives
    ``take(name, module, rows)`` for every entry of that module, its matrix's input rows."""
    by_module: dict[int, tuple[nn.Module, list[tuple[str, str]]]] = {}
    for name, module in layers.items():
        if isinstance(module, RECURRENT_TYPES):
            param = weight_param(module, name)
            if param is None:
                raise ValueError(f"{name}: not a weight matrix of {type(module).__name__}")
            by_module.setdefault(id(module), (module, []))[1].append((name, param))

    def hook(module: nn.Module, args: tuple, output: object,
             entries: list[tuple[str, str]]) -> None:
        rows = gate_inputs(module, args, output,
                           module_name(entries[0][0], module) or type(module).__name__)
        for name, param in entries:
            take(name, module, rows[param])

    return [module.register_forward_hook(
        lambda m, args, out, entries=entries: hook(m, args, out, entries))
        for module, entries in by_module.values()]
