"""Choosing per-layer sparsity and bits from measured curves: a greedy on the size model.

Each layer's options are the grid points of its curves: sparsity 0 (not pruned) or one of the
measured sparsities, and one of the measured bit widths. The predicted loss of a plan is the sum
over layers of each layer's drop alone on the curves' monotone fit (sparsity drop + the extra drop of its bits);
the predicted cost is the objective's:

- ``file-bytes``: the layer's bytes in a .dcz file at that (sparsity, bits), from the measured
  size table;
- ``latency``: a proxy, not a measurement: the multiply-adds a sparse kernel does, non-zeros x
  positions (a convolution's weights are applied at every output position). Bits do not change
  it, so the budget left after sparsity is spent on bytes.

The greedy starts with every layer at its gentlest option and repeatedly takes the move (one
layer, to any option that costs less) with the most cost saved per point of predicted loss,
while the predicted loss stays within the budget. Moves that cost no predicted loss go first.
Jumps over several grid points are allowed, so a curve with a flat stretch after a step is not
stopped at the step; and a move may give bits back for a deeper cut (2 bits are free on the
dense layer and dear on the pruned one: taking them first must not rule the cut out). Every
move lowers the cost, so the greedy ends.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ._sensitivity import monotone

OBJECTIVES = ("file-bytes", "latency")
EPS = 1e-6   # a drop this small counts as none (metric units)


@dataclass(frozen=True)
class Choice:
    sparsity: float          # 0.0: not pruned
    bits: int | None         # None: not shared


@dataclass
class LayerModel:
    """One layer's options, predicted drops and costs."""

    name: str
    parameters: int
    positions: int
    sparsities: list[float]           # gentle -> harsh, 0.0 first
    bits: list[int | None]            # gentle -> harsh (many bits first)
    sparsity_drop: list[float]        # monotone fit, per sparsity
    # monotone fit of the extra drop of each bit width: one row per sparsity (the loss of few
    # bits grows as the layer is pruned), or one row for all (curves measured at one sparsity)
    bits_drop: list[float] | list[list[float]]
    table: list[list[int]]            # bytes[sparsity][bits]
    saturation_sparsity: float
    saturation_bits: int | None

    def __post_init__(self) -> None:
        if not self.bits_drop or not isinstance(self.bits_drop[0], list):
            self.bits_drop = [list(self.bits_drop) for _ in self.sparsities]

    @classmethod
    def from_curves(cls, name: str, entry: Mapping[str, Any]) -> "LayerModel":
        sizes = entry["bytes"]
        sparsities = list(sizes["sparsity"])
        measured = {p["sparsity"]: p["drop"] for p in (entry.get("sparsity") or [])}
        s_drop = monotone([max(0.0, measured.get(s, 0.0)) for s in sparsities])
        bits = list(sizes["bits"])
        grid = entry.get("bits_grid")
        if grid and len(grid["sparsity"]) > 1:
            rows = {}
            for s, drops in zip(grid["sparsity"], grid["drop"]):
                by_bits = dict(zip(grid["bits"], drops))
                base = measured.get(s, 0.0) if s else 0.0
                rows[s] = monotone([max(0.0, by_bits.get(b, base) - base) for b in bits])
            b_drop, last = [], [0.0 for _ in bits]
            for s in sparsities:
                # past the harshest row measured, the loss of few bits is at least that row's
                # (and a harsher cut never makes few bits cheaper: the rows' running maximum)
                row = rows.get(s, last)
                last = [max(a, b) for a, b in zip(last, row)]
                b_drop.append(last)
        elif entry.get("bits"):      # one curve (one row, or curves from before the table)
            at = entry["bits"]["at_sparsity"]
            base = measured.get(at, 0.0) if at else 0.0
            by_bits = {p["bits"]: p["drop"] - base for p in entry["bits"]["points"]}
            b_drop = monotone([max(0.0, by_bits.get(b, 0.0)) for b in bits])
        else:
            b_drop = [0.0 for _ in bits]
        return cls(name, entry["parameters"], entry.get("positions", 1), sparsities, bits,
                   s_drop, b_drop, sizes["table"], entry.get("saturation_sparsity", 0.0),
                   entry.get("saturation_bits"))

    def drop(self, i: int, j: int) -> float:
        return self.sparsity_drop[i] + self.bits_drop[i][j]

    def bytes(self, i: int, j: int) -> int:
        return self.table[i][j]

    def macs(self, i: int, j: int) -> float:
        return round((1.0 - self.sparsities[i]) * self.parameters) * self.positions

    def choice(self, i: int, j: int) -> Choice:
        return Choice(self.sparsities[i], self.bits[j])


