"""From what the phases produced (exports, the metric, bench results) to figures and gates."""
from __future__ import annotations

from typing import Any, Iterable

from ._config import Budgets
from ._gates import BUDGET_FOR, FIGURES, Figure, Gate, failed_gate, fmt_value, passed_gate
from ._metric import Metric
from ._provenance import device_fingerprint
from ._work import Exports


def artifact_format(result: dict[str, Any]) -> str | None:
    """The export format of a bench result's artifact, from its suffix."""
    name = str(result.get("artifact", ""))
    return "coreml" if name.endswith(".mlpackage") else "tflite" if name.endswith(".tflite") else None


def artifact_figures(exports: Exports) -> list[Figure]:
    out = []
    for name, e in exports.artifacts.items():
        out.append(Figure("size_bytes", e.bytes, format=name, artifact_sha256=e.sha256))
        out.append(Figure("zipped_bytes", e.zipped_bytes, format=name, artifact_sha256=e.sha256))
    return out


def metric_figures(metric: Metric | None) -> list[Figure]:
    if metric is None or metric.final is None:
        return []
    return [Figure("metric", metric.final, task_metric=metric.name,
                   higher_is_better=metric.higher_is_better)]


def device_info(result: dict[str, Any]) -> dict[str, Any] | None:
    """The device's description with its fingerprint, from a successful bench result."""
    info = result.get("device")
    if not result.get("ok") or not isinstance(info, dict) or "kind" not in info:
        return None
    return {**info, "fingerprint": device_fingerprint(info)}


def device_figures(result: dict[str, Any], device: str) -> list[Figure]:
    """p50, p90, peak memory and (with bench eval) the accuracy measured on the device."""
    info = device_info(result)
    if info is None:
        return []
    common = {"format": artifact_format(result), "device": device, "fingerprint": info["fingerprint"],
              "artifact_sha256": result.get("artifact_sha256")}
    lat = result.get("latency_ms") or {}
    out = [Figure(name, float(value), **common) for name, value in
           (("latency_p50_ms", lat.get("p50")), ("latency_p90_ms", lat.get("p90")),
            ("peak_memory_mb", result.get("peak_memory_mb"))) if value is not None]
    acc = result.get("accuracy")
    if isinstance(acc, dict) and acc.get("accuracy") is not None:
        out.append(Figure("device_metric", float(acc["accuracy"]), task_metric="accuracy",
                          higher_is_better=True, **common))
    return out


def export_gates(exports: Exports) -> list[Gate]:
    """Each export validated against the PyTorch model (the exporter's own verdict)."""
    gates = []
    for name, e in exports.artifacts.items():
        if name == "dcz":
            continue
        r = e.result
        detail = ""
        if "accuracy" in r:
            detail = (f"accuracy {r['accuracy']:.4f} vs PyTorch {r['torch_accuracy']:.4f} "
                      f"(tolerance {r.get('tolerance', 0):g})")
        elif "min_cosine" in r:
            detail = f"min cosine {r['min_cosine']:.6f} (required {r.get('min_cosine_required')})"
        elif "weights_match" in r:
            detail = f"weights decode exactly: {r['weights_match']}"
        kw = {"format": name, "artifact_sha256": e.sha256}
        if e.ok:
            gates.append(passed_gate("export_valid", "export", name, message=detail, **kw))
        else:
            gates.append(failed_gate("export_valid", "export", name,
                                     f"{name} does not match the PyTorch model: {detail or 'see results.json'}",
                                     **kw))
    return gates


def metric_gate_if_missing(metric: Metric | None, budgets: Budgets) -> list[Gate]:
    """A metric floor with no metric to check is a failure, never a pass."""
    if budgets.min_metric() is not None and (metric is None or metric.final is None):
        return [failed_gate("min_metric", "metric", "model",
                            "no metric to check: the report records none and the examples have "
                            "no labels", limit=budgets.min_metric())]
    return []


def device_gates(device: str, results: Iterable[dict[str, Any]], budgets: Budgets, *,
                 evaluates: bool = False) -> list[Gate]:
    """Whether the device answered, per artifact; an unreachable device fails its own budget
    gates (not measured), never the others'. ``evaluates``: the bench measures accuracy."""
    gates = []
    for r in results:
        fmt = artifact_format(r)
        subject = f"{fmt} on {device}"
        if r.get("ok"):
            info = device_info(r)
            gates.append(passed_gate("reachable", "device", subject, format=fmt, device=device,
                                     fingerprint=info["fingerprint"] if info else None,
                                     artifact_sha256=r.get("artifact_sha256")))
            continue
        error = str(r.get("error") or "failed")
        gates.append(failed_gate("reachable", "device", subject, f"{subject}: {error}",
                                 format=fmt, device=device))
        for key, limit in budgets.for_device(device).items():
            if key == "min_metric" and not evaluates:
                continue
            figure = next(f for f, k in BUDGET_FOR.items() if k == key and f != "metric")
            gates.append(failed_gate(key, figure, subject,
                                     f"{subject}: {figure} not measured (device failed); limit "
                                     f"{fmt_value(limit, FIGURES[figure][0])}", limit=limit,
                                     format=fmt, device=device))
    return gates
