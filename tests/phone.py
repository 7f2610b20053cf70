"""The real phone the ``phone`` tests run on: ``DEEPCOMPRESS_PHONE`` names it as ``--device``
does (``HOST:PORT`` for adb over TCP, or a USB serial); unset, those tests are skipped and say
so. None of them has run in this project's CI: it has no phone."""
from __future__ import annotations

import os

import pytest

ENV = "DEEPCOMPRESS_PHONE"


def phone_spec() -> str:
    """The phone's device spec, or skip the calling test with the reason."""
    spec = os.environ.get(ENV, "").strip()
    if not spec:
        pytest.skip(f"no real phone: set {ENV}=HOST:PORT (adb tcpip) or a USB serial to run this")
    from device_harness import check_spec

    if check_spec(spec) != "adb":
        pytest.fail(f"{ENV}={spec!r} is not an ADB device spec (HOST:PORT or a USB serial)")
    return spec
