"""The ``deepcompress`` command: one sub-command per verb, each in ``deepcompress/commands/``.

Sub-command modules are imported only when chosen, so ``deepcompress --help`` stays fast and
``deepcompress run`` never imports coremltools or LiteRT. Each module provides
``add_arguments(parser, command_name)`` and ``main(args) -> int``
(``args.command`` says which verb ran).
"""
from __future__ import annotations

import argparse
import importlib
import sys

from dccore.errors import DeepCompressError

# name -> (module, one-line help). Order is the order shown in --help.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("deepcompress.commands.run", "compress a model with a recipe: prune, share, fine-tune, code"),
    "pack": ("deepcompress.commands.container", "write a .dcz file from a checkpoint"),
    "unpack": ("deepcompress.commands.container", "decode a .dcz file back to a state_dict (.pt)"),
    "inspect": ("deepcompress.commands.container", "show what a .dcz file holds: bytes per layer and stream"),
    "export": ("deepcompress.commands.export", "export a .dcz model to TFLite and/or Core ML, validated"),
    "check": ("deepcompress.commands.check", "CI size gate: compare artifacts with budgets"),
    "devices": ("deepcompress.commands.devices", "list reachable devices (ADB, iOS simulators, host)"),
    "emulator": ("deepcompress.commands.emulator", "run the emulated Android device (ADB daemon on 127.0.0.1)"),
    "bench": ("deepcompress.commands.devices", "measure latency, memory and accuracy of an artifact on a device"),
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
