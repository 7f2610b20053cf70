"""What every figure in the history is traced to: the code (git revision), the recipe (its
sha256), the artifact (its sha256) and the device (a fingerprint of what it is)."""
from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

UNKNOWN = "unknown"
_PROJECT = Path(__file__).resolve().parents[2]


@lru_cache(maxsize=1)
def git_revision(root: Path = _PROJECT) -> str:
    """The project checkout's commit, with ``+dirty`` when tracked files differ from it;
    ``unknown`` outside a git checkout (an installed wheel) or without git."""
    if not (root / ".git").exists():
        return UNKNOWN
    # no optional locks: reading the revision must never contend with someone's `git commit`
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10, env=env)
        if rev.returncode != 0:
            return UNKNOWN
        dirty = subprocess.run(["git", "-C", str(root), "diff", "--quiet", "HEAD", "--"],
                               capture_output=True, timeout=30, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return UNKNOWN
    return rev.stdout.strip() + ("+dirty" if dirty.returncode == 1 else "")


def host_name() -> str:
    return socket.gethostname()


# What identifies a device as a place to measure: its hardware and OS, not the address it was
# reached at (a phone moved from USB to Wi-Fi is the same device; its figures stay comparable).
FINGERPRINT_FIELDS = ("kind", "model", "os_version", "abi", "cores", "max_freq_khz")


def device_fingerprint(info: Mapping[str, Any]) -> str:
    """16 hex digits of the sha256 of the device's hardware and OS description."""
    picked = {k: info.get(k) for k in FINGERPRINT_FIELDS}
    blob = json.dumps(picked, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
