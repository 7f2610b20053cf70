"""``deepcompress run``: compress a model with a recipe."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..cli import CODE_NOTE, DEFAULT_RECIPE
from ..runs import apply_override, check_run_folder


def add_arguments(p: argparse.ArgumentParser, command: str) -> None:
    p.description = (
        "Train (or load) the baseline, then run the recipe's stages (prune -> share -> "
        "fine-tune centroids -> encode) with a checkpoint after each. Writes DIR/model.dcz, "
        "DIR/report.json and DIR/checkpoints/.")
    p.epilog = CODE_NOTE
    p.add_argument("recipe", nargs="?", default=DEFAULT_RECIPE,
                   help=f"a recipe TOML file or a shipped recipe name (default: {DEFAULT_RECIPE}; "
                        "shipped: lenet300, lenet5, mobilenet_tiny)")
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="run folder to write")
    p.add_argument("--resume-from", metavar="STAGE",
                   help="re-run STAGE and the stages after it, starting from the checkpoint "
                        "written before it (stage names as in the recipe, e.g. 2_share)")
    p.add_argument("--data", metavar="DIR",
                   help="IDX dataset folder (default: recipe's data.root, then $DEEPCOMPRESS_DATA, "
                        "then /usr/share/datasets/fashion-mnist)")
    p.add_argument("--seed", type=int, help="override the recipe's seed")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set baseline.epochs=2 "
                        "--set data.train_limit=5000 --set stages.0.sparsity=0.9 (repeatable)")
    p.add_argument("--force", action="store_true",
                   help="run again into a folder that holds a finished run (its report and files "
                        "are replaced; without --force such a folder is refused)")
    p.add_argument("--json", action="store_true", help="print report.json on stdout, nothing else")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars or log lines")


def main(args: argparse.Namespace) -> int:
    from compression import pipeline
    from compression.recipe import read_recipe

    from ..ui import Ui, print_json

    def edit(data: dict[str, Any]) -> None:
        for assignment in args.overrides:
            apply_override(data, assignment)
        if args.seed is not None:
            data["seed"] = args.seed

    recipe, text = read_recipe(args.recipe, edit)
    check_run_folder(Path(args.out), force=args.force, resuming=args.resume_from is not None)

    ui = Ui(enabled=not (args.quiet or args.json))
    with ui:
        result = pipeline.run_recipe(recipe, args.out, recipe_text=text,
                                     resume_from=args.resume_from, data_root=args.data,
                                     progress=ui.progress, log=ui.log)
    if args.json:
        print_json(result.report)
    elif not args.quiet:
        ui.summary(result.report, Path(args.out))
    return 0
