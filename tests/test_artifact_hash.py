"""The one artifact hash (``dccore.artifacts.artifact_sha256``): what reports, qualify's history
and export cache, a run's report.json and a device's push cache all name an artifact by."""
from __future__ import annotations

import hashlib

import pytest

from dccore.artifacts import artifact_sha256
from dccore.errors import ArtifactError


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_file_hashes_to_its_own_sha256(tmp_path):
    f = tmp_path / "m.tflite"
    f.write_bytes(bytes(range(256)) * 5000)                 # over one read block
    assert artifact_sha256(f) == _sha(f.read_bytes())


def test_a_package_hashes_one_line_per_file_named_from_the_package_folder(tmp_path):
    # the scheme the history database and qualify's exports.json have stored: pinned here
    pkg = tmp_path / "m.mlpackage"
    (pkg / "Data").mkdir(parents=True)
    (pkg / "Manifest.json").write_bytes(b"{}")
    (pkg / "Data" / "weight.bin").write_bytes(b"\x01\x02")
    weight, manifest = _sha(b"\x01\x02"), _sha(b"{}")
    lines = f"m.mlpackage/Data/weight.bin\0{weight}\nm.mlpackage/Manifest.json\0{manifest}\n"
    assert artifact_sha256(pkg) == _sha(lines.encode())
    before = artifact_sha256(pkg)
    (pkg / "Data" / "weight.bin").write_bytes(b"\x01\x03")   # one byte: another artifact
    assert artifact_sha256(pkg) != before


def test_a_link_out_of_a_package_is_refused_and_a_missing_artifact_named(tmp_path):
    pkg = tmp_path / "m.mlpackage"
    pkg.mkdir()
    (tmp_path / "secret.bin").write_bytes(b"x")
    (pkg / "leak.bin").symlink_to(tmp_path / "secret.bin")
    with pytest.raises(ArtifactError, match="outside the package"):
        artifact_sha256(pkg)
    with pytest.raises(ArtifactError, match="does not exist"):
        artifact_sha256(tmp_path / "none.tflite")
