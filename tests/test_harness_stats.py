"""Measurement hygiene: statistics on hand-computable latencies, thermal parsing, bounded cool-down."""
from __future__ import annotations

import pytest

from device_harness._device import parse_thermal_status
from device_harness.runners._stats import cool_down, latency_stats


def test_latency_stats_by_hand():
    # 1..10 ms: numpy's linear percentile puts p50 at 5.5, p90 at 9.1, p99 at 9.91.
    s = latency_stats([float(v) for v in range(10, 0, -1)])
    assert s["p50"] == pytest.approx(5.5)
    assert s["p90"] == pytest.approx(9.1)
    assert s["p99"] == pytest.approx(9.91)
    assert (s["mean"], s["min"], s["max"]) == (5.5, 1.0, 10.0)
    assert s["std"] == pytest.approx(2.8722813)  # population std of 1..10
    assert s["spread"] == pytest.approx(9.1 / 5.5)


def test_constant_latencies_have_spread_one():
    s = latency_stats([2.0] * 7)
    assert s["spread"] == 1.0 and s["std"] == 0.0 and s["p99"] == 2.0


def test_latency_stats_rejects_empty():
    with pytest.raises(ValueError):
        latency_stats([])


def test_thermal_status_parsing():
    dumpsys = ("IsStatusOverride: false\nThermal Status: 3\nCached temperatures:\n"
               "\tTemperature{mValue=45.2, mType=3, mName=skin, mStatus=3}\n")
    assert parse_thermal_status(dumpsys) == 3
    assert parse_thermal_status("Can't find service: thermalservice") is None


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s

    def __call__(self) -> float:
        return self.now


def test_cool_down_waits_until_status_drops():
    statuses = iter([2, 2, 1, 0, 0])
    clock = FakeClock()
    c = cool_down(lambda: next(statuses), max_wait_s=60, poll_s=5, sleep=clock.sleep, clock=clock)
    assert (c.status_before, c.status_after) == (2, 0)
    assert clock.sleeps == [5, 5, 5] and c.waited_s == 15


def test_cool_down_is_bounded():
    clock = FakeClock()
    c = cool_down(lambda: 4, max_wait_s=12, poll_s=5, sleep=clock.sleep, clock=clock)
    assert c.status_after == 4 and clock.sleeps == [5, 5, 2] and c.waited_s == 12


def test_no_wait_when_cool_or_unknown():
    for status in (0, None):
        clock = FakeClock()
        c = cool_down(lambda: status, sleep=clock.sleep, clock=clock)
        assert clock.sleeps == [] and c.waited_s == 0.0
