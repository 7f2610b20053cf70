"""Autotune: per-layer sparsity and bits that minimise the objective within a metric budget.

1. The greedy (``_plan.py``) chooses a plan on the measured curves with a predicted loss of at
   most ``budget x scale``. The scale starts where the plan is no larger than the user's own
   recipe reads on the curves (at least 1): the curves' absolute drops are off from the
   pipeline's, but their bytes are exact, and the user's recipe is a size judged sensible.
2. The plan becomes a recipe (the user's, with a ``by_name`` entry per layer and a comment saying
   why) and the whole pipeline runs it, starting from the dense baseline's checkpoint.
3. The run's ``model.dcz`` is decoded and scored on the validation split. The curves were
   measured one layer at a time with short retraining, so the combined loss of the full pipeline
   can be larger (layers interact) or smaller (longer retraining, distillation) than predicted:
   over the budget, the scale is lowered; under it, raised (by how far the measured drop is
   from the budget until both sides are known, then by interpolating between them), for at
   most ``max_runs`` runs.
4. The passing run with the smallest objective is the result: its recipe, its model.dcz. The
   test split is scored once, for that run alone; every decision before was the validation
   split's.
"""
from __future__ import annotations

import dataclasses
import math
import re
import shutil
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from dccore.config import Checked, Int, Num, OneOf, setting
from dccore.errors import ConfigError, RecipeError
from dccore.outputs import write_bytes_atomic

from .._train import ProgressFn, no_progress
from ..recipe import Recipe
from ..stages import encode
from ._plan import OBJECTIVES, LayerModel, Plan, greedy, models_from_curves, next_step
from ._sensitivity import stage_of
from ._toml import dumps
from ._workbench import Workbench, seed_run_folder, show_drop

_BUDGET = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(pt|pts|points?)?\s*$")
MAX_ITERATIONS = 12     # greedy calls (a plan already run is not run again)


def parse_budget(text: str | float) -> float:
    """A metric budget: ``"0.5pt"`` (points: hundredths of the metric, as accuracy points) or a
    plain number in the metric's own units (``0.005``)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value, points = float(text), False
    else:
        m = _BUDGET.match(str(text))
        if not m:
            raise RecipeError(f"--budget {text!r}: expected points such as 0.5pt, or a number in "
                              "the metric's units such as 0.005")
        value, points = float(m.group(1)), bool(m.group(2))
    value = value / 100 if points else value
    if not 0.0 <= value < 1.0 or not math.isfinite(value):
        raise RecipeError(f"--budget {text!r}: expected a drop in [0, 100) points")
    return value


@dataclass(frozen=True)
class AutotuneSettings(Checked):
    """What ``autotune`` aims at and may spend, checked when made (ConfigError, exit 2)."""

    budget: float = setting(check=Num(0, 1, hi_open=True))  # metric units (0.005: half a point)
    objective: str = setting("file-bytes", OneOf(tuple(OBJECTIVES)))
    max_runs: int = setting(4, Int(1))    # full pipeline runs to verify and correct the plan
    margin: float = setting(0.0, Num(0))  # metric units kept in hand on the validation split
    coder: str | None = None          # the generated recipe's encode coder (None: the recipe's)
    # biases and other plain tensors: "float16" halves them (lossy: the verification scores the
    # decoded file, so the loss is counted); None: the recipe's
    plain_dtype: str | None = None
    metadata: str | None = None       # the generated recipe's encode metadata ("minimal"); None: the recipe's

    def _check(self, path: str) -> None:
        if self.margin > self.budget:
            raise ConfigError(f"margin: expected 0 to the budget ({self.budget}), got {self.margin}")


# --------------------------------------------------------------------------------------------
# The plan as a recipe

def _carry(config: Any, name: str, type_name: str, fields: tuple[str, ...]) -> dict[str, Any]:
    """A layer's own settings of ``fields`` (set for it by name or type) that differ from the
    stage's global ones: kept when its override is rewritten."""
    resolved = config.for_layer(name, type_name) or {}
    plain = dataclasses.replace(config, by_type={}, by_name={}).for_layer(name, type_name) or {}
    return {k: resolved[k] for k in fields if resolved.get(k) is not None
            and resolved.get(k) != plain.get(k)}


def _pct(x: float) -> str:
    return f"{100 * x:.4g}%"


