"""Core ML: the share stage's grouped codebooks stored as one LUT per group of rows (iOS 18),
embedding tables palettized, joint sparse + grouped LUTs, and the per-layer choice said in words.
Tiny models with hand-built weights: every group's values are known, so the LUT counts and index
widths are too."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from exporters import EXPORTERS, accuracy_scorer, describe_weight

pytest.importorskip("coremltools")
EXPORTERS.names()   # the built-in exporters register in their order before ios_export is imported


def grouped(rows: int, cols: int, group_size: int, k: int, *, prune: float = 0.0,
            seed: int = 0) -> torch.Tensor:
    """Every ``group_size`` rows draw from their own ``k`` values (all groups' values differ), so
    the tensor holds ``k`` x groups distinct values but each group only ``k``."""
    g = torch.Generator().manual_seed(seed)
    w = torch.empty(rows, cols)
    for start in range(0, rows, group_size):
        book = torch.randn(k, generator=g) + 10 * start   # never shared across groups
        w[start:start + group_size] = book[torch.randint(0, k, (min(group_size, rows - start), cols),
                                                         generator=g)]
    if prune:
        w[torch.rand(rows, cols, generator=g) < prune] = 0
    return w


class Encoder(nn.Module):
    """A token-id model: an embedding table (read by a gather), a Linear, an output Linear."""

    def __init__(self, vocab: int = 100) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, 16)
        self.fc = nn.Linear(16, 32)
        self.out = nn.Linear(32, 8)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.fc(self.emb(ids).mean(1))))


IDS = torch.randint(0, 100, (1, 5), generator=torch.Generator().manual_seed(0))


def layers_of(model: nn.Module, group_sizes: dict[str, int]) -> dict:
    state = model.state_dict()
    return {n: dataclasses.replace(describe_weight(n, state[n].numpy()), group_size=gs)
            for n, gs in group_sizes.items()}


def export_and_check(model: nn.Module, group_sizes: dict[str, int], path, **kwargs):
    from ios_export import export_coreml, verify_coreml
    result = export_coreml(model, IDS, path, layers=layers_of(model, group_sizes), **kwargs)
    state = model.state_dict()
    check = verify_coreml(path, {n: state[n].numpy() for n in group_sizes})
    return result, check


def test_grouped_codebooks_become_one_lut_per_group_read_back_equal(tmp_path):
    model = Encoder().eval()
    with torch.no_grad():
        model.fc.weight.copy_(grouped(32, 16, 8, 4, seed=2))   # 4 groups x 4 values: 16 in all
    result, check = export_and_check(model, {"fc.weight": 8}, tmp_path / "m.mlpackage")
    plan, layer = result.layers["fc.weight"], check.layers["fc.weight"]
    # one LUT for the tensor would need 4-bit indices; a LUT per group of 8 rows needs 2
    assert (plan.method, plan.nbits, plan.luts, plan.group_size) == ("palettize", 2, 4, 8)
    assert "4 LUTs of 8 rows" in plan.reason and "1 LUT" in plan.reason   # the alternative, priced
    assert check.ok and layer.storage == "constexpr_lut_to_dense"
    assert (layer.luts, layer.lut_entries) == (4, 4)
    # the converter's long internal names are replaced by short ones (inputs, outputs kept)
    from ios_export import package_weights
    assert all(len(var) <= 2 for var in package_weights(tmp_path / "m.mlpackage"))


def test_embedding_table_is_palettized_padded_to_whole_groups(tmp_path):
    model = Encoder(vocab=100).eval()        # 100 rows: groups of 8 leave 4 over
    with torch.no_grad():
        model.emb.weight.copy_(grouped(100, 16, 8, 4, seed=1))
    result, check = export_and_check(model, {"emb.weight": 8}, tmp_path / "m.mlpackage")
    plan, layer = result.layers["emb.weight"], check.layers["emb.weight"]
    assert (plan.method, plan.nbits, plan.luts, plan.pad_rows) == ("palettize", 2, 13, 4)
    assert check.ok and layer.compressed and layer.pad_rows == 4
    assert np.array_equal(check.weights["emb.weight"],
                          model.emb.weight.detach().numpy().astype(np.float16))


def test_a_tied_table_is_not_padded(tmp_path):
    """Rows appended to a table an output layer also reads would change that layer's output."""
    from ios_export._convert import _gathered

    model = Encoder()
    assert _gathered(model, "emb.weight") and not _gathered(model, "fc.weight")
    model.out = nn.Linear(16, 100)
    model.out.weight = model.emb.weight
    assert not _gathered(model, "emb.weight")


def test_pruned_grouped_layer_is_stored_joint_with_a_lut_per_group(tmp_path):
    model = Encoder().eval()
    with torch.no_grad():
        model.fc.weight.copy_(grouped(32, 16, 8, 4, prune=0.8, seed=3))
    result, check = export_and_check(model, {"fc.weight": 8}, tmp_path / "m.mlpackage")
    plan, layer = result.layers["fc.weight"], check.layers["fc.weight"]
    assert (plan.method, plan.nbits, plan.luts) == ("joint", 2, 4)
    assert layer.storage == "constexpr_lut_to_sparse -> constexpr_sparse_to_dense"
    assert check.ok and layer.luts == 4
    # the same layer can still be forced into another storage
    forced, check = export_and_check(model, {"fc.weight": 8}, tmp_path / "p.mlpackage",
                                     method="palettize")
    assert forced.layers["fc.weight"].method == "palettize" and "(asked for)" in \
        forced.layers["fc.weight"].reason and check.ok


def test_a_width_core_ml_lacks_is_padded_and_said(tmp_path):
    model = Encoder().eval()
    with torch.no_grad():
        model.fc.weight.copy_(grouped(32, 16, 32, 32, seed=4))   # 32 values: 5 bits
    result, check = export_and_check(model, {"fc.weight": 32}, tmp_path / "m.mlpackage")
    plan = result.layers["fc.weight"]
    assert plan.nbits == 6 and "need 5-bit indices, stored as 6" in plan.reason and check.ok


def test_validation_scores_the_task_metric_through_the_decoded_weights(tmp_path):
    from ios_export import CoreMLExporter, CoreMLOptions

    torch.manual_seed(0)
    model = Encoder().eval()
    with torch.no_grad():
        model.fc.weight.copy_(grouped(32, 16, 8, 4, seed=2))
    exporter = CoreMLExporter()
    report = exporter.export(model, IDS, tmp_path / "m.mlpackage", CoreMLOptions(),
                             layers=layers_of(model, {"fc.weight": 8}))
    ids = torch.randint(0, 100, (20, 5), generator=torch.Generator().manual_seed(1))
    labels = model(ids).argmax(1).numpy()
    labels[:5] = (labels[:5] + 1) % 8      # 75% for the model itself
    check = exporter.validate(report, model, ids, accuracy_scorer(labels))
    decoded = check.checks["decoded"]
    assert decoded["examples"] == 20 and decoded["torch_accuracy"] == pytest.approx(0.75)
    # the decoded weights are ours in fp16: at most a near tie may flip
    assert abs(decoded["accuracy"] - 0.75) <= 0.05 and decoded["agreement"] >= 0.95
    assert exporter.baselines(CoreMLOptions()).keys() == {"dense fp32", "dense fp16"}
