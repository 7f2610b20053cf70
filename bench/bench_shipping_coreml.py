"""What ships on iOS, side by side in one run: our Core ML package of a compressed model against
coremltools 9's own palettization of the same model's dense baseline, and the dense fp32 / fp16
packages.

    python bench/bench_shipping_coreml.py --run runs/lenet300 [--run runs/lenet5] --json out.json
    PYTHONPATH=bench python bench/bench_shipping_coreml.py --minilm runs/minilm_post/model.dcz

For every point: the package's bytes on disk, its zipped bytes (zipfile, deflate level 9, as in
an IPA), and the task's metric through the weights decoded from the package on this OS (Core ML
predictions need macOS): every weight tensor is read back from the saved package (our verifier's
decoders, from the MIL spec's definitions of the constexpr ops) and loaded into the PyTorch model,
the other tensors rounded to the package's fp16. LeNets: accuracy on the whole Fashion-MNIST test
set. MiniLM: mean and minimum cosine of the sentence embeddings to the dense model's on the
held-out sentences (bench/minilm.py's test split).

coremltools points (``--ct``, comma-separated): ``kmeans4`` / ``kmeans6`` (one LUT per tensor),
``kmeans4-g16`` / ``kmeans6-g16`` (a LUT per 16 output channels; a layer whose rows 16 does not
divide stays dense, as coremltools leaves it; any ``kmeansN-gG`` is accepted), on MiniLM
``emb4-lin6`` (4-bit embeddings, 6-bit Linear), and on the LeNets ``skm4`` / ``skm6``
(coremltools.optimize.torch's sensitive k-means, SqueezeLLM-style, each weight's error weighed by
its Fisher sensitivity on 128 training images; the palettized model converted and stored with
``mode="unique"``). Each point palettizes the model's weight tensors, named one by one, with
coremltools' default ``weight_threshold`` (2048 elements: LeNet-300-100's fc3 stays dense).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

CT_POINTS = ("kmeans4", "kmeans6", "kmeans4-g16", "kmeans6-g16", "emb4-lin6", "skm4", "skm6")


@dataclass
class Case:
    name: str                        # the run (folder) the .dcz comes from
    family: str                      # the model, as the rows name it (runs of one baseline share it)
    model: nn.Module                 # compressed, as the .dcz rebuilds it
    dense: nn.Module                 # its dense baseline (what coremltools palettizes)
    example: tuple[torch.Tensor, ...]
    layers: dict                     # the .dcz's compressed layers (exporters.CompressedLayer)
    dcz_bytes: int
    metric: Callable[[nn.Module], dict[str, float]]
    calibration: Any = None          # (inputs, labels) for sensitive k-means, where cheap


# ---- cases --------------------------------------------------------------------------------------

def lenet_case(run: Path) -> Case:
    from compression.data import load_split
    from compression.models import build_model
    from deepcompress.exporting import dcz_layers
    from deepcompress.loading import model_from_dcz

    model, dcz = model_from_dcz(run / "model.dcz")
    # the recipe's model, as the baseline was trained (a shrink stage narrows the .dcz's)
    spec = json.loads((run / "recipe.json").read_text())["recipe"].get("model", {})
    dense = build_model(spec.get("name", "lenet300"), spec.get("kwargs") or {})
    saved = torch.load(run / "checkpoints" / "0_baseline.pt", map_location="cpu", weights_only=True)
    dense.load_state_dict(saved["state_dict"])
    test = load_split("test")
    shape = dcz.meta["model"]["input_shape"]
    images = test.images.reshape(len(test.images), *shape)

    @torch.no_grad()
    def accuracy(m: nn.Module) -> dict[str, float]:
        m.eval()
        logits = torch.cat([m(images[i:i + 1000]) for i in range(0, len(images), 1000)])
        return {"accuracy": float((logits.argmax(1) == test.labels).float().mean())}

    train = load_split("train", limit=128)
    calibration = (train.images.reshape(len(train.images), *shape), train.labels)
    return Case(run.name, spec.get("name", "lenet300"), model.eval(), dense.eval(), (images[:1],), dcz_layers(model, dcz),
                dcz.bytes, accuracy, calibration)


def minilm_case(dcz_path: Path, reference: tuple | None = None) -> Case:
    import minilm
    from bench_minilm import embed

    from dccore import metrics
    from deepcompress.exporting import dcz_layers
    from deepcompress.loading import model_from_dcz

    model, dcz = model_from_dcz(dcz_path, model="minilm:pretrained")
    dense, sentences, reference = reference or (minilm.pretrained().eval(), minilm.sentences("test"),
                                                None)
    if reference is None:
        reference = embed(dense, sentences)
    MINILM_REFERENCE[:] = [(dense, sentences, reference)]

    def cosine(m: nn.Module) -> dict[str, float]:
        got = embed(m, sentences)
        return {"cosine_mean": metrics.mean_cosine(got, reference),
                "cosine_min": metrics.min_cosine(got, reference)}

    return Case(dcz_path.parent.name, "minilm", model.eval(), dense,
                minilm.tokenize(sentences[:1]), dcz_layers(model, dcz), dcz.bytes, cosine)


MINILM_REFERENCE: list = []   # the dense model, the sentences and its embeddings, computed once


# ---- measuring a package through its decoded weights ---------------------------------------------

def weight_vars(package: Path, model: nn.Module) -> dict[str, str]:
    """Each weight tensor (rank >= 2) of ``model`` -> the variable of ``package`` (a dense fp16
    export of it) that holds exactly its fp16 values: how a palettized copy's weights are found."""
    from ios_export import package_weights

    held = package_weights(package)
    out = {}
    for name, tensor in model.state_dict().items():
        if tensor.dim() < 2 or not tensor.is_floating_point():
            continue
        ours = tensor.detach().numpy().astype(np.float16)
        hits = [v for v, w in held.items() if w.shape == ours.shape and np.array_equal(w, ours)]
        if hits:
            out[name] = sorted(hits, key=len)[0]
    return out


