"""benchmark_model: stdout parser on output samples, command builder, big-core mask."""
from __future__ import annotations

from pathlib import Path

import pytest

from dccore.errors import DeviceError
from device_harness.runners._benchmark_model import (
    BenchmarkModelCommand, RunStats, big_core_mask, check_output, parse_output)

SAMPLES = Path(__file__).parent / "fixtures" / "benchmark_model"


def sample(name: str) -> str:
    return (SAMPLES / name).read_text()


def test_info_prefix_scientific_notation_and_short_warmup_form():
    out = parse_output(sample("linux_info_scientific.txt"))
    assert out.warmup == RunStats(count=1, curr=3512391.0)
    inf = out.inference
    assert (inf.count, inf.first, inf.curr, inf.min, inf.max, inf.std) == (
        50, 2990275.0, 2913402.0, 2727568.0, 3189954.0, 109798.0)
    assert inf.avg == pytest.approx(2.95034e6)
    assert inf.median is None and inf.p5 is None
    assert out.init_ms == pytest.approx(17.187)  # "Initialized session in 17.187ms."
    assert out.init_us == 17187.0
    assert out.first_inference_us == 3512391.0
    assert out.warmup_avg_us == pytest.approx(3.51239e6)
    assert out.inference_avg_us == pytest.approx(2.95034e6)
    assert (out.memory_init_mb, out.memory_overall_mb) == (pytest.approx(4.21094), pytest.approx(46.0859))
    assert out.peak_memory_mb == pytest.approx(49.3281)
    assert out.model_size_mb == pytest.approx(16.9008)
    assert out.errors == ()


def test_logcat_prefix_and_percentile_fields():
    out = parse_output(sample("logcat_percentiles.txt"))
    assert out.warmup.count == 3 and out.warmup.median == 186214.0
    inf = out.inference
    assert (inf.count, inf.avg, inf.p5, inf.median, inf.p95) == (25, 145528.0, 140545.0, 141253.0, 187533.0)
    assert out.init_ms == pytest.approx(92.318)
    assert out.inference_avg_us == 145528.0
    assert out.peak_memory_mb == pytest.approx(77.0859)
    assert out.memory_overall_mb == pytest.approx(73.4102)


def test_older_build_without_prefix_and_old_memory_line():
    out = parse_output(sample("android_v2_4_plain.txt"))
    assert out.warmup.count == 2811 and out.warmup.avg == pytest.approx(171.35)
    assert out.inference.count == 5902 and out.inference.avg == pytest.approx(165.48)
    assert out.init_ms == pytest.approx(3.412)
    assert (out.memory_init_mb, out.memory_overall_mb) == (pytest.approx(2.16797), pytest.approx(3.51953))
    assert out.peak_memory_mb is None  # that build had no periodic monitoring


def test_failure_is_reported_with_the_tools_own_error():
    text = sample("failed_load.txt")
    out = parse_output(text)
    assert out.inference is None and out.inference_avg_us is None
    assert out.errors[0].startswith("Could not open")
    with pytest.raises(DeviceError, match="Could not open"):
        check_output(out, text, ["benchmark_model"])


def test_init_falls_back_to_timings_line_when_session_line_is_absent():
    text = ("count=10 first=2000 curr=1000 min=900 max=2000 avg=1100 std=30\n"
            "Inference timings in us: Init: 2500, First inference: 2000, Warmup (avg): 2000, "
            "Inference (avg): 1100\n")
    out = parse_output(text)
    assert out.init_ms == 2.5 and out.warmup is None and out.inference.count == 10


def test_command_argv():
    cmd = BenchmarkModelCommand(binary="/d/bm", graph="/d/m.tflite", threads=4, warmup_runs=3,
                                num_runs=20, delegate="gpu", taskset_mask="f0")
    assert cmd.argv() == ["taskset", "f0", "/d/bm", "--graph=/d/m.tflite", "--num_threads=4",
                          "--warmup_runs=3", "--num_runs=20", "--min_secs=0",
                          "--report_peak_memory_footprint=true", "--use_gpu=true"]
    plain = BenchmarkModelCommand(binary="/d/bm", graph="/d/m.tflite").argv()
    assert plain[0] == "/d/bm" and not any(a.startswith("--use_") for a in plain)
    with pytest.raises(ValueError, match="delegate"):
        BenchmarkModelCommand(binary="b", graph="g", delegate="tpu")
    with pytest.raises(ValueError):
        BenchmarkModelCommand(binary="b", graph="g", num_runs=0)


@pytest.mark.parametrize("freqs, mask", [
    ((1804800,) * 4 + (2419200,) * 3 + (2841600,), "80"),      # 4 little, 3 big, 1 prime
    ((1800000,) * 4 + (2400000,) * 4, "f0"),
    ((2400000,) * 4 + (1800000,) * 4, "f"),
    ((2000000,) * 8, None),                                    # all equal: no pinning
    ((), None),                                                # unknown (VMs)
])
def test_big_core_mask(freqs, mask):
    assert big_core_mask(freqs) == mask
