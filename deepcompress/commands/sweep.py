"""``deepcompress sweep``: how many neural bits does the task need? (Ravi 2017, §4)

Runs a ProjectionNet recipe (default: the shipped ``projectionnet``) once per setting of the
projection (T functions x d bits) and of its FC layers, each into ``DIR/T<T>_d<d>_h<widths>/``
(a finished point of the same resolved recipe is reused, so a sweep can be extended or resumed),
then plots the task's metric against the shipped model's bits (8 x its model.dcz) on a log axis,
with each trainer's (dense float32 bits) and the Deep Compression runs named by ``--mark`` on the
same chart. Writes ``DIR/sweep.json`` (one row per point) and ``DIR/sweep.png``.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any

from dccore.errors import RecipeError, UsageError

DEFAULT_RECIPE = "projectionnet"
SWEEP_FILE, PLOT_FILE = "sweep.json", "sweep.png"


def add_arguments(p: argparse.ArgumentParser, command: str) -> None:
    from .run import CODE_NOTE

    p.epilog = CODE_NOTE
    p.add_argument("recipe", nargs="?", default=DEFAULT_RECIPE,
                   help=f"a ProjectionNet recipe (default: the shipped {DEFAULT_RECIPE})")
    p.add_argument("--out", "-o", required=True, metavar="DIR",
                   help="sweep folder: one run folder per point, sweep.json, sweep.png")
    p.add_argument("--T", dest="T", default="8,20,60", metavar="LIST",
                   help="projection functions, comma separated (default: 8,20,60)")
    p.add_argument("--d", dest="d", default="10", metavar="LIST",
                   help="bits per projection function (default: 10)")
    p.add_argument("--hidden", action="append", metavar="WIDTHS",
                   help="FC layers between the bits and the output, e.g. '' (none) or 128 or "
                        "256,64; repeatable (default: none, and one of 128)")
    p.add_argument("--mark", action="append", default=[], metavar="RUN_DIR",
                   help="a finished Deep Compression run folder (its report.json) to mark on "
                        "the chart; repeatable")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value for every point, e.g. --set stages.0.epochs=5")
    p.add_argument("--data", metavar="DIR", help="IDX dataset folder (as for run)")
    p.add_argument("--force", action="store_true",
                   help="re-run points whose folder holds a run of another recipe")
    p.add_argument("--json", action="store_true", help="print sweep.json on stdout, nothing else")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or log lines")


def _ints(text: str, flag: str, allow_empty: bool = False) -> list[int]:
    parts = [s.strip() for s in text.split(",") if s.strip()]
    if not parts and not allow_empty:
        raise UsageError(f"{flag} {text!r}: give one or more positive integers, e.g. 8,20,60")
    try:
        values = [int(s) for s in parts]
    except ValueError:
        raise UsageError(f"{flag} {text!r}: expected positive integers, e.g. 8,20,60") from None
    if any(v < 1 for v in values):
        raise UsageError(f"{flag} {text!r}: expected positive integers")
    return values


def grid(args: argparse.Namespace) -> list[tuple[int, int, list[int]]]:
    hidden = args.hidden if args.hidden is not None else ["", "128"]
    widths = [_ints(h, "--hidden", allow_empty=True) for h in hidden]
    return [(t, d, h) for t, d, h in itertools.product(
        _ints(args.T, "--T"), _ints(args.d, "--d"), widths)]


def point_name(T: int, d: int, hidden: list[int]) -> str:  # noqa: N803
    return f"T{T}_d{d}_h{'-'.join(map(str, hidden)) or 0}"


def _check_sweep_folder(out: Path) -> None:
    """A new or empty folder, or one 'deepcompress sweep' took (its marker: dccore.outputs)."""
    from dccore.outputs import check_folder

    check_folder(out, "sweep")


def _finished(folder: Path, sha: str) -> dict | None:
    report = folder / "report.json"
    if not report.is_file():
        return None
    try:
        data = json.loads(report.read_text())
    except (OSError, ValueError):
        return None
    return data if data.get("recipe_sha256") == sha else None


def _row(T: int, d: int, hidden: list[int], report: dict, folder: Path) -> dict[str, Any]:  # noqa: N803
    primary = report["primary_metric"]["name"]
    proj = report.get("projection") or {}
    return {"T": T, "d": d, "hidden": hidden, "bits": T * d, "run": str(folder),
            "metric": primary, "value": report["primary_metric"]["final"],
            "model_bits": 8 * report["compressed_bytes"],
            "float32_bits": proj.get("float32_bits"), "trainer": proj.get("trainer"),
            "trainer_bits": proj.get("trainer_bits"),
            "trainer_value": proj.get(f"trainer_{primary}")}


def _mark(run_dir: str) -> dict[str, Any]:
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


def main(args: argparse.Namespace) -> int:
    from compression import pipeline
    from compression.recipe import read_recipe
    from dccore.outputs import claim_folder, write_bytes_atomic, write_json_atomic

    from ..ui import Ui
    from .run import apply_override, check_run_folder

    out = Path(args.out)
    points = grid(args)
    marks = [_mark(m) for m in args.mark]          # before any work
    _check_sweep_folder(out)
    recipes = []
    for T, d, hidden in points:  # noqa: N806
        def edit(data: dict[str, Any], T: int = T, d: int = d, hidden: list = hidden) -> None:  # noqa: N803
            for assignment in args.overrides:
                apply_override(data, assignment)
            model = data.setdefault("model", {})
            model["kwargs"] = {**model.get("kwargs", {}), "T": T, "d": d, "hidden": hidden}
        recipe, text = read_recipe(args.recipe, edit)
        if recipe.model.name != "projectionnet":
            raise RecipeError(f"{args.recipe}: model.name is {recipe.model.name!r}; a sweep "
                              "varies a ProjectionNet's T, d and hidden (model 'projectionnet')")
        folder = out / point_name(T, d, hidden)
        if _finished(folder, recipe.sha256()) is None:
            check_run_folder(folder, force=args.force, resuming=False, claim=False)
        recipes.append((T, d, hidden, recipe, text, folder))
    claim_folder(out, "sweep")                     # every check passed: take it
    for *_, folder in recipes:
        claim_folder(folder, "run")                # a finished point keeps its marker

    rows = []
    ui = Ui(enabled=not (args.quiet or args.json))
    with ui:
        for T, d, hidden, recipe, text, folder in recipes:  # noqa: N806
            report = _finished(folder, recipe.sha256())
            if report is None:
                ui.log(f"sweep point {folder.name}")
                report = pipeline.run_recipe(recipe, folder, recipe_text=text,
                                             data_root=args.data, progress=ui.progress,
                                             log=ui.log).report
            else:
                ui.log(f"sweep point {folder.name}: reusing the finished run")
            rows.append(_row(T, d, hidden, report, folder))
    result = {"recipe": str(args.recipe), "points": rows, "marks": marks}
    write_json_atomic(out / SWEEP_FILE, result)
    write_bytes_atomic(out / PLOT_FILE, plot(rows, marks))
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif not args.quiet:
        for r in rows:
            print(f"T={r['T']:>4} d={r['d']:>3} hidden={r['hidden'] or '-':<10} "
                  f"{r['metric']} {r['value']:.4f}  {r['model_bits']:>10,} bits shipped  "
                  f"(trainer {r['trainer_value'] or float('nan'):.4f}, "
                  f"{r['trainer_bits'] or 0:,} bits)")
        print(f"wrote {out / SWEEP_FILE} and {out / PLOT_FILE}")
    return 0


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

