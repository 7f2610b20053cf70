"""One self-contained HTML file per qualification or night: the verdict, every gate, the
artifacts, the devices' figures and the plots, embedded as base64 PNGs (no script, no link out:
it opens from a CI artifact store or an e-mail as it is)."""
from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from dccore import html
from dccore.html import e as _e, img as _img, table as _table

from . import _plots
from ._gates import FIGURES, fmt_value
from ._outputs import gate_name

TREND_FIGURES = ("latency_p50_ms", "size_bytes", "metric")
TREND_RUNS = 60


def _page(title: str, ok: bool, verdict: str, body: Iterable[str], meta: str) -> bytes:
    stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    status = "pass" if ok else "fail"
    top = (f"<h1>{_e(title)}</h1><div class=meta>{_e(meta)} &middot; written {stamp}</div>"
           f'<div class="verdict {status}">{"PASS" if ok else "FAIL"}: {_e(verdict)}</div>')
    return html.page(title, [top, *body], generator="qualify")


def gates_table(gates: Sequence[Mapping[str, Any]]) -> str:
    order = sorted(gates, key=lambda g: (g["ok"], bool(g.get("skipped"))))
    rows = []
    for g in order:
        unit = FIGURES.get(g["figure"], ("",))[0]
        result = "skipped: " + g["skipped"] if g.get("skipped") else "ok" if g["ok"] else \
            "FAIL " + (g.get("message") or "")
        rows.append(((gate_name(g["gate"], g["figure"]), g["subject"], fmt_value(g.get("actual"), unit),
                      fmt_value(g.get("limit"), unit), fmt_value(g.get("baseline"), unit), result),
                     "skip" if g.get("skipped") else "" if g["ok"] else "bad"))
    return _table(("gate", "subject", "actual", "limit", "baseline", "result"), rows, (2, 3, 4))


