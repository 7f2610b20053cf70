"""The ``deepcompress`` command: one sub-command per verb, each in ``deepcompress/commands/``.

Sub-command modules are imported only when chosen, so ``deepcompress --help`` stays fast and
``deepcompress run`` never imports coremltools or LiteRT. Each module provides
``add_arguments(parser, command_name)`` and ``main(args) -> int``
(``args.command`` says which verb ran).
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Iterator, Mapping

from dccore.errors import ConfigError, DeepCompressError, UsageError

# name -> (module, one-line help). Order is the order shown in --help.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("deepcompress.commands.run", "compress a model with a recipe: prune, share, fine-tune, code"),
    "sensitivity": ("deepcompress.commands.tuning", "each layer's metric against sparsity and bits: saturation points, plots"),
    "autotune": ("deepcompress.commands.tuning", "choose per-layer sparsity and bits within a metric budget; write the recipe"),
    "pack": ("deepcompress.commands.container", "write a .dcz file from a checkpoint"),
    "unpack": ("deepcompress.commands.container", "decode a .dcz file back to a state_dict (.pt)"),
    "inspect": ("deepcompress.commands.container", "show what a .dcz file holds: bytes per layer and stream"),
    "export": ("deepcompress.commands.export", "export a .dcz model to TFLite and/or Core ML, validated"),
    "check": ("deepcompress.commands.check", "CI size gate: compare artifacts with budgets"),
    "devices": ("deepcompress.commands.devices", "list reachable devices (ADB, iOS simulators, host)"),
    "emulator": ("deepcompress.commands.emulator", "run the emulated Android device (ADB daemon on 127.0.0.1)"),
    "bench": ("deepcompress.commands.devices", "measure latency, memory and accuracy of an artifact on a device"),
    "qualify": ("deepcompress.commands.qualify", "does a model ship? compress, export, bench, gate, report"),
    "nightly": ("deepcompress.commands.nightly", "run a matrix of models x devices against rolling baselines"),
    "history": ("deepcompress.commands.history", "list past qualification and nightly runs"),
    "compare": ("deepcompress.commands.history", "two runs from the history side by side"),
    "sweep": ("deepcompress.commands.sweep", "ProjectionNet over (T, d, FC sizes): metric against model bits, plotted"),
}


# What the commands' flags share: the recipe run by default, the trust note of every command
# that reads a recipe, a qualify config or a nightly matrix, and a JSON-object flag.
DEFAULT_RECIPE = "lenet300"
CODE_NOTE = (
    "Trust: recipes, qualify configs and nightly matrices are code, like a Makefile: they name "
    "Python factories (package.module:function) that run with your rights, so use only ones you "
    "trust. Data files (.dcz, checkpoints, reports, history databases) never choose code: "
    "nothing read from one is imported or run.")


def json_object(text: str | None, flag: str, error: type[DeepCompressError] = UsageError) -> dict | None:
    """The JSON object a flag gives (``--model-kwargs '{"num_classes": 10}'``), or None."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{flag} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise error(f"{flag} must be a JSON object, e.g. '{{\"num_classes\": 10}}'")
    return value


@contextlib.contextmanager
def named_by_flags(flags: Mapping[str, str]) -> Iterator[None]:
    """Settings made from flags inside this block that refuse a value are named by the flag that
    gave it (``--timeout: expected ...``), not by their field (``timeout_s: expected ...``).
    ``flags``: field -> flag; a field not named here is ``--`` and its name with dashes."""
    try:
        yield
    except ConfigError as exc:
        field, _, why = str(exc).partition(": ")
        name = field.partition("[")[0]          # a list's entry: the flag gave the list
        if not why or not name.isidentifier():
            raise
        raise ConfigError(f"{flags.get(name, '--' + name.replace('_', '-'))}: {why}") from None