def cost_functions(objective: str) -> list[Callable[[LayerModel, int, int], float]]:
    if objective not in OBJECTIVES:
        raise ValueError(f"objective {objective!r}: expected one of {list(OBJECTIVES)}")
    by_bytes = LayerModel.bytes
    return [by_bytes] if objective == "file-bytes" else [LayerModel.macs, by_bytes]


@dataclass
class Plan:
    choices: dict[str, Choice]
    index: dict[str, tuple[int, int]]
    predicted_drop: float
    predicted_bytes: int
    predicted_macs: float
    steps: list[dict[str, Any]]       # the moves taken, in order, with why


def greedy(models: Mapping[str, LayerModel], budget: float, objective: str = "file-bytes"
           ) -> Plan:
    """The plan the greedy reaches with a predicted loss of at most ``budget`` (metric units)."""
    at = {name: (0, 0) for name in models}
    total = sum(m.drop(0, 0) for m in models.values())
    steps: list[dict[str, Any]] = []
    for cost in cost_functions(objective):
        while True:
            best = None
            for name, m in models.items():
                i0, j0 = at[name]
                here_cost, here_drop = cost(m, i0, j0), m.drop(i0, j0)
                for i in range(len(m.sparsities)):
                    for j in range(len(m.bits)):
                        if (i, j) == (i0, j0):
                            continue
                        saving = here_cost - cost(m, i, j)
                        extra = m.drop(i, j) - here_drop
                        if saving <= 0 or total + extra > budget + 1e-12:
                            continue
                        # the cost saved per unit of predicted loss; a free move beats any
                        score = saving / max(extra, EPS)
                        if best is None or score > best[0]:
                            best = (score, name, i, j, saving, extra)
            if best is None:
                break
            _, name, i, j, saving, extra = best
            at[name] = (i, j)
            total += extra
            m = models[name]
            steps.append({"layer": name, "sparsity": m.sparsities[i], "bits": m.bits[j],
                          "saved": saving, "extra_drop": extra, "total_drop": total})
    choices = {n: models[n].choice(*at[n]) for n in models}
    return Plan(choices, dict(at), total,
                sum(m.bytes(*at[n]) for n, m in models.items()),
                sum(m.macs(*at[n]) for n, m in models.items()), steps)


def models_from_curves(curves: Mapping[str, Any]) -> dict[str, LayerModel]:
    return {name: LayerModel.from_curves(name, entry) for name, entry in curves["layers"].items()}


def next_step(m: LayerModel, i: int, j: int) -> dict[str, Any]:
    """What the next harsher option of each kind would save and cost: for the recipe's
    comments (why the greedy stopped here)."""
    out = {}
    if i + 1 < len(m.sparsities):
        out["sparsity"] = (m.sparsities[i + 1], m.bytes(i, j) - m.bytes(i + 1, j),
                           m.drop(i + 1, j) - m.drop(i, j))
    if j + 1 < len(m.bits):
        out["bits"] = (m.bits[j + 1], m.bytes(i, j) - m.bytes(i, j + 1),
                       m.drop(i, j + 1) - m.drop(i, j))
    return out