def through_package(case: Case, package: Path, base: nn.Module, names: dict[str, str]) -> dict:
    """``base`` (the model the package was made from) with every weight the package holds, as
    decoded from it; the metric on it."""
    from ios_export import decoded_model, package_weights

    held = package_weights(package)
    decoded = {}
    for name, var in names.items():
        match = [v for v in held if v == var or v.startswith(var + "_")]
        if len(match) != 1:
            raise SystemExit(f"{package}: {len(match)} variables for {name} ({var})")
        rows = base.state_dict()[name].shape[0]
        decoded[name] = held[match[0]][:rows]
    return case.metric(decoded_model(base, decoded))


def ct_config(point: str, weights: dict[str, bool]) -> Any:
    """coremltools' palettizer config for ``point``, on the model's weight tensors (``weights``:
    the package variable of each -> whether an embedding table reads it). Named one by one: the
    global config also reaches the graph's other constants, and MiniLM's extended attention mask
    (-3.4e38, -inf in fp16) stops its k-means ("Input X contains infinity")."""
    import coremltools.optimize.coreml as cto

    def pal(bits: int, group: int | None = None) -> Any:
        if group:
            return cto.OpPalettizerConfig(mode="kmeans", nbits=bits, granularity="per_grouped_channel",
                                          group_size=group)
        return cto.OpPalettizerConfig(mode="kmeans", nbits=bits)

    if point == "emb4-lin6":
        return cto.OptimizationConfig(op_name_configs={
            var: pal(4 if table else 6) for var, table in weights.items()})
    bits = int(point.split("-")[0].removeprefix("kmeans"))
    group = int(point.split("-g")[1]) if "-g" in point else None
    return cto.OptimizationConfig(op_name_configs={var: pal(bits, group) for var in weights})


def bench(case: Case, work: Path, points: list[str], baselines: bool = True) -> list[dict]:
    """Our package of ``case``; with ``baselines``, the dense packages and coremltools' points
    of its dense model too (once per dense model)."""
    import coremltools as ct
    import coremltools.optimize.coreml as cto

    from dccore.artifacts import artifact_size
    from ios_export import CoreMLExporter, CoreMLOptions, decoded_model, export_coreml
    from exporters import quiet_backend

    work.mkdir(parents=True, exist_ok=True)
    rows = []

    def row(label: str, path: Path, seconds: float, figures: dict, **extra: Any) -> None:
        r = {"model": case.family, "run": case.name, "point": label,
             **artifact_size(path).to_dict(),
             "seconds": round(seconds, 1),
             **figures, **extra}
        rows.append(r)
        print(json.dumps(r), flush=True)

    rows.append({"model": case.family, "run": case.name, "point": f".dcz ({case.name})",
                 "bytes": case.dcz_bytes,
                 **case.metric(case.model)})
    print(json.dumps(rows[-1]), flush=True)
    for label, precision in (("dense fp32", "fp32"), ("dense fp16", "fp16"))[:2 if baselines else 0]:
        path = work / f"dense_{precision}.mlpackage"
        shutil.rmtree(path, ignore_errors=True)
        t = time.time()
        export_coreml(case.dense, case.example, path, precision=precision, method="none")
        row(label, path, time.time() - t, case.metric(case.dense) if precision == "fp32" else
            through_package(case, path, case.dense, weight_vars(path, case.dense)))
    dense16 = work / "dense_fp16.mlpackage"

    # ours: the .dcz's model, each layer stored in the smallest exact form
    path = work / "ours.mlpackage"
    shutil.rmtree(path, ignore_errors=True)
    exporter = CoreMLExporter()
    t = time.time()
    report = exporter.export(case.model, case.example, path, CoreMLOptions(), layers=case.layers)
    seconds = time.time() - t
    decoded = _decoded(path, case, report.layers)
    row(f"ours ({case.name})", path, seconds, case.metric(decoded_model(case.model, decoded)),
        layers_skipped=dict(report.skipped),   # "skipped" marks a skipped point for the chart
        layers={n: {k: p[k] for k in ("method", "nbits", "luts", "group_size", "pad_rows",
                                      "payload_bytes")} for n, p in report.layers.items()},
        reasons={n: p["reason"] for n, p in report.layers.items()})

    if not baselines:
        return rows
    for point in [p for p in points if p.startswith("skm")]:
        if case.calibration is not None:
            skm_row(case, work, int(point.removeprefix("skm")), row)
    points = [p for p in points if not p.startswith("skm")]
    names = weight_vars(dense16, case.dense)
    tables = {n for n, m in case.dense.named_modules() if isinstance(m, nn.Embedding)}
    weights = {var: name.rpartition(".")[0] in tables for name, var in names.items()}
    base = ct.models.MLModel(str(dense16), skip_model_load=True)
    for point in points:
        if point == "emb4-lin6" and not any(isinstance(m, nn.Embedding) for m in case.dense.modules()):
            continue
        path = work / f"ct_{point}.mlpackage"
        shutil.rmtree(path, ignore_errors=True)
        t = time.time()
        with quiet_backend("coremltools"):   # its progress bars and warnings
            palettized = cto.palettize_weights(base, ct_config(point, weights))
            palettized.save(str(path))
        row(f"coremltools {point}", path, time.time() - t,
            through_package(case, path, case.dense, names))
    return rows


