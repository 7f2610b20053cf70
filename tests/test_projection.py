"""ProjectionNet: hyperplanes regenerated from a seed (LiteRT's own LSH_PROJECTION is the
reference), the joint loss and its switch, the report's bits, the .dcz that holds only the
projection network, and the TFLite / Core ML exports checked against PyTorch."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from compression.models import build_model
from compression.pipeline import run_recipe
from compression.projection import (LSHProjection, ProjectionNet, hyperplanes, lsh_seeds,
                                    parameter_bits)
from compression.recipe import Recipe, load_recipe
from compression.stages.projection import ProjectionConfig, _losses
from compression.tasks import make_task, default_task_config
from dccore.errors import ContainerError, ModelError, RecipeError


def lsh_bits(x: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """LSH_PROJECTION (DENSE) of one example ``x`` (in_features,) exactly as LiteRT computes it:
    float64 sums over the integer hyperplanes; 0/1 per bit."""
    h = hyperplanes(seeds, x.size)
    return (h @ np.asarray(x, dtype=np.float64).reshape(-1) > 0).astype(np.int32)


def _lsh_model(seeds: np.ndarray, n_in: int) -> bytes:
    """A one-op .tflite: LSH_PROJECTION(DENSE) of an input vector, hashing k = 0..n_in-1."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as fb

    m = fb.ModelT()
    m.version = 3
    oc = fb.OperatorCodeT()
    oc.builtinCode = oc.deprecatedBuiltinCode = fb.BuiltinOperator.LSH_PROJECTION
    oc.version = 1
    m.operatorCodes, m.buffers = [oc], [fb.BufferT()]

    def tensor(name, shape, ttype, data=None):
        b = fb.BufferT()
        if data is not None:
            b.data = np.frombuffer(data.tobytes(), np.uint8)
        m.buffers.append(b)
        t = fb.TensorT()
        t.name, t.shape, t.type, t.buffer = name, list(shape), ttype, len(m.buffers) - 1
        return t

    sg = fb.SubGraphT()
    sg.tensors = [tensor("hash", seeds.shape, fb.TensorType.FLOAT32, seeds),
                  tensor("index", (n_in,), fb.TensorType.INT32, np.arange(n_in, dtype=np.int32)),
                  tensor("x", (n_in,), fb.TensorType.FLOAT32),
                  tensor("bits", (seeds.size,), fb.TensorType.INT32)]
    op = fb.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 1, 2], [3]
    op.builtinOptionsType = fb.BuiltinOptions.LSHProjectionOptions
    op.builtinOptions = fb.LSHProjectionOptionsT()
    op.builtinOptions.type = fb.LSHProjectionType.DENSE
    sg.inputs, sg.outputs, sg.operators = [2], [3], [op]
    m.subgraphs = [sg]
    builder = flatbuffers.Builder(1024)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def test_our_hyperplanes_are_litert_lsh_projection_bit_for_bit():
    from ai_edge_litert.interpreter import Interpreter

    seeds, n_in = lsh_seeds(7, 5, 6), 50
    it = Interpreter(model_content=_lsh_model(seeds, n_in))
    it.allocate_tensors()
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = (rng.standard_normal(n_in) * (rng.random(n_in) < 0.6)).astype(np.float32)
        it.set_tensor(it.get_input_details()[0]["index"], x)
        it.invoke()
        np.testing.assert_array_equal(it.get_tensor(it.get_output_details()[0]["index"]),
                                      lsh_bits(x, seeds))


def test_hyperplanes_come_from_the_seed_and_cost_no_parameters():
    a, b, c = (ProjectionNet(T=4, d=3, in_features=20, seed=s) for s in (5, 5, 6))
    assert not any("planes" in k for k in a.state_dict())          # not stored
    assert torch.equal(a.projection.planes, b.projection.planes)   # regenerated
    assert not torch.equal(a.projection.planes, c.projection.planes)
    seeds = lsh_seeds(5, 4, 3)
    assert len(np.unique(seeds)) == 12 and seeds.dtype == np.float32
    assert (seeds == np.floor(seeds)).all() and seeds.max() < 2**24   # exact in float32
    # 12 bits -> 10 classes: the only parameters are the output layer's 130
    assert sum(p.numel() for p in a.parameters()) == 130 and parameter_bits(a) == 32 * 130


