"""The project's error hierarchy, in one place.

Every error a user can cause derives from :class:`DeepCompressError`; the CLI prints its message on
one line and exits non-zero, without a traceback. Messages say what was wrong and what to do.
"""
from __future__ import annotations


class DeepCompressError(Exception):
    """Base class: an error caused by input, configuration or environment, not by a bug."""

    exit_code = 1


class DataError(DeepCompressError):
    """A dataset is missing or malformed."""


class CheckpointError(DeepCompressError):
    """A checkpoint or state_dict is missing, corrupt or does not fit the model."""


class ModelError(DeepCompressError):
    """A model cannot be built, has no prunable layers, or holds non-finite weights."""


class ContainerError(DeepCompressError):
    """A `.dcz` file is malformed; the message names the file and the section at fault."""


class ExportError(DeepCompressError):
    """An export to Core ML or TFLite failed; the message names the layer and op when known."""


class ArtifactError(DeepCompressError):
    """An artifact (a .tflite file, an .mlpackage folder) is missing or not measurable as one."""

    exit_code = 2


class UsageError(DeepCompressError):
    """A command line, or an output path it names, cannot be used; nothing was done."""

    exit_code = 2


class ConfigError(UsageError, ValueError):
    """A setting is invalid: of a recipe, a qualification config, a nightly matrix, budgets, an
    exporter's or a bench's options, or a flag that sets one. The one error of ``dccore.config``;
    the message names the field (``stages[1].bits: expected an integer in [1, 16], got 0``)."""


# The names the config error had before there was one config system; kept for users' code.
RecipeError = ConfigError
BudgetError = ConfigError


class DeviceError(DeepCompressError):
    """A device command failed or timed out.

    ``transient``: the call never completed (its deadline passed, or the connection to the device
    was lost), so running it again may succeed. Set where that is known, so that a caller deciding
    whether to retry reads a flag instead of parsing a message that may quote the device's output.
    """

    def __init__(self, message: str, *, command: list[str] | str | None = None,
                 returncode: int | None = None, output: str = "", transient: bool = False) -> None:
        super().__init__(message)
        self.command = command
        self.returncode = returncode
        self.output = output
        self.transient = transient