def plan_recipe(base: Mapping[str, Any], recipe: Recipe, plan: Plan,
                models: Mapping[str, LayerModel], curves: Mapping[str, Any],
                settings: AutotuneSettings) -> tuple[dict[str, Any], dict[tuple, str]]:
    """The user's recipe (``base``, as parsed) with the plan's per-layer sparsity and bits, and
    the comments saying why each layer got them."""
    out = {**base, "data": {**(base.get("data") or {}),
                            "val_fraction": recipe.data.val_fraction}}
    stages = [dict(s) for s in base.get("stages") or []]
    out.setdefault("version", recipe.version)
    comments: dict[tuple, str] = {
        ("version",): "recipe schema version (compression/recipe.py, RECIPE_VERSION)",
        ("data", "val_fraction"): "held out (seeded) to judge every choice; never the test set"}
    prune_i = next((i for i, s in enumerate(recipe.stages) if s.KIND == "prune"), None)
    share_i = next((i for i, s in enumerate(recipe.stages) if s.KIND == "share"), None)
    retrain = curves["settings"]["retrain_epochs"]
    how = f"alone, {retrain} retraining epoch{'s' if retrain != 1 else ''}" if retrain else \
        "alone, no retraining"
    largest = max(models.values(), key=lambda m: m.parameters).name
    probe_types = {n: e["type"] for n, e in curves["layers"].items()}
    if prune_i is not None:
        config, stage = recipe.stages[prune_i], stages[prune_i]
        stage.pop("quality", None)
        stage.pop("by_type", None)
        stage["sparsity"] = plan.choices[largest].sparsity if largest in plan.choices else \
            stage.get("sparsity", 0.0)
        by_name: dict[str, Any] = {}
        for name, m in models.items():
            c = plan.choices[name]
            if curves["layers"][name].get("sparsity") is None or c.sparsity == 0.0:
                by_name[name] = False
                comments[("stages", prune_i, "by_name", name)] = (
                    f"{name}: not pruned (" + ("the recipe leaves it alone" if
                    curves["layers"][name].get("sparsity") is None else
                    "every measured cut cost more than the budget allowed") + ")")
                continue
            i, j = plan.index[name]
            by_name[name] = {**_carry(config, name, probe_types[name], ("method",)),
                             "sparsity": c.sparsity}
            nxt = next_step(m, i, j).get("sparsity")
            why = (f"{name}: {_pct(c.sparsity)} ({how}: {show_drop(m.sparsity_drop[i])} on "
                   f"validation; saturation {_pct(m.saturation_sparsity)}); "
                   f"{m.bytes(i, j):,} B predicted")
            if nxt:
                why += (f"\n{_pct(nxt[0])} would save ~{nxt[1]:,} B for {show_drop(nxt[2])} more")
            comments[("stages", prune_i, "by_name", name)] = why
        stage["by_name"] = by_name
        comments[("stages", prune_i, "sparsity")] = "the largest layer's; every layer is named below"
        stages[prune_i] = stage
    if share_i is not None:
        config, stage = recipe.stages[share_i], stages[share_i]
        stage.pop("by_type", None)
        by_name = {}
        for name, m in models.items():
            c = plan.choices[name]
            if c.bits is None:
                by_name[name] = False
                continue
            i, j = plan.index[name]
            by_name[name] = {**_carry(config, name, probe_types[name],
                                      ("init", "group_size", "weighting")), "bits": c.bits}
            nxt = next_step(m, i, j).get("bits")
            why = (f"{name}: {c.bits} bits ({how} at {_pct(c.sparsity)}: "
                   f"{show_drop(m.bits_drop[i][j])} beyond the cut; saturation "
                   f"{m.saturation_bits} bits)")
            if nxt:
                why += f"\n{nxt[0]} bits would save ~{nxt[1]:,} B for {show_drop(nxt[2])} more"
            comments[("stages", share_i, "by_name", name)] = why
        if largest in plan.choices and plan.choices[largest].bits is not None:
            stage["bits"] = plan.choices[largest].bits
            comments[("stages", share_i, "bits")] = "the largest layer's; every layer is named below"
        stage["by_name"] = by_name
        stages[share_i] = stage
    encode = {k: v for k, v in (("coder", settings.coder),
                                ("plain_dtype", settings.plain_dtype),
                                ("metadata", settings.metadata)) if v is not None}
    if encode:
        at = next((i for i, s in enumerate(recipe.stages) if s.KIND == "encode"), None)
        if at is None:
            stages.append({"kind": "encode", "name": f"{len(stages) + 1}_encode"})
            at = len(stages) - 1
        stages[at] = {**stages[at], **encode}
        if settings.metadata == "minimal":
            comments[("stages", at, "metadata")] = (
                "the file says which model it holds and the recipe's sha256; the recipe itself "
                "is in the run's recipe.json")
        if settings.plain_dtype == "float16":
            comments[("stages", at, "plain_dtype")] = (
                "biases in float16: lossy, counted (the decoded file is what was verified)")
    out["stages"] = stages
    return out, comments


