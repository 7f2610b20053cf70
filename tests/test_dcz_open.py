"""A .dcz path is opened as a regular file or not at all (issue 19, item 4): /dev/zero (or a link
to it) used to grow without bound and a FIFO used to hang ``inspect`` / ``unpack`` / ``export``."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from dccore.errors import ContainerError
from dcz import _api, load, pack

# Each special path is opened in a child with 1 GiB of data and 60 s, so that the code before
# the fix (read_bytes() until EOF) fails the test instead of eating the shared machine.
CHILD = textwrap.dedent("""
    import resource, sys
    resource.setrlimit(resource.RLIMIT_DATA, (1 << 30, 1 << 30))
    from dccore.errors import ContainerError
    from dcz import load
    try:
        load(sys.argv[1])
    except ContainerError as exc:
        print(exc)
        sys.exit(7)
    sys.exit(0)
""")


@pytest.fixture
def specials(tmp_path):
    link = tmp_path / "zero.dcz"
    link.symlink_to("/dev/zero")
    fifo = tmp_path / "pipe.dcz"
    os.mkfifo(fifo)
    folder = tmp_path / "folder.dcz"
    folder.mkdir()
    return {"/dev/zero": ("/dev/zero", "not a regular file"),
            "link": (str(link), "not a regular file"),
            "fifo": (str(fifo), "not a regular file"),
            "folder": (str(folder), "a folder")}


@pytest.mark.parametrize("which", ["/dev/zero", "link", "fifo", "folder"])
def test_load_refuses_what_is_not_a_regular_file(specials, which):
    path, message = specials[which]
    proc = subprocess.run([sys.executable, "-c", CHILD, path], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 7, proc.stderr[-2000:]
    assert proc.stdout.strip() == f"{path}: {message}; name a .dcz file"


def test_the_read_stops_at_the_size_the_file_had(tmp_path, monkeypatch):
    """A file that grows while it is read (here: a device passed off as a regular file of 0
    bytes) is read up to the size fstat gave, never on to the end of what it yields."""
    monkeypatch.setattr(_api.stat, "S_ISREG", lambda mode: True)
    with pytest.raises(ContainerError):   # 0 bytes: too short to be a .dcz
        load("/dev/zero")
    good = tmp_path / "m.dcz"
    pack({"w": torch.arange(6.0)}, good)
    size = good.stat().st_size
    with open(good, "ab") as fh:
        fh.write(b"x" * 100)
    real_fstat = os.fstat
    monkeypatch.setattr(_api.os, "fstat", lambda fd: os.stat_result(
        [*real_fstat(fd)[:6], size, *real_fstat(fd)[7:]]))
    assert torch.equal(load(good).state_dict["w"], torch.arange(6.0))   # the 100 bytes unread


@pytest.mark.parametrize("argv", [["inspect"], ["unpack", "--out", "{tmp}/out.pt"],
                                  ["export", "--tflite", "{tmp}/out"]])
def test_commands_refuse_a_fifo_in_one_line(tmp_path, argv):
    fifo = tmp_path / "pipe.dcz"
    os.mkfifo(fifo)
    args = [a.format(tmp=tmp_path) for a in argv]
    proc = subprocess.run([sys.executable, "-m", "deepcompress", args[0], str(fifo), *args[1:]],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert f"{fifo}: not a regular file; name a .dcz file" in proc.stderr
    assert not (tmp_path / "out.pt").exists() and not (tmp_path / "out").exists()