def test_bits_are_the_sign_of_each_hyperplane_product():
    proj = LSHProjection(in_features=30, n_hash=4, n_bits=8, seed=1)
    x = torch.randn(16, 30)
    bits = proj(x)
    assert bits.shape == (16, 32) and set(bits.unique().tolist()) <= {0.0, 1.0}
    exact = np.stack([lsh_bits(r, proj.seeds) for r in x.numpy()])
    assert (bits.numpy() == exact).mean() > 0.999     # float32 vs float64 rounding only
    h = hyperplanes(proj.seeds, 30)
    assert h.shape == (32, 30) and np.abs(h).max() > 2.0**60      # int64 hash values


def test_projection_size_a_file_may_ask_for_is_bounded():
    with pytest.raises(ModelError, match="hyperplane entries"):
        ProjectionNet(T=128, d=128, in_features=4096)
    with pytest.raises(ModelError, match="positive integer"):
        ProjectionNet(T=0)
    with pytest.raises(ModelError, match="hidden"):
        ProjectionNet(hidden=[0])


def test_a_dcz_that_names_a_huge_projection_is_refused(tmp_path):
    import dcz

    from deepcompress.loading import model_from_dcz

    small = ProjectionNet(T=2, d=2, in_features=8)
    path = tmp_path / "m.dcz"
    dcz.pack(small.state_dict(), path, meta={"model": {"name": "projectionnet", "kwargs": {
        "T": 2, "d": 2, "in_features": 1 << 23}}})
    with pytest.raises(ModelError, match="hyperplane entries"):
        model_from_dcz(path)
    dcz.pack(small.state_dict(), path, meta={"model": {"name": "projectionnet", "kwargs": {
        "T": 2, "d": 2, "in_features": 8, "hidden": [[1]]}}})
    with pytest.raises(ContainerError, match="plain numbers"):
        model_from_dcz(path)


def _tiny_pair():
    torch.manual_seed(0)
    return ProjectionNet(T=3, d=4, in_features=784), build_model("lenet300", {"hidden": [8, 4]})


@pytest.mark.parametrize("trains_trainer", [False, True])
def test_distillation_reaches_the_trainer_only_when_asked(trains_trainer, tiny_idx):
    model, trainer = _tiny_pair()
    task = make_task(default_task_config(), data_root=str(tiny_idx))
    x, y = torch.rand(6, 1, 28, 28), torch.arange(6)
    config = ProjectionConfig(distill_trains_trainer=trains_trainer, temperature=2.0)
    _, distill, _ = _losses(model, trainer, (x,), y, config, task)
    distill.backward()
    reached = any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.parameters())
    assert reached is trains_trainer
    assert model.out.weight.grad.abs().sum() > 0


def test_joint_loss_terms_are_the_tasks_losses(tiny_idx):
    model, trainer = _tiny_pair()
    task = make_task(default_task_config(), data_root=str(tiny_idx))
    x, y = torch.rand(6, 1, 28, 28), torch.arange(6)
    t = 3.0
    l1, l2, l3 = _losses(model, trainer, (x,), y, ProjectionConfig(temperature=t), task)
    p, q = model(x), trainer(x)
    assert torch.isclose(l1, nn.functional.cross_entropy(q, y))
    assert torch.isclose(l3, nn.functional.cross_entropy(p, y))
    kl = nn.functional.kl_div(nn.functional.log_softmax(p / t, 1), nn.functional.softmax(q / t, 1),
                              reduction="batchmean")
    assert torch.isclose(l2, t * t * kl, rtol=1e-4)      # T²-scaled, labels weigh nothing


def test_shipped_recipe_is_valid():
    recipe = load_recipe("projectionnet")
    assert recipe.model.name == "projectionnet" and recipe.stages[0].KIND == "projection"
    assert [s.KIND for s in recipe.stages][-1] == "encode"
    with pytest.raises(RecipeError, match="nothing would train"):
        Recipe.from_dict({"stages": [{"kind": "projection", "trainer_loss": 0, "distill": 0,
                                      "projection_loss": 0}]})
    with pytest.raises(RecipeError, match="projection.*prune|trained before"):
        Recipe.from_dict({"stages": [{"kind": "prune", "sparsity": 0.5},
                                     {"kind": "projection"}]})


