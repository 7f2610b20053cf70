#!/usr/bin/env python3
"""The encode-side changes measured on their own: the same finished model re-packed each way.

    python bench/bench_autotune_encode.py runs/lenet300 runs/lenet5 [--limit N]

For each run folder, the final checkpoint (the last training stage's) is packed with the run's
own metadata as: Huffman (the shipped recipes' coder), rANS, "smallest" (both tried, the smaller
kept; now an encode option), each with biases as float32 and as float16 (lossy), and the
per-stream minimum of Huffman and rANS (what a per-layer coder choice could reach; computed from
the two files' stream tables, no file). Each real file is decoded and scored on the test set.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch


def final_stage(run: Path) -> str:
    recipe = json.loads((run / "recipe.json").read_text())["recipe"]
    names = [s["name"] for s in recipe["stages"] if s["kind"] != "encode"]
    return names[-1]


def measure(run: Path, limit: int | None) -> dict:
    import dcz
    from compression.pipeline import load_checkpoint, load_task
    from compression.recipe import Recipe
    from compression._state import CompressionState
    from compression.models import build_model
    from compression.stages.encode import EncodeConfig, compressed_weights, pack

    saved = json.loads((run / "recipe.json").read_text())["recipe"]
    recipe = Recipe.from_dict(saved)
    model = build_model(recipe.model.name, recipe.model.kwargs)
    state = CompressionState.for_model(model)
    load_checkpoint(run / "checkpoints" / f"{final_stage(run)}.pt", model, state)
    meta = {k: v for k, v in dcz.load(run / "model.dcz").meta.items() if k != "format"}
    compressed = compressed_weights(EncodeConfig(), state)
    task, data = load_task(recipe, None)
    test = data.test.subset(limit)
    rows = []
    streams = {}
    with tempfile.TemporaryDirectory() as tmp:
        for coder in ("huffman", "ans", "smallest"):
            for plain in ("float32", "float16"):
                path = Path(tmp) / f"{coder}-{plain}.dcz"
                report = pack(model.state_dict(), path, compressed=compressed, meta=meta,
                              coder=coder, plain_dtype=plain)
                decoded = build_model(recipe.model.name, recipe.model.kwargs)
                decoded.load_state_dict(dcz.load(path).state_dict)
                acc = task.evaluate(decoded.eval(), test)[task.primary]
                rows.append({"coder": coder, "kept": report.coder, "plain_dtype": plain,
                             "bytes": report.bytes, "ratio": report.dense_bytes / report.bytes,
                             task.primary: acc})
                if plain == "float32" and coder != "smallest":
                    streams[coder] = {(t.name, s.name): s.bytes for t in report.tensors
                                      for s in t.streams}
        per_stream = sum(min(streams["huffman"][k], streams["ans"][k]) for k in streams["ans"])
        best_file = min(r["bytes"] for r in rows if r["plain_dtype"] == "float32")
        whole_file = min(sum(streams["huffman"].values()), sum(streams["ans"].values()))
    return {"run": str(run), "test_examples": len(test), "variants": rows,
            "per_stream_choice_saving_bytes": whole_file - per_stream,
            "smallest_file_float32": best_file}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--limit", type=int, help="score the first N test examples only")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(json.dumps([measure(r, args.limit) for r in args.runs], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
