#!/usr/bin/env python3
"""What a compression recipe compresses and what it leaves dense, by layer type, on a small
OCR-like model: seven 3x3 convolutions with BatchNorm, a two-layer bidirectional LSTM over the
image's columns and a per-column Linear (CTC-style: class 0 the blank), the shape of issue 20's
user model at a twentieth of its size.

    python bench/bench_layer_coverage.py [--out DIR] [--json FILE]

The model has random weights (seed 0) and the inputs are rendered text lines (PIL's built-in
font, random strings): what is measured is coverage and bytes, which do not depend on training.
The recipe is the issue's post-training ``share`` (``bits = 5``, ``weighting = "activation"``,
``compensate = "gptq"``) after a 50% Wanda cut, label-free against the dense model, run twice:
with the LSTM left alone (``by_type.LSTM = false``: what the pipeline did before recurrent layers
were layers) and with every layer. Per layer type: tensors, parameters, float32 bytes, bytes in
the shipped ``model.dcz`` (each tensor's section, framing included), how each is stored, and how
the share stage clustered it (its log: "activation-weighted", "GPTQ-compensated"). The figures
against the dense model are printed too, but on these untrained weights nearly every column
decodes to one class, so the decoded-sequence figures are trivially 1 and say nothing here.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))   # this file names its own factories

HEIGHT, WIDTH, CLASSES = 32, 128, 40
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 .-"


class TinyCRNN(nn.Module):
    """Convolutions + BatchNorm down to one row of features per column, a 2-layer biLSTM, and a
    Linear giving each column's class scores."""

    def __init__(self, hidden: int = 96) -> None:
        super().__init__()
        widths = [1, 16, 32, 64, 64, 96, 96, 96]
        pools = {0: (2, 2), 1: (2, 2), 3: (2, 1), 5: (2, 1)}       # 32 x 128 -> 2 x 32
        layers: list[nn.Module] = []
        for i in range(7):
            layers += [nn.Conv2d(widths[i], widths[i + 1], 3, padding=1, bias=False),
                       nn.BatchNorm2d(widths[i + 1]), nn.ReLU()]
            if i in pools:
                layers.append(nn.MaxPool2d(pools[i]))
        self.features = nn.Sequential(*layers)
        self.rnn = nn.LSTM(96 * 2, hidden, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(2 * hidden, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)                        # (batch, 96, 2, 32)
        f = f.permute(0, 3, 1, 2).flatten(2)        # (batch, 32 columns, 192)
        return self.head(self.rnn(f)[0])            # (batch, 32, classes)


def make_ocr() -> nn.Module:
    torch.manual_seed(0)
    return TinyCRNN().eval()


def text_lines(n: int = 160) -> torch.Tensor:
    """``n`` rendered lines of random text, white on black, scaled to [0, 1]."""
    from PIL import Image, ImageDraw, ImageFont

    rng = random.Random(0)
    font = ImageFont.load_default()
    out = torch.empty(n, 1, HEIGHT, WIDTH)
    for i in range(n):
        img = Image.new("L", (WIDTH, HEIGHT))
        text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(8, 20)))
        ImageDraw.Draw(img).text((rng.randint(0, 6), rng.randint(4, 14)), text, fill=255, font=font)
        out[i, 0] = torch.tensor(list(img.getdata()), dtype=torch.float32).reshape(HEIGHT, WIDTH)
    return out / 255.0


def _recipe(lstm: bool) -> dict:
    off = {} if lstm else {"by_type": {"LSTM": False}}
    return {"name": "ocr-coverage", "seed": 0,
            "model": {"name": "bench_layer_coverage:make_ocr"},
            "data": {"batch_size": 32},
            "task": {"kind": "distill", "factory": "bench_layer_coverage:text_lines",
                     "decoder": "ctc_greedy", "test_fraction": 0.25},
            "stages": [{"kind": "prune", "sparsity": 0.5, "rounds": 1, "retrain_epochs": 0,
                        "method": "wanda", "calibration": 64, **off},
                       {"kind": "share", "bits": 5, "weighting": "activation",
                        "compensate": "gptq", "calibration": 64, **off},
                       {"kind": "encode", "coder": "smallest"}]}