def bench_table(results: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for r in results:
        name, where = r.get("model") or Path(str(r.get("artifact"))).name, _plots.where(r)
        if not r.get("ok"):
            rows.append(((name, where, "-", "-", "-", "-", "-", "FAIL " + str(r.get("error"))), "bad"))
            continue
        lat = r["latency_ms"]
        acc = r.get("accuracy")
        rows.append(((name, where, r.get("runs"), fmt_value(lat.get("p50"), "ms"),
                      fmt_value(lat.get("p90"), "ms"), fmt_value(r.get("model_memory_mb"), "MB"),
                      fmt_value(r.get("peak_memory_mb"), "MB"),
                      f"accuracy {acc['accuracy']:.4f}" if acc else
                      f"{(r.get('device') or {}).get('model', '')}"), ""))
    return _table(("artifact", "device", "runs", "p50", "p90", "model memory",
                   "process peak memory", "note"), rows, (2, 3, 4, 5, 6))


# ----------------------------------------------------------------------------------------------
# trends from the history

def trend_panels(series: Sequence[Mapping[str, Any]], label: Any, *,
                 device: str | None = None) -> list[dict[str, Any]]:
    """Per figure: its value in each run, the regression threshold that run was judged by, and
    whether a gate on it failed. ``device``: only that device's figures (sizes and the metric
    have none and are always shown)."""
    keys: list[tuple] = []
    for run in series:
        for m in run["metrics"]:
            if m["figure"] not in TREND_FIGURES or (device is not None and m["device"] not in (None, device)):
                continue
            if m["figure"] == "size_bytes" and m["format"] == "dcz" and any(
                    mm["figure"] == "size_bytes" and mm["format"] not in ("dcz", None)
                    for mm in run["metrics"]):
                continue   # the exported artifact's size is the one that ships
            key = (m["figure"], m["format"], m["device"], m["task_metric"])
            if key not in keys:
                keys.append(key)
    keys.sort(key=lambda k: TREND_FIGURES.index(k[0]))
    panels = []
    for key in keys:
        ys, thr, failed = [], [], []
        for run in series:
            m = next((m for m in run["metrics"]
                      if (m["figure"], m["format"], m["device"], m["task_metric"]) == key), None)
            gates = [g for g in run.get("gates", [])
                     if (g["figure"], g["format"], g["device"]) == key[:3]]
            ys.append(m["value"] if m else math.nan)
            limit = next((g["limit"] for g in gates
                          if g["gate"] in ("regression", "rolling") and g["limit"] is not None), None)
            thr.append(limit)
            failed.append(any(not g["ok"] for g in gates))
        figure, fmt, dev, task = key
        name = task if figure == "metric" else figure
        where = " ".join(p for p in (fmt, f"on {dev}" if dev else "") if p)
        panels.append({"label": f"{name} {where}".strip(), "unit": FIGURES[figure][0],
                       "x": [label(run) for run in series], "y": ys, "threshold": thr,
                       "failed": failed})
    return panels


# ----------------------------------------------------------------------------------------------

def qualify_page(results: Mapping[str, Any], compressed: Any, history: Any, name: str) -> bytes:
    """The qualification's page (written with its JUnit and results by ``write_outputs``)."""
    report = compressed.report
    from ._metric import Metric

    metric = Metric(**results["metric"]) if results.get("metric") else None
    bench = [r for rs in results["bench"].values() for r in rs]
    series = history.series(kind="qualify", name=name, limit=TREND_RUNS)
    body = [f"<h2>Gates</h2>{gates_table(results['gates'])}"]
    measured = results.get("measured_metric") or {}

    def measured_cell(fmt: str) -> str:
        m = measured.get(fmt)
        if not m or m.get("value") is None:
            return "not measured" + (f": {m['note']}" if m and m.get("note") else "")
        return f"{m['name']} {fmt_value(m['value'], '')}" + (f" ({m['on']})" if m.get("on") else "")

    body.append("<h2>Artifacts</h2>" + _table(
        ("artifact", "bytes", "zipped", "sha256", "metric, measured through it", "validation"),
        [((n, f"{a['bytes']:,}", f"{a['zipped_bytes']:,}", a["sha256"][:16], measured_cell(n),
           "-" if n == "dcz" else ("ok" if a["ok"] else "FAIL") + (" (cached)" if a["cached"] else "")),
          "" if a["ok"] else "bad") for n, a in results["artifacts"].items()], (1, 2)))
    if metric is not None:
        body.append(f"<p>{_e(metric.name)}: compressed {fmt_value(metric.final, '')}"
                    + (f", dense {fmt_value(metric.baseline, '')}" if metric.baseline is not None else "")
                    + f" &middot; compression: {_e(results['compress']['how'])}</p>")
    claimed = results.get("claimed_metric")
    if claimed:
        body.append(f"<p>The file's own claim (shown, never gated): {_e(claimed.get('name'))} "
                    f"{fmt_value(claimed.get('final'), '')}</p>")
    body.append(f"<h2>Devices</h2>{bench_table(bench)}")
    body.append(_img(_plots.latency_plot(bench), "latency of every timed run, per device"))
    body.append("<h2>Compression</h2>")
    if report:
        body.append(_img(_plots.layers_plot(report.get("layers") or []),
                         "per layer: share of weights pruned, and bits per kept weight"))
        body.append(_img(_plots.metric_size_plot(report, metric),
                         f"{metric.name if metric else 'metric'} against bytes stored, stage by stage"))
    body.append(_img(_plots.histograms_plot(compressed.run_dir),
                     "weight histograms of the dense baseline and after weight sharing (log count); "
                     "red lines: the shared centroids"))
    body.append("<h2>Trends</h2>")
    body.append(_img(_plots.trend_plot(f"{name}: the last {len(series)} qualification runs",
                                       trend_panels(series, lambda r: f"#{r['id']}")),
                     "each figure over the runs of this qualification; dashed: the regression "
                     "threshold it was judged by; red: a failed gate"))
    phases = ", ".join(f"{k} {v:.1f} s" for k, v in results["phases"].items())
    meta = (f"run {results['run_id']} · git {_short(results['git_revision'])} · recipe "
            f"{str(results['recipe_sha256'])[:12]} · {results['host']} · {phases}")
    return _page(f"deepcompress qualify: {name}", results["ok"], results["verdict"], body, meta)


def nightly_page(summary: Mapping[str, Any], history: Any) -> bytes:
    """The night's page (written with its JUnit and results by ``write_outputs``)."""
    matrix, night = summary["matrix"], summary["night"]
    runs = history.runs(kind="nightly", name=matrix, night=night, limit=None)
    gates = []
    for run in runs:
        detail = history.run(run["id"])
        gates += [{**g, "subject": f"{run['model']} / {run['device_slot']}: {g['subject']}"}
                  for g in detail["gates"]]
    body = [f"<h2>Cells of {_e(night)}</h2>" + _table(
        ("model", "device", "state", "attempts", "run", "verdict"),
        [((c["model"], c["device"], c["state"], c["attempts"], c.get("run_id") or "-",
           c.get("verdict") or c.get("error") or ""), "" if c.get("ok") else "bad")
         for c in summary["cells"]], (3, 4))]
    body.append(f"<h2>Gates</h2>{gates_table(gates)}")
    bench = summary.get("bench") or []
    if bench:
        body.append(f"<h2>Devices (this host)</h2>{bench_table(bench)}")
        body.append(_img(_plots.latency_plot(bench), "latency of every timed run, per device"))
    body.append("<h2>Trends</h2>")
    for model in summary["models"]:
        series = history.series(kind="nightly", name=matrix, model=model, limit=TREND_RUNS * 4)
        for slot in summary["devices"]:
            cell_series = [r for r in series if r["device_slot"] == slot]
            if not cell_series:
                continue
            panels = trend_panels(cell_series, lambda r: r["night"], device=slot)
            body.append(_img(_plots.trend_plot(f"{model} on {slot}", panels),
                             f"{model} on {slot}: each night's figure; dashed: the rolling "
                             "baseline's threshold; red: flagged"))
    return _page(f"deepcompress nightly: {matrix} {night}", summary["ok"], summary["verdict"],
                 body, f"history {summary['history']} · git {_short(summary['git_revision'])}")


def _short(revision: str) -> str:
    """A commit as people quote it (12 hex digits), keeping a ``+dirty`` mark."""
    commit, plus, rest = revision.partition("+")
    return commit[:12] + plus + rest
