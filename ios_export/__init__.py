"""Core ML export: an ML Program (``.mlpackage``) whose weights stay compressed (sparse masks and
our codebooks as Core ML lookup tables), and a check that decodes them back on any OS.

    from ios_export import export_coreml, verify_coreml
    result = export_coreml(model, (1, 28, 28), "model.mlpackage", target="iOS18")
    check = verify_coreml("model.mlpackage", {name: weight for name, weight in ...})

coremltools is imported only when one of these runs.
"""
from ._convert import (DEFAULT_METHOD, DEFAULT_PRECISION, DEFAULT_TARGET, METHODS, PRECISIONS,
                       TARGETS, CoreMLExport, LayerPlan, export_coreml, plan_layer)
from ._verify import CoreMLCheck, LayerCheck, coreml_logits, verify_coreml

__all__ = ["DEFAULT_METHOD", "DEFAULT_PRECISION", "DEFAULT_TARGET", "METHODS", "PRECISIONS",
           "TARGETS", "CoreMLCheck", "CoreMLExport", "LayerCheck", "LayerPlan", "coreml_logits",
           "export_coreml", "plan_layer", "verify_coreml"]
