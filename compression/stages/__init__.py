"""Stages: one file per kind, each registering itself in :data:`STAGES` (torchao-style dispatch).

    prune.py      magnitude pruning with retraining            (kind "prune")
    share.py      k-means weight sharing                       (kind "share")
    finetune.py   centroid fine-tuning (trained quantization)  (kind "finetune_centroids")
    encode.py     entropy coding into the .dcz file            (kind "encode")

The built-in files are imported on the first lookup, so importing this package stays cheap. A new
technique is a config (deriving :class:`StageConfig`), a handler ``run(model, config, ctx)`` and a
:func:`register_stage` call, in a file of its own; nothing central changes.
"""
from ._base import (CONV_TYPES, LAYER_TYPES, STAGES, Stage, StageConfig, StageList, check_order,
                    register_stage, stage_from_dict)

__all__ = ["CONV_TYPES", "LAYER_TYPES", "STAGES", "Stage", "StageConfig", "StageList",
           "check_order", "register_stage", "stage_from_dict"]
