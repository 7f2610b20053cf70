"""The bottom layer of deepcompress: errors, safe output files, registries, artifact sizes.

Everything above imports from here; this package imports nothing of the project and never
torch, numpy or a converter, so any layer (and the ``deepcompress`` command's start-up) may use it.

- :mod:`dccore.errors`    the one error hierarchy (``DeepCompressError`` and its kinds);
- :mod:`dccore.outputs`   atomic writes, and the rule that an output never replaces what is not ours;
- :mod:`dccore.registry`  named registries (stages, tasks, exporters, device backends, runners);
- :mod:`dccore.artifacts` an artifact's bytes on disk and zipped, as an app store sees it.
"""
from .errors import DeepCompressError

__all__ = ["DeepCompressError"]
