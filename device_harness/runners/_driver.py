"""Host-side drivers: put artifacts and tools on a device, run them there, parse what they print.

Everything a user names (artifact paths, the benchmark_model binary) is pushed under a name made
of its content hash, so no user-chosen string is ever part of a remote path or command; argument
lists go to ``Device.shell``, which quotes each element itself.

Runners are started through ``run_tracked``: a fixed wrapper script writes its pid to a file
under ``{workdir}/run/SESSION/`` (SESSION: random, one per harness process) and removes it when
the runner ends. A runner can outlive a dropped connection on a phone, so after a reconnection
``kill_leftover_runners`` kills what this process's pidfiles still name -- and only a process
whose command line names that pidfile, so a pid reused since is never touched.
"""
from __future__ import annotations

import json
import posixpath
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path

from dccore.artifacts import artifact_sha256
from dccore.errors import DeviceError

from .._device import Device, ShellResult
from . import _benchmark_model as bm
from ._litert_runner import RESULT_MARKER, SCHEMA

RUNNER_SCRIPT = Path(__file__).with_name("_litert_runner.py")
# find_spec, not import: answers in the time of a bare interpreter start (importing LiteRT would
# double the cost of a one-model bench); an import that then fails is reported by the runner.
_PROBE_SNIPPET = ("import importlib.util as u; print('deepcompress-probe-' + "
                  "('ok' if all(u.find_spec(m) for m in ('numpy', 'ai_edge_litert')) else 'missing'))")
_python_probes: "weakref.WeakKeyDictionary[Device, str | None]" = weakref.WeakKeyDictionary()
_watched: "weakref.WeakSet[Device]" = weakref.WeakSet()
_SESSION = uuid.uuid4().hex[:12]  # this process's runners: the only ones a reconnection kills
# $1: the pidfile, then the runner's argv. Not `exec`: this shell waits, then removes the file.
_TRACKED = ('p=$1; shift; mkdir -p "${p%/*}" && echo $$ > "$p" || '
            '{ echo "deepcompress: cannot write $p" >&2; exit 125; }; '
            '"$@"; rc=$?; rm -f "$p"; exit $rc')
# $1: the run folder. A pidfile's process is killed (its children first) only while its command
# line still names that pidfile: a pid reused since belongs to someone else.
_KILL_LEFTOVERS = ('for f in "$1"/*.pid; do [ -f "$f" ] || continue; pid=$(cat "$f"); '
                   'case $pid in ""|*[!0-9]*) ;; *) '
                   'if grep -qF "$f" "/proc/$pid/cmdline" 2>/dev/null; then '
                   'pkill -KILL -P "$pid"; kill -KILL "$pid"; echo "killed $pid"; fi ;; esac; '
                   'rm -f "$f"; done')


@dataclass(frozen=True)
class PushStats:
    bytes: int
    seconds: float

    def to_dict(self) -> dict[str, float]:
        return {"bytes": self.bytes, "seconds": round(self.seconds, 6)}


def remote_path(device: Device, *parts: str) -> str:
    return posixpath.join(device.workdir, *parts)


def remote_exists(device: Device, path: str, *, timeout_s: float) -> bool:
    return device.shell(["ls", path], timeout_s=timeout_s, check=False).returncode == 0


def _push_to(device: Device, local: Path, remote: str, *, timeout_s: float) -> float:
    """Push beside the final name, then rename: an interrupted push never looks complete."""
    device.shell(["mkdir", "-p", posixpath.dirname(remote)], timeout_s=timeout_s)
    partial = remote + ".part"
    seconds = device.push(local, partial, timeout_s=timeout_s)
    device.shell(["mv", "-f", partial, remote], timeout_s=timeout_s)
    return seconds


def push_cached(device: Device, local: Path, kind: str, *, timeout_s: float,
                executable: bool = False) -> str:
    """Push a tool once per content: ``{workdir}/cache/{kind}-{sha256[:16]}``; skipped if there."""
    remote = remote_path(device, "cache", f"{kind}-{artifact_sha256(local)[:16]}{local.suffix}")
    if not remote_exists(device, remote, timeout_s=timeout_s):
        _push_to(device, local, remote, timeout_s=timeout_s)
        if executable:
            device.shell(["chmod", "755", remote], timeout_s=timeout_s)
    return remote


def push_artifact(device: Device, local: Path, sha256: str, *, timeout_s: float) -> tuple[str, PushStats]:
    """Push a model every time (its upload is part of what ``bench`` reports)."""
    remote = remote_path(device, "models", f"{sha256[:16]}{local.suffix}")
    seconds = _push_to(device, local, remote, timeout_s=timeout_s)
    return remote, PushStats(local.stat().st_size, seconds)


def device_python(device: Device, *, timeout_s: float = 60.0) -> str | None:
    """The device's python that can import ai_edge_litert and numpy, or None; probed once per device."""
    if device in _python_probes:
        return _python_probes[device]
    python = getattr(device, "python", None) or "python3"
    probe = device.shell([python, "-c", _PROBE_SNIPPET], timeout_s=timeout_s, check=False)
    found = python if probe.returncode == 0 and "deepcompress-probe-ok" in probe.output else None
    _python_probes[device] = found
    return found