@pytest.fixture(scope="module")
def projection_run(tiny_idx, tmp_path_factory):
    from conftest import tiny_recipe

    out = tmp_path_factory.mktemp("projection")
    recipe = tiny_recipe(
        tiny_idx, model={"name": "projectionnet", "kwargs": {"T": 16, "d": 8, "hidden": [12]}},
        baseline={"epochs": 0, "lr": 3e-3},
        stages=[{"kind": "projection", "trainer": "lenet300",
                 "trainer_kwargs": {"hidden": [32, 16]}, "epochs": 6, "temperature": 2.0},
                {"kind": "prune", "sparsity": 0.5, "rounds": 1, "retrain_epochs": 1,
                 "distill": 0.5},
                {"kind": "share", "bits": 4},
                {"kind": "encode"}])
    return run_recipe(Recipe.from_dict(recipe), out), out


def test_report_gives_the_shipped_bits_next_to_the_trainers(projection_run):
    result, out = projection_run
    report = json.loads((out / "report.json").read_text())
    proj = report["projection"]
    assert proj["accuracy"] == report["accuracy"]["final"] > 0.3     # 10 classes: chance 0.1
    assert proj["model_bits"] == 8 * (out / "model.dcz").stat().st_size
    trainer_params = 784 * 32 + 32 + 32 * 16 + 16 + 16 * 10 + 10
    assert proj["trainer_parameters"] == trainer_params
    assert proj["trainer_bits"] == 32 * trainer_params
    assert proj["float32_bits"] == 32 * (128 * 12 + 12 + 12 * 10 + 10)
    assert (proj["T"], proj["d"], proj["bits"], proj["hidden"]) == (16, 8, 128, [12])
    assert proj["ratio"] == proj["trainer_bits"] / proj["model_bits"]
    assert 0 < proj["trainer_accuracy"] <= 1
    # later stages distil from the trainer: a resume past it is refused, not silently wrong
    with pytest.raises(RecipeError, match="teacher of its own"):
        run_recipe(Recipe.from_dict(json.loads((out / "recipe.json").read_text())["recipe"]),
                   out, resume_from="3_share")


def test_dcz_holds_the_projection_network_and_the_seed_only(projection_run):
    import dcz

    from deepcompress.loading import model_from_dcz

    result, out = projection_run
    loaded = dcz.load(out / "model.dcz")
    assert set(loaded.state_dict) == {"hidden.0.weight", "hidden.0.bias", "out.weight",
                                      "out.bias"}
    assert loaded.meta["model"] == {"name": "projectionnet", "input_shape": [1, 28, 28],
                                    "kwargs": {"T": 16, "d": 8, "hidden": [12]}}
    model, _ = model_from_dcz(out / "model.dcz")      # the zoo rebuilds it, planes from the seed
    x = torch.rand(5, 1, 28, 28)
    assert torch.equal(model(x), result.model(x))


@pytest.fixture(scope="module")
def projection_model():
    torch.manual_seed(0)
    model = ProjectionNet(T=6, d=5, hidden=[16]).eval()
    with torch.no_grad():                 # a shared, pruned output layer, as a run leaves it
        model.out.weight.copy_(torch.round(model.out.weight * 8) / 8)
    return model


@pytest.fixture(scope="module")
def lsh_tflite(projection_model, tmp_path_factory):
    from android_export import export_tflite

    return export_tflite(projection_model, torch.rand(1, 1, 28, 28),
                         tmp_path_factory.mktemp("lsh") / "lsh.tflite", variant="float32")


def test_tflite_stores_the_hashing_as_lsh_projection(projection_model, lsh_tflite, tmp_path):
    from android_export import export_tflite, tflite_outputs
    from android_export._flatbuffer import _op_names, read_model

    x = torch.rand(64, 1, 28, 28)
    lsh = lsh_tflite
    mat = export_tflite(projection_model, x[:1], tmp_path / "mat.tflite", variant="float32",
                        lsh=False)
    fm = read_model(lsh.path.read_bytes())
    ops = [_op_names(fm)[op.opcodeIndex] for op in fm.subgraphs[0].operators]
    assert "LSH_PROJECTION" in ops and "GREATER" not in ops
    # no 30 x 784 matrix is stored: the file is the FC weights plus 30 seeds and 784 indices
    assert lsh.path.stat().st_size < 4 * (30 * 16 + 16 * 10) + 4 * (30 + 784) + 4096
    assert mat.path.stat().st_size > 4 * 30 * 784
    ref = projection_model(x).detach().numpy()
    for path in (lsh.path, mat.path):
        np.testing.assert_allclose(tflite_outputs(path, x), ref, atol=1e-4)


