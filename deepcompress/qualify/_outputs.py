"""The folder a qualification or a nightly writes, checked before any work (dccore.outputs'
rules: replace only our own files, atomically), the JUnit file of its gates, and the run's three
files written together."""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from dccore import junit
from dccore.errors import UsageError
from dccore.outputs import (JSON_FILE, JUNIT_XML, OutputKind, atomic_path, check_folder,
                            check_output, claim_folder)

from ._gates import Gate

GENERATOR = b'<meta name="generator" content="deepcompress'


def _is_our_html(p: Path) -> bool:
    if p.stat().st_size == 0:
        return True
    with open(p, "rb") as fh:
        return GENERATOR in fh.read(4096)


HTML_REPORT = OutputKind("deepcompress HTML report", recognise=_is_our_html)


@dataclass(frozen=True)
class Folder:
    """``root`` holds: report.html, junit.xml, results.json, the history (by default), and the
    work (``run/`` or ``models/``, ``artifacts/``). ``command``: whose folder it is (its marker,
    dccore.outputs)."""

    root: Path
    command: str                         # "qualify" | "nightly"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def junit(self) -> Path:
        return self.root / "junit.xml"

    @property
    def results(self) -> Path:
        return self.root / "results.json"

    @property
    def history(self) -> Path:
        return self.root / "history.sqlite"

    def check(self, work: tuple[str, ...] = ()) -> None:
        """Refuse (UsageError, exit 2) unless writing here destroys nothing of the user's: a new
        or empty folder, or one this command wrote before (it holds the marker file)."""
        root = self.root
        check_folder(root, self.command)     # the rule every command's folder follows
        if not root.exists():
            return   # made by claim(), after every other check
        check_output(self.report, HTML_REPORT, flag="report")
        check_output(self.junit, JUNIT_XML, flag="junit")
        check_output(self.results, JSON_FILE, flag="results")
        for name in work:
            sub = root / name
            if sub.is_symlink() or (sub.exists() and not sub.is_dir()):
                raise UsageError(f"{sub} exists and is not a folder; move it away first")

    def claim(self) -> None:
        """Mark the folder as this command's (after ``check``)."""
        claim_folder(self.root, self.command)


def gate_name(gate: str, figure: str) -> str:
    """A gate's name for JUnit and tables: the budget key, or the comparison and its figure."""
    return f"{gate} {figure}" if gate in ("regression", "rolling") else gate


def junit_xml(suite: str, gates: list[Gate], seconds: float | None = None) -> bytes:
    """One testcase per gate (classname: what it judges, name: the gate), for qualify, nightly
    and ``check``; a failure's message and text carry the numbers."""
    kinds = {"regression": "Regression", "rolling": "Regression", "reachable": "Unreachable",
             "export_valid": "ExportInvalid"}
    cases = []
    for g in gates:
        numbers = ", ".join(f"{k} {v:.6g}" for k, v in (("actual", g.actual), ("limit", g.limit),
                                                         ("baseline", g.baseline)) if v is not None)
        cases.append(junit.Case(g.subject, gate_name(g.gate, g.figure), g.ok, g.message or numbers,
                                kinds.get(g.gate, "BudgetExceeded"),
                                numbers if g.ok else f"{g.message}\n{numbers}".strip(), g.skipped))
    return junit.junit_xml(suite, cases, seconds)


def write_together(files: Sequence[tuple[Path, bytes, OutputKind]]) -> None:
    """Each file written to a temporary beside it, and only once all are written, each renamed
    into place: a run's report, JUnit and results replace the last run's together, or (a
    failure on the way) none of them does."""
    with contextlib.ExitStack() as stack:
        temporaries = [stack.enter_context(atomic_path(path, kind=kind)) for path, _, kind in files]
        for tmp, (_, data, _) in zip(temporaries, files):
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
    # leaving the stack renamed them (a rename that fails removes the temporaries not yet moved)


def write_outputs(folder: Folder, report: bytes, junit: bytes, results: Mapping[str, Any]) -> None:
    """``report.html``, ``junit.xml`` and ``results.json`` of one run, together."""
    text = json.dumps(results, indent=2, default=str) + "\n"
    write_together([(folder.report, report, HTML_REPORT), (folder.junit, junit, JUNIT_XML),
                    (folder.results, text.encode("utf-8"), JSON_FILE)])
