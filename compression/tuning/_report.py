"""The sensitivity report: one PNG per layer (metric against sparsity and against bits, the
saturation points marked), one summary PNG, and an HTML page holding them all (images embedded,
nothing linked out), drawn through dccore.plots (matplotlib on Agg, imported on first use)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from dccore import html
from dccore.outputs import write_bytes_atomic
from dccore.plots import png as _png, pyplot as _pyplot


def _scale(curves: Mapping[str, Any]) -> tuple[float, str]:
    """Accuracy-like metrics are drawn in percent."""
    return (100.0, "%") if curves["metric"] == "accuracy" else (1.0, "")


def layer_plot(name: str, entry: Mapping[str, Any], curves: Mapping[str, Any]) -> bytes:
    plt = _pyplot()
    k, unit = _scale(curves)
    base = curves["baseline"]["validation"] * k
    tol = curves["settings"]["tolerance"] * k
    sign = 1 if curves["higher_is_better"] else -1
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax in (ax1, ax2):
        ax.axhline(base, color="#888", lw=1, label="dense baseline")
        ax.axhspan(base - sign * tol, base, color="#ccc", alpha=0.4, label="tolerance")
        ax.set_ylabel(f"validation {curves['metric']}{' (' + unit + ')' if unit else ''}")
    points = entry.get("sparsity")
    if points:
        xs = [100 * p["sparsity"] for p in points]
        ax1.plot(xs, [p["metric"] * k for p in points], "o-", color="#4c72b0")
        sat = entry.get("saturation_sparsity")
        if sat is not None:
            ax1.axvline(100 * sat, color="#c44e52", ls="--", lw=1.2,
                        label=f"saturation {100 * sat:.3g}%")
        ax1.set_xlabel("weights pruned (%)")
        ax1.legend(fontsize=8, loc="lower left")
    else:
        ax1.text(0.5, 0.5, "not pruned by the recipe", ha="center", transform=ax1.transAxes)
    ax1.set_title(f"{name}: metric vs sparsity")
    bits = entry.get("bits")
    grid = entry.get("bits_grid")
    table = bool(grid) and len(grid["sparsity"]) > 1
    if table:                                   # one faint line per sparsity of the path
        cmap = plt.get_cmap("viridis")
        n = len(grid["sparsity"])
        for r, (s, metrics) in enumerate(zip(grid["sparsity"], grid["metric"])):
            if s != bits["at_sparsity"]:
                ax2.plot(grid["bits"], [m * k for m in metrics], ".-", lw=0.8, ms=3,
                         alpha=0.6, color=cmap(r / max(n - 1, 1)), label=f"at {100 * s:.3g}%")
    if bits:
        xs = [p["bits"] for p in bits["points"]]
        ax2.plot(xs, [p["metric"] * k for p in bits["points"]], "o-", color="#dd8452",
                 label=f"at {100 * bits['at_sparsity']:.3g}% (saturation)")
        sat = entry.get("saturation_bits")
        if sat is not None:
            ax2.axvline(sat, color="#c44e52", ls="--", lw=1.2, label=f"saturation {sat} bits")
        ax2.set_xticks(xs)
        ax2.invert_xaxis()
        ax2.set_xlabel("bits" if table else f"bits (at {100 * bits['at_sparsity']:.3g}% pruned)")
        ax2.legend(fontsize=6 if table and len(grid["sparsity"]) > 4 else 8, loc="lower left")
    else:
        ax2.text(0.5, 0.5, "not shared by the recipe", ha="center", transform=ax2.transAxes)
    ax2.set_title(f"{name}: metric vs bits")
    return _png(fig)


def summary_plot(curves: Mapping[str, Any]) -> bytes:
    """Every layer's drop against sparsity and against bits on one figure."""
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, entry in curves["layers"].items():
        if entry.get("sparsity"):
            pts = entry["sparsity"]
            line, = ax1.plot([100 * p["sparsity"] for p in pts],
                             [-100 * p["drop"] for p in pts], "o-", ms=3,
                             label=f"{name} ({entry['parameters']:,})")
            sat = entry.get("saturation_sparsity")
            if sat:
                ax1.plot([100 * sat], [-100 * next(p["drop"] for p in pts
                                                   if p["sparsity"] == sat)],
                         "*", ms=12, color=line.get_color())
        if entry.get("bits"):
            pts = entry["bits"]["points"]
            line, = ax2.plot([p["bits"] for p in pts], [-100 * p["drop"] for p in pts], "o-",
                             ms=3, label=name)
            sat = entry.get("saturation_bits")
            if sat is not None:
                ax2.plot([sat], [-100 * next(p["drop"] for p in pts if p["bits"] == sat)], "*",
                         ms=12, color=line.get_color())
    tol = -100 * curves["settings"]["tolerance"]
    for ax in (ax1, ax2):
        ax.axhline(0, color="#888", lw=1)
        ax.axhline(tol, color="#c44e52", ls=":", lw=1)
        ax.set_ylabel("change vs dense (points)")
        ax.legend(fontsize=7)
    ax1.set_xlabel("weights pruned (%)")
    ax1.set_title("each layer alone: sparsity (star: saturation)")
    ax2.invert_xaxis()
    ax2.set_xlabel("bits")
    ax2.set_title("each layer alone: bits")
    return _png(fig)


