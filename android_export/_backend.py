"""Import the LiteRT packages on demand, quietly, with an error that says what to install."""
from __future__ import annotations

import contextlib
import importlib
import io
import os
from typing import Any

from exporters import quiet_backend
from dccore.errors import ExportError

_PACKAGES = {  # module -> pip requirement
    "litert_torch": "litert-torch>=0.10",
    "ai_edge_quantizer": "ai-edge-quantizer>=0.10",
    "ai_edge_litert": "ai-edge-litert>=2.3",
}


def require(module: str) -> Any:
    try:
        with quiet():
            return importlib.import_module(module)
    except ImportError as exc:
        package = module.partition(".")[0]       # ai_edge_litert.interpreter: ai_edge_litert's
        raise ExportError(f"TFLite export needs {module} ({exc}); install it with "
                          f"'pip install {_PACKAGES.get(package, package)}'") from exc


def quiet() -> contextlib.AbstractContextManager[io.StringIO]:
    """Silence litert-torch's progress lines and TensorFlow's C++ logging for the block (yields what
    they printed)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return quiet_backend()
