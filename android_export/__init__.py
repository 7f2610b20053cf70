"""LiteRT / TFLite export with litert-torch, in the variants TFLite can hold (float32, float16,
int8 weight-only, and each of them with sparse tensors), validated in the LiteRT interpreter.
Registered as the "tflite" exporter (``exporters.EXPORTERS``)::

    from exporters import EXPORTERS, cosine_scorer
    tflite = EXPORTERS.get("tflite")
    report = tflite.export(model, (input_ids[:1], mask[:1]), "model.tflite")
    check = tflite.validate(report, model, (input_ids, mask), cosine_scorer())

or directly: ``export_tflite(model, example_inputs, "model.tflite", variant="sparse-float16")``,
``tflite_outputs("model.tflite", inputs)``. Latency is measured by ``device_harness``.

litert-torch, ai-edge-quantizer and ai-edge-litert are imported only when one of these runs.
"""
from ._convert import (DEFAULT_VARIANT, VARIANTS, LayerStorage, TFLiteExport, build_variant,
                       convert_float32, export_tflite)
from ._evaluate import tflite_outputs
from ._exporter import TFLiteExporter, TFLiteOptions
from ._flatbuffer import WeightSlot, sparsify, weight_slots

__all__ = ["DEFAULT_VARIANT", "VARIANTS", "LayerStorage", "TFLiteExport", "TFLiteExporter",
           "TFLiteOptions", "WeightSlot", "build_variant", "convert_float32", "export_tflite",
           "sparsify", "tflite_outputs", "weight_slots"]
