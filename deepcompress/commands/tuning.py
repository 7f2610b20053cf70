"""``deepcompress sensitivity``: each layer's metric against sparsity and bits, and its saturation
points; ``deepcompress autotune``: per-layer sparsity and bits chosen within a metric budget,
verified by the whole pipeline (both ``compression/tuning/``). Autotune takes sensitivity's flags
and more."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..cli import CODE_NOTE, DEFAULT_RECIPE, named_by_flags
from ..runs import apply_override


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") \
            from None


def _ints(text: str) -> tuple[int, ...]:
    out = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            lo, _, hi = part.partition("-")
            out += list(range(int(lo), int(hi) + 1))
        elif part:
            out.append(int(part))
    return tuple(out)


def add_arguments(p: argparse.ArgumentParser, command: str) -> None:
    p.epilog = CODE_NOTE
    p.add_argument("recipe", nargs="?", default=DEFAULT_RECIPE,
                   help=f"a recipe TOML file or a shipped recipe name (default: {DEFAULT_RECIPE})")
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="folder to write")
    p.add_argument("--from-run", metavar="RUN_DIR",
                   help="reuse the dense baseline of this run folder (checkpoints/0_baseline.pt; "
                        "trained with the same seed, data settings and val_fraction) instead of "
                        "training one")
    p.add_argument("--val-fraction", type=float, metavar="F",
                   help="share of the training examples held out to judge every choice (default: "
                        "the recipe's data.val_fraction, else 0.1); the test set is never used")
    p.add_argument("--retrain-epochs", type=int, default=1, metavar="N",
                   help="retraining epochs per measured point (prune: survivors; bits: centroids); "
                        "0 measures one-shot curves (default: 1)")
    p.add_argument("--train-examples", type=int, metavar="N",
                   help="retrain each point on the first N training examples (default: all)")
    p.add_argument("--sparsities", type=_floats, metavar="S,S,...",
                   help="the sparsity grid (default: "
                        "0.5,0.7,0.8,0.85,0.9,0.93,0.95,0.96,0.97,0.98,0.99)")
    p.add_argument("--bits", type=_ints, metavar="B,B-B",
                   help="the bit widths (default: 2-8)")
    p.add_argument("--tolerance", default="0.1pt", metavar="DROP",
                   help="a saturation point is the last grid point within this drop (default "
                        "0.1pt: points of the metric; or a number in its units)")
    p.add_argument("--grid-drop", default="2pt", metavar="DROP",
                   help="measure the bits at every sparsity of the path that costs at most this "
                        "(default 2pt; 0: at the saturation sparsity only): the loss of few bits "
                        "grows as a layer is pruned")
    p.add_argument("--layer", action="append", default=[], metavar="NAME",
                   help="measure only this layer (repeatable; default: every layer the recipe "
                        "compresses)")
    p.add_argument("--data", metavar="DIR", help="IDX dataset folder (default: the recipe's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, as for 'deepcompress run' (repeatable)")
    p.add_argument("--json", action="store_true", help="print the result as JSON, nothing else")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress or log lines")
    if command == "sensitivity":
        p.description = (
            "For each compressible layer alone: the task metric on a held-out validation split "
            "against sparsity and against bits, the saturation points, and the layer's bytes in "
            "a .dcz file at each setting. Writes DIR/sensitivity.json, DIR/plots/*.png and "
            "DIR/report.html.")
        return
    p.description = (
        "Choose per-layer sparsity and bits that minimise the objective within a metric budget: "
        "a greedy on the measured curves, verified by running the whole pipeline and corrected "
        "until it holds. Writes DIR/recipe.toml (a comment per layer saying why), DIR/model.dcz "
        "and DIR/autotune.json; the test set is scored once, for the final model. Exit 1 when no "
        "verified choice held the budget.")
    p.add_argument("--budget", required=True, metavar="DROP",
                   help="the metric drop allowed: points (0.5pt) or the metric's units (0.005)")
    p.add_argument("--objective", choices=("file-bytes", "latency"), default="file-bytes",
                   help="minimise model.dcz's bytes, or a latency proxy (multiply-adds of a "
                        "sparse kernel: non-zeros x output positions) (default: file-bytes)")
    p.add_argument("--curves", metavar="SENSITIVITY_DIR|JSON",
                   help="curves measured by 'deepcompress sensitivity' for this recipe (default: "
                        "measure them into DIR/sensitivity)")
    p.add_argument("--max-runs", type=int, default=4, metavar="N",
                   help="full pipeline runs to verify and correct the choice (default: 4)")
    p.add_argument("--margin", default="0", metavar="DROP",
                   help="keep this much of the budget in hand on the validation split (default 0)")
    p.add_argument("--coder", choices=("huffman", "ans", "none", "smallest"),
                   help="the generated recipe's encode coder (default: the recipe's)")
    p.add_argument("--plain-dtype", choices=("float32", "float16"),
                   help="the generated recipe's storage for biases and other plain tensors; "
                        "float16 is lossy, and counted: the decoded file is what is verified "
                        "(default: the recipe's)")
    p.add_argument("--metadata", choices=("full", "minimal"),
                   help="what the generated recipe's model.dcz says besides its weights: "
                        "'minimal' keeps the model to rebuild, the recipe's sha256 and the final "
                        "metric (about 400 B less) (default: the recipe's)")


def main(args: argparse.Namespace) -> int:
    from compression.tuning import (AutotuneSettings, SensitivitySettings, autotune,
                                    parse_budget, sensitivity)
    from dccore.outputs import check_folder, claim_folder

    from ..ui import Ui, print_json

    def edit(data: dict[str, Any]) -> None:
        for assignment in args.overrides:
            apply_override(data, assignment)

    out = Path(args.out)
    check_folder(out, args.command)     # new, empty, or this command's (dccore.outputs)
    fields: dict[str, Any] = {"retrain_epochs": args.retrain_epochs,
                              "train_examples": args.train_examples,
                              "tolerance": parse_budget(args.tolerance),
                              "grid_drop": parse_budget(args.grid_drop),
                              "layers": tuple(args.layer) or None}
    if args.sparsities:
        fields["sparsities"] = args.sparsities
    if args.bits:
        fields["bits"] = args.bits
    with named_by_flags({"layers": "--layer"}):   # before the baseline is trained, not after
        settings = SensitivitySettings(**fields)
        if args.command == "autotune":
            AutotuneSettings(budget=parse_budget(args.budget), objective=args.objective,
                             max_runs=args.max_runs, margin=parse_budget(args.margin))
    claim_folder(out, args.command)
    ui = Ui(enabled=not (args.quiet or args.json))
    with ui:
        if args.command == "sensitivity":
            result = sensitivity(args.recipe, out, settings=settings, from_run=args.from_run,
                                 val_fraction=args.val_fraction, data_root=args.data, edit=edit,
                                 progress=ui.progress, log=ui.log)
        else:
            result = autotune(args.recipe, out, budget=args.budget, objective=args.objective,
                              curves=args.curves, sensitivity_settings=settings,
                              from_run=args.from_run, val_fraction=args.val_fraction,
                              max_runs=args.max_runs, margin=args.margin, coder=args.coder,
                              plain_dtype=args.plain_dtype, metadata=args.metadata,
                              data_root=args.data, edit=edit, progress=ui.progress, log=ui.log)
    if args.json:
        print_json(result)
    elif not args.quiet:
        (_print_curves if args.command == "sensitivity" else _print_tuned)(result, out)
    return 0 if args.command == "sensitivity" or result["within_budget"] else 1


def _print_curves(curves: dict[str, Any], out: Path) -> None:
    from ..ui import stdout_console

    console = stdout_console()
    k = 100 if curves["metric"] == "accuracy" else 1
    console.print(f"dense baseline: {curves['baseline']['validation'] * k:.2f} validation "
                  f"{curves['metric']} ({curves['validation_examples']:,} held-out examples)")
    for name, e in curves["layers"].items():
        s = f"{100 * e['saturation_sparsity']:.3g}%" if e.get("sparsity") else "-"
        b = e.get("saturation_bits") if e.get("bits") else "-"
        console.print(f"  {name:<24} {e['parameters']:>10,} weights  saturation: sparsity {s}, "
                      f"bits {b}", highlight=False)
    console.print(f"{curves['seconds']:.0f} s; report: {out / 'report.html'}", highlight=False)


def _print_tuned(result: dict[str, Any], out: Path) -> None:
    from ..ui import stdout_console

    console = stdout_console()
    k = 100 if result["metric"] == "accuracy" else 1
    for t in result["tries"]:
        console.print(f"try {t['try']}: scale {t['scale']:.3g}: predicted "
                      f"{-100 * t['predicted_drop']:+.2f} pt, measured {-100 * t['drop']:+.2f} pt "
                      f"on validation, {t['bytes']:,} B ({t['ratio']:.1f}x)"
                      + ("" if t["within_budget"] else "  over budget"), highlight=False)
    f = result["final"]
    console.print(f"final: try {f['try']}, {f['bytes']:,} B ({f['ratio']:.1f}x); validation "
                  f"{f['validation'] * k:.2f} ({-100 * f['validation_drop']:+.2f} pt); test "
                  f"{f['test'] * k:.2f} ({-100 * f['test_drop']:+.2f} pt vs the dense "
                  f"{result['baseline']['test'] * k:.2f})", highlight=False)
    if not result["within_budget"]:
        console.print("no verified choice held the budget: the recipe written is the one with "
                      "the smallest loss", highlight=False)
    console.print(f"recipe: {f['recipe']}; model: {f['model']}", highlight=False)
