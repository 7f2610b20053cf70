"""Models that take several inputs, integer ones among them: a tiny 2-layer BERT-style encoder
(token and position embeddings, hand-written attention with nn.Linear, an unused pooler), pruned
and weight-shared, through both exporters and the ``export`` command."""
from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import dcz as container
from compression.prune import magnitude_mask
from compression.share import share_layer
from dccore.errors import ExportError
from deepcompress.cli import main
from exporters import (EXPORTERS, compressed_layers, cosine_scorer, first_example, forward_params,
                       input_names, torch_outputs)
from unsupported_op import Mystery

pytestmark = pytest.mark.filterwarnings("ignore")

VOCAB, SEQ, DIM, HEADS, FF, OUT = 50, 12, 16, 2, 32, 8
BITS = 4


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(DIM, DIM) for _ in range(4))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        split = lambda t: t.unflatten(-1, (HEADS, -1)).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        att = (q @ k.transpose(-1, -2)) * (DIM // HEADS) ** -0.5 + bias
        return self.o((att.softmax(-1) @ v).transpose(1, 2).flatten(2))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.att, self.ln1, self.ln2 = Attention(), nn.LayerNorm(DIM), nn.LayerNorm(DIM)
        self.ff1, self.ff2 = nn.Linear(DIM, FF), nn.Linear(FF, DIM)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = self.ln1(x + self.att(x, bias))
        return self.ln2(x + self.ff2(torch.relu(self.ff1(x))))


class TinyEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.pos = nn.Embedding(VOCAB, DIM), nn.Embedding(SEQ, DIM)
        self.register_buffer("position_ids", torch.arange(SEQ)[None], persistent=False)
        self.blocks = nn.ModuleList(Block() for _ in range(2))
        self.pooler = nn.Linear(DIM, DIM)   # forward() never uses it (as a BERT without pooling)
        self.head = nn.Linear(DIM, OUT)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids) + self.pos(self.position_ids)
        bias = (1.0 - attention_mask[:, None, None, :].float()) * -1e4
        for block in self.blocks:
            x = block(x, bias)
        return self.head(x[:, 0])


def tiny_encoder() -> nn.Module:
    """The factory ``--model`` names (``this_module:tiny_encoder``)."""
    return TinyEncoder()


def compress(model: nn.Module, sparsity: float = 0.6) -> nn.Module:
    """Prune and weight-share every Linear and Embedding weight, the pooler's and the position
    embedding's included: what the pipeline's stages do."""
    for name in [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Embedding))]:
        weight = model.get_parameter(name)
        centroids, assign, mask = share_layer(weight.data, magnitude_mask(weight.data, sparsity=sparsity),
                                              BITS, "linear", 10)
        weight.data = torch.where(mask, centroids[assign], torch.zeros(()))
    return model.eval()


