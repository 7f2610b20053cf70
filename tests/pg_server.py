"""A throwaway PostgreSQL server, for the tests and benchmarks of the shared history.

    with throwaway_postgres() as url:          # postgresql+psycopg://postgres@/postgres?host=...
        history = open_history(new_database(url, "nightly"))

Debian's ``postgresql`` package provides ``/usr/lib/postgresql/*/bin/initdb`` and ``pg_ctl``. The
cluster lives in a fresh folder under /tmp (short: a unix socket path is limited to ~100 bytes),
listens on a unix socket in that folder only (no TCP), trusts local connections, and is stopped
and removed when the block ends. ``initdb`` refuses to run as root, so as root it runs as the
``postgres`` system user (through ``runuser``, else ``setpriv``), which owns the folder.
"""
from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

from dccore.errors import DeepCompressError


class PostgresUnavailable(DeepCompressError):
    """No PostgreSQL server binaries here (or no user to run them as)."""


def find_bin() -> Path | None:
    """The newest installed PostgreSQL's bin folder that has initdb and pg_ctl."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0)
    for folder in reversed(candidates):
        if (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).parent
    return None


def _run_as_owner(folder: Path) -> list[str]:
    """The command prefix that runs the server as a non-root user owning ``folder``."""
    if os.geteuid() != 0:
        return []
    try:
        user = pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresUnavailable("initdb refuses to run as root and there is no 'postgres' "
                                  "user to run it as (apt-get install postgresql creates one)") from None
    os.chown(folder, user.pw_uid, user.pw_gid)
    if shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--"]
    if shutil.which("setpriv"):
        return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups"]
    raise PostgresUnavailable("running as root, and neither runuser nor setpriv is available to "
                              "start PostgreSQL as the postgres user")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def throwaway_postgres(timeout_s: float = 60.0) -> Iterator[str]:
    """Start a private PostgreSQL server; yield its SQLAlchemy URL; stop it and remove it."""
    bindir = find_bin()
    if bindir is None:
        raise PostgresUnavailable("no PostgreSQL server binaries (initdb, pg_ctl); install them "
                                  "with apt-get install postgresql")
    folder = Path(tempfile.mkdtemp(prefix="dcpg-", dir="/tmp"))
    started = False
    try:
        prefix = _run_as_owner(folder)
        port = _free_port()
        data = folder / "data"

        def run(argv: list[str]) -> None:
            done = subprocess.run(prefix + argv, capture_output=True, text=True, timeout=timeout_s)
            if done.returncode != 0:
                raise PostgresUnavailable(f"{Path(argv[0]).name} failed ({done.returncode}): "
                                          f"{(done.stderr or done.stdout).strip()[-800:]}")

        run([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
             "-E", "UTF8", "--no-sync"])
        options = (f"-p {port} -k {folder} -c listen_addresses='' -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=100")
        run([str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "server.log"),
             "-w", "-t", str(int(timeout_s)), "start"])
        started = True
        yield f"postgresql+psycopg://postgres@/postgres?host={folder}&port={port}"
    finally:
        if started:
            subprocess.run((_run_as_owner(folder) if os.geteuid() == 0 else []) +
                           [str(bindir / "pg_ctl"), "-D", str(folder / "data"), "-m", "immediate",
                            "-w", "stop"], capture_output=True, timeout=timeout_s)
        shutil.rmtree(folder, ignore_errors=True)   # ours: made above


def new_database(url: str, name: str) -> str:
    """Create database ``name`` on the server at ``url``; return its URL."""
    import sqlalchemy as sa

    if not name.replace("_", "").isalnum():
        raise ValueError(f"database name {name!r}: letters, digits and _ only")
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    finally:
        engine.dispose()
    return str(sa.engine.make_url(url).set(database=name).render_as_string(hide_password=False))
