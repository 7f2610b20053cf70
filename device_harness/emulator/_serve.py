"""Run an emulated device in the foreground until SIGINT/SIGTERM: what ``deepcompress emulator``
does, and what the background device of ``ensure_emulator`` runs (``python -m
device_harness.emulator``), so the harness never starts the application layer's command."""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from dccore.outputs import write_bytes_atomic

from ._background import DEFAULT_PORT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=_port, default=DEFAULT_PORT,
                        help=f"TCP port on 127.0.0.1 (default {DEFAULT_PORT}: the adb server "
                             "then also lists it as emulator-5554; 0 picks a free port)")
    parser.add_argument("--profile", type=Path, help="device profile JSON (default: built-in)")
    parser.add_argument("--sandbox", type=Path,
                        help="folder that plays /data/local/tmp (default: a temporary folder, "
                             "removed on exit)")
    parser.add_argument("--authorized-keys", type=Path, action="append", metavar="FILE",
                        help="adb public keys to accept, one per line (repeatable; default: "
                             "~/.android/adbkey.pub, generated if missing)")
    parser.add_argument("--no-auth", action="store_true",
                        help="accept any client without a key (for tests only)")
    parser.add_argument("--old-adbd", action="store_true",
                        help="play an old adbd: protocol 0x01000000 with checksums, 4 KiB "
                             "messages, a refused push answered before its data")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON line saying where it listens; logs stay on stderr")
    parser.add_argument("--pidfile", type=Path, help=argparse.SUPPRESS)  # set by ensure_emulator
    parser.add_argument("-v", "--verbose", action="store_true", help="log every connection")


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (0-65535)")
    return int(text)


def serve(args: argparse.Namespace) -> int:
    """Start the device from ``args`` (see add_arguments) and serve until a signal."""
    from ._handle import start

    logging.basicConfig(stream=sys.stderr, format="%(asctime)s emulator: %(message)s",
                        level=logging.INFO if args.verbose else logging.WARNING)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    # The pidfile first: ensure_emulator returns as soon as the port answers, and whoever then
    # stops the device (stop_emulator) finds it by this file.
    if args.pidfile:
        write_bytes_atomic(args.pidfile, f"{os.getpid()}\n".encode())
    try:
        handle = start(port=args.port, no_auth=args.no_auth, sandbox=args.sandbox,
                       profile=args.profile, authorized_keys=args.authorized_keys,
                       old_adbd=args.old_adbd)
    except BaseException:
        if args.pidfile:
            _remove_own_pidfile(args.pidfile)
        raise
    try:
        info = {"serial": handle.serial, "host": handle.host, "port": handle.port,
                "sandbox": str(handle.sandbox), "auth": handle.auth, "pid": os.getpid(),
                "model": handle.profile.properties.get("ro.product.model", "")}
        _say(args.json, info, f"Emulated Android device listening on {handle.serial}\n"
                              f"  /data/local/tmp = {handle.sandbox}\n  auth: {handle.auth}\n"
                              f"  try: adb connect {handle.serial} && adb -s {handle.serial} "
                              "shell getprop\n  Ctrl-C stops it.")
        while not stop.wait(0.5):
            pass
    finally:
        handle.stop()
        if args.pidfile:
            _remove_own_pidfile(args.pidfile)
    return 0


def _remove_own_pidfile(path: Path) -> None:
    """Remove the pidfile only while it still names this process: a newer emulator may have
    written its own there since."""
    try:
        if path.read_text().strip() == str(os.getpid()):
            path.unlink()
    except OSError:
        pass


def _say(as_json: bool, info: dict, text: str) -> None:
    if as_json:
        print(json.dumps(info), flush=True)
    else:
        print(text, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m device_harness.emulator",
                                     description="the emulated Android device, in the foreground")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return serve(args)
    except Exception as exc:  # noqa: BLE001 - one line for the log, not a traceback
        print(f"emulator: error: {exc}", file=sys.stderr)
        return 1
