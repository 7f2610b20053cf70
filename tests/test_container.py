"""The .dcz container: exact round trips, sizes on disk, bad input, fuzzing, atomic writes, CLI."""
from __future__ import annotations

import json
import math
import os
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deepcompress.cli import main as cli_main
from dcz import FORMAT_VERSION, inspect, load, pack
from deepcompress.loading import model_from_dcz
from dcz import _api, _format, _tensor
from dccore.errors import ContainerError
from compression.models import LeNet300

CODERS = ["none", "huffman", "ans"]


def bits_of(t: torch.Tensor) -> torch.Tensor:
    """Bit pattern, for exact comparison (NaN payloads and signed zeros included)."""
    view = {4: torch.int32, 2: torch.int16, 8: torch.int64, 1: torch.int8}[t.element_size()]
    return t.contiguous().view(view)


def assert_exact(decoded: dict, original: dict, sparse: set[str] = frozenset()) -> None:
    """Bit-for-bit equality; in sparse tensors a pruned -0.0 decodes as +0.0 (documented)."""
    assert list(decoded) == list(original)
    for name, t in original.items():
        expect = torch.where(t == 0, torch.zeros_like(t), t) if name in sparse else t
        assert decoded[name].dtype == t.dtype and decoded[name].shape == t.shape, name
        assert torch.equal(bits_of(decoded[name]), bits_of(expect)), name


