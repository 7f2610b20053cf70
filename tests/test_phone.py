"""On a real Android phone, when ``DEEPCOMPRESS_PHONE`` names one (see ``phone.py``): what the
emulated device stands in for everywhere else. The Device contract runs on it too
(test_harness_contract's ``phone`` backend). The LiteRT runner needs python3 with ai_edge_litert
on the phone (Termux, say); without, ``DEEPCOMPRESS_BENCHMARK_MODEL`` names Google's Android
``benchmark_model`` binary to push and run instead."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from phone import phone_spec

pytestmark = pytest.mark.phone

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def phone():
    from device_harness import open_device

    with open_device(phone_spec(), timeout_s=60) as device:
        yield device


def test_the_phone_says_what_it_is(phone):
    info = phone.info
    assert info.kind == "adb" and info.model != "unknown" and info.cores >= 1
    assert info.os_version.startswith("Android ") and "?" not in info.os_version
    assert not info.extra.get("emulated")          # a real phone, not the emulated device


def test_a_tflite_runs_on_the_phone_with_its_figures(phone):
    from device_harness.runners import BenchOptions, bench_artifact
    from device_harness.runners._driver import device_python

    binary = os.environ.get("DEEPCOMPRESS_BENCHMARK_MODEL")
    if device_python(phone, timeout_s=60) is None and not binary:
        pytest.skip("the phone has no python3 with ai_edge_litert; set "
                    "DEEPCOMPRESS_BENCHMARK_MODEL to Android's benchmark_model binary")
    opts = BenchOptions(runs=20, warmup=2, timeout_s=120,
                        benchmark_model=Path(binary) if binary else None)
    r = bench_artifact(phone, FIXTURES / "tiny_linear.tflite", opts)
    assert r["ok"], r.get("error")
    assert r["runs"] == 20 and r["latency_ms"]["mean"] > 0
    p50 = r["latency_ms"]["p50"]                    # benchmark_model prints no percentiles
    assert p50 is None or p50 > 0
    assert r["device"]["model"] == phone.info.model
    assert r["model_memory_mb"] is None or r["model_memory_mb"] < r["peak_memory_mb"]
