"""``nightly``: every model of a matrix on every device, once a night, against rolling baselines.

A *cell* is (matrix, night, model, device slot). Every host that runs the matrix first creates
the night's cells that do not exist yet, then works them: one thread per device slot it serves,
so devices run in parallel and each device runs one cell at a time. A cell is *claimed* in the
history database with a lease (PostgreSQL: ``SELECT ... FOR UPDATE SKIP LOCKED``; SQLite: one
writer at a time), the lease is renewed while the cell runs, and the cell's results are written
in the same transaction that closes it, keyed by the cell, so a cell is recorded once however
often it was started. A host that dies leaves its cell claimed until the lease expires (on the
same host, at once: its process is gone); then any host claims it again.

Each figure is judged against its rolling baseline: the median of its values on the last
``window`` passing nights (at least ``min_samples`` of them, else no verdict yet), with a
tolerance of ``max(rel x median, abs)``. An unreachable device fails its own cells (and is
tried again the next night); the other cells go on.
"""
from __future__ import annotations

import datetime as dt
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from dccore.errors import DeepCompressError

from . import _work
from ._config import Matrix, MatrixModel
from ._figures import device_info, judge
from ._gates import Gate, failed_gate, rolling_baseline, rolling_gate, verdict
from ._outputs import Folder, junit_xml, write_outputs
from ._provenance import UNKNOWN, git_revision, host_name
from .history import History, RunRecord, open_history
from .history._store import now

Log = Callable[[str], None]


def today() -> str:
    return dt.datetime.now(dt.timezone.utc).date().isoformat()


def check_night(night: str) -> str:
    try:
        return dt.date.fromisoformat(night).isoformat()
    except ValueError:
        from dccore.errors import UsageError

        raise UsageError(f"--night {night!r}: expected a date, YYYY-MM-DD") from None


def new_owner() -> str:
    return f"{host_name()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_alive(owner: str | None) -> bool:
    """Whether a cell's owner may still be working on it. Only a process on this host can be
    checked (it is gone if its pid is); another host's is alive until its lease expires."""
    if not owner:
        return False
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != host_name() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class NightlyResult:
    ok: bool
    verdict: str
    summary: dict[str, Any]
    ran: list[dict[str, Any]] = field(default_factory=list)   # the cells this process ran


class _Models:
    """Each model compressed and exported once per process, when a device first needs it.

    One at a time: training seeds PyTorch's global generator, so two models trained at once in
    two threads would draw from each other's stream and neither would be reproducible."""

    def __init__(self, matrix: Matrix, out: Path, plans: dict[str, _work.WorkPlan], log: Log) -> None:
        self.matrix, self.out, self.plans, self.log = matrix, out, plans, log
        self._lock = threading.Lock()
        self._done: dict[str, tuple[_work.Compressed, _work.Exports]] = {}

    def get(self, model: MatrixModel) -> tuple[_work.Compressed, _work.Exports]:
        with self._lock:
            if model.name not in self._done:
                folder = self.out / "models" / model.name
                (folder / "artifacts").mkdir(parents=True, exist_ok=True)
                log = lambda m: self.log(f"{model.name}: {m}")   # noqa: E731
                compressed = _work.compress(self.plans[model.name], folder / "run", log=log)
                exports = _work.export_all(model.export, compressed, folder / "artifacts", log=log)
                self._done[model.name] = (compressed, exports)
            return self._done[model.name]


def run_nightly(matrix: Matrix, out: Path, *, db: str | None = None, night: str | None = None,
                slots: list[str] | None = None, retry_failed: bool = False, wait: bool = True,
                poll_s: float | None = None, log: Log = lambda m: None) -> NightlyResult:
    t0 = time.perf_counter()
    night = check_night(night) if night else today()
    folder = Folder(out, "nightly")
    # -- before any work -------------------------------------------------------------------------
    from ._qualify import check_devices

    for model in matrix.models:
        check_devices(tuple(matrix.devices.values()), model.export.formats)
    my_slots = list(matrix.devices) if not slots else slots
    unknown = [s for s in my_slots if s not in matrix.devices]
    if unknown:
        from dccore.errors import UsageError

        raise UsageError(f"--slot {', '.join(unknown)}: not a device slot of the matrix "
                         f"({', '.join(matrix.devices)})")
    plans = {m.name: _work.plan(m.model) for m in matrix.models}
    for m in matrix.models:
        _work.check_metric_examples(m.model, m.export, m.budgets.min_metric(), f"models {m.name!r}:")
    folder.check(work=("models",))
    folder.claim()
    history = open_history(db or matrix.history.db or str(folder.history))
    worker = None
    try:
        history.ensure_cells(matrix.name, night, [m.name for m in matrix.models], list(matrix.devices))
        worker = _Worker(matrix, night, history, _Models(matrix, out, plans, log), new_owner(),
                         retry_failed, wait, poll_s or min(5.0, matrix.lease_s / 4), log)
        threads = [threading.Thread(target=worker.work, args=(slot,), name=f"nightly-{slot}",
                                    daemon=True) for slot in my_slots]
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                t.join(0.5)   # wake for KeyboardInterrupt
        return _finish(matrix, night, folder, history, worker, time.perf_counter() - t0)
    except KeyboardInterrupt:   # give the cells back at once rather than after their lease
        if worker is not None:
            worker.stop.set()
            for slot, model in list(worker.running.items()):
                history.release(matrix.name, night, model, slot, worker.owner)
        raise
    finally:
        history.close()


