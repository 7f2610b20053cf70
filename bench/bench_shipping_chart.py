"""The shipping chart: the task's metric through each artifact against the artifact's bytes, one
panel per model and format, every point of every tool (ours, coremltools, ai-edge-quantizer, the
dense float32/float16 exports, our .dcz for reference).

It draws what the two shipping benches measured; it measures nothing itself:

    python bench/bench_shipping_coreml.py --run runs/lenet300 ... --json coreml.json
    python bench/bench_shipping_tflite.py lenet300 --run runs/lenet300 ... --json tflite.json
    python bench/bench_shipping_chart.py coreml.json tflite.json [more.json ...] --out docs/shipping.png

Each JSON is either bench_shipping_coreml's list of rows ({"model", "point", "bytes", metric keys})
or bench_shipping_tflite's result ({"model", "metric", "rows": {label: {"bytes", metric keys}}}).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

METRICS = ("accuracy", "mean_cosine", "cosine_mean")   # the first one a row holds is drawn


def _tool(label: str) -> str:
    low = label.lower()
    if ".dcz" in low:
        return ".dcz (reference)"
    if low.startswith("dense"):
        return "dense"
    if "ours" in low:
        return "ours"
    if low.startswith(("kmeans", "emb4", "coremltools", "ct ")) or "palett" in low:
        return "coremltools"
    return "ai-edge-quantizer"


def points(doc: Any, fmt_hint: str) -> list[dict[str, Any]]:
    """(model, format, tool, label, bytes, metric name, value) rows of one bench's JSON."""
    out = []
    if isinstance(doc, dict) and "rows" in doc:          # bench_shipping_tflite
        items = [(doc.get("model", "?"), "tflite", label, row) for label, row in doc["rows"].items()]
    else:                                                 # bench_shipping_coreml
        items = [(row.get("model", "?"), fmt_hint, row.get("point", "?"), row) for row in doc]
    for model, fmt, label, row in items:
        if "skipped" in row or "bytes" not in row:
            continue
        name = next((m for m in METRICS if isinstance(row.get(m), (int, float))), None)
        if name is None:
            continue
        out.append({"model": model, "format": fmt, "tool": _tool(label), "label": label,
                    "bytes": int(row["bytes"]), "metric": name, "value": float(row[name])})
    return out


def draw(rows: list[dict[str, Any]], title: str) -> bytes:
    from dccore.plots import png, pyplot

    plt = pyplot()
    models = sorted({r["model"] for r in rows})
    formats = sorted({r["format"] for r in rows})
    fig, grid = plt.subplots(len(formats), len(models), figsize=(5.6 * len(models),
                                                                  4.4 * len(formats)),
                             squeeze=False)
    panels, axes = [], [[]]
    for i, fmt in enumerate(formats):
        for j, model in enumerate(models):
            if any((r["model"], r["format"]) == (model, fmt) for r in rows):
                panels.append((model, fmt))
                axes[0].append(grid[i][j])
            else:
                grid[i][j].set_axis_off()
    markers = {"ours": ("o", "tab:red"), "coremltools": ("s", "tab:blue"),
               "ai-edge-quantizer": ("^", "tab:green"), "dense": ("x", "black"),
               ".dcz (reference)": ("*", "tab:orange")}
    for ax, (model, fmt) in zip(axes[0], panels):
        mine = [r for r in rows if (r["model"], r["format"]) == (model, fmt)]
        for tool, (marker, color) in markers.items():
            pts = [r for r in mine if r["tool"] == tool]
            if pts:
                ax.scatter([p["bytes"] for p in pts], [p["value"] for p in pts], marker=marker,
                           color=color, label=tool, s=40)
                for p in pts:
                    ax.annotate(p["label"], (p["bytes"], p["value"]), fontsize=6,
                                xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("artifact bytes (log)")
        ax.set_ylabel(mine[0]["metric"] + " through the artifact")
        ax.set_title(f"{model}: {fmt}")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return png(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", nargs="+", type=Path,
                        help="bench_shipping_coreml / bench_shipping_tflite --json outputs")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--title", default="metric through the artifact against its bytes")
    parser.add_argument("--alias", action="append", default=[], metavar="NAME=MODEL",
                        help="draw a model the benches name differently in one panel, e.g. "
                             "all-MiniLM-L6-v2=minilm (repeatable)")
    args = parser.parse_args()
    alias = dict(a.split("=", 1) for a in args.alias if "=" in a)
    rows = []
    for path in args.json:
        doc = json.loads(path.read_text())
        rows += points(doc, "coreml")
    for r in rows:
        r["model"] = alias.get(r["model"], r["model"])
    if not rows:
        print("no points with bytes and a metric in the given files", file=sys.stderr)
        return 2
    from dccore.outputs import write_bytes_atomic

    write_bytes_atomic(args.out, draw(rows, args.title))
    print(f"wrote {args.out}: {len(rows)} points, "
          f"{len({(r['model'], r['format']) for r in rows})} panels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
