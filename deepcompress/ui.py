"""Progress, log lines and tables for long commands, in a terminal and in a CI log alike.

In a terminal: rich progress bars and log lines on stderr. When stderr is not a terminal (a CI
job, ``> log 2>&1``), bars would print nothing until the end, so instead each task's start and end
and, at least every ``HEARTBEAT_S`` seconds, a plain line saying where the work is (task, epoch,
step, loss, elapsed) go to stderr. Results (tables, summaries) go to stdout.
"""
from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any, Collection, Iterable, Sequence

from compression import ProgressTask

# At least one line this often in a non-terminal log, so a CI job never looks hung.
HEARTBEAT_S = float(os.environ.get("DEEPCOMPRESS_HEARTBEAT_S", "30"))

# What a terminal acts on instead of showing: C0 controls (ESC starts the sequences that set a
# window title or clear the screen; BEL, CR, newline), DEL, C1 controls (0x9b is a one-byte CSI)
# and the bidirectional overrides and isolates that reorder what is shown.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: object) -> str:
    """``text`` as a terminal may show it: every control character written out (ESC as \\x1b),
    so a name read from a file, a database or a device (a tensor's, a config's, a run's) is shown
    and never obeyed. Every printer of such names goes through this."""
    return _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                       else f"\\u{ord(m.group()):04x}", str(text))


def print_json(obj: Any) -> None:
    """A command's ``--json`` result on stdout: indented, whatever is not JSON (a path) as text."""
    print(json.dumps(obj, indent=2, default=str))


