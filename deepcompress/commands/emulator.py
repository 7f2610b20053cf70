"""``deepcompress emulator``: run the emulated Android device until Ctrl-C (or SIGTERM)."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser, command_name: str) -> None:
    from device_harness.emulator import add_arguments as emulator_arguments

    emulator_arguments(parser)
    parser.add_argument("--stop", action="store_true",
                        help="stop the background emulator started by 'bench --device emulator'")


def main(args: argparse.Namespace) -> int:
    from device_harness.emulator import serve, stop_emulator

    if args.stop:
        stopped = stop_emulator(args.port)
        import json
        import sys

        info = {"stopped": stopped, "port": args.port}
        text = (f"stopped the emulator on 127.0.0.1:{args.port}" if stopped
                else f"no background emulator was running on 127.0.0.1:{args.port}")
        print(json.dumps(info) if args.json else text, file=sys.stdout if args.json else sys.stderr)
        return 0
    return serve(args)
