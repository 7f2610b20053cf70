#!/usr/bin/env python3
"""What storing a layer without its dead inputs would save: measured on real .dcz files.

    python bench/bench_autotune_dead_inputs.py runs/autotune/lenet300/model.dcz [MORE.dcz ...]

A dead input of a fully connected layer is a column every surviving weight ignores (for
LeNet-300-100's fc1: an input pixel); of a convolution, an input channel none of its filters
reads. For each sparse layer the script packs, with the file's own coder, (a) the tensor as the
file stores it and (b) the tensor without its dead inputs plus the kept inputs as a bitmap (one
bit per input, the cheapest fixed-width form), and reports both. Nothing here changes the file
format: it measures whether a format change would pay.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

import dcz


def dead_inputs(weight: torch.Tensor) -> torch.Tensor:
    """Boolean per input (axis 1): True where every weight reading it is zero."""
    reads = (weight != 0).transpose(0, 1).reshape(weight.shape[1], -1)
    return ~reads.any(dim=1)


def measure(path: Path) -> dict:
    loaded = dcz.load(path)
    coder = loaded.meta.get("format", {}).get("coder", "huffman")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, info in loaded.layers.items():
            w = loaded.state_dict[name]
            if w.dim() < 2:
                continue
            dead = dead_inputs(w)
            kept = w[:, ~dead]
            spec = {"bits": info.bits}
            full = dcz.pack({name: w}, Path(tmp) / "a.dcz", compressed={name: spec},
                            coder=coder).tensors[0].bytes
            small = dcz.pack({name: kept.contiguous()}, Path(tmp) / "b.dcz",
                             compressed={name: spec}, coder=coder).tensors[0].bytes
            bitmap = (w.shape[1] + 7) // 8
            rows.append({"tensor": name, "shape": list(w.shape), "inputs": w.shape[1],
                         "dead_inputs": int(dead.sum()), "nonzeros": int((w != 0).sum()),
                         "bytes_as_stored": full, "bytes_without_dead_inputs": small,
                         "bitmap_bytes": bitmap, "saving": full - small - bitmap})
    total = sum(r["saving"] for r in rows)
    return {"file": str(path), "file_bytes": loaded.bytes, "coder": coder, "layers": rows,
            "saving_bytes": total, "saving_fraction_of_file": total / loaded.bytes}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", type=Path)
    args = ap.parse_args()
    print(json.dumps([measure(p) for p in args.files], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
