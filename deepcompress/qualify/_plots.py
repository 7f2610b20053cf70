"""The report's figures, as PNG bytes (matplotlib, Agg: no display needed).

- per-layer sparsity and bits (report.json ``layers``);
- each layer's weights before and after sharing, centroids marked (Han et al. 2016, Fig. 4);
- the metric against size across the stages (``stage_ratios`` and the per-stage metric);
- latency distribution per device (bench results' ``latencies_ms``);
- trends over runs or nights, with the regression threshold drawn.

Every function returns None when it has nothing to draw, so a report shows what exists.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from dccore.plots import png as _png, pyplot as _pyplot

from ._metric import BASELINE_STAGE, Metric

MAX_HISTOGRAM_LAYERS = 6     # the largest layers; a deep net's every layer would bury the page


def layers_plot(layers: Sequence[Mapping[str, Any]]) -> bytes | None:
    if not layers:
        return None
    plt = _pyplot()
    names = [row["name"] for row in layers]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, max(2.4, 0.45 * len(names) + 1)))
    y = range(len(names))
    ax1.barh(y, [100 * row["sparsity"] for row in layers], color="#4c72b0")
    ax1.set_yticks(list(y), names)
    ax1.invert_yaxis()
    ax1.set_xlim(0, 100)
    ax1.set_xlabel("weights pruned (%)")
    for i, row in enumerate(layers):
        ax1.text(min(100 * row["sparsity"] + 1, 88), i, f"{100 * row['sparsity']:.1f}%",
                 va="center", fontsize=8)
    bits = [row.get("bits") or 32 for row in layers]
    ax2.barh(y, bits, color="#dd8452")
    ax2.set_yticks(list(y), names)
    ax2.invert_yaxis()
    ax2.set_xlabel("bits per weight (32: not shared)")
    for i, b in enumerate(bits):
        ax2.text(b + 0.3, i, str(b), va="center", fontsize=8)
    ax2.set_xlim(0, max(bits) + 4)
    fig.suptitle("per layer: pruning and weight sharing")
    return _png(fig)


def _share_stage(run_dir: Path) -> str | None:
    from compression.pipeline import saved_recipe

    for i, stage in enumerate((saved_recipe(run_dir) or {}).get("stages") or []):
        if stage.get("kind") == "share":
            return stage.get("name") or f"{i + 1}_share"
    return None


def histograms_plot(run_dir: Path | None) -> bytes | None:
    """Weights of the dense baseline and of the model right after sharing, per layer, with the
    shared model's centroids marked. Checkpoints are read with ``weights_only=True``."""
    if run_dir is None:
        return None
    share = _share_stage(run_dir)
    before_path = run_dir / "checkpoints" / f"{BASELINE_STAGE}.pt"
    after_path = run_dir / "checkpoints" / f"{share}.pt" if share else None
    if after_path is None or not before_path.is_file() or not after_path.is_file():
        return None
    import torch

    before = torch.load(before_path, map_location="cpu", weights_only=True)
    after = torch.load(after_path, map_location="cpu", weights_only=True)
    centroids = after.get("centroids") or {}
    layers = [name for name in centroids if f"{name}.weight" in before.get("state_dict", {})]
    layers = sorted(layers, key=lambda n: -before["state_dict"][f"{n}.weight"].numel())
    layers = layers[:MAX_HISTOGRAM_LAYERS]
    if not layers:
        return None
    plt = _pyplot()
    cols = min(3, len(layers))
    rows = (len(layers) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax in axes.flat[len(layers):]:
        ax.axis("off")
    for ax, name in zip(axes.flat, layers):
        w0 = before["state_dict"][f"{name}.weight"].flatten().float().numpy()
        w1 = after["state_dict"][f"{name}.weight"].flatten().float().numpy()
        w1 = w1[w1 != 0]
        lo, hi = float(min(w0.min(), w1.min() if w1.size else 0)), float(max(w0.max(), w1.max() if w1.size else 0))
        bins = 120
        ax.hist(w0, bins=bins, range=(lo, hi), color="#999999", alpha=0.6, label="dense baseline")
        ax.hist(w1, bins=bins, range=(lo, hi), color="#4c72b0", alpha=0.8,
                label=f"after sharing ({w1.size:,} kept)")
        c = centroids[name].flatten().float().numpy()
        for value in c:
            ax.axvline(float(value), color="#c44e52", linewidth=0.7, alpha=0.9)
        ax.plot([], [], color="#c44e52", linewidth=0.7, label=f"{c.size} centroids")
        ax.set_yscale("log")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("weight value")
        ax.legend(fontsize=7, loc="upper right")
    fig.suptitle(f"weights before ({BASELINE_STAGE}) and after sharing ({share})")
    return _png(fig)


def metric_size_plot(report: Mapping[str, Any] | None, metric: Metric | None) -> bytes | None:
    """The metric against the bytes stored, dense first, then the paper's per-stage rows."""
    if not report or metric is None or not report.get("stage_ratios"):
        return None
    points = []   # (label, bytes, metric)
    if report.get("dense_bytes") and metric.baseline is not None:
        points.append(("dense fp32", report["dense_bytes"], metric.baseline))
    stage_names = list(metric.stages)
    for row in report["stage_ratios"]:
        stem = Path(str(row.get("file", ""))).stem
        value = metric.stages.get(stem)
        if value is None and stem == "model":   # the final file: the last stage's figure
            value = metric.final if metric.final is not None else (
                metric.stages[stage_names[-1]] if stage_names else None)
        if value is not None:
            points.append((row["stage"], row["bytes"], value))
    if len(points) < 2:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    ax.plot([p[1] for p in points], [p[2] for p in points], "o-", color="#4c72b0")
    top = max(p[2] for p in points)
    for i, (label, x, y) in enumerate(points):   # alternate sides: neighbours may sit close
        below = i % 2 == 1 or y == top            # the highest point's label would hit the title
        ax.annotate(f"{label}\n{x:,} B", (x, y), textcoords="offset points",
                    xytext=(6, -22 if below else 8), fontsize=7)
    ax.margins(x=0.12, y=0.15)
    ax.set_xscale("log")
    ax.set_xlabel("bytes stored (log scale)")
    ax.set_ylabel(metric.name)
    ax.invert_xaxis()
    ax.set_title(f"{metric.name} against size, stage by stage")
    ax.grid(alpha=0.3)
    return _png(fig)


def latency_plot(results: Sequence[Mapping[str, Any]]) -> bytes | None:
    """One box with its points per (artifact, device) that reported every run's latency."""
    series = [(f"{r.get('model') or Path(r['artifact']).name}\non {where(r)}", r["latencies_ms"])
              for r in results
              if r.get("ok") and r.get("latencies_ms")]
    if not series:
        return None
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.9 * len(series)))
    ax.boxplot([s[1] for s in series], vert=False, showfliers=False)
    for i, (_label, values) in enumerate(series, start=1):
        jitter = [i + 0.12 * ((k * 7919) % 13 - 6) / 6 for k in range(len(values))]
        ax.plot(values, jitter, ".", color="#4c72b0", alpha=0.35, markersize=3)
    ax.set_yticks(range(1, len(series) + 1), [s[0] for s in series], fontsize=8)
    # one preempted run must not squash every box: the axis ends past the 98th percentile
    every = np.concatenate([np.asarray(s[1], dtype=float) for s in series])
    right = float(np.percentile(every, 98)) * 1.15
    beyond = int((every > right).sum())
    if beyond:
        ax.set_xlim(left=float(every.min()) * 0.9, right=right)
    ax.set_xlabel("latency per run (ms)" + (f"; {beyond} slower run(s) beyond the axis" if beyond else ""))
    ax.set_title("latency distribution per device")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def where(result: Mapping[str, Any]) -> str:
    """The device as the run names it: a nightly's slot, else its serial or SPEC."""
    device = result.get("device") or {}
    return str(result.get("slot") or device.get("serial") or device.get("spec") or "?")


