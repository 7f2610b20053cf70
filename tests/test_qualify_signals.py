"""Ending ``qualify`` / ``nightly`` (issue 19, item 6): SIGTERM ends the bench runner's process
group and removes the temporary folder, exit 143; after SIGKILL the next start reaps what the
dead command left (the runner, the folder) and nothing that is not ours."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from dccore import children


# -- reaping: only our folders, only of a dead owner ---------------------------------------------
def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def marked(root: Path, name: str, pid: int, started: str | None = None) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / children.MARKER).write_text(f"{pid} {started if started is not None else ''}\n")
    (folder / "model.tflite").write_bytes(b"x")
    return folder


def test_reap_takes_only_marked_folders_of_a_dead_owner(tmp_path):
    gone = dead_pid()
    dead = marked(tmp_path, f"deepcompress-host-{gone}-a", gone)
    alive = marked(tmp_path, f"deepcompress-host-{os.getpid()}-b", os.getpid(),
                   children._start_time(os.getpid()))
    unmarked = tmp_path / f"deepcompress-host-{gone}-c"     # a folder we did not mark
    unmarked.mkdir()
    (unmarked / "yours.txt").write_text("not ours")
    other_name = marked(tmp_path, f"someone-else-{gone}", gone)  # not our prefix
    link = tmp_path / f"deepcompress-host-{gone}-link"          # a link to a dead owner's folder
    link.symlink_to(marked(tmp_path, "target", gone))
    assert children.reap_leftovers(tmp_path) == [str(dead)]
    assert not dead.exists()
    assert alive.exists() and unmarked.exists() and other_name.exists() and link.exists()
    assert (tmp_path / "target").exists()


def test_a_reused_pid_is_not_the_owner(tmp_path):
    """The marker's start time tells the owner from a later process that got the same pid."""
    if children._start_time(os.getpid()) == "":
        pytest.skip("no /proc: a live pid is taken to be the owner")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        kept = marked(tmp_path, f"deepcompress-host-{live.pid}-k", live.pid,
                      children._start_time(live.pid))
        reused = marked(tmp_path, f"deepcompress-host-{live.pid}-x", live.pid, "1")
        assert children.reap_leftovers(tmp_path) == [str(reused)] and kept.exists()
    finally:
        live.kill()
        live.wait()


def test_reap_ends_processes_still_running_from_a_dead_owners_folder(tmp_path):
    if not Path("/proc/self/cmdline").exists():
        pytest.skip("no /proc to find the processes by")
    gone = dead_pid()
    folder = marked(tmp_path, f"deepcompress-host-{gone}-r", gone)
    runner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                               str(folder / "model.tflite")], start_new_session=True)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                                  str(tmp_path / "elsewhere")], start_new_session=True)
    try:
        assert children.reap_leftovers(tmp_path) == [str(folder)]
        assert runner.wait(timeout=10) == -signal.SIGKILL
        assert bystander.poll() is None
    finally:
        for proc in (runner, bystander):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_child_starts_in_its_own_group_with_no_signal_blocked():
    """Its own process group (so the whole of it can be ended), and nothing of ours in its
    signal mask (a runner that cannot be sent SIGTERM would have to be killed)."""
    if not Path("/proc/self/status").exists():
        pytest.skip("needs /proc")
    proc = children.spawn(["sh", "-c", "grep SigBlk /proc/self/status; ps -o pgid= -p $$"],
                          stdout=subprocess.PIPE, text=True)
    out = proc.communicate(timeout=30)[0].split()
    children.release(proc)
    assert int(out[1], 16) == 0 and int(out[2]) == proc.pid


# -- SIGTERM and SIGKILL on a real qualify ---------------------------------------------------------

@pytest.fixture(scope="module")
def config(tmp_path_factory, tiny_idx):
    from conftest import HOST_QUALIFY, pack_shared_lenet300

    root = tmp_path_factory.mktemp("signals")
    meta = {"model": {"name": "lenet300", "kwargs": {}, "input_shape": [1, 28, 28]},
            "data": {"root": str(tiny_idx)}}
    pack_shared_lenet300(root / "m.dcz", {"fc1.weight": (0.9, 4), "fc2.weight": (0.9, 4),
                                          "fc3.weight": (0.7, 5)}, meta)
    # a bench long enough to be signalled while its runner is busy
    (root / "q.toml").write_text(HOST_QUALIFY.format(name="sig", dcz="m.dcz", runs=100_000,
                                                     timeout_s=600))
    return root / "q.toml"


def _own(pid: int) -> list[tuple[int, bytes]]:
    """Processes whose command line names a temporary folder of ``pid`` (the runner and the
    wrapper that started it)."""
    needle = f"{children.PREFIX}host-{pid}-".encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if needle in cmdline:
                found.append((int(entry), cmdline))
    return found


def _folders(pid: int) -> list[Path]:
    return sorted(Path(tempfile.gettempdir()).glob(f"{children.PREFIX}*-{pid}-*"))


def start_and_wait_for_the_runner(config: Path, out: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "deepcompress", "qualify", str(config),
                             "--out", str(out), "--quiet"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 300
    # the runner itself (or the wrapper that waits for it): its argv has --runs; a short `ls` or
    # `mv` of the runner script names the folder and litert_runner too, and is over at once
    while not any(b"litert_runner" in c and b"\0--runs\0" in c for _, c in _own(proc.pid)):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out_, err = proc.communicate()
            pytest.fail(f"the bench runner never started (exit {proc.returncode}): {err[-2000:]}")
        time.sleep(0.2)
    return proc


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc")
def test_sigterm_ends_the_runner_and_removes_the_folder_and_sigkill_is_reaped_next_time(
        config, tmp_path):
    proc = start_and_wait_for_the_runner(config, tmp_path / "out")
    assert _folders(proc.pid)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    assert "terminated (SIGTERM)" in err and "Traceback" not in err
    time.sleep(0.5)
    assert _own(proc.pid) == [] and _folders(proc.pid) == []

    # SIGKILL cannot be caught: the runner and its folder outlive the command ...
    proc = start_and_wait_for_the_runner(config, tmp_path / "out")
    proc.kill()
    proc.wait()
    try:
        assert _own(proc.pid) and _folders(proc.pid)
        # ... until the next start, which reaps them before any work (this one is refused)
        again = subprocess.run([sys.executable, "-m", "deepcompress", "qualify",
                                str(tmp_path / "missing.toml")], capture_output=True, text=True,
                               timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert again.returncode == 2
        deadline = time.monotonic() + 10
        while _own(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _own(proc.pid) == [] and _folders(proc.pid) == []
    finally:
        for pid, _ in _own(proc.pid):
            os.kill(pid, signal.SIGKILL)
