"""``qualify``: compress, export, bench every device, gate, record, report.

Everything that can be refused is refused before any work: the config (unknown keys, bad values,
devices of no known form, a device that runs none of the exported formats), the output folder and
every file in it, and the history database (corrupt, newer, unreachable). Then the phases run
(each reusing what is cached), every figure is judged, and the run is recorded in the history in the
transaction that writes ``report.html``, ``junit.xml`` and ``results.json`` (together: all three
or none, and no run recorded without them).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from dccore.errors import UsageError

from . import _work
from ._config import QualifyConfig
from ._figures import device_info, judge
from ._gates import Gate, regression_gates, verdict
from ._outputs import Folder, junit_xml, write_outputs
from ._provenance import git_revision, host_name
from .history import ArtifactRow, History, RunRecord, open_history
from .history._store import now


@dataclass
class QualifyResult:
    ok: bool
    verdict: str
    run_id: int
    results: dict[str, Any]
    gates: list[Gate] = field(default_factory=list)


def check_devices(devices: tuple[str, ...], formats: tuple[str, ...]) -> None:
    """Each device must run at least one artifact of the config (before any work)."""
    from device_harness import check_spec, formats_for

    for spec in devices:
        check_spec(spec)
        runs = formats_for(spec)
        if not set(runs) & set(formats):
            raise UsageError(f"device {spec!r} runs {' or '.join(runs) or 'no'} artifacts; the "
                             f"config exports only {', '.join(formats)}: add a format or drop "
                             "the device")


def qualify(config: QualifyConfig, out: Path, *, db: str | None = None, ui: Any = None,
            log: Callable[[str], None] = lambda m: None) -> QualifyResult:
    started, t0 = now(), time.perf_counter()
    folder = Folder(out, "qualify")
    # -- before any work -------------------------------------------------------------------------
    check_devices(config.bench.devices, config.export.formats)
    _work.check_metric_examples(config.model, config.export, config.budgets.min_metric())
    plan = _work.plan(config.model)
    folder.check(work=("run", "artifacts"))
    run_dir = out / "run"
    if config.model.recipe is not None:   # a run folder of ours (marked), or refused untouched
        from ..runs import check_run_folder

        check_run_folder(run_dir, force=True, resuming=True, claim=False)
    folder.claim()
    history = open_history(db or config.history.db or str(folder.history))
    try:
        return _qualify(config, folder, plan, history, started, t0, ui, log)
    finally:
        history.close()


def _qualify(config: QualifyConfig, folder: Folder, plan: _work.WorkPlan, history: History,
             started: Any, t0: float, ui: Any, log: Callable[[str], None]) -> QualifyResult:
    out = folder.root
    phases: dict[str, float] = {}
    # -- compress, export, bench ------------------------------------------------------------------
    progress = ui.progress if ui is not None and getattr(ui, "enabled", False) else None
    compressed = _work.compress(plan, out / "run", progress=progress, log=log)
    phases["compress"] = compressed.seconds
    (out / "artifacts").mkdir(exist_ok=True)
    exports = _work.export_all(config.export, compressed, out / "artifacts", log=log)
    phases["export"] = exports.seconds
    metric = exports.metric

    t_bench = time.perf_counter()
    data = _work.eval_data(config.bench, compressed, exports)
    bench: dict[str, list[dict]] = {}
    for spec in config.bench.devices:
        artifacts = _work.artifacts_for(spec, exports)
        log(f"bench: {', '.join(a.path.name for a in artifacts)} on {spec} "
            f"({config.bench.runs} runs)")
        bench[spec] = _work.bench_device(
            spec, artifacts, config.bench, data=data,
            on_result=lambda r, s=spec: log(f"bench: {Path(r['artifact']).name} on {s}: " + (
                f"p50 {r['latency_ms']['p50']:.4g} ms" if r.get("ok") else f"failed: {r.get('error')}")))
    phases["bench"] = time.perf_counter() - t_bench

    # -- figures and gates ------------------------------------------------------------------------
    figures, gates = judge(exports, config.budgets, bench, evaluates=data is not None)
    devices_seen = {info["fingerprint"]: info for results in bench.values() for r in results
                    for info in (device_info(r),) if info is not None}
    previous = history.last_passing("qualify", config.name)
    gates += regression_gates(figures, previous[1] if previous else None,
                              config.budgets.regression, previous[0] if previous else None)
    ok, line = verdict(gates)

    # -- record, and write the files --------------------------------------------------------------
    results: dict[str, Any] = {
        "kind": "deepcompress-qualify", "ok": ok, "verdict": line, "name": config.name,
        "config": config.to_dict(), "history": history.where,
        "git_revision": git_revision(), "recipe_sha256": compressed.recipe_sha256,
        "host": host_name(), "started_at": started.isoformat(timespec="seconds"),
        "compress": {"how": compressed.how, "dcz": str(compressed.dcz),
                     "run_dir": str(compressed.run_dir) if compressed.run_dir else None},
        "metric": metric.to_dict() if metric else None,
        "measured_metric": {f: m.to_dict() for f, m in exports.measured.items()},
        "claimed_metric": compressed.claimed.to_dict() if compressed.claimed else None,
        "artifacts": {n: {"path": str(e.path), "sha256": e.sha256, "bytes": e.bytes,
                          "zipped_bytes": e.zipped_bytes, "ok": e.ok, "cached": e.cached,
                          **({"validation": e.result} if n != "dcz" else {})}
                      for n, e in exports.artifacts.items()},
        "examples": exports.examples,
        "bench": {spec: results for spec, results in bench.items()},
        "figures": [f.to_dict() for f in figures],
        "gates": [g.to_dict() for g in gates],
        "previous_passing_run": previous[0] if previous else None,
        "phases": phases,
    }
    run = RunRecord(kind="qualify", name=config.name, model=config.name, started_at=started,
                    ok=ok, verdict=line, git_revision=results["git_revision"],
                    recipe_sha256=compressed.recipe_sha256, config_sha256=config.sha256,
                    host=results["host"], out_dir=str(out.resolve()),
                    summary={"phases": phases, "compress": results["compress"]},
                    devices=list(devices_seen.values()),
                    artifacts=[ArtifactRow(n, str(e.path), e.sha256, e.bytes, e.zipped_bytes)
                               for n, e in exports.artifacts.items()],
                    figures=figures, gates=gates)
    from ._report import qualify_page

    # the run is committed only once its three files are in place: a report that fails records
    # nothing and leaves the last run's files as they were
    with history.recording(run) as (run_id, recorded):
        results["run_id"] = run_id
        t_report = time.perf_counter()
        page = qualify_page(results, compressed, recorded, config.name)
        phases["report"] = time.perf_counter() - t_report
        phases["total"] = time.perf_counter() - t0
        write_outputs(folder, page, junit_xml(f"deepcompress.qualify.{config.name}", gates,
                                              phases["total"]), results)
    return QualifyResult(ok, line, run_id, results, gates)

