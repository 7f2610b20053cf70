"""Progress bars, log lines and the summary table of ``deepcompress run`` (rich, on stderr)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from compression import ProgressTask


class _RichTask(ProgressTask):
    def __init__(self, progress: Any, task_id: Any) -> None:
        self._progress, self._id = progress, task_id

    def advance(self, n: int = 1, **fields: object) -> None:
        loss = fields.get("loss")
        self._progress.update(self._id, advance=n,
                              info=f"loss {loss:.3f}" if isinstance(loss, float) else "")

    def close(self) -> None:
        self._progress.remove_task(self._id)


class Ui:
    """Progress bars and log lines on stderr; all of it off when ``enabled`` is False."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._progress = None
        if enabled:
            from rich.console import Console
            self.console = Console(stderr=True)

    def __enter__(self) -> "Ui":
        if self.enabled:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)
            self._progress = Progress(
                TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                console=self.console, transient=True)
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
            self._progress = None

    def progress(self, description: str, total: int) -> ProgressTask:
        if self._progress is None:
            return ProgressTask()
        return _RichTask(self._progress, self._progress.add_task(description, total=total, info=""))

    def log(self, message: str) -> None:
        if self.enabled:
            self.console.log(message)

    def summary(self, report: dict[str, Any], out: Path) -> None:
        from rich.table import Table

        table = Table(title=f"{report['recipe']}: per-layer compression", title_justify="left")
        for col in ("layer", "type", "parameters", "non-zeros", "sparsity", "bits", "distinct"):
            table.add_column(col, justify="left" if col in ("layer", "type") else "right")
        for row in report["layers"]:
            table.add_row(row["name"], row["type"], f"{row['parameters']:,}", f"{row['nonzeros']:,}",
                          f"{row['sparsity']:.1%}", str(row["bits"] or "-"),
                          f"{row['distinct_values']:,}")
        self.console.print(table)
        acc = report["accuracy"]
        lines = [f"accuracy: baseline {acc['baseline']:.2%} -> final {acc['final']:.2%} "
                 f"({(acc['final'] - acc['baseline']) * 100:+.2f} points) "
                 f"on {report['test_examples']:,} test examples",
                 f"sparsity: {report['sparsity']:.2%} of compressible weights are zero"]
        if "compressed_bytes" in report:
            lines.append(f"size: {report['dense_bytes']:,} B dense fp32 -> "
                         f"{report['compressed_bytes']:,} B model.dcz "
                         f"({report['compression_ratio']:.1f}x)")
            for row in report.get("stage_ratios", []):
                lines.append(f"  {row['stage']:<28} {row['bytes']:>10,} B  {row['ratio']:6.1f}x")
        lines.append(f"time: {report['seconds']['total']:.1f} s; results in {out}/report.json")
        for line in lines:
            self.console.print(line)
