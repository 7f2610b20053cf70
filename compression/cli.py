"""The ``deepcompress`` command: one sub-command per verb, each in the package that owns it.

Sub-command modules are imported only when chosen, so ``deepcompress --help`` stays fast and
``deepcompress run`` never imports coremltools or LiteRT. Each module provides
``add_arguments(parser, command_name)`` and ``main(args) -> int``
(``args.command`` says which verb ran).
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .errors import DeepCompressError

# name -> (module, one-line help). Order is the order shown in --help.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("compression._cmd_run", "compress a model with a recipe: prune, share, fine-tune, code"),
    "pack": ("compression.container._cli", "write a .dcz file from a checkpoint"),
    "unpack": ("compression.container._cli", "decode a .dcz file back to a state_dict (.pt)"),
    "inspect": ("compression.container._cli", "show what a .dcz file holds: bytes per layer and stream"),
    "export": ("compression._cmd_export", "export a .dcz model to TFLite and/or Core ML, validated"),
    "check": ("compression._cmd_check", "CI size gate: compare artifacts with budgets"),
    "devices": ("device_harness._cli", "list reachable devices (ADB, iOS simulators, host)"),
    "emulator": ("device_harness._cli_emulator", "run the emulated Android device (ADB daemon on 127.0.0.1)"),
    "bench": ("device_harness._cli", "measure latency, memory and accuracy of an artifact on a device"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepcompress",
        description="Deep Compression for PyTorch models (Han, Mao & Dally 2016): prune, share "
                    "weights, entropy-code; export to Core ML and LiteRT; measure on devices.",
        epilog="Run 'deepcompress COMMAND --help' for a command's options.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:  # only the chosen command's module is imported
            module = importlib.import_module(module_name)
            module.add_arguments(p, name)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in COMMANDS:
        command = None
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.main(args) or 0)
    except DeepCompressError as exc:
        print(f"deepcompress {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"deepcompress {args.command}: interrupted; finished checkpoints are kept "
              "(use --resume-from to continue)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