# Quiet the converters' C++ and absl logging before anything imports them (TensorFlow Lite's
# "Created TensorFlow Lite XNNPACK delegate", oneDNN notices, absl's pre-init warnings).
_QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "TF_ENABLE_ONEDNN_OPTS": "0", "GLOG_minloglevel": "2",
              "ABSL_MIN_LOG_LEVEL": "3"}


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of exiting, so --json callers get JSON."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see '{self.prog} --help')")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(
        prog="deepcompress",
        description="Deep Compression for PyTorch models (Han, Mao & Dally 2016): prune, share "
                    "weights, entropy-code; export to Core ML and LiteRT; measure on devices.",
        epilog="Run 'deepcompress COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"deepcompress {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:  # only the chosen command's module is imported
            module = importlib.import_module(module_name)
            module.add_arguments(p, name)
    return parser


def _fail(command: str | None, exc: BaseException, code: int, as_json: bool) -> int:
    """One line on stderr; with --json also one JSON object on stdout, as for a success."""
    from .ui import printable

    label = f"deepcompress {command}" if command else "deepcompress"
    message = " / ".join(line.strip() for line in (str(exc) or type(exc).__name__).splitlines()
                         if line.strip())   # one line, whatever the exception held
    print(f"{label}: error: {printable(message)}", file=sys.stderr)
    if as_json:
        print(json.dumps({"ok": False, "command": command, "error": message,
                          "error_type": type(exc).__name__, "exit_code": code}), flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in COMMANDS:
        command = None
    as_json = "--json" in argv
    try:
        parser = build_parser(command)
        args = parser.parse_args(argv)
    except DeepCompressError as exc:
        return _fail(command, exc, exc.exit_code, as_json)
    if args.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(COMMANDS[args.command][0])
    from dccore.children import ending_on_sigterm

    try:
        # SIGTERM (CI, `timeout`) ends the command's child processes and unwinds it as Ctrl-C
        # does, exit 143; what a command killed by SIGKILL left is reaped first
        with ending_on_sigterm(f"deepcompress {args.command}"):
            code = int(module.main(args) or 0)
            sys.stdout.flush()   # a reader that went away is found here, not at the exit
            return code
    except BrokenPipeError:
        # the reader of our output went away (`deepcompress check --json | head`): stop quietly,
        # as cat does, with the shell's status for SIGPIPE; later flushes go nowhere
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except DeepCompressError as exc:
        return _fail(args.command, exc, exc.exit_code, as_json)
    except KeyboardInterrupt:
        print(f"deepcompress {args.command}: interrupted; finished checkpoints and outputs are "
              "kept (run --resume-from continues a run)", file=sys.stderr)
        return 130
    except OSError as exc:   # a folder that is read-only, full, or not there: the user's to fix
        if exc.filename is None and exc.errno not in _ENVIRONMENT_ERRNOS:
            return _internal(args.command, exc, as_json)
        return _fail(args.command, UsageError(_os_error_message(exc)), 2, as_json)
    except Exception as exc:
        return _internal(args.command, exc, as_json)


# errors of the machine, not of the code: a file system that refuses a write, or has no room
_ENVIRONMENT_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT,
                       errno.ENAMETOOLONG}


def _os_error_message(exc: OSError) -> str:
    """"PATH: why; what to do", naming what the user named (not our hidden temporary beside it)."""
    path = Path(exc.filename) if exc.filename is not None else None
    if path is not None and path.name.startswith(".") and ".dctmp-" in path.name:
        path = path.parent / path.name[1:path.name.index(".dctmp-")]
    name = "" if path is None else str(path)
    if len(name) > 200:
        name = f"{name[:200]}... ({len(name):,} characters)"
    why = exc.strerror or str(exc)
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "check the folder's permissions, or choose another path"
    elif exc.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free some space, or choose another folder"
    else:
        fix = "check the path, or choose another one"
    return f"{name}: {why}; {fix}" if name else f"{why}; {fix}"


def _internal(command: str, exc: BaseException, as_json: bool) -> int:
    """A bug, not bad input: say so in one line unless asked for more."""
    if os.environ.get("DEEPCOMPRESS_DEBUG"):
        raise exc
    where = traceback.extract_tb(exc.__traceback__)[-1]
    internal = RuntimeError(f"internal error ({type(exc).__name__} at "
                            f"{Path(where.filename).name}:{where.lineno}: {exc}); please "
                            "report it; DEEPCOMPRESS_DEBUG=1 shows the traceback")
    return _fail(command, internal, 3, as_json)


if __name__ == "__main__":
    sys.exit(main())
