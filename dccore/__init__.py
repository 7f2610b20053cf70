"""The bottom layer of deepcompress: errors, safe output files, registries, artifact sizes.

Everything above imports from here; this package imports nothing of the project and never
torch or a converter (numpy, only in ``metrics``), so any layer may use it cheaply.

- :mod:`dccore.errors`    the one error hierarchy (``DeepCompressError`` and its kinds);
- :mod:`dccore.outputs`   atomic writes, and the rule that an output never replaces what is not ours;
- :mod:`dccore.registry`  named registries (stages, tasks, exporters, device backends, runners);
- :mod:`dccore.artifacts` an artifact's bytes on disk and zipped, as an app store sees it;
- :mod:`dccore.metrics`   comparisons of outputs (accuracy as a fraction, agreement, cosine);
- :mod:`dccore.plots`     matplotlib on the Agg backend and figures as PNG bytes (imported on use).
"""
from .errors import DeepCompressError

__all__ = ["DeepCompressError"]
