"""What both exporters (``android_export``, ``ios_export``) share, beneath them and above the core.

One interface (``Exporter``: ``export`` and ``validate``) and one registry (``EXPORTERS``, keyed by
format name) that every exporter registers itself in; the ``export`` command and the benchmarks go
through them and name no format. An exporter takes a plain ``nn.Module``, example inputs (a tuple
of tensors: images, token ids and masks alike) and, to validate, examples and a scorer from its
caller; it never imports training code. It learns the compression from the weights themselves:
the distinct non-zero values of a layer are its codebook, its zeros are the pruning mask. Nothing
here imports coremltools or LiteRT.
"""
from ._common import (MAX_CODEBOOK, WEIGHT_LAYERS, CompressedLayer, LayerSelection, as_inputs,
                      compressed_layers, describe_module, describe_weight, first_example,
                      forward_params, input_names, locate_in_trace, locate_op, quiet_backend,
                      select_layers, torch_outputs, unsupported_op_error, weight_usage)
from ._interface import (EXPORTERS, ArtifactReport, Exporter, ExportResult, Validation,
                         export_and_validate, option)
from ._scoring import MIN_COSINE, TOLERANCE, Score, Scorer, accuracy_scorer, cosine_scorer

__all__ = ["EXPORTERS", "MAX_CODEBOOK", "MIN_COSINE", "TOLERANCE", "WEIGHT_LAYERS", "ArtifactReport",
           "CompressedLayer", "ExportResult", "Exporter", "LayerSelection", "Score", "Scorer",
           "Validation", "accuracy_scorer", "as_inputs", "compressed_layers", "cosine_scorer",
           "describe_module", "describe_weight", "export_and_validate", "first_example",
           "forward_params", "input_names", "locate_in_trace", "locate_op", "option",
           "quiet_backend", "select_layers", "torch_outputs", "unsupported_op_error", "weight_usage"]
