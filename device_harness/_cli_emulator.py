"""``deepcompress emulator``: run the emulated Android device until Ctrl-C (or SIGTERM)."""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from compression._io import write_bytes_atomic


def add_arguments(parser: argparse.ArgumentParser, command_name: str) -> None:
    from .emulator import DEFAULT_PORT

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
    parser.add_argument("--json", action="store_true",
                        help="print one JSON line saying where it listens; logs stay on stderr")
    parser.add_argument("--pidfile", type=Path, help=argparse.SUPPRESS)  # set by ensure_emulator
    parser.add_argument("--stop", action="store_true",
                        help="stop the background emulator started by 'bench --device emulator'")
    parser.add_argument("-v", "--verbose", action="store_true", help="log every connection")


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (0-65535)")
    return int(text)


def main(args: argparse.Namespace) -> int:
    from .emulator import start, stop_emulator

    if args.stop:
        stopped = stop_emulator(args.port)
        _say(args, {"stopped": stopped, "port": args.port},
             f"stopped the emulator on 127.0.0.1:{args.port}" if stopped
             else f"no background emulator was running on 127.0.0.1:{args.port}")
        return 0
    logging.basicConfig(stream=sys.stderr, format="%(asctime)s emulator: %(message)s",
                        level=logging.INFO if args.verbose else logging.WARNING)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    handle = start(port=args.port, no_auth=args.no_auth, sandbox=args.sandbox,
                   profile=args.profile, authorized_keys=args.authorized_keys)
    try:
        if args.pidfile:
            write_bytes_atomic(args.pidfile, f"{os.getpid()}\n".encode())
        info = {"serial": handle.serial, "host": handle.host, "port": handle.port,
                "sandbox": str(handle.sandbox), "auth": handle.auth, "pid": os.getpid(),
                "model": handle.profile.properties.get("ro.product.model", "")}
        _say(args, info,
             f"Emulated Android device listening on {handle.serial}\n"
             f"  /data/local/tmp = {handle.sandbox}\n  auth: {handle.auth}\n"
             f"  try: adb connect {handle.serial} && adb -s {handle.serial} shell getprop\n"
             "  Ctrl-C stops it.")
        while not stop.wait(0.5):
            pass
    finally:
        handle.stop()
        if args.pidfile:
            args.pidfile.unlink(missing_ok=True)
    return 0


def _say(args: argparse.Namespace, info: dict, text: str) -> None:
    if args.json:
        print(json.dumps(info), flush=True)
    else:
        print(text, file=sys.stderr, flush=True)