class _Worker:
    def __init__(self, matrix: Matrix, night: str, history: History, models: _Models, owner: str,
                 retry_failed: bool, wait: bool, poll_s: float, log: Log) -> None:
        self.matrix, self.night, self.history, self.models = matrix, night, history, models
        self.owner, self.retry_failed, self.wait, self.poll_s, self.log = (
            owner, retry_failed, wait, poll_s, log)
        self.stop = threading.Event()
        self.running: dict[str, str] = {}           # slot -> model, while a cell runs
        self.ran: list[dict[str, Any]] = []
        self.bench: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def work(self, slot: str) -> None:
        m = self.matrix
        while not self.stop.is_set():
            model = self.history.claim(m.name, self.night, slot, self.owner, m.lease_s,
                                       retry_failed=self.retry_failed, alive=owner_alive)
            if model is None:
                open_cells = [c for c in self.history.cells(m.name, self.night)
                              if c["device"] == slot and c["state"] in ("pending", "running")]
                if not self.wait or not open_cells:
                    return
                self.stop.wait(self.poll_s)   # another host holds them; its lease may expire
                continue
            self.running[slot] = model
            try:
                self._cell(next(x for x in m.models if x.name == model), slot)
            finally:
                self.running.pop(slot, None)

    def _cell(self, model: MatrixModel, slot: str) -> None:
        m, spec = self.matrix, self.matrix.devices[slot]
        started, t0 = now(), time.perf_counter()
        self.log(f"{model.name} x {slot}: claimed ({spec})")
        beat_stop = threading.Event()

        def heartbeat() -> None:
            while not beat_stop.wait(m.lease_s / 3):
                try:
                    mine = self.history.renew(m.name, self.night, model.name, slot, self.owner,
                                              m.lease_s)
                except Exception as exc:  # the database is away for a moment: try again
                    self.log(f"{model.name} x {slot}: lease not renewed ({exc}); retrying")
                    continue
                if not mine:   # another host has it now; finish() will not write over its result
                    return

        beat = threading.Thread(target=heartbeat, daemon=True, name=f"lease-{slot}")
        beat.start()
        try:
            record, results = self._measure(model, slot, spec, started)
        except DeepCompressError as exc:   # the model could not be built or exported
            record, results = self._failed(model, slot, started, f"{type(exc).__name__}: {exc}"), []
        except Exception as exc:  # a bug: this cell fails and says so; the night goes on
            where = f"{type(exc).__name__}: {exc}"
            record, results = self._failed(model, slot, started, f"internal error ({where})"), []
        finally:
            beat_stop.set()
            beat.join()
        record.summary = {**record.summary, "seconds": time.perf_counter() - t0}
        run_id = self.history.finish(m.name, self.night, model.name, slot, self.owner, record)
        if run_id is None:
            self.log(f"{model.name} x {slot}: the lease was lost to another host; its result "
                     "is the one kept")
            return
        state = "PASS" if record.ok else "FAIL"
        self.log(f"{model.name} x {slot}: {state} {record.verdict} (run {run_id})")
        with self._lock:
            self.ran.append({"model": model.name, "device": slot, "run_id": run_id,
                             "ok": record.ok, "verdict": record.verdict})
            self.bench += [{**r, "slot": slot, "model": model.name} for r in results]

    def _measure(self, model: MatrixModel, slot: str, spec: str, started: Any
                 ) -> tuple[RunRecord, list[dict]]:
        compressed, exports = self.models.get(model)
        artifacts = _work.artifacts_for(spec, exports)
        data = _work.eval_data(self.matrix.bench, compressed, exports)
        results = _work.bench_device(spec, artifacts, self.matrix.bench, data=data)
        figures, gates = judge(exports, model.budgets, {slot: results}, evaluates=data is not None)
        gates += self._rolling(model.name, slot, figures)
        ok, line = verdict(gates)
        errors = [str(r.get("error")) for r in results if not r.get("ok")]
        infos = [i for i in (device_info(r) for r in results) if i is not None]
        benched = next((a.sha256 for a in artifacts), None)
        return RunRecord(
            kind="nightly", name=self.matrix.name, model=model.name, started_at=started, ok=ok,
            verdict=line, git_revision=git_revision(), recipe_sha256=compressed.recipe_sha256,
            config_sha256=self.matrix.sha256, host=host_name(), out_dir=str(self.models.out.resolve()),
            summary={"compress": compressed.how, "spec": spec}, artifact_sha256=benched,
            device_fingerprint=infos[0]["fingerprint"] if infos else None, night=self.night,
            device_slot=slot, cell_key=self.cell_key(model.name, slot),
            error="; ".join(errors) or None, devices=infos, figures=figures, gates=gates,
            artifacts=[], ), results

    def _failed(self, model: MatrixModel, slot: str, started: Any, error: str) -> RunRecord:
        gate = failed_gate("prepare", "model", model.name, error, device=slot)
        return RunRecord(kind="nightly", name=self.matrix.name, model=model.name,
                         started_at=started, ok=False, verdict=f"1/1 gates failed: {error}",
                         git_revision=git_revision(), recipe_sha256=UNKNOWN,
                         config_sha256=self.matrix.sha256, host=host_name(), night=self.night,
                         device_slot=slot, cell_key=self.cell_key(model.name, slot), error=error,
                         gates=[gate])

    def _rolling(self, model: str, slot: str, figures: list) -> list[Gate]:
        rolling = self.matrix.regression
        gates = []
        for f in figures:
            values = self.history.rolling_values(matrix=self.matrix.name, model=model, slot=slot,
                                                 night=self.night, figure=f, window=rolling.window)
            gates.append(rolling_gate(f, rolling_baseline(values, rolling, f.figure, f.better_high),
                                      rolling))
        return gates

    def cell_key(self, model: str, slot: str) -> str:
        return f"{self.matrix.name}/{self.night}/{model}/{slot}"


