"""Format version 2 of .dcz on a real model: all-MiniLM-L6-v2 (22.7M parameters; see minilm.py).
Prints Markdown tables.

    HF_HUB_OFFLINE=1 nice python bench/bench_dcz_v2.py lossless   # coded values vs zstd -19
    HF_HUB_OFFLINE=1 nice python bench/bench_dcz_v2.py grouped    # grouped vs single codebooks
    HF_HUB_OFFLINE=1 nice python bench/bench_dcz_v2.py all --json runs/dcz_v2.json

lossless: every tensor of the state_dict, raw bytes against ``zstd -19`` of the same bytes (the
``zstandard`` package, one frame per tensor) and against the .dcz section that stores it (coded
byte planes where smaller: storage "plain values"), in float32 and in float16. Ratios are raw
bytes / stored bytes; a .dcz section includes its name, shape and framing (~60 bytes), zstd's
frame its header.

grouped: a few Linear weights shared to 4 bits by 1-D k-means (quantile initialisation, 12
Lloyd iterations; the same for one codebook per tensor and one per group of rows), stored with
one codebook or grouped codebooks of 8, 32 and 128 rows: the section's bytes and bits per weight,
and the relative error ||W - Q|| / ||W|| (Frobenius) of the shared weights against the model's.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dcz import load, pack  # noqa: E402

BIG = 100_000            # tensors with at least this many elements get a row of their own
GROUP_SIZES = (None, 128, 32, 8)
LINEARS = ("bert.embeddings.word_embeddings.weight",
           "bert.encoder.layer.0.attention.self.query.weight",
           "bert.encoder.layer.0.intermediate.dense.weight",
           "bert.encoder.layer.5.output.dense.weight")


def state_dict() -> dict[str, torch.Tensor]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import minilm

    return {k: v.detach().clone().contiguous() for k, v in minilm.pretrained().state_dict().items()}


def md_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def raw_bytes(t: torch.Tensor) -> bytes:
    view = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.int8}[t.element_size()]
    return t.contiguous().view(view).numpy().tobytes()


# ------------------------------------------------------------------------------ lossless

def lossless(sd: dict, label: str, folder: Path, results: dict) -> str:
    import zstandard

    zstd = zstandard.ZstdCompressor(level=19)
    sizes = {}
    for coder in ("huffman", "ans"):
        t = time.perf_counter()
        report = pack(sd, folder / f"{label}-{coder}.dcz", coder=coder)
        pack_s = time.perf_counter() - t
        t = time.perf_counter()
        dcz = load(folder / f"{label}-{coder}.dcz")
        load_s = time.perf_counter() - t
        assert all(torch.equal(dcz.state_dict[k].view(-1).view(torch.uint8),
                               sd[k].view(-1).view(torch.uint8)) for k in sd), "not bit-exact"
        sizes[coder] = (report, pack_s, load_s)
    rows, out = [], {"tensors": {}}
    total = {"raw": 0, "zstd": 0, "zstd_s": 0.0}
    for i, (name, tensor) in enumerate(sd.items()):
        data = raw_bytes(tensor)
        t = time.perf_counter()
        z = len(zstd.compress(data))
        total["zstd_s"] += time.perf_counter() - t
        total["raw"] += len(data)
        total["zstd"] += z
        huf, ans = (sizes[c][0].tensors[i] for c in ("huffman", "ans"))
        entry = {"raw": len(data), "zstd19": z, "dcz_huffman": huf.bytes, "dcz_ans": ans.bytes,
                 "top_byte_bits": _top_byte_bits(ans)}
        out["tensors"][name] = entry
        if tensor.numel() >= BIG:
            rows.append([name.removeprefix("bert."), "x".join(map(str, tensor.shape)),
                         f"{len(data):,}", f"{len(data) / z:.3f}", f"{len(data) / huf.bytes:.3f}",
                         f"{len(data) / ans.bytes:.3f}", entry["top_byte_bits"]])
    files = {c: sizes[c][0].bytes for c in sizes}
    rows.append([f"**all {len(sd)} tensors** (zstd: per tensor; .dcz: the file)", "",
                 f"{total['raw']:,}", f"{total['raw'] / total['zstd']:.3f}",
                 f"{total['raw'] / files['huffman']:.3f}", f"{total['raw'] / files['ans']:.3f}",
                 ""])
    out.update(raw=total["raw"], zstd19=total["zstd"], zstd_s=total["zstd_s"],
               dcz={c: {"bytes": files[c], "pack_s": sizes[c][1], "load_s": sizes[c][2]}
                    for c in sizes})
    results[label] = out
    seconds = (f"zstd -19 {total['zstd_s']:.1f} s; .dcz pack / load: " + ", ".join(
        f"{c} {sizes[c][1]:.1f} / {sizes[c][2]:.1f} s" for c in sizes))
    return (f"**{label}: raw bytes / stored bytes** (bit-exact; {seconds})\n\n" + md_table(
        ["tensor", "shape", "raw bytes", "zstd -19", ".dcz Huffman", ".dcz rANS",
         "top byte, bits/value (rANS)"], rows))


def _top_byte_bits(row) -> str:
    """Coded bits per value of the most significant byte plane (sign and exponent)."""
    planes = [s for s in row.streams if s.name.startswith("values")]
    if not planes:
        return "as is"
    top = planes[-1]
    return f"{top.payload_bytes * 8 / top.count:.2f}" if top.count else "-"


# ------------------------------------------------------------------------------ grouped

def kmeans_1d(values: np.ndarray, k: int, iters: int = 12) -> np.ndarray:
    """Lloyd's algorithm in one dimension from quantile centroids; returns the k centroids."""
    centroids = np.quantile(values, (np.arange(k) + 0.5) / k)
    for _ in range(iters):
        idx = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, values)
        sums = np.bincount(idx, weights=values, minlength=k)
        counts = np.bincount(idx, minlength=k)
        centroids = np.sort(np.where(counts > 0, sums / np.maximum(counts, 1), centroids))
    return centroids