def encoder_inputs(n: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """int64 token ids and a 0/1 int64 mask with a different amount of padding per example."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (n, SEQ), generator=g)
    mask = torch.ones(n, SEQ, dtype=torch.int64)
    for i in range(n):
        mask[i, SEQ - i % (SEQ - 1):] = 0
    return ids, mask


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    return compress(TinyEncoder())


@pytest.fixture(scope="module")
def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    return encoder_inputs()


@pytest.fixture(scope="module", params=["tflite", "coreml"])
def exported(request, model, inputs, tmp_path_factory):
    exporter = EXPORTERS.get(request.param)
    out = tmp_path_factory.mktemp(request.param) / f"encoder{exporter.suffix}"
    report = exporter.export(model, first_example(inputs), out)
    return exporter, report


class _Keywords(nn.Module):
    def forward(self, tokens, /, mask, *rest, scale=1.0, **extra):
        return tokens


def test_forward_params_names_the_positional_parameters_in_order(model):
    assert forward_params(model) == ["input_ids", "attention_mask"]
    assert forward_params(_Keywords()) == ["tokens", "mask"]   # *rest, keyword-only, **extra: no
    assert input_names(_Keywords(), 2) == ["tokens", "mask"]
    assert input_names(_Keywords(), 3) == ["input_0", "input_1", "input_2"]   # too few names
    unreadable = nn.Module()
    unreadable.forward = max                                   # a builtin with no signature
    assert forward_params(unreadable) == [] and input_names(unreadable, 1) == ["input_0"]


def test_the_artifact_computes_what_pytorch_computes(exported, model, inputs):
    exporter, report = exported
    check = exporter.validate(report, model, inputs, cosine_scorer())
    assert check.ok, check.to_dict()
    if exporter.name == "tflite":   # run in the real LiteRT interpreter, XNNPACK and all
        assert check.score.figures["min_cosine"] >= 0.999 and check.examples == 16
    else:   # every compressed weight decoded from the package equals ours in fp16
        assert check.checks["weights_match"] and check.checks["all_compressed"]
        if sys.platform == "darwin":
            assert check.score.figures["min_cosine"] >= 0.999


def test_dropped_and_folded_weights_are_skipped_with_a_note(exported, model):
    _, report = exported
    assert set(report.skipped) == {"pooler.weight", "pos.weight"}
    assert "not used by forward()" in report.skipped["pooler.weight"]
    assert "folds it" in report.skipped["pos.weight"]
    assert set(report.layers) == set(compressed_layers(model)) - set(report.skipped)
    assert "embed.weight" in report.layers and "blocks.1.att.q.weight" in report.layers


def test_coreml_decodes_linear_and_embedding_codebooks_exactly(model, inputs, tmp_path):
    from ios_export import export_coreml, verify_coreml
    result = export_coreml(model, first_example(inputs), tmp_path / "e.mlpackage", target="iOS18")
    state = model.state_dict()
    check = verify_coreml(result.path, {n: state[n].numpy() for n in result.layers})
    assert check.ok
    for name, info in compressed_layers(model, list(result.layers)).items():
        layer = check.layers[name]
        assert layer.match and layer.storage == "constexpr_lut_to_sparse -> constexpr_sparse_to_dense"
        assert layer.nnz == info.nnz and layer.lut_entries <= 2 ** BITS


def test_tflite_stores_every_weight_in_the_variant(model, inputs, tmp_path):
    from android_export import export_tflite
    result = export_tflite(model, first_example(inputs), tmp_path / "e.tflite",
                           variant="sparse-float16")
    stored = {n: s.stored_as for n, s in result.layers.items()}
    # fp16 everywhere; CSR wherever it pays, except the embedding table, which XNNPACK reads
    # wrongly behind DENSIFY -> DEQUANTIZE (android_export._flatbuffer)
    assert stored.pop("embed.weight") == "float16"
    assert set(stored.values()) == {"sparse float16"}
    assert all(s.zeros_kept for s in result.layers.values())


def test_tflite_takes_int64_ids_as_int32_and_refuses_what_does_not_fit(model, inputs, tmp_path):
    from android_export import export_tflite, tflite_outputs
    path = export_tflite(model, first_example(inputs), tmp_path / "e.tflite", variant="float32").path
    ids, mask = inputs
    got = tflite_outputs(path, (ids, mask))
    assert np.max(np.abs(got - torch_outputs(model, inputs))) < 1e-4
    with pytest.raises(ExportError, match="do not fit its int32"):
        tflite_outputs(path, (ids + 2 ** 40, mask))
    with pytest.raises(ExportError, match="takes 2 inputs; 1 were given"):
        tflite_outputs(path, ids)


@pytest.mark.parametrize("fmt", ["tflite", "coreml"])
def test_an_unsupported_op_names_its_layer_in_a_multi_input_model(fmt, inputs, tmp_path):
    torch.manual_seed(0)
    model = TinyEncoder().eval()
    model.blocks[1].ff2 = nn.Sequential(model.blocks[1].ff2, Mystery())
    exporter = EXPORTERS.get(fmt)
    with pytest.raises(ExportError) as err:
        exporter.export(model, first_example(inputs), tmp_path / f"bad{exporter.suffix}")
    message = str(err.value)
    assert "blocks.1.ff2.1 (Mystery)" in message and "'mystery'" in message
    assert "\n" not in message and list(tmp_path.iterdir()) == []


class TorchEncoder(nn.Module):
    """nn.TransformerEncoderLayer: in eval mode PyTorch runs it as one fused op."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.enc = nn.ModuleList(nn.TransformerEncoderLayer(DIM, HEADS, FF, dropout=0.0, batch_first=True)
                                 for _ in range(2))
        self.head = nn.Linear(DIM, OUT)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids)
        for layer in self.enc:
            x = layer(x, src_key_padding_mask=attention_mask == 0)
        return self.head(x[:, 0])