def _table(curves: Mapping[str, Any]) -> str:
    rows = []
    for name, e in curves["layers"].items():
        sat_s, sat_b = e.get("saturation_sparsity"), e.get("saturation_bits")
        rows.append(((name, e["type"], f"{e['parameters']:,}",
                      f"{100 * sat_s:.3g}%" if e.get("sparsity") else "-",
                      sat_b if sat_b is not None else "-"), ""))
    return html.table(("layer", "type", "weights", "saturation sparsity", "saturation bits"),
                      rows, numeric=(2, 3, 4))


def write_report(curves: Mapping[str, Any], out: Path) -> dict[str, str]:
    """PNG files under ``out/plots`` and ``out/report.html``; returns {what: path}."""
    written: dict[str, str] = {}
    figures = []
    summary = summary_plot(curves)
    write_bytes_atomic(out / "plots" / "summary.png", summary)
    written["summary"] = str(out / "plots" / "summary.png")
    figures.append(html.img(summary, "every layer alone: change of the validation metric"))
    for name, entry in curves["layers"].items():
        png = layer_plot(name, entry, curves)
        path = out / "plots" / f"{_file_name(name)}.png"
        write_bytes_atomic(path, png)
        written[name] = str(path)
        figures.append(html.img(png, name))
    s = curves["settings"]
    retrain = (f"{s['retrain_epochs']} retraining epoch(s) per point"
               + (f" on {curves['train_examples']:,} training examples"
                  if s.get("train_examples") else "")) if s["retrain_epochs"] else \
        "no retraining (one-shot)"
    k, unit = _scale(curves)
    intro = f"""<h1>Sensitivity of {html.e(curves['recipe'])}</h1>
<p>Each compressible layer alone (the others dense), scored on the held-out validation split
({curves['validation_examples']:,} examples; dense baseline
{curves['baseline']['validation'] * k:.2f}{unit} {html.e(curves['metric'])}), with
{html.e(retrain)}. A saturation point is the last grid point whose drop stays within
{100 * s['tolerance']:.3g} points. Bits are measured at each sparsity of the pruning path that
costs at most {100 * s.get('grid_drop', 0):.3g} points (one line each on the right-hand plots):
few bits cost more on a pruned layer. Measured in {curves['seconds']:.0f} s.</p>"""
    page = html.page(f"sensitivity: {curves['recipe']}", [intro, _table(curves), *figures],
                     generator="sensitivity")
    write_bytes_atomic(out / "report.html", page)
    written["html"] = str(out / "report.html")
    return written


def _file_name(layer: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in layer) or "layer"
