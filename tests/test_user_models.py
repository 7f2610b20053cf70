"""A user's own model, end to end: a tiny BERT-style sentence encoder (token ids + attention mask
in, a normalised embedding out), compressed label-free against its own outputs, post-training
(Wanda, Fisher-weighted grouped k-means) and with distillation retraining."""
from __future__ import annotations

import json
import textwrap

import pytest
import torch

from conftest import token_samples

ENCODER = textwrap.dedent('''
    import torch
    from torch import nn

    class TinyEncoder(nn.Module):
        def __init__(self, vocab=120, dim=32, layers=2, heads=4):
            super().__init__()
            self.embed = nn.Embedding(vocab, dim)
            self.pos = nn.Embedding(16, dim)
            self.attn = nn.ModuleList(nn.MultiheadAttention(dim, heads, batch_first=True)
                                      for _ in range(layers))
            self.ff = nn.ModuleList(nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(),
                                                  nn.Linear(2 * dim, dim)) for _ in range(layers))
            self.norm = nn.ModuleList(nn.LayerNorm(dim) for _ in range(2 * layers))
            self.pooler = nn.Linear(dim, dim)        # a head the embedding never uses

        def forward(self, ids, mask):
            x = self.embed(ids) + self.pos(torch.arange(ids.shape[1]))[None]
            pad = mask == 0
            for i, (attn, ff) in enumerate(zip(self.attn, self.ff)):
                x = self.norm[2 * i](x + attn(x, x, x, key_padding_mask=pad)[0])
                x = self.norm[2 * i + 1](x + ff(x))
            m = mask.unsqueeze(-1).to(x.dtype)
            return nn.functional.normalize((x * m).sum(1) / m.sum(1).clamp(min=1), dim=1)

    def make():
        torch.manual_seed(123)
        return TinyEncoder()
''')


@pytest.fixture
def encoder_env(user_module):
    tmp_path = user_module("tiny_encoder", ENCODER)
    token_samples(tmp_path / "samples.pt", n=240, length=12, vocab=120, padded=3)
    return tmp_path


def _recipe(tmp_path, stages, **task):
    return {"name": "tiny-encoder", "seed": 0,
            "model": {"name": "tiny_encoder:make"},
            "data": {"batch_size": 32},
            "task": {"kind": "distill", "inputs": str(tmp_path / "samples.pt"),
                     "input_names": ["ids", "mask"], "loss": "cosine", "test_fraction": 0.25,
                     **task},
            "stages": stages}


def test_post_training_compresses_every_layer_kind_and_scores_against_the_dense_model(
        encoder_env):
    from compression.pipeline import run_recipe
    from compression.recipe import Recipe
    from deepcompress.loading import model_from_dcz

    stages = [
        {"kind": "prune", "sparsity": 0.5, "rounds": 1, "retrain_epochs": 0, "method": "wanda",
         "calibration": 64, "by_type": {"Embedding": {"method": "magnitude", "sparsity": 0.3}}},
        {"kind": "share", "bits": 4, "weighting": "fisher", "group_size": 8, "calibration": 64},
        {"kind": "encode", "coder": "ans"},
    ]
    result = run_recipe(Recipe.from_dict(_recipe(encoder_env, stages)), encoder_env / "run")
    report = result.report
    assert report["task"] == "distill" and "accuracy" not in report
    metric = report["primary_metric"]
    assert metric["name"] == "cosine_mean" and metric["baseline"] == pytest.approx(1.0)
    assert 0.5 < metric["final"] < 1.0                   # changed, and still close
    assert report["scores"]["2_share"]["cosine_min"] <= metric["final"]
    kinds = {row["type"] for row in report["layers"]}
    assert kinds == {"Embedding", "MultiheadAttention", "Linear"}   # every kind compressed
    attn = next(r for r in report["layers"] if r["type"] == "MultiheadAttention")
    assert attn["sparsity"] == pytest.approx(0.5, abs=0.01) and attn["bits"] == 4

    model, dcz = model_from_dcz(encoder_env / "run" / "model.dcz", model="tiny_encoder:make")
    assert dcz.layers["attn.0.in_proj_weight"].nnz == int(0.5 * 96 * 32)
    assert dcz.meta["model"]["inputs"] == [{"shape": [12], "dtype": "int64"}] * 2
    for name, tensor in result.model.state_dict().items():   # the file is the model
        assert torch.equal(model.state_dict()[name], tensor), name
    rows = torch.arange(96) // 8      # every weight reads its own rows' codebook
    w = model.attn[0].in_proj_weight.detach()
    for g in rows.unique():
        assert torch.unique(w[rows == g][w[rows == g] != 0]).numel() <= 16


def test_distillation_retraining_recovers_what_post_training_lost(encoder_env):
    from compression.pipeline import run_recipe
    from compression.recipe import Recipe

    def run(epochs, out):
        stages = [{"kind": "prune", "sparsity": 0.7, "rounds": 1, "retrain_epochs": epochs,
                   "lr": 3e-3},
                  {"kind": "share", "bits": 3}, {"kind": "finetune_centroids", "epochs": epochs,
                                                 "lr": 1e-3}]
        return run_recipe(Recipe.from_dict(_recipe(encoder_env, stages)), encoder_env / out)

    one_shot, retrained = run(0, "one_shot"), run(4, "retrained")
    got = lambda r: r.report["primary_metric"]["final"]  # noqa: E731
    assert got(retrained) > got(one_shot) + 0.01
    saved = json.loads((encoder_env / "retrained" / "report.json").read_text())
    assert saved["primary_metric"]["final"] == got(retrained)
