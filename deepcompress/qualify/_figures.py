"""From what the phases produced (exports, the metric, bench results) to figures and gates."""
from __future__ import annotations

from typing import Any, Iterable, Mapping

from ._config import Budgets
from ._gates import Figure, Gate, budget_gates, failed_gate, fmt_value, passed_gate
from ._measures import METRICS
from ._provenance import device_fingerprint
from ._work import Exports


def judge(exports: Exports, budgets: Budgets, bench: Mapping[str, list[dict[str, Any]]], *,
          evaluates: bool) -> tuple[list[Figure], list[Gate]]:
    """Every figure of a run (its artifacts, the metric, each device's ``bench`` results) and
    the gates judging them against ``budgets``; ``evaluates``: the bench measures accuracy."""
    figures = artifact_figures(exports) + metric_figures(exports)
    figures += [f for spec, results in bench.items() for r in results
                for f in device_figures(r, spec)]
    gates = export_gates(exports) + metric_gate_if_missing(exports, budgets)
    gates += budget_gates(figures, budgets)
    for spec, results in bench.items():
        gates += device_gates(spec, results, budgets, evaluates=evaluates)
    return figures, gates


def artifact_format(result: dict[str, Any]) -> str | None:
    """The export format of a bench result's artifact: the exporter writing its suffix."""
    from exporters import EXPORTERS

    name = str(result.get("artifact", ""))
    return next((fmt for fmt, e in EXPORTERS.items() if name.endswith(e.suffix)), None)


def _read(on: str, source: Any) -> list[tuple[str, float]]:
    """(figure, value) of every metric measured on ``on`` that ``source`` holds."""
    return [(name, value) for name, m in METRICS.items() if m.on == on and m.read is not None
            for value in (m.read(source),) if value is not None]


def artifact_figures(exports: Exports) -> list[Figure]:
    return [Figure(figure, value, format=name, artifact_sha256=e.sha256)
            for name, e in exports.artifacts.items() for figure, value in _read("artifact", e)]


def metric_figures(exports: Exports) -> list[Figure]:
    """The task's metric of each shipped format, as measured (never a file's own claim)."""
    return [Figure("metric", m.value, format=fmt, task_metric=m.name,
                   higher_is_better=m.higher_is_better,
                   artifact_sha256=exports.artifacts[fmt].sha256 if fmt in exports.artifacts else None)
            for fmt, m in exports.measured.items() if m.value is not None]


def device_info(result: dict[str, Any]) -> dict[str, Any] | None:
    """The device's description with its fingerprint, from a successful bench result."""
    info = result.get("device")
    if not result.get("ok") or not isinstance(info, dict) or "kind" not in info:
        return None
    return {**info, "fingerprint": device_fingerprint(info)}


def device_figures(result: dict[str, Any], device: str) -> list[Figure]:
    """Every metric a bench result holds (p50, p90, the model's own memory, the runner process's
    peak), and (with bench eval) the accuracy measured on the device."""
    info = device_info(result)
    if info is None:
        return []
    common = {"format": artifact_format(result), "device": device, "fingerprint": info["fingerprint"],
              "artifact_sha256": result.get("artifact_sha256")}
    out = [Figure(name, float(value), **common) for name, value in _read("device", result)]
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


def metric_gate_if_missing(exports: Exports, budgets: Budgets) -> list[Gate]:
    """A metric floor with no measured metric to check is a failure, never a pass; a format
    whose metric could not be measured here (Core ML off macOS) has its gate skipped, saying
    why, while the formats that were measured are gated."""
    limit = budgets.min_metric()
    if limit is None:
        return []
    unmeasured = {fmt: m for fmt, m in exports.measured.items() if m.value is None}
    if len(unmeasured) == len(exports.measured):
        why = "; ".join(f"{fmt}: {m.note}" for fmt, m in unmeasured.items()) or "no examples"
        return [failed_gate("min_metric", "metric", "model", f"no metric measured ({why})",
                            limit=limit)]
    return [Gate(gate="min_metric", figure="metric", subject=f"{m.name} {fmt}", ok=True,
                 limit=limit, skipped=m.note, format=fmt,
                 artifact_sha256=exports.artifacts[fmt].sha256 if fmt in exports.artifacts else None)
            for fmt, m in unmeasured.items()]


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
            figure, m = next((f, m) for f, m in METRICS.items()
                             if m.budget == key and m.on == "device")
            gates.append(failed_gate(key, figure, subject,
                                     f"{subject}: {figure} not measured (device failed); limit "
                                     f"{fmt_value(limit, m.unit)}", limit=limit,
                                     format=fmt, device=device))
    return gates