def share(w: np.ndarray, bits: int, group_size: int | None) -> np.ndarray:
    """Each group of ``group_size`` rows (all rows for None) to at most 2**bits non-zero values
    (zeros stay zero: they would be pruned weights)."""
    out = w.astype(np.float32).copy()
    rows = w.shape[0]
    step = group_size or rows
    for r in range(0, rows, step):
        block = out[r:r + step]
        nz = block != 0
        values = block[nz].astype(np.float64)
        if values.size == 0:
            continue
        centroids = kmeans_1d(values, 1 << bits).astype(np.float32)
        centroids[centroids == 0] = np.float32(1e-8)   # a shared weight stays non-zero
        mids = (centroids[1:].astype(np.float64) + centroids[:-1]) / 2
        block[nz] = centroids[np.searchsorted(mids, values)]
    return out


def grouped(sd: dict, folder: Path, results: dict, bits: int = 4) -> str:
    rows, out = [], {}
    totals: dict = {}
    for name in LINEARS:
        w = sd[name].numpy()
        norm = float(np.linalg.norm(w.astype(np.float64)))
        out[name] = {}
        for gs in GROUP_SIZES:
            q = share(w, bits, gs)
            err = float(np.linalg.norm(w.astype(np.float64) - q)) / norm
            tensor = torch.from_numpy(q)
            entry = {"relative_error": err}
            for coder in ("huffman", "ans"):
                path = folder / "g.dcz"
                t = time.perf_counter()
                report = pack({name: tensor}, path, coder=coder,
                              compressed={name: {"bits": bits, "group_size": gs}})
                pack_s = time.perf_counter() - t
                t = time.perf_counter()
                dcz = load(path)
                load_s = time.perf_counter() - t
                assert torch.equal(dcz.state_dict[name], tensor), "not exact"
                row = report.tensors[0]
                assert row.storage == ("grouped" if gs else "codebook"), row.storage
                entry[coder] = {"bytes": row.bytes, "codebook_bytes": row.codebook_bytes,
                                "pack_s": pack_s, "load_s": load_s}
            half = pack({name: tensor}, folder / "h.dcz", coder="ans", codebook_dtype="float16",
                        compressed={name: {"bits": bits, "group_size": gs}}).tensors[0]
            half_q = load(folder / "h.dcz").state_dict[name].numpy().astype(np.float64)
            entry["ans_float16_codebook"] = {
                "bytes": half.bytes,
                "relative_error": float(np.linalg.norm(w - half_q)) / norm}
            out[name][str(gs)] = entry
            acc = totals.setdefault(gs, {"numel": 0, "ans": 0, "huffman": 0, "err2": 0.0,
                                         "norm2": 0.0})
            acc["numel"] += w.size
            acc["ans"] += entry["ans"]["bytes"]
            acc["huffman"] += entry["huffman"]["bytes"]
            acc["err2"] += (err * norm) ** 2
            acc["norm2"] += norm ** 2
            ans = entry["ans"]
            rows.append([name.removeprefix("bert.") if gs is None else "",
                         "x".join(map(str, w.shape)) if gs is None else "",
                         "one codebook" if gs is None else f"{gs} rows",
                         f"{entry['huffman']['bytes']:,}", f"{ans['bytes']:,}",
                         f"{ans['bytes'] * 8 / w.size:.3f}", f"{ans['codebook_bytes']:,}",
                         f"{err:.4f}",
                         f"{half.bytes:,} / {entry['ans_float16_codebook']['relative_error']:.4f}",
                         f"{ans['pack_s']:.2f} / {ans['load_s']:.2f}"])
    for gs, acc in totals.items():
        rows.append(["**the four**" if gs is None else "", "",
                     "one codebook" if gs is None else f"{gs} rows", f"{acc['huffman']:,}",
                     f"{acc['ans']:,}", f"{acc['ans'] * 8 / acc['numel']:.3f}", "",
                     f"{(acc['err2'] / acc['norm2']) ** 0.5:.4f}", "", ""])
    results["grouped"] = out
    return (f"**{bits}-bit k-means, one codebook per tensor or per group of rows** (dense "
            "weights: no pruning; bytes = the tensor's .dcz section; error = ||W - Q|| / ||W||)"
            "\n\n" + md_table(
                ["tensor", "shape", "codebooks", "bytes (Huffman)", "bytes (rANS)",
                 "bits/weight (rANS)", "codebook bytes (rANS)", "relative error",
                 "float16 codebooks: bytes / error (rANS)", "pack / load s (rANS)"], rows))


# ------------------------------------------------------------------------------ main

def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("what", choices=("lossless", "grouped", "all"))
    p.add_argument("--json", default=None, help="write every figure to this JSON file")
    args = p.parse_args()
    torch.set_num_threads(2)
    sd = state_dict()
    results: dict = {"machine": f"{platform.machine()} {platform.system()}, "
                                f"{os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d"),
                     "command": " ".join(sys.argv), "load_average_at_start": os.getloadavg()}
    parts = [f"all-MiniLM-L6-v2: {len(sd)} tensors, {sum(t.numel() for t in sd.values()):,} "
             f"elements; load average at start {os.getloadavg()[0]:.2f}"]
    with tempfile.TemporaryDirectory() as folder:
        if args.what in ("lossless", "all"):
            parts.append(lossless(sd, "float32", Path(folder), results))
            half = {k: v.half() if v.is_floating_point() else v for k, v in sd.items()}
            parts.append(lossless(half, "float16", Path(folder), results))
        if args.what in ("grouped", "all"):
            parts.append(grouped(sd, Path(folder), results))
    results["load_average_at_end"] = os.getloadavg()
    parts.append(f"load average at end {os.getloadavg()[0]:.2f}")
    print("\n\n".join(parts))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
