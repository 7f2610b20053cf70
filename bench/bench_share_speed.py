"""How fast the share stage runs as models grow (issue 20, item 4), and its peak memory.

    PYTHONPATH=bench OMP_NUM_THREADS=1 python bench/bench_share_speed.py [--json out.json]

Each case runs in a process of its own (so its peak memory is its own), on all-MiniLM-L6-v2 and
on a BERT-style model about 4x its size with random weights (hidden 768, 10 layers, FFN 3072:
94M parameters), both fed the same 256 calibration sentences:

- ``post``: ``bench/recipes/minilm_post.toml``'s share stage through ``compression.compress``
  (4/5 bits, 64 rows per codebook, activation weighting + GPTQ for the Linears, Fisher weighting
  for the embeddings);
- ``256``: 256 centroids (k-means++) per 64 rows for every compressible layer, no calibration
  (the 8-bit rung that "took over 20 minutes").

Peak memory is the largest resident set sampled every 20 ms during the call, less the resident
set before it (the model, its inputs and the libraries), as a multiple of the model's float32
size. The machine is shared: times are upper bounds; the load average is printed with them.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIG = {"hidden_size": 768, "num_hidden_layers": 10, "num_attention_heads": 12,
       "intermediate_size": 3072}


def _rss() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _model(which: str):
    import minilm
    from transformers import BertConfig, BertModel

    if which == "minilm":
        return minilm.pretrained()
    import torch

    torch.manual_seed(0)
    base = BertConfig.from_pretrained(str(minilm.model_dir()))
    config = BertConfig(**{**base.to_dict(), **BIG})
    config._attn_implementation = "eager"
    return minilm.SentenceEncoder(BertModel(config)).eval()


def _case(which: str, kind: str) -> dict:
    import torch

    import minilm
    from compression import compress
    from compression.models import compressible_layers
    from compression.share import share_grouped

    model = _model(which)
    params = sum(p.numel() for p in model.parameters())
    ids, mask = minilm.tokenize(minilm.sentences("train", 256))
    peak, stop = [_rss()], threading.Event()
    before = peak[0]

    def sample() -> None:
        while not stop.wait(0.02):
            peak[0] = max(peak[0], _rss())

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    started = time.perf_counter()
    if kind == "post":
        recipe = tomllib.loads((HERE / "recipes" / "minilm_post.toml").read_text())
        share = next(s for s in recipe["stages"] if s["kind"] == "share")
        compress(model, {"stages": [share]}, calibration=(ids, mask))
    else:
        gen = torch.Generator().manual_seed(0)
        for module in compressible_layers(model).values():
            weight = module.weight.detach()
            share_grouped(weight, None, 8, init="kmeans++", iterations=30, group_size=64,
                          generator=gen)
    seconds = time.perf_counter() - started
    stop.set()
    watcher.join()
    return {"model": which, "case": kind, "parameters": params, "seconds": round(seconds, 1),
            "peak_extra_bytes": peak[0] - before,
            "peak_extra_x_fp32": round((peak[0] - before) / (4 * params), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", help="write the results here too")
    parser.add_argument("--case", help=argparse.SUPPRESS)     # MODEL:KIND, in a child process
    parser.add_argument("--only", nargs="*", default=None, metavar="MODEL:KIND",
                        help="run only these (minilm:post minilm:256 big:post big:256)")
    args = parser.parse_args()
    if args.case:
        print(json.dumps(_case(*args.case.split(":"))))
        return
    rows = []
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}
    for case in args.only or ["minilm:post", "minilm:256", "big:post", "big:256"]:
        load = os.getloadavg()
        out = subprocess.run([sys.executable, __file__, "--case", case], env=env, check=True,
                             capture_output=True, text=True, timeout=3600).stdout
        row = {**json.loads(out.strip().splitlines()[-1]),
               "load_before": [round(x, 2) for x in load],
               "load_after": [round(x, 2) for x in os.getloadavg()]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    for kind in ("post", "256"):
        small = next((r for r in rows if r["model"] == "minilm" and r["case"] == kind), None)
        big = next((r for r in rows if r["model"] == "big" and r["case"] == kind), None)
        if small and big:
            print(f"{kind}: {big['parameters'] / small['parameters']:.2f}x the parameters, "
                  f"{big['seconds'] / small['seconds']:.2f}x the time")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