def stdout_console(width: int = 200) -> Any:
    """A rich console on stdout; a pipe or file gets ``width`` columns (whole tables, not the
    80-column fold rich assumes where there is no terminal)."""
    from rich.console import Console

    console = Console(log_path=False)
    return console if console.is_terminal else Console(log_path=False, width=width)


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[object]], *,
                right: Collection[str] = (), overflow: str = "fold", title_justify: str = "left",
                console: Any = None) -> None:
    """A table on stdout (or ``console``): the title and every cell shown as text (``printable``,
    never markup), for they hold names read from files, databases and devices. ``right``: the
    columns justified right (figures)."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(printable(title), style="table.title"), title_justify=title_justify)
    for col in columns:
        table.add_column(col, justify="right" if col in right else "left", overflow=overflow)
    for row in rows:
        table.add_row(*(Text(printable(cell)) for cell in row))
    (console or stdout_console()).print(table)


class _RichTask(ProgressTask):
    def __init__(self, progress: Any, task_id: Any) -> None:
        self._progress, self._id = progress, task_id

    def advance(self, n: int = 1, **fields: object) -> None:
        loss = fields.get("loss")
        info = f"loss {loss:.3f}" if isinstance(loss, float) else str(fields.get("item", ""))
        self._progress.update(self._id, advance=n, info=info)

    def close(self) -> None:
        self._progress.remove_task(self._id)


class _PlainTask(ProgressTask):
    """A task in a non-terminal log: its state, read by the heartbeat."""

    def __init__(self, ui: "Ui", description: str, total: int) -> None:
        self.ui, self.description, self.total = ui, description, total
        self.done, self.fields, self.started = 0, {}, time.monotonic()
        ui.line(f"{description}: started ({total:,} steps)")

    def advance(self, n: int = 1, **fields: object) -> None:
        self.done += n
        self.fields = fields

    def status(self) -> str:
        parts = [f"{self.description}: step {self.done:,}/{self.total:,}"]
        if "epoch" in self.fields:
            parts.append(f"epoch {self.fields['epoch']}")
        if isinstance(self.fields.get("loss"), float):
            parts.append(f"loss {self.fields['loss']:.4f}")
        if "item" in self.fields:      # e.g. the share stage's last layer done
            parts.append(f"last done {self.fields['item']}")
        elapsed = time.monotonic() - self.started
        parts.append(f"{elapsed:.0f} s in this task")
        left = self.fields.get("left_s")
        if not isinstance(left, float) and 0 < self.done < self.total:
            left = elapsed / self.done * (self.total - self.done)
        if isinstance(left, float) and self.done < self.total:
            parts.append(f"about {left:.0f} s left")
        return ", ".join(parts)

    def close(self) -> None:
        self.ui.line(f"{self.status()}: done")
        self.ui.tasks.remove(self)


class Ui:
    """Progress and log lines on stderr; all of it off when ``enabled`` is False."""

    def __init__(self, enabled: bool = True, heartbeat_s: float = HEARTBEAT_S) -> None:
        self.enabled = enabled
        self.heartbeat_s = heartbeat_s
        self._progress = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self.tasks: list[_PlainTask] = []
        self.started = time.monotonic()
        if enabled:
            from rich.console import Console
            self.console = Console(stderr=True, log_path=False)
            self.interactive = self.console.is_terminal

    def __enter__(self) -> "Ui":
        if not self.enabled:
            return self
        if self.interactive:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)
            self._progress = Progress(
                TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                console=self.console, transient=True)
            self._progress.__enter__()
        else:
            self._beat = threading.Thread(target=self._heartbeat, daemon=True, name="heartbeat")
            self._beat.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._progress is not None:
            self._progress.__exit__(*exc)
            self._progress = None

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            current = self.tasks[-1].status() if self.tasks else "working"
            self.line(f"still running: {current}")

    def line(self, message: str) -> None:
        """One plain line with the elapsed time, for logs that are read later."""
        elapsed = time.monotonic() - self.started
        # one write per line: the heartbeat thread and the work print at once, and print()'s
        # two writes (text, then newline) would interleave into broken lines
        sys.stderr.write(f"[{elapsed:7.1f} s] {printable(message)}\n")
        sys.stderr.flush()

    def progress(self, description: str, total: int) -> ProgressTask:
        if not self.enabled:
            return ProgressTask()
        if self._progress is None:
            task = _PlainTask(self, description, total)
            self.tasks.append(task)
            return task
        return _RichTask(self._progress, self._progress.add_task(description, total=total, info=""))

    def log(self, message: str) -> None:
        if not self.enabled:
            return
        if self.interactive:
            from rich.text import Text

            self.console.log(Text(printable(message)), highlight=False)
        else:
            self.line(message)

    def summary(self, report: dict[str, Any], out: Path) -> None:
        out_console = stdout_console()
        print_table(f"{report['recipe']}: per-layer compression",
                    ("layer", "type", "parameters", "non-zeros", "sparsity", "bits", "distinct"),
                    [(row["name"], row["type"], f"{row['parameters']:,}", f"{row['nonzeros']:,}",
                      f"{row['sparsity']:.1%}", str(row["bits"] or "-"),
                      f"{row['distinct_values']:,}") for row in report["layers"]],
                    right=("parameters", "non-zeros", "sparsity", "bits", "distinct"),
                    overflow="ellipsis", console=out_console)
        metric = report.get("primary_metric") or {"name": "accuracy", **report["accuracy"]}
        name, base, final = metric["name"], metric["baseline"], metric["final"]
        if name == "accuracy":
            change = f"{base:.2%} -> final {final:.2%} ({(final - base) * 100:+.2f} points)"
        else:
            change = f"{base:.5f} -> final {final:.5f} ({final - base:+.5f})"
        lines = [f"{name}: baseline {change} on {report['test_examples']:,} test examples",
                 f"sparsity: {report['sparsity']:.2%} of compressible weights are zero"]
        if "compressed_bytes" in report:
            lines.append(f"size: {report['dense_bytes']:,} B dense fp32 -> "
                         f"{report['compressed_bytes']:,} B model.dcz "
                         f"({report['compression_ratio']:.1f}x)")
            for row in report.get("stage_ratios", []):
                lines.append(f"  {row['stage']:<28} {row['bytes']:>10,} B  {row['ratio']:6.1f}x")
        lines.append(f"time: {report['seconds']['total']:.1f} s; results in {out}/report.json")
        for line in lines:
            out_console.print(printable(line), markup=False, highlight=False)
