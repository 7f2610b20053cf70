"""LiteRT / TFLite export with litert-torch, in the variants TFLite can hold (float32, float16,
int8 weight-only, and each of them with sparse tensors), validated in the LiteRT interpreter.

    from android_export import export_tflite, evaluate_tflite
    result = export_tflite(model, (1, 28, 28), "model.tflite", variant="sparse-float16")
    evaluation = evaluate_tflite("model.tflite", model, images, labels)

litert-torch, ai-edge-quantizer and ai-edge-litert are imported only when one of these runs.
"""
from ._convert import (DEFAULT_VARIANT, VARIANTS, LayerStorage, TFLiteExport, build_variant,
                       convert_float32, export_tflite)
from ._evaluate import Evaluation, evaluate_tflite, latency_us, tflite_logits, torch_logits
from ._flatbuffer import WeightSlot, sparsify, weight_slots

__all__ = ["DEFAULT_VARIANT", "VARIANTS", "Evaluation", "LayerStorage", "TFLiteExport", "WeightSlot",
           "build_variant", "convert_float32", "evaluate_tflite", "export_tflite", "latency_us",
           "sparsify", "tflite_logits", "torch_logits", "weight_slots"]
