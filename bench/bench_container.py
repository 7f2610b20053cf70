"""Benchmarks for the .dcz container (issue 3). Prints Markdown tables for BENCHMARKS.md.

    python bench/bench_container.py speed            # 100M-weight model pruned to 10%: pack/load s
    python bench/bench_container.py streams          # entropy vs rANS vs Huffman; gzip/zstd
    python bench/bench_container.py run DIR [DIR..]  # LeNet rows from `deepcompress run` folders
    python bench/bench_container.py all [DIR..]

Synthetic weights are "drawn like a trained layer's": Laplace-distributed (trained weights are
peaked at zero with heavy tails), magnitude-pruned per layer, then shared by 1-D k-means with
linear initialisation, as the pipeline does. Sizes are files on disk; times are wall clock.
``--json FILE`` also writes every figure as JSON.
"""
from __future__ import annotations

import argparse
import gc
import gzip
import io
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dcz import load, pack  # noqa: E402
from deepcompress.loading import model_from_dcz  # noqa: E402

PAPER_STAGES = {  # Han et al. 2016 (REFERENCE.md section 1): pruning; + sharing; + Huffman
    "lenet300": ("12x", "32-33x", "40x"),
    "lenet5": ("12x", "32-33x", "39x"),
}


# ------------------------------------------------------------------------- synthetic weights

