"""A qualify metric, and an export format, are each one registration: a toy metric (the energy a
device spends per inference) and a toy exporter, both registered from here, show up in configs,
budgets, flags, figures, gates and nightly tolerances with no other edit (issue 22, item 4)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dccore.config import Checked, Int, setting
from dccore.errors import ConfigError
from dccore.outputs import OutputKind
from deepcompress.qualify._config import (BUDGET_FLAGS, BUDGET_KEYS, REGRESSION_KEYS, load_matrix,
                                          load_qualify_config)
from deepcompress.qualify._figures import artifact_format, device_figures, device_gates
from deepcompress.qualify._gates import (FIGURES, Figure, budget_gates, fmt_value, regression_gates,
                                         rolling_baseline)
from deepcompress.qualify._measures import METRICS, Measure
from exporters import EXPORTERS, Exporter


@pytest.fixture
def energy():
    METRICS.register("energy_mj", Measure(
        "mJ", budget="max_energy_mj", help="energy per inference on each device",
        regression="energy_pct", regression_help="energy may grow this much (percent)",
        tolerance=(0.2, 0.0), read=lambda r: r.get("energy_mj")))
    yield
    METRICS.unregister("energy_mj")


def write(tmp_path: Path, text: str, name: str = "q.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


CONFIG = """
[model]
recipe = "lenet300"
[bench]
devices = ["host", "emulator"]
[budgets]
max_energy_mj = 5.0
[budgets.devices.emulator]
max_energy_mj = 3.0
[budgets.regression]
energy_pct = 10.0
"""


def test_a_registered_metric_is_a_budget_a_flag_and_an_allowance(tmp_path, energy):
    assert "max_energy_mj" in BUDGET_KEYS and "energy_pct" in REGRESSION_KEYS
    assert BUDGET_FLAGS["--max-energy-mj"] == ("limits", "max_energy_mj")
    assert BUDGET_FLAGS["--max-energy-regression-pct"] == ("regression", "energy_pct")
    config = load_qualify_config(write(tmp_path, CONFIG))
    b = config.budgets
    assert b.for_device("host") == {"max_energy_mj": 5.0}
    assert b.for_device("emulator") == {"max_energy_mj": 3.0}
    assert b.regression == {"energy_pct": 10.0}
    assert b.for_artifact("dcz") == {}                 # a device figure: not an artifact's budget
    flagged = load_qualify_config(write(tmp_path, CONFIG), flags={"--max-energy-mj": 1.0}).budgets
    assert flagged.for_device("emulator") == {"max_energy_mj": 1.0}
    with pytest.raises(ConfigError, match=r"budgets\.max_energy_mj: expected a number"):
        load_qualify_config(write(tmp_path, CONFIG.replace("mj = 5.0", "mj = -1")))
    with pytest.raises(ConfigError, match=r"budgets\.formats\.dcz\.max_energy_mj: unknown key"):
        load_qualify_config(write(tmp_path, CONFIG + "[budgets.formats.dcz]\nmax_energy_mj = 1\n"))


def test_without_its_registration_the_key_is_unknown(tmp_path):
    with pytest.raises(ConfigError, match=r"budgets\.max_energy_mj: unknown key"):
        load_qualify_config(write(tmp_path, CONFIG))


def test_a_registered_metric_is_measured_and_gated(tmp_path, energy):
    result = {"ok": True, "artifact": "m.tflite", "artifact_sha256": "a" * 64,
              "device": {"kind": "host", "model": "x"}, "latency_ms": {"p50": 1.0, "p90": 2.0},
              "energy_mj": 4.0}
    figures = device_figures(result, "emulator")
    energy_figure = next(f for f in figures if f.figure == "energy_mj")
    assert energy_figure.value == 4.0 and energy_figure.format == "tflite"
    assert FIGURES["energy_mj"] == ("mJ", True) and energy_figure.unit == "mJ"
    budgets = load_qualify_config(write(tmp_path, CONFIG)).budgets
    (gate,) = [g for g in budget_gates(figures, budgets) if g.figure == "energy_mj"]
    assert not gate.ok and gate.gate == "max_energy_mj" and gate.limit == 3.0
    assert "energy_mj 4.0000 > max_energy_mj 3.0000" in gate.message
    before = {energy_figure.compare_key: 3.5}
    (regression,) = [g for g in regression_gates([energy_figure], before, {"energy_pct": 10.0}, 7)
                     if g.figure == "energy_mj"]
    assert not regression.ok and regression.limit == pytest.approx(3.85)   # 3.5 + 10%
    gone = [{"ok": False, "artifact": "m.tflite", "error": "gone"}]
    failed = [(g.gate, g.ok) for g in device_gates("emulator", gone, budgets) if g.figure == "energy_mj"]
    assert failed == [("max_energy_mj", False)]
    assert fmt_value(4.0, "mJ") == "4.0000"


def test_a_registered_metric_has_a_nightly_tolerance(tmp_path, energy):
    text = """