def shared(shape, density=0.2, k=8, seed=0, dtype=torch.float32, skew=0.0) -> torch.Tensor:
    """A pruned and shared layer; ``skew`` > 0 makes low cluster indices commoner (as trained
    layers are: most survivors sit near the pruning threshold)."""
    g = torch.Generator().manual_seed(seed)
    codebook = torch.linspace(-1, 1, k + 1)[torch.arange(k + 1) != k // 2]  # no zero centroid
    probs = torch.exp(-skew * torch.arange(k, dtype=torch.float64))
    idx = torch.multinomial(probs, math.prod(shape), replacement=True, generator=g).reshape(shape)
    keep = torch.rand(shape, generator=g) < density
    return torch.where(keep, codebook[idx], torch.zeros(())).to(dtype)


@pytest.fixture
def tiny_file(tmp_path):
    """A small valid file: one shared 6x5 layer, a bias and an integer buffer."""
    sd = {"w": shared((6, 5), density=0.5, k=4), "b": torch.arange(6, dtype=torch.float32),
          "n": torch.tensor(7)}
    path = tmp_path / "tiny.dcz"
    pack(sd, path, compressed={"w": {"bits": 2, "index_bits": 2}})
    return path, sd


# ----------------------------------------------------------------------------- round trips

def test_gap_with_fillers_hand_computed(tmp_path):
    # Non-zeros at positions 0 and 10 with 2-bit gaps (M = 3): skips 0 and 9 -> [0, 3, 3, 3, 0]
    w = torch.zeros(12)
    w[0], w[10] = 1.5, -2.0
    skips = np.array([0, 9])
    gaps, fillers = _tensor.gap_symbols(skips, 2)
    assert gaps.tolist() == [0, 3, 3, 3, 0] and fillers == 3
    for coder in CODERS:
        report = pack({"w": w}, tmp_path / "f.dcz",
                      compressed={"w": {"bits": 1, "index_bits": 2}}, coder=coder)
        row = report.tensors[0]
        assert (row.storage, row.nnz, row.index_bits, row.fillers, row.bits) == \
            ("codebook", 2, 2, 3, 1)
        dcz = load(tmp_path / "f.dcz")
        assert_exact(dcz.state_dict, {"w": w}, {"w"})
        assert dcz.layers["w"].codebook.tolist() == [-2.0, 1.5]


@pytest.mark.parametrize("coder", CODERS)
@pytest.mark.parametrize("w", [
    torch.zeros(7, 3),                                   # all-zero layer
    torch.zeros(50).index_fill_(0, torch.tensor([49]), 0.25),  # single non-zero, at the end
    torch.tensor([[0.5, -0.5, 0.0], [0.0, 0.5, -0.5]]),  # 1-bit codebook
    torch.full((4, 4), 0.125),                           # dense, one value
])
def test_edge_layers_round_trip(tmp_path, coder, w):
    sd = {"layer.weight": w, "layer.bias": torch.ones(3)}
    pack(sd, tmp_path / "e.dcz", compressed={"layer.weight": {}}, coder=coder)
    dcz = load(tmp_path / "e.dcz")
    assert_exact(dcz.state_dict, sd, {"layer.weight"})
    info = dcz.layers["layer.weight"]
    assert info.nnz == int((w != 0).sum())
    assert info.bits == max(len(torch.unique(w[w != 0])) - 1, 0).bit_length()


def test_signed_zero_policy(tmp_path):
    w = torch.tensor([-0.0, 1.0, 0.0, -0.0, -1.0])
    sd = {"sparse": w.clone(), "plain": w.clone()}
    pack(sd, tmp_path / "z.dcz", compressed={"sparse": {}})
    out = load(tmp_path / "z.dcz").state_dict
    assert torch.signbit(out["sparse"]).tolist() == [False, False, False, False, True]
    assert torch.equal(bits_of(out["plain"]), bits_of(w))  # plain tensors keep -0.0


@pytest.mark.parametrize("bits", [None, 6])
def test_unshared_layer_is_stored_raw(tmp_path, bits):
    w = torch.randn(300, 300)
    w[w.abs() < 0.3] = 0  # pruned, not shared: ~68K distinct values
    report = pack({"w": w}, tmp_path / "r.dcz", compressed={"w": {"bits": bits}}, coder="none")
    row = report.tensors[0]
    assert row.storage == "raw" and row.bits is None and row.values_bytes == 4 * row.nnz
    dcz = load(tmp_path / "r.dcz")
    assert_exact(dcz.state_dict, {"w": w}, {"w"})
    assert dcz.layers["w"].codebook is None and dcz.layers["w"].storage == "raw"


def test_pruned_only_small_layer_is_raw_when_cheaper(tmp_path):
    w = torch.randn(40, 50)
    w[w.abs() < 1.0] = 0  # ~630 survivors, all distinct: a codebook would cost more than raw
    assert pack({"w": w}, tmp_path / "a.dcz", compressed={"w": {}}).tensors[0].storage == "raw"
    assert pack({"w": shared((40, 50), k=64)}, tmp_path / "b.dcz",
                compressed={"w": {}}).tensors[0].storage == "codebook"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_dtypes_round_trip(tmp_path, dtype):
    w = shared((20, 30), k=16, dtype=dtype)
    w[0, 0] = float("nan")  # NaN is a non-zero value like any other, kept bit-exact
    sd = {"w": w, "extra": torch.randn(5).to(dtype)}
    pack(sd, tmp_path / "d.dcz", compressed={"w": {}}, coder="ans")
    assert_exact(load(tmp_path / "d.dcz").state_dict, sd, {"w"})


def test_integer_and_bool_buffers_kept_exact(tmp_path):
    sd = {"bn.num_batches_tracked": torch.tensor(123456789012),
          "mask": torch.tensor([True, False, True]),
          "i8": torch.tensor([-128, 0, 127], dtype=torch.int8),
          "u8": torch.tensor([0, 255], dtype=torch.uint8),
          "scalar": torch.tensor(3.5)}
    report = pack(sd, tmp_path / "i.dcz", plain_dtype="float16")
    assert report.dense_bytes == 4  # only the float scalar counts as a weight
    out = load(tmp_path / "i.dcz").state_dict
    assert_exact({k: v for k, v in out.items()}, sd)


def test_plain_float16_option_halves_plain_tensors(tmp_path):
    sd = {"bias": torch.randn(1000)}
    full = pack(sd, tmp_path / "a.dcz", code_values=False)  # as is: coded, both are smaller
    half = pack(sd, tmp_path / "b.dcz", plain_dtype="float16", code_values=False)
    assert full.tensors[0].values_bytes == 4000 and half.tensors[0].values_bytes == 2000
    out = load(tmp_path / "b.dcz").state_dict["bias"]
    assert out.dtype == torch.float32 and torch.equal(out, sd["bias"].half().float())


def test_report_sizes_are_measured(tmp_path):
    sd = {"fc.weight": shared((100, 80), density=0.1, k=32, skew=0.2), "fc.bias": torch.randn(100)}
    sizes = {}
    for coder in CODERS:
        path = tmp_path / f"{coder}.dcz"
        report = pack(sd, path, compressed={"fc.weight": {"bits": 5}}, coder=coder)
        assert report.bytes == os.path.getsize(path)
        assert report.dense_bytes == 4 * (8000 + 100)
        assert report.ratio == pytest.approx(report.dense_bytes / report.bytes)
        assert sum(t.bytes for t in report.tensors) < report.bytes
        assert_exact(load(path).state_dict, sd, {"fc.weight"})
        sizes[coder] = report.bytes
    assert sizes["huffman"] < sizes["none"] and sizes["ans"] < sizes["none"]


def test_inspect_accounts_for_every_byte(tmp_path):
    sd = {"fc.weight": shared((64, 64), density=0.1, k=16), "fc.bias": torch.randn(64)}
    path = tmp_path / "m.dcz"
    report = pack(sd, path, compressed={"fc.weight": {}}, coder="ans", meta={"accuracy": 0.9})
    info = inspect(path)
    assert info["bytes"] == report.bytes == os.path.getsize(path)
    assert info["overhead_bytes"] + sum(t["bytes"] for t in info["tensors"]) == info["bytes"]
    # 64 biases code no smaller than they are: nothing of version 2 is used, so version 1.
    assert info["coder"] == "ans" and info["format_version"] == 1 < FORMAT_VERSION
    assert info["meta"]["accuracy"] == 0.9
    layer = info["tensors"][0]
    assert layer["nnz"] == int((sd["fc.weight"] != 0).sum())
    for s in layer["streams"].values():
        assert s["bytes"] >= s["payload_bytes"] + s["table_bytes"]
        assert s["entropy_bits"] > 0 and s["payload_bytes"] * 8 >= s["entropy_bits"] * 0.999
    assert set(info["streams"]) == {"gaps", "indices"}


def test_load_model_reproduces_outputs(tmp_path):
    torch.manual_seed(0)
    model = LeNet300().eval()
    sd = model.state_dict()
    for name in ("fc1.weight", "fc2.weight", "fc3.weight"):
        w = sd[name]
        w.mul_(w.abs() > w.abs().quantile(0.9))          # prune 90% (leaves -0.0 behind)
        centroids = torch.linspace(w.min(), w.max(), 32)
        nearest = centroids[(w[..., None] - centroids).abs().argmin(-1)]
        w.copy_(torch.where(w != 0, nearest, w))         # share: 5-bit codebook
    meta = {"model": {"name": "lenet300", "kwargs": {}, "input_shape": [1, 1, 28, 28]}}
    pack(sd, tmp_path / "l.dcz", compressed={n: {"bits": 5} for n in sd if "weight" in n},
         meta=meta)
    loaded, dcz = model_from_dcz(tmp_path / "l.dcz")
    x = torch.rand(16, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert dcz.meta["model"]["name"] == "lenet300" and dcz.meta["format"]["coder"] == "huffman"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(0, 3000), density=st.floats(0, 1), k=st.integers(1, 300),
       coder=st.sampled_from(CODERS), index_bits=st.one_of(st.none(), st.integers(1, 16)),
       seed=st.integers(0, 2**16))
def test_round_trip_property(tmp_path_factory, n, density, k, coder, index_bits, seed):
    rng = np.random.default_rng(seed)
    codebook = rng.standard_normal(k).astype(np.float32)
    w = np.where(rng.random(n) < density, codebook[rng.integers(0, k, n)], 0).astype(np.float32)
    sd = {"w": torch.from_numpy(w)}
    path = tmp_path_factory.mktemp("prop") / "p.dcz"
    pack(sd, path, compressed={"w": {"index_bits": index_bits}}, coder=coder)
    assert_exact(load(path).state_dict, sd, {"w"})


# ----------------------------------------------------------------------------- bad input

def _section_bounds(data: bytes) -> list[int]:
    """Byte offsets where each section starts, plus the file end."""
    pos, bounds = _format.HEADER.size, [_format.HEADER.size]
    while pos < len(data):
        _, length = _format.SECTION_HEAD.unpack_from(data, pos)
        pos += _format.SECTION_HEAD.size + length + _format.CRC.size
        bounds.append(pos)
    return bounds


def test_truncation_at_every_section_boundary_and_inside(tiny_file):
    path, _ = tiny_file
    data = path.read_bytes()
    cuts = set(_section_bounds(data)[:-1]) | {0, 3, 8, 15} | set(range(17, len(data), 7))
    for cut in sorted(cuts):
        path.write_bytes(data[:cut])
        with pytest.raises(ContainerError) as err:
            load(path)
        msg = str(err.value)
        assert str(path) in msg and ("truncated" in msg or "remain" in msg), (cut, msg)


def test_every_single_bit_flip_is_caught(tiny_file):
    path, _ = tiny_file
    data = bytearray(path.read_bytes())
    # Every third bit: a stride coprime to 8 reaches every bit position of every field's bytes.
    for bit in range(0, len(data) * 8, 3):
        data[bit // 8] ^= 1 << (bit % 8)
        path.write_bytes(bytes(data))
        with pytest.raises(ContainerError, match="tiny.dcz"):
            load(path)
        data[bit // 8] ^= 1 << (bit % 8)


def test_wrong_magic(tiny_file):
    path, _ = tiny_file
    path.write_bytes(b"PK\x03\x04" + path.read_bytes()[4:])
    with pytest.raises(ContainerError, match="not a .dcz file"):
        load(path)


def test_future_version_asks_for_upgrade(tiny_file):
    path, _ = tiny_file
    data = path.read_bytes()
    head = _format.MAGIC + struct.pack("<I", FORMAT_VERSION + 1)
    path.write_bytes(head + struct.pack("<I", zlib.crc32(head)) + data[_format.HEADER.size:])
    with pytest.raises(ContainerError, match="upgrade deepcompress"):
        load(path)


def _file_with_tensor_payload(path, payload: bytes) -> None:
    meta = _format.section(_format.TAG_META, zlib.compress(b"{}"))
    body = meta + _format.section(_format.TAG_TENSOR, payload)
    data = _format.file_header() + body
    path.write_bytes(data + _format.section(_format.TAG_END, struct.pack("<IQ", 1, len(data))))


def _sparse_head(shape, nnz=1, b=4) -> bytes:
    return _tensor._head("fc.weight", _tensor.BY_TORCH[torch.float32], shape, _tensor.CODEBOOK) \
        + struct.pack("<QB", nnz, b)


@pytest.mark.parametrize("payload,match", [
    # A shape of 10**12 elements, stored plainly and sparse.
    (_tensor._head("fc.weight", _tensor.BY_TORCH[torch.float32], (10**6, 10**6), 0) + b"\x01",
     "claims 1,000,000,000,000 elements"),
    (_sparse_head((10**6, 10**6)), "claims 1,000,000,000,000 elements"),
    # A gap stream claiming 2**40 symbols in a 100-element tensor: one entry, and at most
    # 99 // 15 fillers of 4-bit gaps.
    (_sparse_head((10, 10)) + bytes([1]) + struct.pack("<IQ", 16, 2**40), "at most 7"),
    # A codebook of 2**32 - 1 entries (the field is 32 bits; 2**40 cannot even be written).
    (_sparse_head((10, 10), nnz=0) + bytes([3]) + struct.pack("<IQI", 16, 0, 0)
     + struct.pack("<BI", 16, 2**32 - 1), "codebook of 4,294,967,295 entries"),
    (_sparse_head((10, 10), nnz=0) + bytes([3]) + struct.pack("<IQI", 16, 0, 0)
     + struct.pack("<BI", 8, 200), "claims 800 bytes"),
    # A Huffman table claiming an alphabet of 2**40 symbols (the field holds at most 2**32 - 1).
    (_sparse_head((10, 10)) + bytes([1]) + struct.pack("<IQ", 2**32 - 1, 5), "alphabet"),
])
def test_absurd_sizes_fail_fast_without_allocating(tmp_path, payload, match):
    path = tmp_path / "absurd.dcz"
    _file_with_tensor_payload(path, payload)
    tracemalloc.start()
    try:
        with pytest.raises(ContainerError, match=match) as err:
            load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2**20
    assert str(path) in str(err.value) and "section 1" in str(err.value)
    assert "fc.weight" in str(err.value)


def test_section_claiming_2_pow_40_bytes(tmp_path):
    path = tmp_path / "huge.dcz"
    path.write_bytes(_format.file_header() + _format.SECTION_HEAD.pack(b"META", 2**40) + b"x")
    with pytest.raises(ContainerError, match=r"section 0 \(metadata\): claims 1,099,511,627,776"):
        load(path)


@pytest.mark.parametrize("meta,match", [
    (zlib.compress(b" " * 2**25, 9), "larger than 16,777,216 bytes"),  # a deflate bomb
    (zlib.compress(b"[1, 2]"), "must be a JSON object"),
    (b"{}", "does not inflate"),
])
def test_bad_metadata(tmp_path, meta, match):
    path = tmp_path / "meta.dcz"
    data = _format.file_header() + _format.section(_format.TAG_META, meta)
    path.write_bytes(data + _format.section(_format.TAG_END, struct.pack("<IQ", 0, len(data))))
    with pytest.raises(ContainerError, match=match):
        load(path)


def test_trailing_garbage_and_missing_end(tiny_file):
    path, _ = tiny_file
    data = path.read_bytes()
    path.write_bytes(data + b"x")
    with pytest.raises(ContainerError, match="after the end marker"):
        load(path)


FUZZ_HEALTH = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]


@settings(max_examples=150, deadline=None, suppress_health_check=FUZZ_HEALTH)
@given(edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1,
                      max_size=4),
       cut=st.one_of(st.none(), st.integers(0, 10**6)))
def test_fuzz_mutated_files_only_raise_container_error(tiny_file, edits, cut):
    path, _ = tiny_file
    data = bytearray(path.read_bytes())
    original = bytes(data)
    for pos, value in edits:
        data[pos % len(data)] = value
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    fuzzed = path.with_name("fuzzed.dcz")
    fuzzed.write_bytes(bytes(data))
    if bytes(data) == original:
        load(fuzzed)
    else:
        with pytest.raises(ContainerError):
            load(fuzzed)


def _tensor_payload(path) -> tuple[bytes, bytes]:
    data = path.read_bytes()
    bounds = _section_bounds(data)
    start, end = bounds[1], bounds[2]  # the first tensor section
    return data[start + _format.SECTION_HEAD.size:end - _format.CRC.size], data


_SEALED_PAYLOADS: dict[str, bytes] = {}


def _sealed_payload(folder, coder: str) -> bytes:
    if coder not in _SEALED_PAYLOADS:
        src = folder / f"src-{coder}.dcz"
        pack({"w": shared((40, 30), density=0.3, k=6, skew=0.5)}, src,
             compressed={"w": {"bits": 3}}, coder=coder)
        _SEALED_PAYLOADS[coder] = _tensor_payload(src)[0]
    return _SEALED_PAYLOADS[coder]


@settings(max_examples=300, deadline=None, suppress_health_check=FUZZ_HEALTH)
@given(edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1,
                      max_size=3),
       cut=st.one_of(st.none(), st.integers(0, 10**6)),
       coder=st.sampled_from(CODERS))