def run_dir(device: Device) -> str:
    return remote_path(device, "run", _SESSION)


def run_tracked(device: Device, argv: list[str], *, timeout_s: float) -> ShellResult:
    """Run a runner's ``argv`` on ``device`` under a pidfile (see the module docstring)."""
    if device not in _watched:  # once per device: after a reconnection, end what was left
        _watched.add(device)
        ref = weakref.ref(device)
        device.after_reconnect(lambda: (d := ref()) is not None and kill_leftover_runners(
            d, timeout_s=min(timeout_s, 30.0)))
    pidfile = posixpath.join(run_dir(device), f"{uuid.uuid4().hex[:12]}.pid")
    return device.shell(["sh", "-c", _TRACKED, "deepcompress-run", pidfile, *argv],
                        timeout_s=timeout_s, check=False)


def kill_leftover_runners(device: Device, *, timeout_s: float) -> list[int]:
    """Kill runners this process started on ``device`` that are still running (their connection
    dropped); return their pids."""
    out = device.shell(["sh", "-c", _KILL_LEFTOVERS, "deepcompress-kill", run_dir(device)],
                       timeout_s=timeout_s, check=False).output
    return [int(line.split()[1]) for line in out.splitlines() if line.startswith("killed ")]


def parse_runner_output(output: str, argv: list[str]) -> dict:
    """The runner's one ``DEEPCOMPRESS_RESULT {json}`` line, checked against the schema."""
    for line in reversed(output.splitlines()):
        line = line.strip()
        if line.startswith(RESULT_MARKER):
            try:
                result = json.loads(line[len(RESULT_MARKER):])
            except json.JSONDecodeError as exc:
                raise DeviceError(f"runner printed malformed JSON ({exc})", command=argv,
                                  output=output) from exc
            break
    else:
        tail = " | ".join(output.strip().splitlines()[-3:]) or "no output"
        raise DeviceError(f"runner printed no result line: {tail}", command=argv, output=output)
    if result.get("schema") != SCHEMA:
        raise DeviceError(f"runner result has schema {result.get('schema')!r}, expected {SCHEMA!r}",
                          command=argv, output=output)
    if "error" in result:
        raise DeviceError(f"runner failed on the device: {result['error']}", command=argv, output=output)
    return result


def run_litert(device: Device, python: str, model_remote: str, *, runs: int, warmup: int, threads: int,
               timeout_s: float, eval_remote: tuple[str, str] | None = None) -> dict:
    """Run the LiteRT runner script on ``device``; return its parsed result."""
    script = push_cached(device, RUNNER_SCRIPT, "litert_runner", timeout_s=timeout_s)
    argv = [python, script, "--model", model_remote, "--runs", str(runs), "--warmup", str(warmup),
            "--threads", str(threads)]
    if eval_remote:
        argv += ["--eval-input", eval_remote[0], "--eval-output", eval_remote[1]]
    result = run_tracked(device, argv, timeout_s=timeout_s)
    return parse_runner_output(result.output, argv)


def executable_problem(path: Path) -> str | None:
    """Why ``path`` is not a program to push and run on a device (None: it is one): it must be a
    regular file (a symbolic link to one is followed; a device, a FIFO or a folder is refused
    without being read), with the executable bit set, holding an ELF binary or a ``#!`` script.
    What is pushed runs on the device: a file not meant as a program never is."""
    import os
    import stat

    hint = "give the path of the Android benchmark_model binary for the device's ABI"
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"{exc.strerror or 'cannot read it'}; {hint}"
    if not stat.S_ISREG(st.st_mode):
        return f"not a regular file; {hint}"
    if not st.st_mode & 0o111:
        return f"not executable (no x bit; chmod +x it if it is the binary); {hint}"
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        return f"cannot read it ({exc.strerror or exc})"
    if head != b"\x7fELF" and not head.startswith(b"#!"):
        return f"not an executable (neither an ELF binary nor a #! script); {hint}"
    return None


def run_benchmark_model(device: Device, binary: Path, model_remote: str, *, runs: int, warmup: int,
                        threads: int, delegate: str, timeout_s: float) -> tuple[bm.BenchmarkModelOutput, list[str]]:
    """Push benchmark_model once (cached by hash), run it pinned to the big cores, parse stdout."""
    problem = executable_problem(binary)
    if problem:
        raise DeviceError(f"benchmark_model {binary}: {problem}")
    remote_binary = push_cached(device, binary, "benchmark_model", timeout_s=timeout_s, executable=True)
    command = bm.BenchmarkModelCommand(
        binary=remote_binary, graph=model_remote, threads=threads, warmup_runs=warmup, num_runs=runs,
        delegate=delegate, taskset_mask=bm.big_core_mask(device.info.max_freq_khz))
    argv = command.argv()
    result = run_tracked(device, argv, timeout_s=timeout_s)
    parsed = bm.check_output(bm.parse_output(result.output), result.output, argv)
    return parsed, argv
