"""Compress a real sentence encoder (all-MiniLM-L6-v2, 22.7M parameters) and compare, in one run,
with what a release engineer would otherwise use.

    HF_HUB_OFFLINE=1 python bench/bench_minilm.py [--methods fp16,int8,...] [--out runs/bench_minilm]

For every method: its artifact's size on disk, the ratio to the fp32 state_dict
(``torch.save``), and against the dense model's embeddings on the held-out test sentences
(603): mean and minimum cosine, and top-10 retrieval overlap (198 queries against the test
sentences as the corpus; the share of the dense model's 10 nearest neighbours that the method
also returns). Every metric is computed from what the artifact holds: a state_dict is loaded
back, a .dcz decoded, a Core ML package's palettized weights are those of the torch model that
was converted.

Methods (``--methods``, comma-separated; default all that are not ``ours-*``):
  fp16           weights stored as float16 (torch.save)
  int8           per-output-channel symmetric int8 weight-only (int8 tensors + fp32 scales)
  dynamic-int8   torch.ao.quantization.quantize_dynamic(Linear -> qint8), its state_dict
  coreml-p4/p6   coremltools' post-training palettization (PostTrainingPalettizer, per tensor)
                 converted with the DEFAULT_PALETTIZATION pass: the .mlpackage's bytes
  zstd           zstd -19 of the fp32 state_dict file (lossless)
  ours-*         deepcompress recipes (see bench/recipes/), measured through the .dcz
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import minilm  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


# ---- metrics ------------------------------------------------------------------------------------

@torch.no_grad()
def embed(model: torch.nn.Module, sentences: list[str], batch: int = 64) -> np.ndarray:
    model.eval()
    out = []
    for i in range(0, len(sentences), batch):
        ids, mask = minilm.tokenize(sentences[i:i + batch])
        out.append(model(ids, mask).float())
    return torch.cat(out).numpy()


def compare(got: np.ndarray, ref: np.ndarray, queries_got: np.ndarray,
            queries_ref: np.ndarray, k: int = 10) -> dict:
    cos = np.sum(got * ref, 1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))

    def topk(q: np.ndarray, corpus: np.ndarray) -> np.ndarray:
        return np.argsort(-(q @ corpus.T), axis=1)[:, :k]

    a, b = topk(queries_ref, ref), topk(queries_got, got)
    overlap = np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b)])
    return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
            "top10_overlap": float(overlap)}


# ---- methods ------------------------------------------------------------------------------------

def _saved_size(obj, path: Path) -> int:
    torch.save(obj, path)
    return path.stat().st_size


def m_fp32(model, work):
    return _saved_size(model.state_dict(), work / "fp32.pt"), model


def m_fp16(model, work):
    sd = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    size = _saved_size(sd, work / "fp16.pt")
    back = minilm.pretrained()
    back.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in
                          torch.load(work / "fp16.pt", weights_only=True).items()})
    return size, back


def m_int8(model, work):
    """Per output channel: scale = max|w| / 127, q = round(w / scale); 2-D+ floats only."""
    sd, stored = model.state_dict(), {}
    for k, v in sd.items():
        if v.is_floating_point() and v.dim() >= 2:
            scale = v.abs().amax(dim=tuple(range(1, v.dim())), keepdim=True).clamp(min=1e-12) / 127
            stored[k + ".q"] = torch.round(v / scale).to(torch.int8)
            stored[k + ".scale"] = scale.float()
        else:
            stored[k] = v
    size = _saved_size(stored, work / "int8.pt")
    blob = torch.load(work / "int8.pt", weights_only=True)
    back_sd = {k: blob[k + ".q"].float() * blob[k + ".scale"] if k + ".q" in blob else blob[k]
               for k in sd}
    back = minilm.pretrained()
    back.load_state_dict(back_sd)
    return size, back


def m_dynamic_int8(model, work):
    import copy

    q = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear},
                                               dtype=torch.qint8)
    return _saved_size(q.state_dict(), work / "dynamic_int8.pt"), q


def _coreml_palettized(model, work, bits: int):
    import coremltools as ct
    from coremltools.optimize.torch.palettization import (PostTrainingPalettizer,
                                                          PostTrainingPalettizerConfig)

    cfg = PostTrainingPalettizerConfig.from_dict(
        {"global_config": {"n_bits": bits, "granularity": "per_tensor"}})
    import copy
    import logging

    logging.getLogger("coremltools").setLevel(logging.WARNING)
    palettized = PostTrainingPalettizer(copy.deepcopy(model), cfg).compress()
    ids, mask = minilm.tokenize(minilm.sentences("test", 1))
    program = torch.export.export(palettized, (ids, mask), strict=False).run_decompositions()
    ml = ct.convert(program, minimum_deployment_target=ct.target.iOS18,
                    pass_pipeline=ct.PassPipeline.DEFAULT_PALETTIZATION)
    path = work / f"coreml_p{bits}.mlpackage"
    ml.save(str(path))
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return size, palettized


def m_coreml_p4(model, work):
    return _coreml_palettized(model, work, 4)


def m_coreml_p6(model, work):
    return _coreml_palettized(model, work, 6)


def m_zstd(model, work):
    fp32 = work / "fp32.pt"
    if not fp32.exists():
        torch.save(model.state_dict(), fp32)
    out = work / "fp32.pt.zst"
    subprocess.run(["zstd", "-19", "-q", "-f", str(fp32), "-o", str(out)], check=True)
    return out.stat().st_size, model     # lossless: the model itself


BASELINES = {"fp16": m_fp16, "int8": m_int8, "dynamic-int8": m_dynamic_int8,
             "coreml-p4": m_coreml_p4, "coreml-p6": m_coreml_p6, "zstd": m_zstd}


EXPORTS: dict[str, dict] = {}     # method -> what `deepcompress export` reported
REUSE = False                     # --reuse


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "bench"),
                                                        os.environ.get("PYTHONPATH", "")]))


def m_ours(recipe: Path, work: Path, export: bool):
    """A deepcompress recipe on this model, measured through the .dcz it writes (and, with
    ``export``, its TFLite and Core ML artifacts, validated on 100 test sentences)."""
    def method(model, _work):
        from deepcompress.loading import model_from_dcz

        from compression.pipeline import read_report
        from dccore.errors import DeepCompressError

        run_dir = work / f"ours-{recipe.stem}"
        t = time.time()
        try:      # --reuse: a finished run of the same recipe (report.json names its model.dcz)
            report = read_report(run_dir) if REUSE else None
            reused = report is not None and (run_dir / "recipe.toml").read_text() == recipe.read_text()
        except DeepCompressError:
            reused = False
        if not reused:
            subprocess.run([sys.executable, "-m", "deepcompress", "run", str(recipe), "--out",
                            str(run_dir), "--force", "--quiet"], check=True, env=_env(), cwd=ROOT)
        run_seconds = time.time() - t if not reused else read_report(run_dir)["seconds"]["total"]
        dcz_path = run_dir / "model.dcz"
        back, _ = model_from_dcz(dcz_path, model="minilm:pretrained")
        if export:
            EXPORTS[f"ours-{recipe.stem}"] = _export(dcz_path, work / f"ours-{recipe.stem}-export")
        EXPORTS.setdefault("run_seconds", {})[f"ours-{recipe.stem}"] = round(run_seconds, 1)
        return dcz_path.stat().st_size, back
    return method


def _export(dcz_path: Path, folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    ids, mask = minilm.tokenize(minilm.sentences("test", 100))
    inputs = folder / "test_inputs.pt"
    torch.save({"input_ids": ids, "attention_mask": mask}, inputs)
    proc = subprocess.run(
        [sys.executable, "-m", "deepcompress", "export", str(dcz_path), "--model",
         "minilm:pretrained", "--inputs", str(inputs), "--tflite", str(folder / "minilm.tflite"),
         "--coreml", str(folder / "minilm.mlpackage"), "--json"],
        capture_output=True, text=True, env=_env(), cwd=ROOT)
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default=",".join(BASELINES),
                        help="comma-separated: " + ", ".join(BASELINES) + ", ours-RECIPE")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_minilm")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--export", default="", metavar="METHOD[,METHOD]",
                        help="also export these ours-* models to TFLite and Core ML and validate")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse a finished ours-* run folder of the same recipe in --out")
    args = parser.parse_args()
    global REUSE
    REUSE = args.reuse
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(os.cpu_count() or 1)

    t0 = time.time()
    model = minilm.pretrained()
    test, queries = minilm.sentences("test"), minilm.sentences("query")
    ref, ref_q = embed(model, test), embed(model, queries)
    dense_bytes, _ = m_fp32(model, args.out)
    rows = [{"method": "fp32 state_dict", "bytes": dense_bytes, "ratio": 1.0,
             **compare(ref, ref, ref_q, ref_q), "seconds": 0.0}]
    for name in args.methods.split(","):
        fn = BASELINES.get(name) or (m_ours(ROOT / "bench" / "recipes" / f"{name[5:]}.toml",
                                            args.out, name in args.export.split(","))
                                     if name.startswith("ours-") else None)
        if fn is None:
            parser.error(f"unknown method {name!r}")
        t = time.time()
        size, back = fn(model, args.out)
        got, got_q = embed(back, test), embed(back, queries)
        rows.append({"method": name, "bytes": size, "ratio": dense_bytes / size,
                     **compare(got, ref, got_q, ref_q), "seconds": round(time.time() - t, 1)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    meta = {"test_sentences": len(test), "queries": len(queries), "python": platform.python_version(),
            "seconds": round(time.time() - t0, 1), "load": os.getloadavg()}
    if args.json:
        print(json.dumps({"rows": rows, "exports": EXPORTS, **meta}, indent=2, default=str))
        return 0
    for name, rep in EXPORTS.items():
        if name == "run_seconds":
            print(f"# recipe run seconds: {rep}")
            continue
        for fmt in ("tflite", "coreml"):
            r = rep.get(fmt) or {}
            figures = {k: r.get(k) for k in ("bytes", "zipped_bytes", "dense_bytes", "ok")}
            checks = {k: v for k, v in (r.get("validation") or r).items()
                      if k in ("cosine_mean", "cosine_min", "weights_match", "max_abs_diff")}
            print(f"# export {name} {fmt}: {figures} {checks} {rep.get('error', '')}")
    print(f"{'method':<22} {'bytes':>12} {'ratio':>7} {'cos mean':>9} {'cos min':>8} {'top-10':>7} {'s':>6}")
    for r in rows:
        print(f"{r['method']:<22} {r['bytes']:>12,} {r['ratio']:>6.2f}x {r['cosine_mean']:>9.5f} "
              f"{r['cosine_min']:>8.4f} {r['top10_overlap']:>7.3f} {r['seconds']:>6}")
    print(f"# {meta}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