def test_fuzz_decoder_behind_valid_crcs(tmp_path, edits, cut, coder):
    """Mutate a tensor payload and re-seal it with a valid CRC: the section decoder must cope."""
    payload = bytearray(_sealed_payload(tmp_path, coder))
    for pos, value in edits:
        payload[pos % len(payload)] = value
    if cut is not None:
        payload = payload[: cut % (len(payload) + 1)]
    path = tmp_path / "fuzzed.dcz"
    _file_with_tensor_payload(path, bytes(payload))
    try:
        dcz = load(path)
    except ContainerError:
        return
    # decoded to something well-formed: a dtype of the format, exactly the storage its shape
    # needs, within the decode budget, and a shared tensor's values drawn from its codebook
    limit = max(_api.MIN_DECODE_LIMIT, _api.EXPANSION_LIMIT * path.stat().st_size)
    for name, t in dcz.state_dict.items():
        assert t.dtype in _tensor.BY_TORCH and t.is_contiguous(), name
        assert t.untyped_storage().nbytes() == t.numel() * t.element_size() <= limit, name
        codebook = dcz.layers[name].codebook if name in dcz.layers else None
        if codebook is not None:
            values = t[t != 0].unique().numpy()
            assert np.isin(values, np.asarray(codebook)).all(), name


