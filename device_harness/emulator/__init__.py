"""The built-in emulated Android device: an ADB daemon on 127.0.0.1 that Google's ``adb`` and
``adb-shell`` both talk to, with a sandbox folder as ``/data/local/tmp``.

    with device_harness.emulator.start() as emu:          # a free port, in this process
        AdbDevice.connect(emu.serial).shell(["getprop", "ro.product.model"])

    serial = device_harness.emulator.ensure_emulator()    # 127.0.0.1:5555, in the background

Authentication: the daemon trusts the public keys in its authorized-keys files (one
``BASE64 user@host`` per line, the format of ``~/.android/adbkey.pub``); by default that is the
current user's own ``~/.android/adbkey.pub``, generated with its private half if missing, so the
same user's ``adb`` and :class:`~device_harness._adb.AdbDevice` are let in and nobody else's key
is. Only a token signed with a trusted key admits a client: one that offers a public key instead
is refused at once, even a trusted one (a phone would ask its user; here there is nobody to ask,
and a public key proves nothing). ``no_auth=True`` skips authentication: for tests only.

``start(old_adbd=True)`` (``--old-adbd``) plays an old adbd: protocol 0x01000000 with checksums,
4 KiB messages, and a sync SEND it cannot open answered with FAIL before the data.
"""
from __future__ import annotations

from ._background import DEFAULT_PORT, ensure_emulator, stop_emulator
from ._handle import EmulatorHandle, start
from ._profile import DeviceProfile, load_profile
from ._serve import add_arguments, serve

__all__ = ["start", "serve", "add_arguments", "ensure_emulator", "stop_emulator",
           "EmulatorHandle", "DeviceProfile", "load_profile", "DEFAULT_PORT"]
