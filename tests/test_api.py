"""The Python API: Compressor in the user's own training loop, compress() post-training, run()
giving the same file as the command, and two processes under DistributedDataParallel."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from compression.api import Compressor, compress, run

ROOT = Path(__file__).resolve().parent.parent


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def _data(n=64):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 8, generator=g)
    return x, (x[:, :4] * 3).sum(1, keepdim=True).repeat(1, 4)


RECIPE = {"stages": [
    {"kind": "prune", "sparsity": 0.5, "rounds": 2, "retrain_epochs": 1},
    {"kind": "share", "bits": 2},
    {"kind": "finetune_centroids", "epochs": 1},
    {"kind": "encode", "coder": "huffman"},
]}


def test_the_users_own_loop_runs_the_recipe_as_a_schedule(tmp_path):
    import dcz

    model, (x, y) = _model(), _data()
    comp = Compressor(model, RECIPE)
    comp.prepare(steps_per_epoch=4)                   # 4 batches of 16
    assert comp.report()["sparsity"] == pytest.approx((0.5 ** 0.5 * 0 + 1 - 0.5 ** 0.5), abs=0.02)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    seen_share = None
    for epoch in range(3):
        for i in range(0, 64, 16):
            loss = nn.functional.mse_loss(model(x[i:i + 16]), y[i:i + 16])
            opt.zero_grad()
            loss.backward()
            opt.step()
            comp.step()
            if seen_share is None and comp.state.layers["0"].centroids is not None:
                seen_share = comp.report()["step"]
    assert seen_share == 8            # prune rounds at steps 0 and 4, then sharing at step 8
    comp.finalize()
    report = comp.report()
    for row in report["layers"]:
        assert row["sparsity"] == pytest.approx(0.5, abs=1 / row["parameters"])
        assert row["distinct_values"] <= 4 and row["bits"] == 2
    saved = comp.save(tmp_path / "m.dcz")
    back = dcz.load(saved.path).state_dict
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())


def test_a_fine_tuned_centroid_moves_by_its_clusters_summed_gradient():
    layer = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 1.1, -1.0, -0.9]]))
    model = nn.Sequential(layer)
    comp = Compressor(model, {"stages": [{"kind": "share", "bits": 1, "init": "linear"},
                                         {"kind": "finetune_centroids", "epochs": 1}]})
    comp.prepare(steps_per_epoch=1)
    before = comp.state.layers["0"].centroids.clone()          # [-0.95, 1.05]
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    model(x).sum().backward()                                  # d/dw = x
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    comp.step()
    after = comp.state.layers["0"].centroids
    # cluster {w0, w1} sums grads 1 + 2, cluster {w2, w3} sums 3 + 4 (the paper's rule)
    assert torch.allclose(after, before - 0.1 * torch.tensor([7.0, 3.0]))
    assert torch.equal(layer.weight.detach(), after[comp.state.layers["0"].assignments])


def test_compress_post_training_in_one_call_with_calibration_inputs(tmp_path):
    model, (x, _) = _model(), _data(128)
    comp = compress(model, {"stages": [
        {"kind": "prune", "sparsity": 0.5, "rounds": 1, "retrain_epochs": 0, "method": "wanda"},
        {"kind": "share", "bits": 3, "weighting": "fisher", "group_size": 4}]}, calibration=x)
    w = model[0].weight.detach()
    assert float((w == 0).float().mean()) == pytest.approx(0.5)
    assert all((row == 0).sum() == 4 for row in w)             # Wanda: per output row
    assert comp.save(tmp_path / "m.dcz").bytes > 0
    with pytest.raises(Exception, match="does not train"):
        compress(_model(), RECIPE, calibration=x)


def test_run_gives_the_file_the_command_gives(tmp_path):
    recipe = tmp_path / "tiny.toml"
    recipe.write_text('name = "tiny"\n[data]\ntrain_limit = 300\ntest_limit = 100\n'
                      '[baseline]\nepochs = 1\n[[stages]]\nkind = "prune"\nsparsity = 0.8\n'
                      'rounds = 1\nretrain_epochs = 1\n[[stages]]\nkind = "share"\nbits = 3\n')
    run(str(recipe), tmp_path / "api")
    from deepcompress.cli import main

    assert main(["run", str(recipe), "--out", str(tmp_path / "cli"), "--quiet"]) == 0
    assert (tmp_path / "api" / "model.dcz").read_bytes() == \
        (tmp_path / "cli" / "model.dcz").read_bytes()


# Both workers end alike: ``same`` says whether what each rank compressed (``compressed``, a
# CompressionState) has every mask, codebook, assignment and weight equal on the two ranks.
SAME_ON_BOTH_RANKS = r'''
state = {f"{k}.{n}": v for n, layer in compressed.layers.items()
         for k, v in (("mask", layer.mask), ("centroids", layer.centroids),
                      ("assign", layer.assignments), ("weight", layer.weight.detach()))}
gathered = [None, None]
dist.all_gather_object(gathered, state)
same = all(torch.equal(gathered[0][k], gathered[1][k]) for k in state)
'''


DDP_WORKER = r'''
import os, sys, torch
import torch.distributed as dist
from torch import nn
from compression.api import Compressor

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
ddp = nn.parallel.DistributedDataParallel(model)
g = torch.Generator().manual_seed(10 + rank)                 # every rank its own data
x = torch.randn(64, 8, generator=g)
y = x[:, :4].sum(1, keepdim=True).repeat(1, 4)
comp = Compressor(ddp, {"stages": [
    {"kind": "prune", "sparsity": 0.6, "rounds": 1, "retrain_epochs": 1, "method": "wanda"},
    {"kind": "share", "bits": 2, "weighting": "fisher"},
    {"kind": "finetune_centroids", "epochs": 1}]}, calibration=x)
comp.prepare(steps_per_epoch=4)
opt = torch.optim.Adam(ddp.parameters(), lr=1e-2)
for epoch in range(2):
    for i in range(0, 64, 16):
        loss = nn.functional.mse_loss(ddp(x[i:i + 16]), y[i:i + 16])
        opt.zero_grad(); loss.backward(); opt.step(); comp.step()
comp.finalize()
compressed = comp.state
''' + SAME_ON_BOTH_RANKS + r'''
comp.save(sys.argv[1])
print(f"RANK{rank} same={same} files={sorted(os.listdir(os.path.dirname(sys.argv[1])))}")
dist.destroy_process_group()
'''


def rank_lines(stdout: str) -> list[str]:
    """Each worker's RANK line, sorted. torchrun relays both workers' output into one pipe, and
    two lines printed at once can arrive glued together ("RANK0 ...RANK1 ..."), so split at
    each "RANK" rather than at line ends."""
    return sorted("RANK" + part.split("\n")[0].rstrip() for part in stdout.split("RANK")[1:])


def test_two_processes_under_ddp_agree_on_every_mask_and_codebook(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(DDP_WORKER)
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", str(script), str(out / "m.dcz")],
                          capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = rank_lines(proc.stdout)
    assert lines == ["RANK0 same=True files=['m.dcz']", "RANK1 same=True files=['m.dcz']"]
    assert [p.name for p in out.iterdir()] == ["m.dcz"]        # one file, written once


RUN_WORKER = r'''
import sys, torch
import torch.distributed as dist
from compression.api import run

dist.init_process_group("gloo")
result = run(sys.argv[1], sys.argv[2])
compressed = result.state
''' + SAME_ON_BOTH_RANKS + r'''
print(f"RANK{dist.get_rank()} same={same} report={'compressed_bytes' in result.report}")
dist.destroy_process_group()
'''


def test_run_under_torchrun_trains_on_both_ranks_and_writes_once(tmp_path):
    script = tmp_path / "run_worker.py"
    script.write_text(RUN_WORKER)
    recipe = tmp_path / "tiny.toml"
    recipe.write_text('name = "tiny"\n[data]\ntrain_limit = 256\ntest_limit = 100\n'
                      'batch_size = 64\n[baseline]\nepochs = 1\n[[stages]]\nkind = "prune"\n'
                      'sparsity = 0.8\nrounds = 1\nretrain_epochs = 1\n[[stages]]\n'
                      'kind = "share"\nbits = 3\n[[stages]]\nkind = "finetune_centroids"\n'
                      'epochs = 1\n')
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", str(script), str(recipe), str(tmp_path / "run")],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = rank_lines(proc.stdout)
    assert lines == ["RANK0 same=True report=True", "RANK1 same=True report=False"]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "checkpoints", "model.dcz", "recipe.json", "report.json", "stages"]
