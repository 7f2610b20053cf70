"""A sweep: one ProjectionNet recipe run once per setting of its projection (T functions x d
bits) and of its FC layers, each into ``DIR/T<T>_d<d>_h<widths>/`` (a finished point of the same
resolved recipe is reused, so a sweep can be extended or resumed), then the task's metric plotted
against the shipped model's bits (8 x its model.dcz) on a log axis, with each trainer's (dense
float32 bits) and the Deep Compression runs marked (``read_mark``) on the same chart.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

from dccore.errors import RecipeError, UsageError

from .runs import apply_override, check_run_folder, finished_run

SWEEP_FILE, PLOT_FILE = "sweep.json", "sweep.png"
Point = tuple[int, int, list[int]]      # T, d, hidden widths


def sweep(recipe_name: str, out: Path, points: Sequence[Point], *, marks: Sequence[dict] = (),
          overrides: Sequence[str] = (), data_root: str | None = None, force: bool = False,
          progress: Any = None, log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Run each point of ``recipe_name`` into ``out`` (checked, every point's folder too, before
    any work) and write ``sweep.json`` and ``sweep.png``; returns what sweep.json holds."""
    from compression import pipeline
    from compression.recipe import read_recipe
    from dccore.outputs import check_folder, claim_folder, write_bytes_atomic, write_json_atomic

    check_folder(out, "sweep")
    recipes = []
    for T, d, hidden in points:  # noqa: N806
        def edit(data: dict[str, Any], T: int = T, d: int = d, hidden: list = hidden) -> None:  # noqa: N803
            for assignment in overrides:
                apply_override(data, assignment)
            model = data.setdefault("model", {})
            model["kwargs"] = {**model.get("kwargs", {}), "T": T, "d": d, "hidden": hidden}
        recipe, text = read_recipe(recipe_name, edit)
        if recipe.model.name != "projectionnet":
            raise RecipeError(f"{recipe_name}: model.name is {recipe.model.name!r}; a sweep "
                              "varies a ProjectionNet's T, d and hidden (model 'projectionnet')")
        folder = out / point_name(T, d, hidden)
        if finished_run(folder, recipe.sha256()) is None:
            check_run_folder(folder, force=force, resuming=False, claim=False)
        recipes.append((T, d, hidden, recipe, text, folder))
    claim_folder(out, "sweep")                     # every check passed: take it
    for *_, folder in recipes:
        claim_folder(folder, "run")                # a finished point keeps its marker

    rows = []
    kwargs = {"progress": progress} if progress is not None else {}
    for T, d, hidden, recipe, text, folder in recipes:  # noqa: N806
        report = finished_run(folder, recipe.sha256())
        if report is None:
            log(f"sweep point {folder.name}")
            report = pipeline.run_recipe(recipe, folder, recipe_text=text, data_root=data_root,
                                         log=log, **kwargs).report
        else:
            log(f"sweep point {folder.name}: reusing the finished run")
        rows.append(_row(T, d, hidden, report, folder))
    result = {"recipe": str(recipe_name), "points": rows, "marks": list(marks)}
    write_json_atomic(out / SWEEP_FILE, result)
    write_bytes_atomic(out / PLOT_FILE, plot(rows, list(marks)))
    return result


def point_name(T: int, d: int, hidden: list[int]) -> str:  # noqa: N803
    return f"T{T}_d{d}_h{'-'.join(map(str, hidden)) or 0}"


def _row(T: int, d: int, hidden: list[int], report: dict, folder: Path) -> dict[str, Any]:  # noqa: N803
    primary = report["primary_metric"]["name"]
    proj = report.get("projection") or {}
    return {"T": T, "d": d, "hidden": hidden, "bits": T * d, "run": str(folder),
            "metric": primary, "value": report["primary_metric"]["final"],
            "model_bits": 8 * report["compressed_bytes"],
            "float32_bits": proj.get("float32_bits"), "trainer": proj.get("trainer"),
            "trainer_bits": proj.get("trainer_bits"),
            "trainer_value": proj.get(f"trainer_{primary}")}


def read_mark(run_dir: str) -> dict[str, Any]:
    path = Path(run_dir) / "report.json"
    if not path.is_file():
        raise UsageError(f"--mark {run_dir}: no report.json there (a finished 'deepcompress run' "
                         "folder)")
    try:
        report = json.loads(path.read_text())
        return {"run": run_dir, "recipe": report.get("recipe"),
                "metric": report["primary_metric"]["name"],
                "value": report["primary_metric"]["final"],
                "baseline_value": report["primary_metric"].get("baseline"),
                "model_bits": 8 * report["compressed_bytes"],
                "dense_bits": 8 * report["dense_bytes"]}
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"--mark {run_dir}: report.json is not a finished run's report "
                         f"({exc})") from None


def plot(rows: list[dict], marks: list[dict]) -> bytes:
    """The metric against shipped bits (log axis): projection points by FC layers, trainers,
    Deep Compression runs (compressed, and their dense baseline)."""
    from dccore.plots import png, pyplot

    fig, ax = pyplot().subplots(figsize=(8, 5))
    by_hidden: dict[str, list[dict]] = {}
    for r in rows:
        by_hidden.setdefault("-".join(map(str, r["hidden"])) or "none", []).append(r)
    for label, group in by_hidden.items():
        group = sorted(group, key=lambda r: r["model_bits"])
        ax.plot([r["model_bits"] for r in group], [r["value"] for r in group], "o-",
                label=f"ProjectionNet, FC {label}" if label != "none" else "ProjectionNet")
        for r in group:
            ax.annotate(f"{r['T']}x{r['d']}", (r["model_bits"], r["value"]), fontsize=7,
                        textcoords="offset points", xytext=(4, -10))
    trainers: dict[tuple, list[float]] = {}     # each point trains its own: their mean
    for r in rows:
        if r.get("trainer_bits") and r.get("trainer_value") is not None:
            trainers.setdefault((r["trainer"], r["trainer_bits"]), []).append(r["trainer_value"])
    for (name, bits), values in trainers.items():
        ax.scatter([bits], [sum(values) / len(values)], marker="s", s=60, color="black",
                   zorder=3, label=f"trainer {name} (float32)")
    for m in marks:
        line = ax.plot([m["dense_bits"], m["model_bits"]], [m["baseline_value"], m["value"]],
                       "^--", alpha=0.8, label=f"Deep Compression {m['recipe']}")[0]
        ax.annotate("dense", (m["dense_bits"], m["baseline_value"]), fontsize=7,
                    textcoords="offset points", xytext=(4, 4), color=line.get_color())
    ax.set_xscale("log")
    ax.set_xlabel("model bits (shipped file; trainers and dense models: float32)")
    metric = rows[0]["metric"] if rows else (marks[0]["metric"] if marks else "metric")
    ax.set_ylabel(metric)
    ax.set_title("How many neural bits?")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return png(fig)