def test_tflite_lsh_projection_survives_every_variant(projection_model, tmp_path):
    from android_export import export_tflite, tflite_outputs

    x = torch.rand(16, 1, 28, 28)
    ref = projection_model(x).detach().numpy()
    for variant in ("float16", "sparse-float16", "int8"):
        out = export_tflite(projection_model, x[:1], tmp_path / f"{variant}.tflite",
                            variant=variant)
        assert np.abs(tflite_outputs(out.path, x) - ref).max() < 0.05, variant


def test_coreml_export_keeps_the_projection_as_ordinary_ops(projection_model, tmp_path):
    from exporters import EXPORTERS, cosine_scorer

    coreml = EXPORTERS.get("coreml")
    report = coreml.export(projection_model, torch.rand(1, 1, 28, 28), tmp_path / "p.mlpackage",
                           layers=["out.weight"])
    check = coreml.validate(report, projection_model, torch.rand(8, 1, 28, 28),
                            cosine_scorer())
    assert check.checks["weights_match"] is True


def test_sweep_plots_metric_against_bits_and_reuses_finished_points(projection_run, tiny_idx,
                                                                    tmp_path):
    from deepcompress.cli import main as cli

    _, marked = projection_run
    out = tmp_path / "sweep"
    args = ["sweep", "--out", str(out), "--T", "4,6", "--d", "4", "--hidden", "", "--hidden", "8",
            "--mark", str(marked), "-q", "--set", f"data.root={tiny_idx}",
            "--set", "stages.0.epochs=1", "--set", "stages.1.rounds=1",
            "--set", "stages.1.retrain_epochs=0", "--set", "stages.3.epochs=0"]
    assert cli(args) == 0
    result = json.loads((out / "sweep.json").read_text())
    points = {(p["T"], p["d"], tuple(p["hidden"])): p for p in result["points"]}
    assert set(points) == {(4, 4, ()), (4, 4, (8,)), (6, 4, ()), (6, 4, (8,))}
    for (T, d, hidden), p in points.items():
        report = json.loads((out / f"T{T}_d{d}_h{'-'.join(map(str, hidden)) or 0}"
                             / "report.json").read_text())
        assert p["bits"] == T * d and p["model_bits"] == 8 * report["compressed_bytes"]
        assert p["value"] == report["accuracy"]["final"]
        assert p["trainer_bits"] == 32 * 266610 and p["trainer"] == "lenet300"
    assert result["marks"][0]["model_bits"] == 8 * (marked / "model.dcz").stat().st_size
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stamp = (out / "T4_d4_h0" / "report.json").stat().st_mtime_ns
    assert cli(args) == 0                               # finished points are reused, not re-run
    assert (out / "T4_d4_h0" / "report.json").stat().st_mtime_ns == stamp
    assert cli(["sweep", "lenet300", "--out", str(tmp_path / "x"), "-q"]) == 2   # not a ProjectionNet


@pytest.mark.emulator
def test_lsh_tflite_runs_on_the_host_and_the_emulated_device(lsh_tflite, tmp_path, capsys,
                                                            monkeypatch):
    from deepcompress.cli import main as cli

    emulator = pytest.importorskip("device_harness.emulator", reason="emulated device not available")
    path = lsh_tflite.path
    monkeypatch.chdir(tmp_path)
    with emulator.start(port=0) as emu:
        assert cli(["bench", str(path), "--device", "host", "--device", emu.serial, "--runs", "5",
                    "--warmup", "1", "--eval", "16", "--json"]) == 0
    results = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert [r["device"]["kind"] for r in results] == ["host", "adb"]
    for r in results:
        assert r["ok"] and r["runs"] == 5 and r["accuracy"]["examples"] == 16
    assert results[1]["accuracy"]["argmax_agreement"] == 1.0     # the device computes the host's bits