def test_transformer_encoder_layer_converts_to_tflite_and_is_named_by_coreml(inputs, tmp_path):
    torch.manual_seed(0)
    model = compress(TorchEncoder())
    tflite = EXPORTERS.get("tflite")
    report = tflite.export(model, first_example(inputs), tmp_path / "t.tflite")
    assert tflite.validate(report, model, inputs, cosine_scorer()).ok
    with pytest.raises(ExportError, match=r"layer enc\.0 \(TransformerEncoderLayer\): op "
                                          r"'transformer_encoder_layer_fwd' is not supported by coremltools"):
        EXPORTERS.get("coreml").export(model, first_example(inputs), tmp_path / "t.mlpackage")


# ---------------------------------------------------------------------------------------------
# The command: a .dcz of the encoder, its examples from a file

@pytest.fixture(scope="module")
def encoder_dcz(model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("enc") / "encoder.dcz"
    container.pack(model.state_dict(), path,
                   compressed={n: {"bits": BITS} for n in compressed_layers(model)},
                   meta={"model": {"name": f"{__name__}:tiny_encoder"}})   # no image shape
    return path


def _export(argv: list[str]) -> tuple[int, dict]:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["export", *argv, "--json"])
    return code, json.loads(stdout.getvalue()) if stdout.getvalue() else {}


def test_command_exports_an_encoder_with_inputs_from_a_file(encoder_dcz, inputs, tmp_path):
    ids, mask = inputs
    examples = tmp_path / "examples.pt"
    torch.save({"input_ids": ids, "attention_mask": mask}, examples)
    code, report = _export([str(encoder_dcz), "--model", f"{__name__}:tiny_encoder",
                            "--inputs", str(examples), "--tflite", str(tmp_path / "e.tflite"),
                            "--coreml", str(tmp_path / "e.mlpackage")])
    assert code == 0 and report["ok"]
    assert report["inputs"]["names"] == ["input_ids", "attention_mask"] and report["examples"] == 16
    assert report["inputs"]["dtypes"] == ["int64", "int64"]
    t, c = report["tflite"], report["coreml"]
    assert t["min_cosine"] >= 0.999 and t["min_cosine_required"] == 0.999   # no labels: cosine
    assert c["weights_match"] and c["all_compressed"]
    for fmt in (t, c):
        assert set(fmt["skipped"]) == {"pooler.weight", "pos.weight"}
        assert fmt["bytes"] < fmt["dense_bytes"]


def test_command_orders_named_inputs_by_forward_and_scores_labels(encoder_dcz, model, inputs, tmp_path):
    ids, mask = inputs
    labels = torch_outputs(model, inputs).argmax(1)
    examples = tmp_path / "examples.npz"
    np.savez(examples, attention_mask=mask.numpy(), labels=labels, input_ids=ids.numpy())
    # float16 weights: an untrained encoder's near-tied logits would flip under int8 rounding,
    # and one flip in 10 examples is 10 points; this test is about the inputs' order and labels
    code, report = _export([str(encoder_dcz), "--model", f"{__name__}:tiny_encoder",
                            "--inputs", str(examples), "--limit", "10",
                            "--tflite", str(tmp_path / "e.tflite"),
                            "--tflite-variant", "sparse-float16"])
    assert code == 0 and report["inputs"]["names"] == ["input_ids", "attention_mask"]
    t = report["tflite"]
    assert t["examples"] == 10 and t["torch_accuracy"] == 1.0 and t["accuracy"] == 1.0


def test_command_refuses_inputs_that_do_not_fit(encoder_dcz, inputs, tmp_path, capsys):
    ids, mask = inputs
    bad = tmp_path / "bad.npz"
    np.savez(bad, input_ids=ids.numpy(), token_type_ids=mask.numpy())
    code = main(["export", str(encoder_dcz), "--model", f"{__name__}:tiny_encoder",
                 "--inputs", str(bad), "--tflite", str(tmp_path / "e.tflite")])
    assert code == 2 and "input_ids" in capsys.readouterr().err
    pickled = tmp_path / "code.pt"
    torch.save({"input_ids": ids, "x": len}, pickled)   # a reference to code: not plain tensors
    code = main(["export", str(encoder_dcz), "--model", f"{__name__}:tiny_encoder",
                 "--inputs", str(pickled), "--tflite", str(tmp_path / "e.tflite")])
    assert code == 1 and "not a file of plain tensors" in capsys.readouterr().err
    assert not (tmp_path / "e.tflite").exists()
