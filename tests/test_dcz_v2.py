"""Format version 2 of .dcz: grouped codebooks, coded byte planes, float16 codebooks; version 1
files unchanged; bounded decoding of the new storage kinds."""
from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dccore.errors import ContainerError
from dcz import FORMAT_VERSION, inspect, load, pack
from dcz import _format, _tensor
from dcz_craft import BF16, F16, F32, constant, load_measured, tensor, write
from test_container import GOLDEN, GOLDEN_STATE, assert_exact

CODERS = ["none", "huffman", "ans"]
PLAIN_VALUES, CODEBOOKS, RAW_VALUES = _tensor.PLAIN_VALUES, _tensor.CODEBOOKS, _tensor.RAW_VALUES
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def grouped(rows: int, cols: int, group_size: int, k: int, density: float = 0.6, seed: int = 0,
            dtype=torch.float32) -> torch.Tensor:
    """Rows in groups of ``group_size``, each group drawing its non-zeros from its own k values."""
    rng = np.random.default_rng(seed)
    w = np.zeros((rows, cols))
    for g in range(0, rows, group_size):
        block = rng.standard_normal(k)[rng.integers(0, k, (min(group_size, rows - g), cols))]
        w[g:g + group_size] = np.where(rng.random(block.shape) < density, block, 0)
    return torch.from_numpy(w).to(dtype)


def expected(t: torch.Tensor, half: bool = False) -> torch.Tensor:
    """What a sparse tensor decodes to: float16-rounded on request, pruned zeros as +0.0."""
    if half and t.dtype in (torch.float32, torch.float64):  # widened as numpy does (NaNs)
        t = torch.from_numpy(t.to(torch.float16).numpy().astype(np.dtype(str(t.dtype)[6:])))
    return torch.where(t == 0, torch.zeros_like(t), t)


# ----------------------------------------------------------------------------- layout

