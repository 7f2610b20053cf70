"""What both exporters (``android_export``, ``ios_export``) share, beneath them and above the core.

An exporter takes a plain ``nn.Module``, example inputs and (for validation) a way to score
outputs from its caller; it never imports training code. It learns the compression from the
weights themselves: the distinct non-zero values of a layer are its codebook, its zeros are the
pruning mask. Nothing here imports coremltools or LiteRT.
"""
from ._common import (MAX_CODEBOOK, TOLERANCE_PTS, WEIGHT_LAYERS, CompressedLayer, Evaluation,
                      compressed_layers, describe_weight, example_input, locate_op, quiet_backend,
                      score_logits, unsupported_op_error)

__all__ = ["MAX_CODEBOOK", "TOLERANCE_PTS", "WEIGHT_LAYERS", "CompressedLayer", "Evaluation",
           "compressed_layers", "describe_weight", "example_input", "locate_op", "quiet_backend",
           "score_logits", "unsupported_op_error"]