def trained_like(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    fan_in = math.prod(shape[1:])
    scale = math.sqrt(1.0 / fan_in)  # Laplace(b) has std b*sqrt(2): ~He-scaled
    return rng.laplace(0.0, scale, size=shape).astype(np.float32)


def prune(w: np.ndarray, density: float) -> np.ndarray:
    flat = w.reshape(-1)
    keep = int(round(flat.size * density))
    if keep == 0:
        return np.zeros_like(w)
    threshold = np.partition(np.abs(flat), flat.size - keep)[flat.size - keep]
    return np.where(np.abs(w) >= threshold, w, np.float32(0)).astype(np.float32)


def share(w: np.ndarray, bits: int, iters: int = 8, sample: int = 1_000_000,
          seed: int = 0) -> np.ndarray:
    """1-D k-means with linear initialisation on the non-zeros (fitted on a sample if large)."""
    flat = w.reshape(-1)
    nz = np.flatnonzero(flat)
    values = flat[nz]
    fit = values if values.size <= sample else \
        np.random.default_rng(seed).choice(values, sample, replace=False)
    centroids = np.linspace(fit.min(), fit.max(), 1 << bits)
    for _ in range(iters):
        idx = _nearest(fit, centroids)
        sums = np.bincount(idx, weights=fit, minlength=centroids.size)
        counts = np.bincount(idx, minlength=centroids.size)
        centroids = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        centroids = np.sort(centroids)
    centroids = centroids.astype(np.float32)
    centroids[centroids == 0] = np.float32(1e-8)  # a shared weight must stay non-zero
    out = np.zeros_like(flat)
    out[nz] = centroids[_nearest(values, centroids)]
    return out.reshape(w.shape)


def _nearest(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    mids = (centroids[1:] + centroids[:-1]) / 2
    return np.searchsorted(mids, values)


# Paper's LeNet densities and bit widths (REFERENCE.md section 1).
LENET300 = [("fc1", (300, 784), 0.08, 6), ("fc2", (100, 300), 0.09, 6), ("fc3", (10, 100), 0.26, 6)]
LENET5 = [("conv1", (20, 1, 5, 5), 0.66, 8), ("conv2", (50, 20, 5, 5), 0.12, 8),
          ("fc1", (500, 800), 0.08, 5), ("fc2", (10, 500), 0.19, 5)]


def synthetic_stages(layers, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """Dense, pruned, and pruned+shared state_dicts of a synthetic model."""
    rng = np.random.default_rng(seed)
    stages = {"dense": {}, "pruned": {}, "shared": {}}
    for name, shape, density, bits in layers:
        w = trained_like(rng, shape)
        bias = (rng.standard_normal(shape[0]) * 0.01).astype(np.float32)
        p = prune(w, density)
        s = share(p, bits)
        for stage, arr in (("dense", w), ("pruned", p), ("shared", s)):
            stages[stage][f"{name}.weight"] = torch.from_numpy(arr.copy())
            stages[stage][f"{name}.bias"] = torch.from_numpy(bias.copy())
    return stages


# ------------------------------------------------------------------------------ helpers

def weight_names(sd: dict) -> list[str]:
    return [k for k, v in sd.items() if k.endswith("weight") and v.dim() >= 2]


def torch_bytes(sd: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(sd, buf)
    return buf.getvalue()


def general_purpose(data: bytes) -> dict[str, int]:
    import zstandard

    return {"raw": len(data), "gzip -9": len(gzip.compress(data, 9)),
            "zstd -19": len(zstandard.ZstdCompressor(level=19).compress(data))}


def dense_fp32(sd: dict) -> int:
    return sum(4 * t.numel() for t in sd.values() if t.is_floating_point())


def md_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def pack_size(sd, folder, name, compressed, coder) -> int:
    return pack(sd, Path(folder) / f"{name}.dcz", compressed=compressed, coder=coder).bytes


# ------------------------------------------------------------------------------ stage table

def stage_table(label: str, stages: dict, folder: str, results: dict,
                paper: tuple[str, str, str] | None) -> str:
    """Ratio after pruning alone, + sharing, + coding: each a real file (dense fp32 / bytes)."""
    dense = dense_fp32(stages["dense"])
    comp = {n: {"bits": None, "index_bits": None} for n in weight_names(stages["dense"])}
    sizes = {
        "pruning (raw fp32 non-zeros, fixed-width gaps)": pack_size(
            stages["pruned"], folder, "pruned", comp, "none"),
        "+ sharing (codebook, fixed-width indices and gaps)": pack_size(
            stages["shared"], folder, "shared", comp, "none"),
        "+ Huffman coding": pack_size(stages["shared"], folder, "huffman", comp, "huffman"),
        "+ rANS coding (instead of Huffman)": pack_size(stages["shared"], folder, "ans", comp,
                                                        "ans"),
    }
    results[label] = {"dense_bytes": dense, "stages": sizes}
    paper_col = list(paper) + ["-"] if paper else ["-"] * 4
    rows = [[stage, f"{size:,}", f"{dense / size:.1f}x", p]
            for (stage, size), p in zip(sizes.items(), paper_col)]
    return f"**{label}** (dense fp32 {dense:,} bytes)\n\n" + md_table(
        ["stage", "file bytes", "ratio", "paper (MNIST)"], rows)


def stream_table(label: str, sd: dict, folder: str, results: dict) -> str:
    """The same streams (gap widths as the Huffman writer chose them) forced through each coder,
    and the form the writer stores (fixed width where coding costs more, table included)."""
    from dcz import _streams, _tensor

    comp = {n: {"bits": None, "index_bits": None} for n in weight_names(sd)}
    auto = pack(sd, Path(folder) / "auto.dcz", compressed=comp, coder="huffman")
    comp = {r.name: {"bits": None, "index_bits": r.index_bits} for r in auto.tensors
            if r.storage != "plain"}
    reports = {"huffman": auto,
               "ans": pack(sd, Path(folder) / "s-ans.dcz", compressed=comp, coder="ans")}
    # The coder each stream was stored with, as the writer reports it.
    stored = {c: {(t.name, s.name): s.coder for t in rep.tensors for s in t.streams}
              for c, rep in reports.items()}
    rows, out = [], []
    for r in (t for t in auto.tensors if t.storage != "plain"):
        streams = _tensor.sparse_streams(sd[r.name], r.index_bits)
        for sname, (symbols, alphabet) in streams.items():
            if sname not in {x.name for x in r.streams}:
                continue
            forced = {c: _streams._encode_as(symbols, alphabet, c, sname)[1]
                      for c in ("none", "huffman", "ans")}
            ans, huf, fixed = forced["ans"], forced["huffman"], forced["none"]
            ent = ans.entropy_bits
            forms = [stored[c][r.name, sname] for c in ("ans", "huffman")]
            over = [f"{x.payload_bytes:,}" + (f" ({x.payload_overhead:+.2%})"
                                              if x.payload_overhead is not None else "")
                    for x in (ans, huf)]
            rows.append([r.name, sname, f"{ans.count:,}", f"{ent / 8:,.0f}", *over,
                         f"{fixed.payload_bytes:,}", f"{ans.table_bytes} / {huf.table_bytes}",
                         " / ".join("fixed" if f == "none" else f for f in forms)])
            out.append({"tensor": r.name, "stream": sname, "symbols": ans.count,
                        "entropy_bits": ent, "ans_payload_bytes": ans.payload_bytes,
                        "ans_overhead": ans.payload_overhead,
                        "huffman_payload_bytes": huf.payload_bytes,
                        "huffman_overhead": huf.payload_overhead,
                        "fixed_payload_bytes": fixed.payload_bytes,
                        "ans_table_bytes": ans.table_bytes,
                        "huffman_table_bytes": huf.table_bytes,
                        "stored_as": {"ans": forms[0], "huffman": forms[1]}})
    results[label] = out
    return (f"**{label}**: payload bytes of each stream forced through each coder, against its "
            "order-0 entropy bound; \"stored as\" is what the rANS / Huffman writer keeps "
            "(\"fixed\" where coding costs more, table included)\n\n") + md_table(
        ["tensor", "stream", "symbols", "entropy B", "rANS B (over bound)",
         "Huffman B (over bound)", "fixed-width B", "tables B (rANS / Huffman)",
         "stored as (rANS / Huffman)"], rows)


def general_table(label: str, stages: dict, folder: str, results: dict) -> str:
    dense = dense_fp32(stages["dense"])
    comp = {n: {"bits": None, "index_bits": None} for n in weight_names(stages["dense"])}
    rows, out = [], {}
    for stage, key in (("dense fp32 state_dict (.pt)", "dense"),
                       ("pruned + shared state_dict (.pt)", "shared")):
        for method, size in general_purpose(torch_bytes(stages[key])).items():
            name = f"{stage}, {method}"
            out[name] = size
            rows.append([name, f"{size:,}", f"{dense / size:.1f}x"])
    for coder in ("huffman", "ans"):
        path = Path(folder) / f"g-{coder}.dcz"
        size = pack(stages["shared"], path, compressed=comp, coder=coder).bytes
        out[f".dcz ({coder})"] = size
        rows.append([f"**.dcz ({coder})**", f"{size:,}", f"{dense / size:.1f}x"])
        zst = general_purpose(path.read_bytes())["zstd -19"]
        out[f".dcz ({coder}), zstd -19"] = zst
        rows.append([f".dcz ({coder}) then zstd -19", f"{zst:,}", f"{dense / zst:.1f}x"])
    results[label] = out
    return f"**{label}** (ratio = dense fp32 {dense:,} bytes / size)\n\n" + md_table(
        ["file", "bytes", "ratio"], rows)


# ------------------------------------------------------------------------------ commands

def cmd_streams(args, results: dict) -> list[str]:
    parts = []
    with tempfile.TemporaryDirectory() as folder:
        for key, layers, title in (("lenet300", LENET300, "synthetic LeNet-300-100"),
                                   ("lenet5", LENET5, "synthetic LeNet-5")):
            stages = synthetic_stages(layers)
            parts.append(stage_table(f"{title}: per-stage ratio", stages, folder,
                                     results.setdefault("stages", {}), PAPER_STAGES[key]))
            parts.append(stream_table(f"{title}: coded streams", stages["shared"], folder,
                                      results.setdefault("streams", {})))
            parts.append(general_table(f"{title}: against general-purpose compressors", stages,
                                       folder, results.setdefault("general", {})))
    return parts


def big_model(total: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """~``total`` weights in three layers (8-bit "conv", two 5-bit FC), pruned to 10%, shared."""
    rng = np.random.default_rng(seed)
    conv = (max(total // 100_000_000, 1) * 1000, 1000, 3, 3) if total >= 10**8 else \
        (max(total // 11_111 // 9, 1), 1000, 3, 3)
    rest = total - math.prod(conv)
    fc1 = (int(math.sqrt(rest * 0.7)),) * 2
    fc2_rows = max((rest - math.prod(fc1)) // 1000, 1)
    layers = [("conv", conv, 8), ("fc1", fc1, 5), ("fc2", (fc2_rows, 1000), 5)]
    sd = {}
    for name, shape, bits in layers:
        w = share(prune(trained_like(rng, shape), 0.10), bits)
        sd[f"{name}.weight"] = torch.from_numpy(w)
        sd[f"{name}.bias"] = torch.zeros(shape[0])
        gc.collect()
    return sd


def cmd_speed(args, results: dict) -> list[str]:
    t0 = time.perf_counter()
    sd = big_model(args.weights)
    n_weights = sum(v.numel() for k, v in sd.items() if k.endswith("weight"))
    nnz = sum(int(torch.count_nonzero(v)) for k, v in sd.items() if k.endswith("weight"))
    made = time.perf_counter() - t0
    comp = {n: {"bits": None, "index_bits": None} for n in weight_names(sd)}
    rows, out = [], {}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "big.dcz"
        for coder in args.coders:
            packs, loads = [], []
            for _ in range(args.repeats):
                t = time.perf_counter()
                report = pack(sd, path, compressed=comp, coder=coder)
                packs.append(time.perf_counter() - t)
                t = time.perf_counter()
                dcz = load(path)
                loads.append(time.perf_counter() - t)
                exact = all(torch.equal(dcz.state_dict[k], sd[k]) for k in sd)
                symbols = sum(s.count for r in dcz.tensors for s in r.streams)
                del dcz
                gc.collect()
            out[coder] = {"pack_s": packs, "load_s": loads, "bytes": report.bytes,
                          "ratio": report.ratio, "exact": exact, "symbols": symbols,
                          "gap_bits": {r.name: r.index_bits for r in report.tensors
                                       if r.storage != "plain"}}
            verdict = "yes" if max(min(packs), min(loads)) <= 10 else "NO"
            rows.append([coder, " / ".join(f"{x:.2f}" for x in packs),
                         " / ".join(f"{x:.2f}" for x in loads),
                         f"{symbols / min(loads) / 1e6:.1f}M", f"{report.bytes:,}",
                         f"{report.ratio:.1f}x", "yes" if exact else "NO", verdict])
    results["speed"] = {"weights": n_weights, "nonzeros": nnz, "generate_s": made, **out}
    return [stream_speed(results), f"**{n_weights:,} weights pruned to {nnz / n_weights:.1%} ({nnz:,} non-zeros), "
            f"shared to 8/5 bits** (repeats listed in order; the first run of a fresh process "
            "includes first-touch page faults)\n\n" + md_table(
                ["coder", "pack s", "load s", "decoded symbols/s", "file bytes", "ratio",
                 "bit-exact", "<= 10 s"], rows)]


def stream_speed(results: dict, n: int = 10_000_000) -> str:
    """Symbols per second of the stream coders alone, on a skewed 32-symbol stream."""
    from dcz import _streams
    from dcz._format import Reader

    p = np.exp(-np.arange(32) / 5.0)
    symbols = np.random.default_rng(0).choice(32, size=n, p=p / p.sum())
    rows, out = [], {}
    for coder in ("huffman", "ans", "none"):
        t = time.perf_counter()
        data, _ = _streams.encode(symbols, 32, coder, "s")
        enc = time.perf_counter() - t
        t = time.perf_counter()
        decoded, _ = _streams.decode(Reader(data, "bench"), "s", n)
        dec = time.perf_counter() - t
        assert np.array_equal(decoded, symbols)
        out[coder] = {"encode_symbols_per_s": n / enc, "decode_symbols_per_s": n / dec}
        rows.append([coder, f"{n / enc / 1e6:.1f}M", f"{n / dec / 1e6:.1f}M"])
    results["stream_speed"] = out
    return (f"**One stream of {n:,} symbols** (32-symbol alphabet, skewed), symbols per second\n\n"
            + md_table(["coder", "encode", "decode"], rows))


def _find_stage_checkpoints(run: Path, report: dict) -> dict[str, Path]:
    """Dense baseline, last pruning stage and last sharing stage of a run folder: the stages
    the pipeline itself chose for report.json's stage_ratios (each file is named after its
    checkpoint)."""
    from compression.pipeline import BASELINE

    ckpts = run / "checkpoints"
    found = {"dense": ckpts / f"{BASELINE}.pt"}
    keys = {"pruning": "pruned", "pruning + sharing": "shared"}
    for entry in report.get("stage_ratios", []):
        if entry["stage"] in keys:
            found[keys[entry["stage"]]] = ckpts / f"{Path(entry['file']).stem}.pt"
    return {k: p for k, p in found.items() if p.is_file()}


def cmd_run(args, results: dict) -> list[str]:
    from compression._train import evaluate
    from compression.data import load_split
    from compression.models import build_model, load_state_dict_file

    parts = []
    for run in map(Path, args.dirs):
        report = json.loads((run / "report.json").read_text())
        dcz_path = run / "model.dcz"
        model, dcz = model_from_dcz(dcz_path)
        name = dcz.meta["model"]["name"]
        acc_file = evaluate(model, load_split("test", (dcz.meta.get("data") or {}).get("root")))
        acc = report.get("accuracy", {})
        base = acc.get("baseline")
        on_disk = dcz.bytes
        dense = sum(4 * p.numel() for p in build_model(name, dcz.meta["model"].get("kwargs"))
                    .parameters())
        summary = [["model.dcz bytes on disk", f"{on_disk:,}"],
                   ["dense fp32 parameter bytes", f"{dense:,}"],
                   ["compression ratio", f"{dense / on_disk:.1f}x"],
                   ["report.json compression_ratio", str(report.get("compression_ratio"))],
                   ["baseline accuracy (report.json)", f"{base:.4f}" if base else "-"],
                   ["final accuracy (report.json)",
                    f"{acc['final']:.4f}" if acc.get("final") is not None else "-"],
                   ["accuracy of model.dcz, measured here", f"{acc_file:.4f}"],
                   ["accuracy loss (points)",
                    f"{(base - acc_file) * 100:.2f}" if base else "-"]]
        entry = {"file_bytes": on_disk, "dense_bytes": dense, "ratio": dense / on_disk,
                 "baseline_accuracy": base, "file_accuracy": acc_file,
                 "report": {k: report.get(k) for k in ("compressed_bytes", "compression_ratio",
                                                       "stage_ratios")}}
        parts.append(f"**{run} ({name})**\n\n" + md_table(["figure", "value"], summary))
        ckpts = _find_stage_checkpoints(run, report)
        if {"dense", "pruned", "shared"} <= set(ckpts):
            stages = {k: load_state_dict_file(p) for k, p in ckpts.items()}
            with tempfile.TemporaryDirectory() as folder:
                res: dict = {}
                parts.append(stage_table(f"{name}: per-stage ratio (re-packed from "
                                         f"{', '.join(p.name for p in ckpts.values())})",
                                         stages, folder, res, PAPER_STAGES.get(name)))
                parts.append(stream_table(f"{name}: coded streams", stages["shared"], folder,
                                          res))
                parts.append(general_table(f"{name}: against general-purpose compressors",
                                           stages, folder, res))
                entry["tables"] = res
        else:
            parts.append(f"(stage checkpoints not found in {run / 'checkpoints'}: "
                         f"found {sorted(ckpts)})")
        results.setdefault("runs", {})[str(run)] = entry
    return parts


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("what", choices=("speed", "streams", "run", "all"))
    p.add_argument("dirs", nargs="*", help="run folders (for 'run' and 'all')")
    p.add_argument("--weights", type=int, default=100_000_000)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--coders", nargs="+", default=["huffman", "ans", "none"])
    p.add_argument("--json", default=None, help="write every figure to this JSON file")
    args = p.parse_args()
    torch.set_num_threads(2)
    results: dict = {"machine": f"{platform.machine()} {platform.system()}, "
                                f"{os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d")}
    parts = []
    if args.what in ("streams", "all"):
        parts += cmd_streams(args, results)
    if args.what in ("speed", "all"):
        parts += cmd_speed(args, results)
    if args.what == "run" or (args.what == "all" and args.dirs):
        if not args.dirs:
            p.error("'run' needs at least one run folder")
        parts += cmd_run(args, results)
    print("\n\n".join(parts))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
