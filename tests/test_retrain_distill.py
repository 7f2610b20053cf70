"""Label-free retraining of a BERT-style encoder: the student learns in the mode its targets were
made in (eval: no dropout), the hidden-state term is applied as written and refused when it
cannot be, and masks and codebooks hold through it end to end."""
from __future__ import annotations

import textwrap

import pytest
import torch
from torch import nn

from compression._train import TrainSpec, hidden_loss, train
from compression.tasks import Examples
from compression.tasks.distill import Distill, DistillConfig
from conftest import token_samples
from dccore.errors import RecipeError

ENCODER = textwrap.dedent('''
    import torch
    from torch import nn
    from transformers import BertConfig, BertModel

    class Encoder(nn.Module):
        """BERT (dropout 0.3 in the hidden states and attention) + masked mean pooling."""

        def __init__(self):
            super().__init__()
            cfg = BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2,
                             num_attention_heads=4, intermediate_size=64,
                             max_position_embeddings=16, hidden_dropout_prob=0.3,
                             attention_probs_dropout_prob=0.3, attn_implementation="eager")
            self.bert = BertModel(cfg, add_pooling_layer=False)

        def forward(self, ids, mask):
            x = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state
            m = mask.unsqueeze(-1).to(x.dtype)
            return nn.functional.normalize((x * m).sum(1) / m.sum(1).clamp(min=1), dim=1)

    def make():
        torch.manual_seed(7)
        return Encoder().eval()
''')


@pytest.fixture
def encoder(user_module):
    tmp_path = user_module("bert_encoder", ENCODER)
    import bert_encoder
    return tmp_path, bert_encoder.make, token_samples(tmp_path / "samples.pt", n=160, length=10,
                                                      vocab=60, padded=4)


def _task(tmp_path, **cfg) -> Distill:
    config = DistillConfig.from_dict({"kind": "distill", "inputs": str(tmp_path / "samples.pt"),
                                      "input_names": ["ids", "mask"], "loss": "mse", **cfg},
                                     "task")
    return Distill(config, seed=0)


def _spec(epochs=1, lr=1e-3, batch_size=32) -> TrainSpec:
    return TrainSpec(epochs=epochs, lr=lr, schedule="constant", batch_size=batch_size)


def _dropout_modes(model: nn.Module, run) -> set[bool]:
    """The ``training`` flag every Dropout module and attention block had during ``run()``."""
    seen: set[bool] = set()
    hooks = [m.register_forward_pre_hook(lambda mod, _i: seen.add(mod.training))
             for m in model.modules() if isinstance(m, nn.Dropout) or "SelfAttention" in
             type(m).__name__]
    try:
        run()
    finally:
        for h in hooks:
            h.remove()
    return seen


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_the_student_learns_in_the_mode_the_task_says(encoder, mode):
    tmp_path, make, (ids, mask) = encoder
    model = make()
    task = _task(tmp_path, student_mode=mode)
    data = Examples((ids, mask))
    with torch.no_grad():
        teacher = model(ids, mask)
    modes = _dropout_modes(model, lambda: train(model, data, _spec(), task,
                                                teacher_logits=teacher))
    assert modes == {mode == "train"}
    assert DistillConfig().student_mode == "eval"     # the default: its targets have no dropout


def test_hidden_loss_is_relative_and_counts_only_the_masked_positions():
    t = {"a": torch.tensor([[[1.0, 0.0], [3.0, 4.0]]]), "b": torch.tensor([[[2.0], [0.0]]])}
    s = {"a": torch.tensor([[[1.0, 1.0], [9.0, 9.0]]]), "b": torch.tensor([[[1.0], [5.0]]])}
    mask = torch.tensor([[1, 0]])
    # position 1 is padding: a's error 1 over 1, b's 1 over 4
    assert hidden_loss(s, t, mask).item() == pytest.approx((1.0 + 0.25) / 2)
    # every position: a (1 + 36 + 25) / (1 + 25), b (1 + 25) / 4
    assert hidden_loss(s, t, None).item() == pytest.approx((62 / 26 + 26 / 4) / 2)
    # a model that trimmed the all-padding positions: the mask's extra columns are cut
    assert hidden_loss(s, t, torch.tensor([[1, 0, 0, 0]])).item() == pytest.approx(0.625)
    from dccore.errors import ModelError
    with pytest.raises(ModelError, match="does not lead"):      # a real position is not cut
        hidden_loss(s, t, torch.tensor([[1, 0, 1]]))


