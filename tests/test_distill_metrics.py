"""The label-free task leads with what the user reads: the top-1 class of logits, the decoded
sequence of a recogniser, the cosine of an embedding; the report says which and why."""
from __future__ import annotations

import json
import textwrap

import pytest
import torch
from torch import nn

from compression.tasks import make_task
from compression.tasks.distill import DistillConfig
from dccore.errors import RecipeError


def _task(tmp_path, samples, **cfg):
    torch.save(samples, tmp_path / "samples.pt")
    config = DistillConfig.from_dict({"kind": "distill", "inputs": str(tmp_path / "samples.pt"),
                                      **cfg}, "task")
    return make_task(config, seed=0)


class Returns(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


AUTO_CASES = {
    "logits": (lambda x: x[:, :4] * 3, "top1_agreement", "logits"),
    "logits over steps": (lambda x: x.reshape(-1, 2, 4), "sequence_agreement", "position axis"),
    "unit rows": (lambda x: nn.functional.normalize(x, dim=1), "cosine_mean", "unit-length"),
    "one value": (lambda x: x[:, :1], "cosine_mean", "one value per example"),
    "ModelOutput logits": (lambda x: {"logits": x, "hidden": x}, "top1_agreement", "logits"),
    "sentence embedding": (lambda x: {"sentence_embedding": x}, "cosine_mean", "embedding"),
}


@pytest.mark.parametrize("case", list(AUTO_CASES))
def test_auto_decides_from_the_outputs_and_says_why(tmp_path, case):
    fn, lead, why = AUTO_CASES[case]
    task = _task(tmp_path, torch.randn(10, 8))
    with pytest.raises(RuntimeError, match="bind"):
        task.primary                   # noqa: B018 (undecided until it sees the outputs)
    task.bind(Returns(fn))
    assert task.primary == lead and why in task.primary_reason
    assert lead in task.evaluate(Returns(fn), task.data().test)


def test_the_recipe_decides_before_any_output(tmp_path):
    assert _task(tmp_path, torch.randn(6, 3), loss="cosine").primary == "cosine_mean"
    task = _task(tmp_path, torch.randn(6, 3), decoder="ctc_greedy")
    assert task.primary == "sequence_agreement" and "ctc_greedy" in task.primary_reason
    task = _task(tmp_path, torch.randn(6, 3), metric="agreement", loss="cosine")
    assert task.primary == "top1_agreement" and "in the recipe" in task.primary_reason
    with pytest.raises(RecipeError, match="decoder"):
        _task(tmp_path, torch.randn(6, 3), metric="cosine", decoder="ctc_greedy")
    with pytest.raises(RecipeError, match="decoder"):
        _task(tmp_path, torch.randn(6, 3), decoder="beam")


def test_agreement_sees_a_flipped_decision_that_cosine_hides(tmp_path):
    task = _task(tmp_path, torch.randn(4, 2), metric="agreement")
    ref = torch.tensor([[1.0, 0.999], [0.2, 3.0]])
    got = torch.tensor([[0.999, 1.0], [0.2, 3.0]])          # the first decision flips
    m = task.metrics(got, None, ref)
    assert m["cosine_mean"] > 0.9999 and m["top1_agreement"] == 0.5
    assert task.primary == "top1_agreement"


def test_sequences_decoded_by_ctc_greedy_hand_computed(tmp_path):
    task = _task(tmp_path, torch.randn(4, 2), decoder="ctc_greedy")

    def logits(paths):       # one-hot scores over 3 classes (0 = blank) along each path
        return nn.functional.one_hot(torch.tensor(paths), 3).float()

    ref = logits([[1, 1, 0, 2], [2, 0, 2, 2]])      # decodes to (1, 2) and (2, 2)
    got = logits([[1, 0, 1, 2], [2, 2, 0, 2]])      # (1, 1, 2): one insertion; (2, 2): same
    m = task.metrics(got, None, ref)
    assert m["sequence_agreement"] == 0.5
    assert m["token_error_rate"] == pytest.approx(1 / 4)
    assert m["top1_agreement"] == 0.5     # per position: 4 of the 8 steps agree


DECODER = textwrap.dedent('''
    def letters(outputs):
        """A user's decoder: the argmax path as text, blanks (class 0) dropped, no collapsing."""
        return ["".join("-abcd"[c] for c in row if c) for row in outputs.argmax(-1).tolist()]
''')


@pytest.fixture
def user_decoder(user_module):
    user_module("tiny_decoder", DECODER)
    return "tiny_decoder:letters"


def test_a_user_decoder_named_in_the_recipe(tmp_path, user_decoder):
    task = _task(tmp_path, torch.randn(4, 2), decoder=user_decoder)
    ref = nn.functional.one_hot(torch.tensor([[1, 1, 2], [3, 0, 4]]), 5).float()
    got = nn.functional.one_hot(torch.tensor([[1, 2, 2], [3, 0, 4]]), 5).float()
    m = task.metrics(got, None, ref)      # "aab" vs "abb"; "cd" vs "cd"
    assert m["sequence_agreement"] == 0.5 and m["token_error_rate"] == pytest.approx(1 / 5)


OCR_MODEL = textwrap.dedent('''
    import torch
    from torch import nn

    class TinyOCR(nn.Module):
        """Conv + BatchNorm over a text-line image, a bidirectional LSTM over its columns, per-
        column class scores (CTC-style: class 0 is the blank)."""

        def __init__(self):
            super().__init__()
            self.conv = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
            self.rnn = nn.LSTM(4 * 4, 8, bidirectional=True, batch_first=True)
            self.head = nn.Linear(16, 6)

        def forward(self, x):                      # x: (batch, 1, 4, width)
            f = self.conv(x)
            f = f.permute(0, 3, 1, 2).flatten(2)   # (batch, width, channels x height)
            return self.head(self.rnn(f)[0])

    def make():
        torch.manual_seed(3)
        return TinyOCR()
''')


@pytest.fixture
def ocr_env(user_module):
    tmp_path = user_module("tiny_ocr", OCR_MODEL)
    torch.save(torch.rand(64, 1, 4, 12, generator=torch.Generator().manual_seed(0)),
               tmp_path / "lines.pt")
    return tmp_path


@pytest.mark.parametrize("task_settings, lead", [
    ({}, "sequence_agreement"), ({"decoder": "ctc_greedy"}, "sequence_agreement"),
    ({"metric": "cosine"}, "cosine_mean")])
def test_the_report_leads_with_the_chosen_metric_and_says_why(ocr_env, task_settings, lead):
    from compression.pipeline import run_recipe
    from compression.recipe import Recipe

    recipe = {"name": "ocr", "seed": 0, "model": {"name": "tiny_ocr:make"},
              "task": {"kind": "distill", "inputs": str(ocr_env / "lines.pt"), **task_settings},
              "stages": [{"kind": "prune", "sparsity": 0.5, "rounds": 1, "retrain_epochs": 0},
                         {"kind": "share", "bits": 3}]}
    lines: list[str] = []
    result = run_recipe(Recipe.from_dict(recipe), ocr_env / "run", log=lines.append)
    saved = json.loads((ocr_env / "run" / "report.json").read_text())["primary_metric"]
    assert saved["name"] == lead and saved["why"] and saved["baseline"] == 1.0
    assert any(line.startswith(f"leading metric: {lead} (") for line in lines)
    final = result.report["scores"]["2_share"]
    assert "sequence_agreement" in final or lead == "cosine_mean"
    assert final["top1_agreement"] <= 1.0 and 0 < final["cosine_mean"] <= 1.0