def test_grouped_layout_by_hand(tmp_path):
    # Groups of 2 rows: {-1, 0.5}, {2}, and a last, shorter group with no non-zeros.
    w = torch.tensor([[0.5, 0.0], [0.5, -1.0], [2.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    payload, row = _tensor.encode_sparse("w", w, "none", 1, 2, group_size=2)
    gaps = bytes([0]) + struct.pack("<IQB", 4, 5, 2) + bytes([0b00010000, 0b10000000])  # 0,1,0,0,2
    indices = bytes([0]) + struct.pack("<IQB", 2, 5, 1) + bytes([0b11000000])          # 1,1,0,0,0
    assert payload == (_tensor._head("w", _tensor.BY_TORCH[torch.float32], (5, 2), CODEBOOKS)
                       + struct.pack("<QB", 5, 2) + gaps
                       + struct.pack("<BI", 1, 2) + bytes([0b10_01_00_00])  # sizes 2, 1, 0
                       + bytes([F32, 0]) + struct.pack("<3f", -1.0, 0.5, 2.0) + indices)
    assert (row.storage, row.group_size, row.bits, row.min_version) == ("grouped", 2, 1, 2)
    pack({"w": w}, tmp_path / "g.dcz", compressed={"w": {"bits": 1, "group_size": 2}})
    dcz = load(tmp_path / "g.dcz")
    assert_exact(dcz.state_dict, {"w": w}, {"w"})
    info = dcz.layers["w"]
    assert info.storage == "grouped" and info.group_size == 2 and info.bits == 1
    assert info.codebook.tolist() == [-1.0, 0.5, 2.0] and info.codebook_sizes.tolist() == [2, 1, 0]
    assert [c.tolist() for c in info.group_codebooks()] == [[-1.0, 0.5], [2.0], []]
    assert dcz.version == 2 and dcz.meta["format"]["version"] == 2


@pytest.mark.parametrize("coder", ["huffman", "ans"])
def test_byte_planes_code_what_compresses_and_keep_the_rest(tmp_path, coder):
    # Position ids: the low byte varies, the high seven bytes are constant.
    sd = {"pos": torch.arange(512, dtype=torch.int64), "b": torch.randn(3000)}
    report = pack(sd, tmp_path / "p.dcz", coder=coder)
    pos, b = report.tensors
    assert pos.storage == "plain" and pos.min_version == 2
    assert [s.coder for s in pos.streams][2:] == ["constant"] * 6
    assert pos.bytes < 512 * 8 / 4
    # A float's top byte (sign and exponent) codes; its low mantissa bytes stay as they are.
    assert b.streams[3].coder == coder and b.streams[0].coder == "none"
    assert b.streams[3].payload_bytes < 3000 * 5 / 8 and b.values_bytes < 3000 * 4 * 0.92
    assert_exact(load(tmp_path / "p.dcz").state_dict, sd)
    info = inspect(tmp_path / "p.dcz")
    assert {"values0", "values7"} <= set(info["streams"])
    assert info["overhead_bytes"] + sum(t["bytes"] for t in info["tensors"]) == info["bytes"]


def test_raw_non_zeros_are_coded_when_smaller(tmp_path):
    w = torch.randn(100, 80)
    w[w.abs() < 0.5] = 0   # pruned, every survivor distinct: raw
    sd = {"w": w}
    coded = pack(sd, tmp_path / "c.dcz", compressed={"w": {}}).tensors[0]
    as_is = pack(sd, tmp_path / "a.dcz", compressed={"w": {}}, code_values=False).tensors[0]
    assert coded.storage == as_is.storage == "raw"
    assert coded.min_version == 2 and as_is.min_version == 1
    assert coded.bytes < as_is.bytes and as_is.values_bytes == 4 * as_is.nnz
    assert_exact(load(tmp_path / "c.dcz").state_dict, sd, {"w"})
    assert load(tmp_path / "c.dcz").layers["w"].storage == "raw"


def test_float16_codebooks_and_values_on_request(tmp_path):
    shared = grouped(20, 10, 20, 8)
    shared[0, 0] = 1e-9      # rounds to zero in float16: then pruned
    shared[0, 1] = 1e6       # past float16's range: inf
    raw = torch.randn(30, 30) * (torch.rand(30, 30) < 0.5)
    sd = {"s": shared, "r": raw, "g": grouped(16, 8, 4, 4), "b": torch.randn(7)}
    report = pack(sd, tmp_path / "h.dcz", codebook_dtype="float16",
                  compressed={"s": {}, "r": {}, "g": {"group_size": 4, "codebook_dtype":
                                                      "float32"}})
    rows = {t.name: t for t in report.tensors}
    assert (rows["s"].storage, rows["s"].value_dtype, rows["s"].min_version) == \
        ("codebook", "float16", 2)
    assert (rows["r"].storage, rows["r"].value_dtype) == ("raw", "float16")
    assert rows["g"].value_dtype == "float32" and rows["b"].value_dtype == "float32"
    dcz = load(tmp_path / "h.dcz")
    out = dcz.state_dict
    assert out["s"][0, 0] == 0 and torch.isinf(out["s"][0, 1])
    assert_exact(out, {"s": expected(shared, True), "r": expected(raw, True),
                       "g": expected(sd["g"]), "b": sd["b"]})
    assert dcz.layers["s"].value_dtype == "float16" and dcz.layers["s"].codebook_sizes is None
    assert dcz.meta["format"]["codebook_dtype"] == "float16"


def test_a_group_with_too_many_values_makes_the_layer_raw(tmp_path):
    w = grouped(8, 16, 4, 4)
    w[5, :] = torch.arange(1, 17)          # 16+ distinct values in the second group
    report = pack({"w": w}, tmp_path / "r.dcz", compressed={"w": {"bits": 2, "group_size": 4}})
    assert report.tensors[0].storage == "raw"
    ok = pack({"w": w}, tmp_path / "g.dcz", compressed={"w": {"bits": 5, "group_size": 4}})
    assert ok.tensors[0].storage == "grouped" and ok.tensors[0].bits == 5
    assert_exact(load(tmp_path / "g.dcz").state_dict, {"w": w}, {"w"})


def test_grouped_codebooks_cost_what_they_hold():
    """Grouping a layer whose groups share values costs only the extra codebooks and sizes."""
    w = grouped(64, 32, 8, 4, density=1.0)
    one, _ = _tensor.encode_sparse("w", w, "none", None, None)
    per, row = _tensor.encode_sparse("w", w, "none", None, None, group_size=8)
    # One codebook of 32 values and 5-bit indices, against 8 of 4 values and 2-bit indices,
    # whose sizes (3 bits each), stored dtype and value layout cost 5 bytes more.
    assert len(one) - len(per) == 64 * 32 * (5 - 2) // 8 - 5
    assert row.codebook_bytes == 3 + 1 + 1 + 8 * 4 * 4


@pytest.mark.parametrize("shape", [(), (0, 5), (3, 0, 2), (7,), (4, 3, 2)])
def test_grouped_edge_shapes(tmp_path, shape):
    g = torch.Generator().manual_seed(1)
    w = torch.randint(-2, 3, shape, generator=g).float() / 2  # values -1, -0.5, 0.5, 1
    pack({"w": w}, tmp_path / "e.dcz", compressed={"w": {"bits": 2, "group_size": 2}},
         coder="ans")
    dcz = load(tmp_path / "e.dcz")
    assert_exact(dcz.state_dict, {"w": w}, {"w"})
    info = dcz.layers["w"]
    rows = shape[0] if shape else 1
    assert info.storage == "grouped" and len(info.group_codebooks()) == -(-rows // 2)
    assert sum(map(len, info.group_codebooks())) == len(info.codebook)


# ----------------------------------------------------------------------------- compatibility

@pytest.mark.parametrize("coder", CODERS)
def test_files_without_new_storage_are_version_1_as_before(tmp_path, coder):
    pack(GOLDEN_STATE, tmp_path / "a.dcz", compressed={"fc.weight": {"index_bits": 2}},
         coder=coder)
    pack(GOLDEN_STATE, tmp_path / "b.dcz", compressed={"fc.weight": {"index_bits": 2}},
         coder=coder, code_values=False)
    data = (tmp_path / "a.dcz").read_bytes()
    assert data == (tmp_path / "b.dcz").read_bytes()
    assert load(tmp_path / "a.dcz").version == 1
    if coder == "none":  # the golden file, byte for byte (other coders record constriction's
        assert data == bytes.fromhex(GOLDEN[coder])  # version, or store short streams fixed)


def test_old_reader_refuses_a_version_2_file_asking_for_an_upgrade(tmp_path, monkeypatch):
    pack({"w": grouped(8, 4, 4, 2)}, tmp_path / "v2.dcz", compressed={"w": {"group_size": 4}})
    monkeypatch.setattr(_format, "FORMAT_VERSION", 1)
    with pytest.raises(ContainerError, match="format version 2 is newer .* upgrade deepcompress"):
        load(tmp_path / "v2.dcz")


@pytest.mark.parametrize("storage", [CODEBOOKS, PLAIN_VALUES, RAW_VALUES])
def test_a_version_1_file_cannot_hold_new_storage(tmp_path, storage):
    write(tmp_path / "v1.dcz", tensor((4,), storage, b"\0" * 32), version=1)
    with pytest.raises(ContainerError, match=f"storage kind {storage} needs format version 2"):
        load(tmp_path / "v1.dcz")


@pytest.mark.parametrize("options,match", [
    ({"group_size": 0}, "group_size must be an integer in 1..4294967295"),
    ({"group_size": True}, "group_size must be"),
    ({"group_size": 2**32}, "group_size must be"),
    ({"codebook_dtype": "bfloat16"}, "codebook_dtype must be one of"),
    ({"group": 4}, "allowed: bits, index_bits, group_size, codebook_dtype"),
])
def test_pack_validates_the_new_options(tmp_path, options, match):
    with pytest.raises(ContainerError, match=match):
        pack({"w": torch.ones(4)}, tmp_path / "x.dcz", compressed={"w": options})
    with pytest.raises(ContainerError, match="codebook_dtype must be one of"):
        pack({"w": torch.ones(4)}, tmp_path / "x.dcz", codebook_dtype="int8")
    assert not (tmp_path / "x.dcz").exists()


# ----------------------------------------------------------------------------- properties

@st.composite
def layers(draw):
    dtype = draw(st.sampled_from(DTYPES))
    rows, cols = draw(st.integers(0, 40)), draw(st.integers(0, 24))
    group_size = draw(st.one_of(st.none(), st.integers(1, 45)))
    k = draw(st.integers(1, 20))
    w = grouped(rows, cols, group_size or max(rows, 1), k, draw(st.floats(0, 1)),
                draw(st.integers(0, 2**16)), dtype)
    if draw(st.booleans()) and w.numel():  # special values are values like any other
        flat = w.view(-1)
        flat[draw(st.integers(0, flat.numel() - 1))] = draw(st.sampled_from(
            [float("nan"), float("inf"), -float("inf"), -0.0, 1e-30]))
    bits = draw(st.one_of(st.none(), st.integers(0, 6)))  # too few: raw storage
    return w, {"bits": bits, "group_size": group_size}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layer=layers(), coder=st.sampled_from(CODERS), half=st.booleans(),
       code_values=st.booleans(), plain=st.booleans())
def test_round_trip_property(tmp_path_factory, layer, coder, half, code_values, plain):
    w, options = layer
    sd = {"w": w, "b": w.reshape(-1)[:50].clone()}
    path = tmp_path_factory.mktemp("v2") / "p.dcz"
    report = pack(sd, path, coder=coder, code_values=code_values,
                  compressed={} if plain else {"w": {**options,
                                                     "codebook_dtype": "float16" if half
                                                     else "float32"}})
    dcz = load(path)
    assert_exact(dcz.state_dict, {"w": w if plain else expected(w, half), "b": sd["b"]})
    assert dcz.version == max(t.min_version for t in report.tensors)
    assert [t.as_dict() for t in dcz.tensors] == [t.as_dict() for t in report.tensors]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layer=layers(), coder=st.sampled_from(["huffman", "ans"]), half=st.booleans())
def test_coding_never_makes_a_tensor_larger(layer, coder, half):
    w, options = layer
    sparse = dict(bits=options["bits"], index_bits=None, group_size=options["group_size"],
                  half=half)
    coded, _ = _tensor.encode_sparse("w", w, coder, code_values=True, **sparse)
    fixed, _ = _tensor.encode_sparse("w", w, "none", **sparse)
    assert len(coded) <= len(fixed)
    dtype = "float16" if half else "float32"
    coded, _ = _tensor.encode_plain("w", w, dtype, coder, code_values=True)
    as_is, _ = _tensor.encode_plain("w", w, dtype)
    assert len(coded) <= len(as_is)


# ----------------------------------------------------------------------------- bounded decoding

def fixed(alphabet: int, symbols: list[int], width: int) -> bytes:
    bits = "".join(format(s, f"0{width}b") for s in symbols)
    bits += "0" * (-len(bits) % 8)
    payload = int(bits, 2).to_bytes(len(bits) // 8, "big") if bits else b""
    return bytes([0]) + struct.pack("<IQB", alphabet, len(symbols), width) + payload


def planes(n: int, value: bytes) -> bytes:
    """A value block of n copies of ``value``: one constant stream per byte."""
    return bytes([1]) + b"".join(constant(256, n, byte) for byte in value)


N = 2**27


@pytest.mark.parametrize("payload,match", [
    # A plane one symbol short of the tensor's 2**27 float16 values.
    (tensor((N,), PLAIN_VALUES, bytes([F16, 1]) + constant(256, N, 0) + constant(256, N - 1, 0),
            dtype=F16), "values1 stream holds 134,217,727 symbols"),
    (tensor((N,), PLAIN_VALUES, bytes([F16, 7]), dtype=F16), "unknown value layout 7"),
    (tensor((4,), PLAIN_VALUES, bytes([BF16, 1]), dtype=F32), "invalid stored dtype"),
    # 2**47 empty rows, a codebook each: their sizes would need 2**44 bytes.
    (tensor((2**47, 0), CODEBOOKS, struct.pack("<QB", 0, 1) + constant(2, 0, 0)
            + struct.pack("<BI", 0, 1)), "codebook sizes claims 17,592,186,044,416 bytes"),
    # Codebooks of more entries than there are non-zeros.
    (tensor((4, 1), CODEBOOKS, struct.pack("<QB", 2, 1) + constant(2, 2, 0)
            + struct.pack("<BI", 1, 2) + bytes([0b10_10_0000])), "4 entries in all for 2"),
    (tensor((4, 1), CODEBOOKS, struct.pack("<QB", 4, 1) + constant(2, 4, 0)
            + struct.pack("<BI", 1, 2) + bytes([0b11_00_0000])), "3 entries does not fit 1-bit"),
    # A raw-values tensor claiming 2**27 non-zeros from a 40-byte constant value block; its
    # gaps hold one symbol fewer.
    (tensor((N,), RAW_VALUES, struct.pack("<QB", N, 1) + constant(2, N - 1, 0) + bytes([F16])
            + planes(N, b"\0\x3c"), dtype=F16), "expected 134,217,728"),
])
def test_false_claims_of_new_storage_fail_fast_in_small_memory(tmp_path, payload, match):
    write(tmp_path / "claim.dcz", payload, version=2)
    err, peak = load_measured(tmp_path / "claim.dcz")
    assert isinstance(err, ContainerError) and match in str(err), err
    assert peak < 2**20


def test_an_index_past_its_groups_codebook_is_refused(tmp_path):
    # Groups {rows 0-1: 2 values}, {rows 2-3: 1 value}; the last index points at a second one.
    body = (struct.pack("<QB", 4, 1) + constant(2, 4, 0) + struct.pack("<BI", 1, 2)
            + bytes([0b10_01_0000, F32, 0]) + struct.pack("<3f", 1, 2, 3))
    write(tmp_path / "ok.dcz", tensor((4, 1), CODEBOOKS, body + fixed(2, [0, 1, 0, 0], 1)),
          version=2)
    assert load(tmp_path / "ok.dcz").state_dict["fc.weight"].view(-1).tolist() == [1, 2, 3, 3]
    write(tmp_path / "bad.dcz", tensor((4, 1), CODEBOOKS, body + fixed(2, [0, 1, 0, 1], 1)),
          version=2)
    with pytest.raises(ContainerError, match="points past its group's codebook"):
        load(tmp_path / "bad.dcz")


def test_constant_planes_decode_to_their_tensor_and_no_more(tmp_path):
    """A valid ~90-byte file: 2**22 float32 ones from four constant planes. Decoding allocates
    the tensor and nothing per symbol; a smaller budget refuses it before allocating."""
    n = 2**22
    path = tmp_path / "ones.dcz"
    write(path, tensor((n,), PLAIN_VALUES, bytes([F32]) + planes(n, struct.pack("<f", 1.0))),
          version=2)
    out, peak = load_measured(path)
    assert torch.equal(out.state_dict["fc.weight"], torch.ones(n))
    assert peak < 4 * n + 2**20
    err, peak = load_measured(path, max_decoded_bytes=4 * n - 1)
    assert isinstance(err, ContainerError) and "more than this file may decode to" in str(err)
    assert peak < 2**20


def test_float16_planes_count_their_stored_copy_against_the_budget(tmp_path):
    n = 2**20
    path = tmp_path / "half.dcz"
    write(path, tensor((n,), PLAIN_VALUES, bytes([F16]) + planes(n, b"\0\x3c")), version=2)
    with pytest.raises(ContainerError, match="working memory"):
        load(path, max_decoded_bytes=4 * n + n)
    assert torch.equal(load(path, max_decoded_bytes=6 * n).state_dict["fc.weight"],
                       torch.ones(n))


def test_format_version_is_the_newest_understood():
    assert FORMAT_VERSION == 2