def header(recipe_name: str, settings: AutotuneSettings, metric: str, scale: float,
           plan: Plan, measured: Mapping[str, Any] | None) -> str:
    lines = [
        f"Generated by `deepcompress autotune` from {recipe_name} on {date.today().isoformat()}.",
        f"Objective: {settings.objective}; budget: {100 * settings.budget:.3g} points of "
        f"validation {metric}"
        + (f" (margin {100 * settings.margin:.3g})" if settings.margin else "") + ".",
        f"Greedy on the measured curves at {scale:.3g} x the budget: predicted "
        f"{show_drop(plan.predicted_drop)}, {plan.predicted_bytes:,} B of compressed layers.",
    ]
    if measured:
        lines.append(f"Verified by the full pipeline: {show_drop(measured['drop'])} on validation "
                     f"(through the decoded model.dcz), {measured['bytes']:,} B on disk "
                     f"({measured['ratio']:.1f}x).")
    return "\n".join(lines)


def recipe_point(recipe: Recipe, models: Mapping[str, LayerModel],
                 curves: Mapping[str, Any]) -> dict[str, Any] | None:
    """The user's own recipe read on the curves: each layer at the grid point nearest its
    setting on the gentle side (the sparsity at or below it, the bits at or above), and the
    predicted drop and bytes of that. None when a layer's cut is not a sparsity (a quality
    threshold has no place on the grid)."""
    prune, share = stage_of(recipe, "prune"), stage_of(recipe, "share")
    at: dict[str, tuple[int, int]] = {}
    for name, m in models.items():
        kind = curves["layers"][name]["type"]
        p = prune.for_layer(name, kind) if prune is not None else None
        if p is not None and p.get("sparsity") is None:
            return None
        wanted_s = float(p["sparsity"]) if p is not None else 0.0
        i = max(k for k, s in enumerate(m.sparsities) if s <= wanted_s + 1e-9)
        b = share.for_layer(name, kind) if share is not None else None
        wanted_b = b.get("bits") if b is not None else None
        fits = [k for k, v in enumerate(m.bits) if wanted_b is None or v is None or v >= wanted_b]
        j = max(fits) if fits else 0
        at[name] = (i, j)
    return {"drop": sum(models[n].drop(*ij) for n, ij in at.items()),
            "bytes": sum(models[n].bytes(*ij) for n, ij in at.items()),
            "choices": {n: dataclasses.asdict(models[n].choice(*ij)) for n, ij in at.items()}}


def first_scale(anchor: Mapping[str, Any] | None, budget: float,
                models: Mapping[str, LayerModel] | None = None, objective: str = "file-bytes"
                ) -> float:
    """Where the search starts. The curves measure each layer alone with short retraining (or
    none): their drops are off from the pipeline's by a factor nobody knows before a run, and
    summed over many layers they can mean nothing (ten one-shot cuts of -20 points each are not
    a -200-point model). Bytes, though, are measured exactly, and the user's own recipe is a
    size somebody already judged sensible. So the first try is the greedy's plan at the smallest
    multiple of the budget whose predicted bytes are at most the recipe's own, read on the
    curves: the same size as the user's recipe, with the loss moved to where the curves say it
    is cheapest. Never below 1 (the budget itself, when even that plan is smaller)."""
    if anchor is None or budget <= 0 or not models:
        return 1.0
    target = anchor["bytes"]

    def size(scale: float) -> int:
        return greedy(models, budget * scale, objective).predicted_bytes

    if size(1.0) <= target:
        return 1.0
    lo, hi = 1.0, 2.0
    while size(hi) > target:
        lo, hi = hi, hi * 2
        if hi > 1e6:
            return 1.0      # the recipe's size is out of the curves' reach: start at the budget
    while hi / lo > 1.01:
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if size(mid) <= target else (mid, hi)
    return hi