def _finish(matrix: Matrix, night: str, folder: Folder, history: History, worker: _Worker,
            seconds: float) -> NightlyResult:
    cells = history.cells(matrix.name, night)
    runs = {r["id"]: r for r in history.runs(kind="nightly", name=matrix.name, night=night, limit=None)}
    gates: list[Gate] = []
    rows = []
    for c in cells:
        run = runs.get(c["run_id"]) if c["run_id"] else None
        rows.append({**c, "ok": bool(run and run["ok"]), "verdict": run["verdict"] if run else None})
        if run is not None:
            detail = history.run(run["id"])
            gates += [Gate.from_dict({**g, "fingerprint": g["device_fingerprint"],
                                      "subject": f"{c['model']} / {c['device']}: {g['subject']}",
                                      "skipped": g["skipped"] or "", "message": g["message"] or ""})
                      for g in detail["gates"]]
    finished = [r for r in rows if r["state"] in ("done", "failed")]
    unfinished = [r for r in rows if r["state"] not in ("done", "failed")]
    failed = [r for r in finished if not r["ok"]]
    ok = not failed and not (unfinished and worker.wait)
    line = (f"{len(finished) - len(failed)}/{len(rows)} cells pass" +
            (f"; failed: {', '.join(r['model'] + ' x ' + r['device'] for r in failed[:4])}"
             + (" ..." if len(failed) > 4 else "") if failed else "") +
            (f"; {len(unfinished)} not finished (other hosts)" if unfinished else ""))
    summary = {"kind": "deepcompress-nightly", "matrix": matrix.name, "night": night, "ok": ok,
               "verdict": line, "history": history.where, "git_revision": git_revision(),
               "host": host_name(), "owner": worker.owner,
               "models": [m.name for m in matrix.models], "devices": dict(matrix.devices),
               "cells": [{k: v for k, v in r.items() if k != "updated_at"} for r in rows],
               "ran_here": worker.ran, "bench": worker.bench, "seconds": seconds}
    t_report = time.perf_counter()
    from ._report import nightly_page

    page = nightly_page(summary, history)
    summary["report_seconds"] = time.perf_counter() - t_report
    write_outputs(folder, page, junit_xml(f"deepcompress.nightly.{matrix.name}.{night}", gates,
                                          seconds), summary)   # together, or none of them
    return NightlyResult(ok, line, summary, worker.ran)