def coverage(model: nn.Module, dcz_path: Path) -> dict[str, dict]:
    """Per layer type: tensors, parameters, float32 bytes, bytes in the file, storage kinds."""
    import dcz as container

    loaded = container.load(dcz_path)
    owner = {}
    for name, module in model.named_modules():
        for pname, _ in module.named_parameters(recurse=False):
            owner[f"{name}.{pname}" if name else pname] = type(module).__name__
        for bname, _ in module.named_buffers(recurse=False):
            owner[f"{name}.{bname}" if name else bname] = type(module).__name__
    rows: dict[str, dict] = defaultdict(lambda: {"tensors": 0, "parameters": 0, "dense_bytes": 0,
                                                 "dcz_bytes": 0, "stored": defaultdict(int)})
    for t in loaded.tensors:
        row = rows[owner.get(t.name, "other")]
        row["tensors"] += 1
        row["parameters"] += t.numel if t.dtype.startswith("float") else 0
        row["dense_bytes"] += t.dense_bytes
        row["dcz_bytes"] += t.bytes
        kind = f"{t.storage} {t.bits}-bit" if t.storage != "plain" else f"dense {t.dtype}"
        row["stored"][kind] += 1
    return {k: {**v, "stored": dict(v["stored"])} for k, v in rows.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="run folders (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from compression.pipeline import run_recipe
    from compression.recipe import Recipe

    base = args.out or Path(tempfile.mkdtemp(prefix="coverage-"))
    results = {}
    for label, lstm in (("LSTM left alone (before)", False), ("every layer", True)):
        t0 = time.perf_counter()
        lines: list[str] = []
        run = run_recipe(Recipe.from_dict(_recipe(lstm)), base / ("all" if lstm else "no_lstm"),
                         log=lines.append)
        seconds = time.perf_counter() - t0
        rep = run.report
        final = rep["scores"][list(rep["scores"])[-1]]
        results[label] = {
            "bytes": rep["compressed_bytes"], "dense_bytes": rep["dense_bytes"],
            "ratio": rep["compression_ratio"], "seconds": seconds,
            "leading": rep["primary_metric"]["name"], "why": rep["primary_metric"].get("why"),
            "sequence_agreement": final.get("sequence_agreement"),
            "token_error_rate": final.get("token_error_rate"),
            "top1_agreement": final.get("top1_agreement"), "cosine_mean": final.get("cosine_mean"),
            "by_type": coverage(run.model, base / ("all" if lstm else "no_lstm") / "model.dcz")}
        for name, layer in run.state.layers.items():    # how the share stage clustered each type
            note = next((ln.split("(", 1)[1].split(")", 1)[0] for ln in lines
                         if ln.startswith(f"{name}: ") and "centroids (" in ln), None)
            if note is not None:
                results[label]["by_type"][layer.type_name].setdefault("shared", set()).add(note)
        for row in results[label]["by_type"].values():
            row["shared"] = sorted(row.get("shared", ()))
    for label, r in results.items():
        print(f"\n{label}: model.dcz {r['bytes']:,} B of {r['dense_bytes']:,} B float32 "
              f"({r['ratio']:.2f}x) in {r['seconds']:.0f} s; {r['leading']} "
              f"{r['sequence_agreement']:.3f}, token error rate {r['token_error_rate']:.3f}, "
              f"top-1 per column {r['top1_agreement']:.3f}, cosine {r['cosine_mean']:.5f}")
        print("| layer type | tensors | parameters | float32 B | in model.dcz B | ratio | stored as "
              "| shared |")
        print("|---|---:|---:|---:|---:|---:|---|---|")
        for kind, row in sorted(r["by_type"].items(), key=lambda kv: -kv[1]["dense_bytes"]):
            stored = ", ".join(f"{n} {k}" for k, n in sorted(row["stored"].items()))
            ratio = row["dense_bytes"] / row["dcz_bytes"] if row["dcz_bytes"] else float("nan")
            print(f"| {kind} | {row['tensors']} | {row['parameters']:,} | {row['dense_bytes']:,} | "
                  f"{row['dcz_bytes']:,} | {ratio:.1f}x | {stored} | "
                  f"{'; '.join(row['shared']) or '-'} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
