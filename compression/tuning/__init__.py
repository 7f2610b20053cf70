"""Saturation points and automatic recipes.

    from compression.tuning import sensitivity, autotune
    curves = sensitivity("lenet300", "runs/sens")                 # per-layer curves + report
    result = autotune("lenet300", "runs/auto", budget="0.5pt")     # recipe.toml + model.dcz

``sensitivity`` measures, for each layer the recipe compresses, the task metric on a held-out
validation split against sparsity and against bits (that layer alone), its saturation points,
and what the layer costs in a .dcz file at each setting; it writes ``sensitivity.json``,
``plots/*.png`` and ``report.html``. ``autotune`` chooses per-layer sparsity and bits on those
curves to minimise the file's bytes (or a latency proxy) within a metric budget, verifies the
choice by running the whole pipeline, corrects it, and writes the recipe with a comment per
layer saying why. The dense baseline is trained once (or reused from a run folder).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping

from dccore import tomlfile
from dccore.errors import RecipeError
from dccore.outputs import read_json_object, write_json_atomic

from .._train import ProgressFn, no_progress
from ..recipe import Recipe, read_recipe
from ._autotune import AutotuneSettings, parse_budget
from ._sensitivity import SensitivitySettings, measure
from ._workbench import Workbench, ensure_baseline, with_validation

__all__ = ["sensitivity", "autotune", "SensitivitySettings", "AutotuneSettings", "parse_budget"]

CURVES_FILE = "sensitivity.json"
RESULT_FILE = "autotune.json"


def _coder(recipe: Recipe) -> str:
    """The coder the recipe's file is written with (the size tables use it)."""
    coder = next((s.coder for s in recipe.stages if s.KIND == "encode"), "huffman")
    return "ans" if coder not in ("huffman", "ans", "none") else coder


def _load(spec: str | Path | Recipe, edit: Callable[[dict], None] | None
          ) -> tuple[Recipe, dict[str, Any]]:
    """The recipe, and the same recipe as parsed data (what a generated recipe starts from)."""
    if isinstance(spec, Recipe):
        return spec, spec.to_dict()
    recipe, text = read_recipe(spec, edit)
    data = tomlfile.loads(text, str(spec), error=RecipeError)   # read_recipe parsed it already
    if edit is not None:
        edit(data)
    data.setdefault("name", recipe.name)
    return recipe, data


def sensitivity(recipe: str | Path | Recipe, out: str | Path, *,
                settings: SensitivitySettings = SensitivitySettings(),
                from_run: str | Path | None = None, val_fraction: float | None = None,
                data_root: str | None = None, edit: Callable[[dict], None] | None = None,
                progress: ProgressFn = no_progress, log: Callable[[str], None] = lambda m: None,
                _bench: list | None = None) -> dict[str, Any]:
    """Measure the curves (see the module docstring); write them and the report under ``out``."""
    from ._report import write_report

    r, _ = _load(recipe, edit)
    r = with_validation(r, val_fraction)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    baseline = ensure_baseline(r, out / "baseline", from_run=Path(from_run) if from_run else None,
                               data_root=data_root, progress=progress, log=log)
    bench = Workbench.open(r, baseline, data_root=data_root,
                           train_examples=settings.train_examples, progress=progress, log=log)
    curves = measure(bench, settings, coder=_coder(r))
    curves["baseline_run"] = str(baseline.resolve())
    write_json_atomic(out / CURVES_FILE, curves)
    curves["files"] = write_report(curves, out)
    write_json_atomic(out / CURVES_FILE, curves)
    if _bench is not None:
        _bench.append(bench)
    return curves


def _earlier_curves(path: Path, recipe: Recipe, settings: SensitivitySettings
                   ) -> dict[str, Any] | None:
    """Curves an earlier, interrupted autotune measured into this folder, if they are for this
    recipe and these settings."""
    from dataclasses import asdict

    data = read_json_object(path)
    if data is None:
        return None
    wanted = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(settings).items()}
    wanted["sparsities"] = sorted(set(settings.sparsities))
    wanted["bits"] = sorted(set(settings.bits), reverse=True)
    saved = {k: data.get("settings", {}).get(k) for k in wanted}
    if data.get("recipe_sha256") != recipe.sha256() or saved != wanted:
        return None
    return data


def autotune(recipe: str | Path | Recipe, out: str | Path, *, budget: str | float,
             objective: str = "file-bytes", curves: str | Path | Mapping[str, Any] | None = None,
             sensitivity_settings: SensitivitySettings = SensitivitySettings(),
             from_run: str | Path | None = None, val_fraction: float | None = None,
             max_runs: int = 4, margin: str | float = 0.0, coder: str | None = None,
             plain_dtype: str | None = None, metadata: str | None = None,
             data_root: str | None = None, edit: Callable[[dict], None] | None = None,
             progress: ProgressFn = no_progress, log: Callable[[str], None] = lambda m: None
             ) -> dict[str, Any]:
    """Choose, verify and write a recipe (see the module docstring). ``curves``: a
    sensitivity.json (or its folder) measured for this recipe; None: measure them first (into
    ``out/sensitivity``)."""
    from ._autotune import autotune as tune

    settings = AutotuneSettings(budget=parse_budget(budget), objective=objective,
                                max_runs=max_runs, margin=parse_budget(margin), coder=coder,
                                plain_dtype=plain_dtype, metadata=metadata)
    r, base = _load(recipe, edit)
    r = with_validation(r, val_fraction)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    benches: list[Workbench] = []
    earlier = _earlier_curves(out / "sensitivity" / CURVES_FILE, r, sensitivity_settings)
    if curves is None and earlier is not None:
        log(f"curves: reusing {out / 'sensitivity' / CURVES_FILE} (same recipe and settings)")
        data = earlier
    elif curves is None:
        data = sensitivity(r, out / "sensitivity", settings=sensitivity_settings,
                           from_run=from_run, data_root=data_root, progress=progress, log=log,
                           _bench=benches)
    elif isinstance(curves, Mapping):
        data = dict(curves)
    else:
        path = Path(curves)
        path = path / CURVES_FILE if path.is_dir() else path
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise RecipeError(f"--curves {path}: cannot read it ({exc})") from None
    if data.get("recipe_sha256") != r.sha256():
        raise RecipeError("the curves were measured for another recipe (or other data settings); "
                          "measure them for this one (deepcompress sensitivity), or leave out "
                          "--curves")
    baseline = Path(data["baseline_run"])
    bench = benches[0] if benches else Workbench.open(r, baseline, data_root=data_root,
                                                      progress=progress, log=log)
    result = tune(base, bench, data, baseline, out, settings, data_root=data_root,
                  progress=progress, log=log)
    result["sensitivity_seconds"] = data.get("seconds")
    write_json_atomic(out / RESULT_FILE, result)
    return result