def trend_plot(title: str, panels: Sequence[Mapping[str, Any]]) -> bytes | None:
    """Panels of ``{"label", "unit", "x": [...], "y": [...], "threshold": [...|None],
    "failed": [bool]}``, one under the other, sharing the x axis (runs or nights)."""
    panels = [p for p in panels if p.get("y")]
    if not panels:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.1 * len(panels) + 0.6), sharex=True,
                             squeeze=False)
    for ax, p in zip(axes[:, 0], panels):
        xs = list(range(len(p["x"])))
        ax.plot(xs, p["y"], "o-", color="#4c72b0", markersize=4, label=p["label"])
        bad = [(x, y) for x, y, f in zip(xs, p["y"], p.get("failed") or []) if f]
        if bad:
            ax.plot([b[0] for b in bad], [b[1] for b in bad], "o", color="#c44e52", markersize=7,
                    label="flagged")
        thr = p.get("threshold") or []
        if any(t is not None for t in thr):
            ax.step(xs, [t if t is not None else float("nan") for t in thr], where="mid",
                    color="#c44e52", linestyle="--", linewidth=1, label="regression threshold")
        ax.set_ylabel(f"{p['label']}" + (f" ({p['unit']})" if p.get("unit") else ""), fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    labels = [str(x) for x in panels[0]["x"]]
    step = max(1, len(labels) // 12)
    axes[-1, 0].set_xticks(list(range(0, len(labels), step)), labels[::step], rotation=30,
                           fontsize=7, ha="right")
    fig.suptitle(title)
    return _png(fig)
