"""Core ML export: an ML Program (``.mlpackage``) whose weights stay compressed (sparse masks and
our codebooks as Core ML lookup tables), and a check that decodes them back on any OS. Registered
as the "coreml" exporter (``exporters.EXPORTERS``)::

    from exporters import EXPORTERS, accuracy_scorer
    coreml = EXPORTERS.get("coreml")
    report = coreml.export(model, images[:1], "model.mlpackage", coreml.Options(target="iOS18"))
    check = coreml.validate(report, model, images, accuracy_scorer(labels))

or directly: ``export_coreml(model, example_inputs, "model.mlpackage")``,
``verify_coreml("model.mlpackage", {name: weight, ...})``.

coremltools is imported only when one of these runs.
"""
from ._convert import (DEFAULT_METHOD, DEFAULT_PRECISION, DEFAULT_TARGET, METHODS, PRECISIONS,
                       TARGETS, CoreMLExport, LayerPlan, export_coreml, plan_layer)
from ._exporter import CoreMLExporter, CoreMLOptions, decoded_model
from ._verify import CoreMLCheck, LayerCheck, coreml_outputs, package_weights, verify_coreml

__all__ = ["DEFAULT_METHOD", "DEFAULT_PRECISION", "DEFAULT_TARGET", "METHODS", "PRECISIONS",
           "TARGETS", "CoreMLCheck", "CoreMLExport", "CoreMLExporter", "CoreMLOptions", "LayerCheck",
           "LayerPlan", "coreml_outputs", "decoded_model", "export_coreml", "package_weights",
           "plan_layer", "verify_coreml"]