def skm_row(case: Case, work: Path, bits: int, row: Callable) -> None:
    """coremltools' sensitive k-means on the dense model, stored as coremltools stores it."""
    import copy

    import coremltools as ct
    import coremltools.optimize.coreml as cto
    from coremltools.optimize.torch.palettization import SKMPalettizer, SKMPalettizerConfig

    from exporters import quiet_backend
    from ios_export import export_coreml

    images, labels = case.calibration
    t = time.time()
    config = SKMPalettizerConfig.from_dict({"global_config": {"n_bits": bits},
                                            "calibration_nsamples": len(images)})
    batches = [(images[i:i + 32], labels[i:i + 32]) for i in range(0, len(images), 32)]

    def loss_fn(model: nn.Module, data: tuple) -> torch.Tensor:
        return nn.functional.cross_entropy(model(data[0]), data[1])

    with quiet_backend("coremltools"):
        palettized = SKMPalettizer(copy.deepcopy(case.dense), config).compress(
            dataloader=batches, loss_fn=loss_fn).eval()
    dense16 = work / f"skm{bits}_fp16.mlpackage"
    path = work / f"ct_skm{bits}.mlpackage"
    for old in (dense16, path):
        shutil.rmtree(old, ignore_errors=True)
    export_coreml(palettized, case.example, dense16, method="none")
    names = weight_vars(dense16, palettized)
    with quiet_backend("coremltools"):
        stored = cto.palettize_weights(ct.models.MLModel(str(dense16), skip_model_load=True),
                                       cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(
                                           mode="unique")))
        stored.save(str(path))
    row(f"coremltools skm{bits}", path, time.time() - t,
        through_package(case, path, palettized, names))


def _decoded(path: Path, case: Case, stored: Any) -> dict[str, np.ndarray]:
    """The layers our package stores compressed (``stored``: a converter folds some, e.g. a
    position embedding read at constant positions), as decoded from it, each checked equal to
    the .dcz's."""
    from ios_export import verify_coreml

    state = case.model.state_dict()
    check = verify_coreml(path, {n: state[n].numpy() for n in stored})
    if not check.ok:
        raise SystemExit(f"{path}: a weight read back from the package differs from ours, or is "
                         "not stored compressed")
    return check.weights


def print_table(rows: list[dict]) -> None:
    dense = {r["model"]: r["bytes"] for r in rows if r["point"] == "dense fp32"}
    for r in rows:
        metric = ", ".join(f"{k} {v:.4f}" for k, v in r.items() if k.startswith(("accuracy", "cosine")))
        ratio = dense.get(r["model"], 0) / r["bytes"]
        print(f"{r['model']:<10} {r['point']:<34} {r['bytes']:>12,} "
              f"{r.get('zipped_bytes', 0):>12,} {ratio:7.2f}x  {metric}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", action="append", default=[], type=Path,
                   help="a LeNet run folder (model.dcz, checkpoints/0_baseline.pt)")
    p.add_argument("--minilm", action="append", default=[], type=Path,
                   help="a MiniLM model.dcz (bench/recipes/minilm_*.toml); the dense packages and "
                        "coremltools' points come with the first")
    p.add_argument("--ct", default=",".join(CT_POINTS), help="coremltools points (see above)")
    p.add_argument("--work", type=Path, default=Path("/tmp/bench_shipping_coreml"))
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    points = [x for x in args.ct.split(",") if x]
    unknown = [x for x in points if not re.fullmatch(r"kmeans[123468](-g\d+)?|emb4-lin6|skm[123468]", x)]
    if unknown:
        p.error(f"--ct: unknown {unknown}; choose from {CT_POINTS} (any kmeansN-gG)")
    cases = [(lambda r=r: lenet_case(r), True) for r in args.run]
    cases += [(lambda d=d: minilm_case(d, MINILM_REFERENCE[0] if MINILM_REFERENCE else None),
               i == 0) for i, d in enumerate(args.minilm)]
    rows = []
    for make, baselines in cases:
        case = make()
        rows += bench(case, args.work / case.name, points, baselines)
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
