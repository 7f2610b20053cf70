"""ADB RSA keys: the host's key pair (``~/.android/adbkey``) and Android's public-key format.

adb authenticates a host by its RSA-2048 key: the device sends a 20-byte token, the host signs it
(PKCS#1 v1.5, the token standing in for a SHA-1 digest) and the device checks the signature
against the public keys it trusts. Public keys travel and are stored in Android's own format:
base64 of a little-endian struct (modulus size in words, n0inv, modulus, R^2, exponent) followed
by `` user@host`` -- one key per line in ``adbkey.pub`` and in a device's ``adb_keys``.

Both sides of this project use this module: :class:`device_harness._adb.AdbDevice` signs with the
host key, the emulated device verifies against its authorized keys.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from dccore.outputs import file_lock
from dccore.errors import DeviceError

MODULUS_BYTES = 2048 // 8
# uint32 modulus_size_words; uint32 n0inv; u8 modulus[256]; u8 rr[256]; uint32 exponent
_PUBKEY_STRUCT = struct.Struct(f"<II{MODULUS_BYTES}s{MODULUS_BYTES}sI")


def android_user_dir() -> Path:
    """Where adb keeps its keys: ``$ANDROID_USER_HOME``, else ``$ANDROID_SDK_HOME/.android``,
    else ``~/.android`` (the same order as Google's adb)."""
    if os.environ.get("ANDROID_USER_HOME"):
        return Path(os.environ["ANDROID_USER_HOME"])
    if os.environ.get("ANDROID_SDK_HOME"):
        return Path(os.environ["ANDROID_SDK_HOME"]) / ".android"
    return Path.home() / ".android"


def default_key_path() -> Path:
    return android_user_dir() / "adbkey"


def ensure_adb_key(key_path: str | os.PathLike[str] | None = None) -> Path:
    """Return the private key path, generating the pair (``adbkey`` + ``adbkey.pub``) if missing.

    Generation is locked (two processes starting at once get the same pair), the private key is
    written 0600, and each file appears under its final name only when complete.
    """
    from adb_shell.auth.keygen import keygen, write_public_keyfile

    path = Path(key_path) if key_path is not None else default_key_path()
    pub = Path(f"{path}.pub")
    if path.is_file() and pub.is_file():
        return path
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with file_lock(path.parent / ".adbkey.lock"):
        if not path.is_file():
            with tempfile.TemporaryDirectory(dir=path.parent, prefix=".adbkey.") as tmp:
                os.chmod(tmp, 0o700)  # keygen writes with the umask; nobody else may read it
                tmp_key = Path(tmp) / "adbkey"
                keygen(str(tmp_key))
                os.chmod(tmp_key, 0o600)
                os.replace(f"{tmp_key}.pub", pub)
                os.replace(tmp_key, path)
        elif not pub.is_file():  # private key without its public half: derive it
            with tempfile.TemporaryDirectory(dir=path.parent, prefix=".adbkey.") as tmp:
                tmp_pub = Path(tmp) / "adbkey.pub"
                write_public_keyfile(str(path), str(tmp_pub))
                os.replace(tmp_pub, pub)
    return path


def load_signer(key_path: str | os.PathLike[str] | None = None):
    """An adb-shell signer for the host key, generating the key pair if it is missing."""
    from adb_shell.auth.sign_pythonrsa import PythonRSASigner

    path = ensure_adb_key(key_path)
    try:
        return PythonRSASigner.FromRSAKeyPath(str(path))
    except (ValueError, OSError) as exc:
        raise DeviceError(f"cannot read the adb key {path}: {exc}; delete {path} and "
                          f"{path}.pub to have a new pair generated") from exc


@dataclass(frozen=True)
class AndroidPublicKey:
    """One RSA public key in Android's format, able to check an AUTH signature."""

    modulus: int
    exponent: int
    comment: str = ""

    @classmethod
    def parse(cls, text: str | bytes) -> "AndroidPublicKey":
        """Parse ``BASE64 [user@host]`` (a line of ``adbkey.pub`` / ``adb_keys``, or the payload
        of an AUTH RSAPUBLICKEY message, which ends with a NUL)."""
        if isinstance(text, bytes):
            text = text.rstrip(b"\0").decode("utf-8", "replace")
        b64, _, comment = text.strip().partition(" ")
        try:
            blob = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"not base64: {exc}") from None
        if len(blob) != _PUBKEY_STRUCT.size:
            raise ValueError(f"expected {_PUBKEY_STRUCT.size} bytes of key data, got {len(blob)}")
        words, _n0inv, modulus, _rr, exponent = _PUBKEY_STRUCT.unpack(blob)
        if words != MODULUS_BYTES // 4:
            raise ValueError(f"modulus of {words} words; adb keys are RSA-2048 ({MODULUS_BYTES // 4})")
        return cls(int.from_bytes(modulus, "little"), exponent, comment.strip())

    @property
    def fingerprint(self) -> str:
        """MD5 of the modulus, colon-separated (what ``adb`` and Android's dialog show)."""
        digest = hashlib.md5(self.modulus.to_bytes(MODULUS_BYTES, "big"), usedforsecurity=False)
        return ":".join(f"{b:02X}" for b in digest.digest())

    def verify(self, token: bytes, signature: bytes) -> bool:
        """True if ``signature`` is this key's PKCS#1 v1.5 signature of ``token`` as a SHA-1 digest."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

        if len(token) != hashlib.sha1().digest_size:
            return False
        key = rsa.RSAPublicNumbers(self.exponent, self.modulus).public_key()
        try:
            key.verify(signature, token, padding.PKCS1v15(), utils.Prehashed(hashes.SHA1()))
        except (InvalidSignature, ValueError):
            return False
        return True


def read_authorized_keys(paths: Iterable[str | os.PathLike[str]]) -> list[AndroidPublicKey]:
    """Keys from files of one ``BASE64 user@host`` per line (blank lines and ``#`` comments
    skipped). A missing file or a malformed line is an error naming the file and the line."""
    keys: list[AndroidPublicKey] = []
    for p in paths:
        path = Path(p)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise DeviceError(f"cannot read authorized keys file {path}: {exc.strerror}") from exc
        for number, line in enumerate(lines, 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                keys.append(AndroidPublicKey.parse(line))
            except ValueError as exc:
                raise DeviceError(f"{path}:{number}: not an adb public key ({exc}); expected "
                                  "the format of ~/.android/adbkey.pub") from None
    return keys