@settings(max_examples=100, deadline=None)
@given(blob=st.binary(max_size=300))
def test_fuzz_random_bytes_after_a_valid_header(tmp_path_factory, blob):
    path = tmp_path_factory.mktemp("rnd") / "r.dcz"
    path.write_bytes(_format.file_header() + blob)
    with pytest.raises(ContainerError):
        load(path)


# ----------------------------------------------------------------------------- atomic writes

def test_failed_pack_leaves_no_file(tmp_path):
    sd = {"w": shared((8, 8), k=8), "n": torch.tensor(1)}
    path = tmp_path / "out.dcz"
    with pytest.raises(ContainerError, match="bits must be"):
        pack(sd, path, compressed={"w": {"bits": 17}})
    with pytest.raises(ContainerError, match="only floating"):
        pack(sd, path, compressed={"n": {}})
    with pytest.raises(ContainerError, match="missing from the state_dict"):
        pack(sd, path, compressed={"nope": {}})
    assert list(tmp_path.iterdir()) == []
    pack(sd, path, compressed={"w": {}})
    before = path.read_bytes()
    with pytest.raises(ContainerError):
        pack(sd, path, compressed={"w": {"index_bits": 0}})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["out.dcz"]


def test_missing_file(tmp_path):
    with pytest.raises(ContainerError, match="no such file"):
        load(tmp_path / "absent.dcz")