# --------------------------------------------------------------------------------------------
# Verification

def decoded_model(path: Path, recipe: Recipe) -> torch.nn.Module:
    """The model as ``path`` decodes (the figure that ships), built under the recipe's seed."""
    torch.manual_seed(recipe.seed)
    return encode.decoded_model(path, recipe.model.name, recipe.model.kwargs)


def verify(recipe_dict: Mapping[str, Any], text: str, folder: Path, baseline: Path,
           bench: Workbench, *, data_root: str | None = None, progress: ProgressFn = no_progress,
           log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Run the recipe through the pipeline from the dense baseline's checkpoint; score its
    decoded model.dcz on the validation split."""
    from ..pipeline import run_recipe

    recipe = Recipe.from_dict(dict(recipe_dict), name=bench.recipe.name)
    if not recipe.stages:
        raise RecipeError("the recipe has no stages: nothing to verify")
    if folder.exists():
        shutil.rmtree(folder)      # ours: a try folder this tuner made under its own output
    seed_run_folder(folder, baseline)
    t0 = time.perf_counter()
    result = run_recipe(recipe, folder, recipe_text=text, resume_from=recipe.stages[0].name,
                        data_root=data_root, progress=progress, log=log)
    seconds = time.perf_counter() - t0
    value = bench.evaluate(decoded_model(folder / "model.dcz", recipe))
    report = result.report
    return {"folder": str(folder), "validation": value, "drop": bench.drop(value),
            "bytes": report["compressed_bytes"], "dense_bytes": report["dense_bytes"],
            "ratio": report["compression_ratio"], "sparsity": report["sparsity"],
            "seconds": seconds}


def next_scale(scale: float, drop: float, limit: float, lo: float | None, hi: float | None,
               drops: Mapping[float, float] | None = None) -> float | None:
    """The next multiple of the budget to give the greedy. Until a passing and a failing scale
    are both known, step by how far the measured drop is from the limit (a secant on "drop is
    proportional to scale", clamped to x1.25-4 up or x0.25-0.8 down). Then, inside the bracket,
    interpolate where the drop meets the limit (linear in the drop, geometric in the scale),
    kept to the bracket's middle half so that one badly predicted end cannot stall the search
    (a safeguarded secant; plain geometric bisection when the ends' drops are not known).
    None: the bracket is narrower than 10%, nothing left to learn."""
    if lo is not None and hi is not None:
        if hi / lo < 1.1:
            return None
        t = 0.5
        if drops and lo in drops and hi in drops and drops[hi] > drops[lo]:
            t = min(max((limit - drops[lo]) / (drops[hi] - drops[lo]), 0.25), 0.75)
        return lo * (hi / lo) ** t
    ratio = limit / drop if drop > 0 else math.inf
    if hi is None:
        return scale * min(max(ratio, 1.25), 4.0)
    return scale * min(max(ratio, 0.25), 0.8)


def autotune(base: Mapping[str, Any], bench: Workbench, curves: Mapping[str, Any],
             baseline: Path, out: Path, settings: AutotuneSettings, *,
             data_root: str | None = None, progress: ProgressFn = no_progress,
             log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """See the module docstring. Writes ``out/recipe.toml``, ``out/model.dcz`` and the tries
    (``out/tries/N``); returns what autotune.json records."""
    recipe = bench.recipe
    models = models_from_curves(curves)
    limit = settings.budget - settings.margin
    tries: list[dict[str, Any]] = []
    ran: dict[tuple, dict[str, Any]] = {}
    anchor = recipe_point(recipe, models, curves)
    start = first_scale(anchor, settings.budget, models, settings.objective)
    scale, lo, hi = start, None, None
    drops: dict[float, float] = {}          # scale -> measured drop
    if anchor is not None:
        log(f"the recipe as given, on the curves: {anchor['bytes']:,} B "
            f"({show_drop(anchor['drop'])} predicted); starting at {scale:.3g} x the budget, "
            "the plan no larger")
    t_start = time.perf_counter()
    for _ in range(MAX_ITERATIONS):
        if len(ran) >= settings.max_runs:
            break
        plan = greedy(models, settings.budget * scale, settings.objective)
        key = tuple(sorted((n, c.sparsity, c.bits) for n, c in plan.choices.items()))
        if key in ran:
            measured = ran[key]
            log(f"scale {scale:.3g}: the same plan as try {measured['try']}")
        else:
            number = len(ran) + 1
            data, comments = plan_recipe(base, recipe, plan, models, curves, settings)
            text = dumps(data, comments, header(recipe.name, settings, bench.metric, scale, plan,
                                                None))
            log(f"try {number}: scale {scale:.3g}, predicted {show_drop(plan.predicted_drop)}, "
                f"{plan.predicted_bytes:,} B: " + ", ".join(
                    f"{n} {_pct(c.sparsity)}/{c.bits}b" for n, c in plan.choices.items()))
            measured = verify(data, text, out / "tries" / str(number), baseline, bench,
                              data_root=data_root, progress=progress, log=log)
            measured.update(
                {"try": number, "scale": scale, "predicted_drop": plan.predicted_drop,
                 "predicted_bytes": plan.predicted_bytes, "predicted_macs": plan.predicted_macs,
                 "within_budget": measured["drop"] <= limit + 1e-12,
                 "choices": {n: dataclasses.asdict(c) for n, c in plan.choices.items()},
                 "steps": plan.steps,
                 "recipe_text": dumps(data, comments, header(recipe.name, settings,
                                                             bench.metric, scale, plan,
                                                             measured))})
            ran[key] = measured
            tries.append(measured)
            log(f"try {number}: {show_drop(measured['drop'])} on validation, "
                f"{measured['bytes']:,} B ({measured['ratio']:.1f}x), "
                + ("within" if measured["within_budget"] else "over") + " the budget")
        if measured["within_budget"]:
            lo = scale if lo is None else max(lo, scale)
        else:
            hi = scale if hi is None else min(hi, scale)
        drops[scale] = measured["drop"]
        scale = next_scale(scale, measured["drop"], limit, lo, hi, drops)
        if scale is None:
            break
    passing = [t for t in tries if t["within_budget"]]
    metric_of = (lambda t: t["bytes"]) if settings.objective == "file-bytes" else \
        (lambda t: (t["predicted_macs"], t["bytes"]))
    final = min(passing, key=metric_of) if passing else min(tries, key=lambda t: t["drop"])
    result = _finish(final, bench, recipe, out)
    return {
        "recipe": recipe.name,
        "objective": settings.objective,
        "budget": {"metric_units": settings.budget, "points": 100 * settings.budget,
                   "margin": settings.margin},
        "metric": bench.metric,
        "baseline": {"validation": bench.baseline_metric, "test": result.pop("baseline_test")},
        "within_budget": bool(passing),
        "recipe_on_curves": anchor,
        "first_scale": start,
        "tries": [{k: v for k, v in t.items() if k != "recipe_text"} for t in tries],
        "final": result,
        "seconds": time.perf_counter() - t_start,
    }


def _finish(final: Mapping[str, Any], bench: Workbench, recipe: Recipe, out: Path
            ) -> dict[str, Any]:
    """Write the chosen recipe and model; score the test split, once, for that model alone."""
    write_bytes_atomic(out / "recipe.toml", final["recipe_text"].encode())
    src = Path(final["folder"]) / "model.dcz"
    from dccore.outputs import DCZ

    write_bytes_atomic(out / "model.dcz", src.read_bytes(), kind=DCZ)
    test = bench.task.data().test
    value = float(bench.task.evaluate(decoded_model(out / "model.dcz", recipe),
                                      test)[bench.task.primary])
    base = float(bench.task.evaluate(bench.fresh_model(), test)[bench.task.primary])
    drop = base - value if bench.task.higher_is_better else value - base
    return {"try": final["try"], "recipe": str(out / "recipe.toml"),
            "model": str(out / "model.dcz"), "bytes": final["bytes"],
            "dense_bytes": final["dense_bytes"], "ratio": final["ratio"],
            "validation": final["validation"], "validation_drop": final["drop"],
            "within_budget": final["within_budget"], "choices": final["choices"],
            "test": value, "test_drop": drop, "baseline_test": base}