[devices]
cpu = "host"
[[models]]
name = "a"
model = { recipe = "lenet300" }
budgets = { max_energy_mj = 5 }
[regression]
window = 3
min_samples = 2
[regression.tolerance.energy_mj]
abs = 0.5
"""
    rolling = load_matrix(write(tmp_path, text, "m.toml")).regression
    assert rolling.tolerances["energy_mj"] == type(rolling.tolerances["energy_mj"])(0.2, 0.5)
    base = rolling_baseline([1.0, 1.0, 1.0], rolling, "energy_mj", higher_is_better=False)
    assert base.limit == pytest.approx(1.5)            # max(20% of 1.0, 0.5) above the median
    assert Figure("energy_mj", 1.0).unit == "mJ"


# -- an export format, registered from here ------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ToyOptions(Checked):
    level: int = setting(1, Int(1, 9))


class ToyExporter(Exporter):
    name, label, suffix = "toy", "Toy", ".toy"
    kind = OutputKind("toy artifact", recognise=lambda p: True)
    Options = ToyOptions

    def write(self, *args, **kwargs):
        raise NotImplementedError("configs only")

    validate = baseline = write


@pytest.fixture
def toy():
    EXPORTERS.register("toy", ToyExporter())
    yield
    EXPORTERS.unregister("toy")


TOY = """
[model]
recipe = "lenet300"
[export]
formats = ["toy"]
[export.toy]
level = 3
[budgets.formats.toy]
max_size_bytes = 1000
"""


def test_a_registered_format_is_exported_configured_and_budgeted(tmp_path, toy):
    config = load_qualify_config(write(tmp_path, TOY))
    assert config.export.formats == ("toy",) and config.export.options == {"toy": {"level": 3}}
    assert config.budgets.for_artifact("toy") == {"max_size_bytes": 1000}
    assert artifact_format({"artifact": "out/model.toy"}) == "toy"
    with pytest.raises(ConfigError, match=r"export\.toy\.level: expected an integer in \[1, 9\]"):
        load_qualify_config(write(tmp_path, TOY.replace("level = 3", "level = 10")))


def test_without_its_registration_the_format_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"export\.toy: unknown key"):
        load_qualify_config(write(tmp_path, TOY))
    with pytest.raises(ConfigError, match=r"export\.formats\[0\]: expected one of .*got 'toy'"):
        load_qualify_config(write(tmp_path, TOY.replace("[export.toy]\nlevel = 3\n", "")))
    assert artifact_format({"artifact": "out/model.toy"}) is None


def test_a_registered_metric_goes_through_a_whole_qualification(tmp_path, tiny_idx):
    """`deepcompress qualify` on a .dcz, benched on the host, with a toy metric registered here and
    nowhere else: its figure is read from the host's bench result, its budget gates it (and fails
    the run), and results.json and the JUnit file carry both."""
    import contextlib
    import io
    import json

    from conftest import pack_shared_lenet300
    from deepcompress.cli import main

    METRICS.register("energy_mj", Measure(   # a toy model of energy: 2 W for the median inference
        "mJ", budget="max_energy_mj", help="energy per inference on each device",
        read=lambda r: 2.0 * r["latency_ms"]["p50"] if r.get("latency_ms") else None))
    try:
        meta = {"model": {"name": "lenet300", "kwargs": {}, "input_shape": [1, 28, 28]},
                "data": {"root": str(tiny_idx)}}
        pack_shared_lenet300(tmp_path / "m.dcz", {"fc1.weight": (0.9, 4), "fc2.weight": (0.9, 4),
                                                  "fc3.weight": (0.7, 5)}, meta)
        write(tmp_path, '[model]\ndcz = "m.dcz"\n[export]\nformats = ["tflite"]\nexamples = 20\n'
              'dense = false\n[bench]\ndevices = ["host"]\nruns = 3\nwarmup = 1\n[budgets]\n'
              'max_energy_mj = 1e-9\n')
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(["qualify", str(tmp_path / "q.toml"), "--out", str(tmp_path / "out"),
                         "--json", "--quiet"])
        r = json.loads(out.getvalue())
    finally:
        METRICS.unregister("energy_mj")
    p50 = next(f["value"] for f in r["figures"] if f["figure"] == "latency_p50_ms")
    energy = [f for f in r["figures"] if f["figure"] == "energy_mj"]
    assert [(f["device"], f["value"]) for f in energy] == [("host", pytest.approx(2.0 * p50))]
    gate = next(g for g in r["gates"] if g["gate"] == "max_energy_mj")
    assert code == 1 and not gate["ok"] and gate["actual"] == energy[0]["value"]
    assert 'name="max_energy_mj' in (tmp_path / "out" / "junit.xml").read_text()