# ----------------------------------------------------------------------------- CLI

def test_cli_pack_inspect_unpack(tmp_path, capsys):
    torch.manual_seed(0)
    sd = LeNet300().state_dict()
    sd["fc1.weight"] = shared((300, 784), density=0.08, k=64)
    torch.save(sd, tmp_path / "ckpt.pt")
    out = tmp_path / "m.dcz"
    assert cli_main(["pack", str(tmp_path / "ckpt.pt"), "--model", "lenet300", "--out", str(out),
                     "--coder", "ans", "--bits-for", "fc1=6", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["bytes"] == os.path.getsize(out)
    assert [t["bits"] for t in report["tensors"] if t["storage"] != "plain"][0] == 6
    assert cli_main(["inspect", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["meta"]["model"]["name"] == "lenet300" and info["coder"] == "ans"
    assert cli_main(["inspect", str(out)]) == 0
    assert "fc1.weight" in capsys.readouterr().out
    assert cli_main(["unpack", str(out), "--out", str(tmp_path / "back.pt")]) == 0
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    assert_exact(back, sd, {"fc1.weight", "fc2.weight", "fc3.weight"})


def test_cli_errors_exit_non_zero_without_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.dcz"
    bad.write_bytes(b"\x89DCZ\r\n\x1a\n" + b"\0" * 4)
    assert cli_main(["inspect", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "bad.dcz" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert cli_main(["unpack", str(tmp_path / "none.dcz"), "--out", str(tmp_path / "x.pt")]) == 1
    assert "no such file" in capsys.readouterr().err
    torch.save(LeNet300().state_dict(), tmp_path / "ckpt.pt")
    assert cli_main(["pack", str(tmp_path / "ckpt.pt"), "--model", "lenet300", "--out",
                     str(tmp_path / "m.dcz"), "--bits-for", "fc9=4"]) == 1
    assert "fc9" in capsys.readouterr().err and not (tmp_path / "m.dcz").exists()


# ----------------------------------------------------------------------------- format stability

# Files written by format version 1 (one per coder). They must keep loading, and today's writer
# must still produce the same tensor sections: a change to the layout, to the Huffman code
# construction or to constriction's rANS model quantisation fails here first.
GOLDEN_STATE = {"fc.weight": torch.tensor([[0.0, 0.5, 0, 0, -0.25, 0.5], [0, 0, 0, 0.5, 0, 0.75],
                                           [0.5, 0, 0, 0, 0, 0.5]]),
                "fc.bias": torch.tensor([1.0, -2.0, 0.5])}
GOLDEN = {
    "none": (
        "8944435a0d0a1a0a010000009e9aef1d4d4554414d0000000000000078da15c8410a80201005d0bbfc759b6c"
        "e76562d011049d111b8212ef9e2ddf1b48da2b19fc40d0c81d1ea2c2d8205479298677a115ca72467bda7fa9"
        "28d9e1d6dfdcafac02bfcff901c902192a6364e58e54454e535900000000000000090066632e776569676874"
        "0102030000000000000006000000000000000107000000000000000200040000000900000000000000026313"
        "400203000000000080be0000003f0000403f000400000007000000000000000245948ad5ccdf54454e532100"
        "000000000000070066632e626961730101030000000000000000010000803f000000c00000003f7219e17c45"
        "4e44200c0000000000000002000000070100000000000047d71f17"),
    "huffman": (
        "8944435a0d0a1a0a010000009e9aef1d4d4554414f0000000000000078da15c8410a80201005d0bbfc759b6c"
        "e765625087049d11b3a0c4bb67cbf73a586ba606dbe1d4870a8be362ce24582094c30cefde899228caeedb53"
        "fee3a4d43633ff0ef58c2ab0eb181f23331a5f27f728ea54454e538400000000000000090066632e77656967"
        "6874010203000000000000000600000000000000010700000000000000020104000000090000000000000004"
        "0000000005f0108420001000000012000000000000006313400203000000000080be0000003f0000403f0104"
        "0000000700000000000000030000000005e0104400100000000900000000000000460099ed6fe954454e5321"
        "00000000000000070066632e626961730101030000000000000000010000803f000000c00000003f7219e17c"
        "454e44200c00000000000000020000003401000000000000d9835d1c"),
    "ans": (
        "8944435a0d0a1a0a010000009e9aef1d4d4554415a0000000000000078da1dcb4d0a80201040e1bbcc3ac48a"
        "365e26067f40d05174084abc7b53cbf7c11b104acbc86006d8e27c0303481d1629eadca2e5584850ab436961"
        "c2ec259d7d246ac248a7e3bb7e165241de37f1cbb7fe6feb9c2f26521fbacc00582d54454e537f0000000000"
        "0000090066632e77656967687401020300000000000000060000000000000001070000000000000002020400"
        "0000090000000000000000040000000004f0ff5a0500000000000000f76d55d2410203000000000080be0000"
        "003f0000403f0204000000070000000000000000030000000004e03f300400000000000000fab66d24ff94d9"
        "c454454e532100000000000000070066632e626961730101030000000000000000010000803f000000c00000"
        "003f7219e17c454e44200c00000000000000020000003a01000000000000eb91d709"),
}


@pytest.mark.parametrize("coder", CODERS)
def test_golden_files_still_load_and_encode_identically(tmp_path, coder):
    golden = bytes.fromhex(GOLDEN[coder])
    path = tmp_path / "golden.dcz"
    path.write_bytes(golden)
    dcz = load(path)
    assert_exact(dcz.state_dict, GOLDEN_STATE, {"fc.weight"})
    assert dcz.meta["format"]["coder"] == coder
    pack(GOLDEN_STATE, tmp_path / "new.dcz", compressed={"fc.weight": {"index_bits": 2}},
         coder=coder)
    new = (tmp_path / "new.dcz").read_bytes()
    # The tensor sections: from the end of the metadata to the start of the end marker.
    b_new, b_old = _section_bounds(new), _section_bounds(golden)
    if coder == "none":
        assert new[b_new[1]:b_new[-2]] == golden[b_old[1]:b_old[-2]]
    else:
        # These streams are so short that an entropy coder's table costs more than it saves:
        # the writer now stores them fixed-width (each stream records its coder), never larger.
        assert b_new[-2] - b_new[1] < b_old[-2] - b_old[1]
        assert_exact(load(tmp_path / "new.dcz").state_dict, GOLDEN_STATE, {"fc.weight"})


@pytest.mark.parametrize("coder", ["huffman", "ans"])
def test_short_uniform_streams_fall_back_to_fixed_width_long_skewed_ones_do_not(coder):
    from dcz import _streams
    rng = np.random.default_rng(0)
    uniform = rng.integers(0, 16, 200)
    data, info = _streams.encode(uniform, 16, coder, "indices")
    assert info.coder == "none" and len(data) == 14 + 100
    skewed = np.minimum(rng.geometric(0.5, 20000) - 1, 15)
    data, info = _streams.encode(skewed, 16, coder, "indices")
    assert info.coder == coder and len(data) < 14 + 10000


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 4000), density=st.floats(0.01, 1), k=st.integers(1, 64),
       coder=st.sampled_from(["huffman", "ans"]), seed=st.integers(0, 2**16))
def test_entropy_coding_never_makes_a_tensor_larger(n, density, k, coder, seed):
    """Short, near-uniform streams (a small depthwise filter) cost more coded than fixed-width,
    table included: the writer must then store them fixed-width, at the best fixed width."""
    rng = np.random.default_rng(seed)
    codebook = rng.standard_normal(k).astype(np.float32)
    w = torch.from_numpy(np.where(rng.random(n) < density, codebook[rng.integers(0, k, n)], 0)
                         .astype(np.float32))
    coded, _ = _tensor.encode_sparse("w", w, coder, None, None)
    fixed, _ = _tensor.encode_sparse("w", w, "none", None, None)
    assert len(coded) <= len(fixed)


def test_cli_pack_compresses_a_plain_state_dict_post_training_and_says_what_changed_nothing(
        tmp_path, capsys):
    torch.manual_seed(0)
    sd = LeNet300().state_dict()
    sd["fc3.weight"] = shared((10, 100), density=0.5, k=8)      # already sparse and shared
    torch.save(sd, tmp_path / "ckpt.pt")
    out = tmp_path / "m.dcz"
    assert cli_main(["pack", str(tmp_path / "ckpt.pt"), "--model", "lenet300", "--out", str(out),
                     "--sparsity", "0.3", "--bits", "4", "--layer", "fc1:sparsity=0.9,bits=3",
                     "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert "fc3: already 49.4% zeros" in captured.err and "fc3: already 8 distinct" in captured.err
    back = load(out).state_dict
    fc1, fc2 = back["fc1.weight"], back["fc2.weight"]
    assert float((fc1 == 0).float().mean()) == pytest.approx(0.9, abs=1e-3)
    assert torch.unique(fc1[fc1 != 0]).numel() <= 8
    assert float((fc2 == 0).float().mean()) == pytest.approx(0.3, abs=1e-3)
    assert torch.unique(fc2[fc2 != 0]).numel() <= 16
    assert torch.equal(back["fc3.weight"], sd["fc3.weight"])      # kept exactly
    assert report["notes"] and report["ratio"] > 8


def weights_loading_factory() -> torch.nn.Module:
    """A user's factory that loads its own weights, as Hugging Face's from_pretrained does: it
    cannot run on the meta device."""
    model = torch.nn.Linear(4, 3)
    if model.weight.is_meta:
        raise RuntimeError("from_pretrained wants to load existing weights")
    return model


def test_a_user_factory_that_loads_weights_is_built_for_real(tmp_path):
    sd = {"weight": torch.arange(12.0).reshape(3, 4), "bias": torch.zeros(3)}
    pack(sd, tmp_path / "u.dcz", meta={"model": {"name": "whatever"}})
    loaded, _ = model_from_dcz(tmp_path / "u.dcz", model=f"{__name__}:weights_loading_factory")
    assert torch.equal(loaded.weight, sd["weight"])
    pack({"weight": torch.zeros(5, 4), "bias": torch.zeros(5)}, tmp_path / "w.dcz")
    with pytest.raises(ContainerError, match="do not fit model"):
        model_from_dcz(tmp_path / "w.dcz", model=f"{__name__}:weights_loading_factory")


def test_pack_and_compressor_save_are_one_writer_with_the_same_options(tmp_path, capsys):
    """`pack`'s flags are a post-training recipe written by Compressor.save: the same model and
    settings give the same bytes; "smallest" and "minimal" are honoured (save used to pass
    "smallest" to dcz.pack, which refused it, and ignored "minimal")."""
    from compression.api import compress
    from compression.stages import LAYER_TYPES

    torch.manual_seed(0)
    sd = LeNet300().state_dict()
    torch.save(sd, tmp_path / "ckpt.pt")
    out = tmp_path / "cli.dcz"
    assert cli_main(["pack", str(tmp_path / "ckpt.pt"), "--model", "lenet300", "--out", str(out),
                     "--sparsity", "0.5", "--bits", "4", "--coder", "smallest",
                     "--plain-dtype", "float16", "--metadata", "minimal", "--json"]) == 0
    capsys.readouterr()
    model = LeNet300()
    model.load_state_dict(sd)
    names = ("fc1", "fc2", "fc3")
    off = {t: False for t in LAYER_TYPES}
    comp = compress(model, {"stages": [
        {"kind": "prune", "sparsity": 0.5, "rounds": 1, "retrain_epochs": 0, "by_type": off,
         "by_name": {n: {"sparsity": 0.5} for n in names}},
        {"kind": "share", "by_type": off,
         "by_name": {n: {"bits": 4, "group_size": None} for n in names}},
        {"kind": "encode", "coder": "smallest", "index_bits": None, "plain_dtype": "float16",
         "metadata": "minimal"}]})
    api = comp.save(tmp_path / "api.dcz",
                    meta={"model": {"name": "lenet300", "kwargs": {}},
                          "source": {"checkpoint": str(tmp_path / "ckpt.pt")}})
    assert api.coder in ("huffman", "ans")
    assert (tmp_path / "api.dcz").read_bytes() == out.read_bytes()
    assert set(load(out).meta) - {"format"} == {"model", "recipe_sha256"}   # minimal: no source


def test_cli_pack_a_model_with_an_lstm(tmp_path, capsys, monkeypatch):
    """pack reads each layer's weight by its state_dict key: a recurrent matrix is a layer named
    by its own key (it failed looking up 'weight' in the LSTM module's state_dict)."""
    torch.manual_seed(0)
    model = lstm_model()
    torch.save(model.state_dict(), tmp_path / "ckpt.pt")
    out = tmp_path / "m.dcz"
    assert cli_main(["pack", str(tmp_path / "ckpt.pt"), "--model", f"{__name__}:lstm_model",
                     "--out", str(out), "--sparsity", "0.5", "--bits", "4", "--json"]) == 0
    capsys.readouterr()
    w = load(out).state_dict["rnn.weight_hh_l0"]
    assert float((w == 0).float().mean()) == pytest.approx(0.5, abs=0.01)
    assert torch.unique(w[w != 0]).numel() <= 16


def lstm_model() -> torch.nn.Module:
    class Tagger(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.LSTM(6, 8, batch_first=True)
            self.head = torch.nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.rnn(x)[0])
    return Tagger()