def test_the_hidden_state_term_is_added_to_the_loss(encoder):
    tmp_path, make, (ids, mask) = encoder
    teacher_model, model = make(), make()
    with torch.no_grad():        # the student's first layer drifts
        torch.manual_seed(1)
        model.bert.encoder.layer[0].output.dense.weight.add_(
            0.3 * torch.randn_like(model.bert.encoder.layer[0].output.dense.weight))
        teacher = teacher_model(ids, mask)
    data = Examples((ids, mask))
    spec = _spec(lr=1e-12, batch_size=len(ids))        # one step, nothing moves: loss at start
    plain = train(model, data, spec, _task(tmp_path), teacher_logits=teacher)
    task = _task(tmp_path, hidden=2.0, hidden_modules=["bert.encoder.layer.*"],
                 hidden_mask="mask")
    with_hidden = train(model, data, spec, task, teacher_logits=teacher,
                        teacher_model=teacher_model)
    model.eval()
    with torch.no_grad():
        s = {i: model.bert(ids, mask, output_hidden_states=True).hidden_states[i + 1]
             for i in range(2)}
        t = {i: teacher_model.bert(ids, mask, output_hidden_states=True).hidden_states[i + 1]
             for i in range(2)}
    expected = hidden_loss(s, t, mask).item()
    assert expected > 0.001
    assert with_hidden == pytest.approx(plain + 2.0 * expected, rel=1e-4)


def test_the_hidden_state_term_is_refused_when_it_cannot_be_computed(encoder):
    tmp_path, make, (ids, mask) = encoder
    model = make()
    with torch.no_grad():
        teacher = model(ids, mask)
    data = Examples((ids, mask))
    task = _task(tmp_path, hidden=1.0, hidden_modules=["bert.encoder.layer.*"])
    with pytest.raises(RecipeError, match="no teacher model"):
        train(model, data, _spec(), task, teacher_logits=teacher)
    task = _task(tmp_path, hidden=1.0, hidden_modules=["encoder.block.*"])
    with pytest.raises(RecipeError, match="'encoder.block.\\*' matches no module"):
        train(model, data, _spec(), task, teacher_logits=teacher, teacher_model=make())
    with pytest.raises(RecipeError, match="hidden_modules"):
        _task(tmp_path, hidden=1.0)
    with pytest.raises(RecipeError, match="hidden > 0"):
        _task(tmp_path, hidden_modules=["bert.encoder.layer.*"])
    with pytest.raises(RecipeError, match="not one of input_names"):
        _task(tmp_path, hidden=1.0, hidden_modules=["bert.*"], hidden_mask="attention_mask")


def _recipe(tmp_path, stages, **task):
    return {"name": "bert-retrain", "seed": 0, "model": {"name": "bert_encoder:make"},
            "data": {"batch_size": 32},
            "task": {"kind": "distill", "inputs": str(tmp_path / "samples.pt"),
                     "input_names": ["ids", "mask"], "loss": "cosine", "test_fraction": 0.25,
                     **task},
            "stages": stages}


def test_retraining_with_hidden_states_keeps_masks_and_codebooks(encoder):
    from compression.pipeline import run_recipe
    from compression.recipe import Recipe

    tmp_path = encoder[0]
    stages = [{"kind": "prune", "sparsity": 0.6, "rounds": 1, "retrain_epochs": 2, "lr": 2e-3,
               "by_type": {"Embedding": False}},
              {"kind": "share", "bits": 3, "group_size": 16},
              {"kind": "finetune_centroids", "epochs": 2, "lr": 1e-3}]
    result = run_recipe(Recipe.from_dict(_recipe(
        tmp_path, stages, hidden=1.0, hidden_modules=["bert.encoder.layer.*"],
        hidden_mask="mask")), tmp_path / "run")
    before = torch.load(tmp_path / "run" / "checkpoints" / "2_share.pt", weights_only=True)
    for name, layer in result.state.layers.items():
        if layer.assignments is None:
            continue
        assert torch.equal(layer.assignments, before["assignments"][name])
        if layer.mask is not None:
            assert torch.equal(layer.mask, before["masks"][name])
            assert (layer.weight[~layer.mask] == 0).all()
    scores = result.report["scores"]
    assert scores["3_finetune_centroids"]["cosine_mean"] > scores["2_share"]["cosine_mean"]
