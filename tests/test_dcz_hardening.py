"""Crafted .dcz files: decoding is bounded by what the file really decodes, every refusal is a
ContainerError naming its limit, and pack refuses what load would refuse."""
from __future__ import annotations

import struct
import warnings
import zlib

import numpy as np
import pytest
import torch

from dccore.errors import ContainerError
from dcz import _api, _streams, _tensor, load, pack
from dcz._format import Reader
from dcz_craft import F16, F32, constant, load_measured, tensor, write

PLAIN, CODEBOOK, RAW = 0, 1, 2   # storage kinds


# ----------------------------------------------------------------------------- crafting files

def width0(n: int) -> bytes:
    """A fixed-width stream over a one-symbol alphabet: no payload."""
    return bytes([0]) + struct.pack("<IQB", 1, n, 0)


def one_value_codebook(value: bytes) -> bytes:
    return struct.pack("<BI", 0, 1) + value


def ans_free_zeros(n: int) -> bytes:
    """An rANS stream of n zeros over {0, 1} (frequencies 2**20 and 1) with an empty payload:
    from the empty state, the first table symbol costs no bits."""
    values = ((2**20 << 21 | 1) << 6).to_bytes(6, "big")  # two 21-bit values, padded
    table = struct.pack("<IBB", 2, 0, 21) + bytes([0b11000000]) + values
    return bytes([2]) + struct.pack("<IQ", 2, n) + bytes([0]) + table + struct.pack("<Q", 0)


# ----------------------------------------------------------------------------- 3. bounded decoding

N = 2**27  # float16 elements: 256 MiB, what a file of a few hundred bytes may decode to


@pytest.mark.parametrize("payload,match", [
    # The reproducer: constant gaps claim 2**27 non-zeros; the index stream holds one
    # symbol fewer. The loader used to decode the gaps first (3.4 GB, 5-10 s) and only then
    # read the index stream.
    (tensor((N,), CODEBOOK, struct.pack("<QB", N, 1) + constant(2, N, 0)
            + one_value_codebook(b"\x00\x3c") + width0(N - 1), dtype=F16),
     "index stream holds 134,217,727 symbols"),
    # Raw storage claiming 2**27 values the section does not hold.
    (tensor((N,), RAW, struct.pack("<QB", N, 1) + constant(2, N, 0), dtype=F16),
     "non-zero values claims 268,435,456 bytes"),
    # Constant gaps: all fillers; entries past the end; fewer entries than non-zeros.
    (tensor((N,), RAW, struct.pack("<QB", 1, 1) + constant(2, 1, 1), dtype=F16),
     "ends with a filler"),
    (tensor((N,), CODEBOOK, struct.pack("<QB", N // 2, 2) + constant(4, N // 2, 2)
            + one_value_codebook(b"\x00\x3c") + width0(N // 2), dtype=F16), "runs past"),
    (tensor((N,), CODEBOOK, struct.pack("<QB", N, 1) + constant(2, N - 1, 0)
            + one_value_codebook(b"\x00\x3c") + width0(N), dtype=F16),
     "holds 134,217,727 entries; expected 134,217,728"),
])
def test_false_claims_of_huge_tensors_fail_fast_in_small_memory(tmp_path, payload, match):
    path = tmp_path / "claim.dcz"
    write(path, payload)
    assert path.stat().st_size < 200
    err, peak = load_measured(path)
    assert isinstance(err, ContainerError) and match in str(err), err
    assert peak < 2**20


def test_no_non_zeros_with_a_filler_only_gap_stream(tmp_path):
    """nnz 0, an empty one-symbol index stream and a gap stream of one filler: refused for the
    filler (an early version of the chunked decoder raised TypeError placing zero values)."""
    path = tmp_path / "f.dcz"
    gaps = bytes([0]) + struct.pack("<IQB", 2, 1, 1) + b"\x80"  # fixed width: one symbol, 1
    write(path, tensor((4,), CODEBOOK, struct.pack("<QB", 0, 1) + gaps + struct.pack("<BI", 0, 0)
                       + width0(0)))
    with pytest.raises(ContainerError, match="ends with a filler"):
        load(path)


def test_a_dense_one_value_layer_decodes_to_its_size_and_no_more(tmp_path):
    """A valid 150-byte file: 2**22 copies of 1.0 (constant gaps, a one-entry codebook). Its
    decoding allocates the tensor and a few chunks, never an array per symbol."""
    n = 2**22
    path = tmp_path / "dense.dcz"
    write(path, tensor((n,), CODEBOOK, struct.pack("<QB", n, 1) + constant(2, n, 0)
                       + one_value_codebook(struct.pack("<f", 1.0)) + width0(n)))
    out, peak = load_measured(path)
    assert torch.equal(out.state_dict["fc.weight"], torch.ones(n))
    assert out.tensors[0].streams[0].coder == "constant" and out.layers["fc.weight"].nnz == n
    assert peak < 4 * n + 2**20   # the float32 tensor, and under a MiB besides


def test_ans_counts_are_not_bounded_by_the_payload_but_by_the_tensor(tmp_path):
    """Why FORMAT.md gives rANS no payload bound: 2**20 symbols from an empty payload are a
    valid stream (constriction's encoder writes exactly that for a run of the first symbol)."""
    n = 2**20
    path = tmp_path / "ans.dcz"
    write(path, tensor((n,), CODEBOOK, struct.pack("<QB", n, 1) + ans_free_zeros(n)
                       + one_value_codebook(struct.pack("<f", 2.0)) + width0(n)))
    out, peak = load_measured(path)
    assert torch.equal(out.state_dict["fc.weight"], torch.full((n,), 2.0))
    # The tensor (4 bytes per element), its gap symbols (1 byte each), and a chunk of 2**20
    # positions (8 bytes each) or decoded ranks.
    assert peak < 5 * n + 12 * 2**20
    encoded, _ = _streams.encode(np.r_[1, np.zeros(n - 1, np.int64)], 2, "ans", "gaps")
    assert len(encoded) < 40  # the encoder's side of the same fact


def test_working_memory_counts_against_the_budget(tmp_path):
    """The tensor fits the budget, the 2**20 gap symbols it decodes through do not."""
    n = 2**20
    path = tmp_path / "ans.dcz"
    write(path, tensor((n,), CODEBOOK, struct.pack("<QB", n, 1) + ans_free_zeros(n)
                       + one_value_codebook(struct.pack("<f", 2.0)) + width0(n)))
    with pytest.raises(ContainerError, match="needs [0-9,]+ bytes of working memory"):
        load(path, max_decoded_bytes=4 * n + n // 2)
    load(path, max_decoded_bytes=4 * n + 2 * n + 2**24)


def _huffman_stream(n: int, total_bits: int, payload: bytes) -> bytes:
    """Huffman over {0: 1 bit, 1: 2 bits, 2: 2 bits} (a list table of 2-bit symbols)."""
    lengths = (1 << 10 | 2 << 5 | 2) << 1           # three 5-bit lengths, padded to 16 bits
    table = struct.pack("<IBB", 3, 1, 5) + bytes([0b00011000]) + lengths.to_bytes(2, "big")
    return (bytes([1]) + struct.pack("<IQ", 4, n) + table + struct.pack("<IB", 4096, 0)
            + struct.pack("<Q", total_bits) + payload)


@pytest.mark.parametrize("n,total_bits,ok", [
    (8, 8, True), (8, 16, True),    # eight 1-bit or eight 2-bit codes
    (9, 8, False), (4, 9, False),   # too few bits for 9 codes; more than 4 codes can use
])
def test_huffman_counts_are_bounded_by_the_payload_both_ways(n, total_bits, ok):
    data = _huffman_stream(n, total_bits, b"\0" * ((total_bits + 7) // 8))
    if ok:
        assert _streams.parse(Reader(data, "f"), "s", n).count == n
    else:
        with pytest.raises(ContainerError, match="payload bits cannot hold"):
            _streams.parse(Reader(data, "f"), "s", n)


def test_decoders_return_narrow_symbols():
    rng = np.random.default_rng(0)
    for alphabet, dtype in ((16, np.uint8), (4096, np.uint16)):
        symbols = np.minimum(rng.geometric(0.3, 5000) - 1, alphabet - 1)
        for coder in ("none", "huffman", "ans"):
            data, _ = _streams.encode(symbols, alphabet, coder, "s")
            out, _ = _streams.decode(Reader(data, "f"), "s", symbols.size)
            assert out.dtype == dtype and np.array_equal(out, symbols), coder


# ----------------------------------------------------------------------------- 4. crafted inputs

def _meta_file(tmp_path, text: bytes):
    path = tmp_path / "meta.dcz"
    write(path, meta=zlib.compress(text, 9))
    return path


@pytest.mark.parametrize("text,match", [
    (b"[" * 100_000 + b"]" * 100_000, "nests deeper than 32 levels"),   # was RecursionError
    (b'{"a":' * 33 + b"0" + b"}" * 33, "nests deeper than 32 levels"),
    (b'{"a": ' + b"1" * 5000 + b"}", "not valid JSON"),     # was ValueError (int digit limit)
])
def test_hostile_metadata_is_refused(tmp_path, text, match):
    err, peak = load_measured(_meta_file(tmp_path, text))
    assert isinstance(err, ContainerError) and match in str(err), err
    assert peak < 20 * len(text) + 2**20   # linear in the text: no deep object built first


def test_metadata_depth_counts_structure_not_brackets_in_strings(tmp_path):
    meta = {"a" * 3: "[[[[{{{{" * 100, "b": [[["]]]\\\"[["]]]}
    path = tmp_path / "ok.dcz"
    pack({"w": torch.ones(2)}, path, meta=meta)
    assert load(path).meta["a" * 3] == meta["a" * 3]
    assert load(_meta_file(tmp_path, b'{"a":' * 32 + b"0" + b"}" * 32)).meta


def test_float64_centroids_beyond_float32_load_without_warnings(tmp_path):
    """LayerInfo.codebook is float32: 1e300 becomes inf there, with no RuntimeWarning (an error
    under -W error) on the way; the tensor itself stays exact."""
    w = torch.tensor([0.0, 1e300, -1e300, 0.0, 2.0], dtype=torch.float64)
    pack({"w": w}, tmp_path / "d.dcz", compressed={"w": {"bits": 2}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = load(tmp_path / "d.dcz")
    assert torch.equal(out.state_dict["w"], w)
    assert np.isinf(out.layers["w"].codebook).sum() == 2


@pytest.mark.parametrize("shape", [
    (0, 2**40, 2**40),   # no elements, but strides past int64 (torch accepted it)
    (0, 2**64 - 1),      # was TypeError from torch's reshape
    (2**49,),
])
def test_shapes_past_the_limit_are_refused(tmp_path, shape):
    path = tmp_path / "shape.dcz"
    write(path, tensor(shape, PLAIN, bytes([F32])))
    with pytest.raises(ContainerError, match="larger than 281,474,976,710,656 elements"):
        load(path)


def test_empty_tensors_with_a_zero_dimension_still_round_trip(tmp_path):
    sd = {"e": torch.zeros(0, 5), "s": torch.zeros(3, 0, 2)}
    pack(sd, tmp_path / "e.dcz", compressed={"e": {}})
    out = load(tmp_path / "e.dcz").state_dict
    assert out["e"].shape == (0, 5) and out["s"].shape == (3, 0, 2)


# ----------------------------------------------------------------------------- 5. limits on pack

def test_pack_refuses_metadata_load_would_refuse(tmp_path):
    path = tmp_path / "m.dcz"
    deep: list = []
    for _ in range(40):
        deep = [deep]
    very_deep: list = []
    for _ in range(100_000):
        very_deep = [very_deep]
    for meta, match in ((deep, "nests deeper than 32 levels"),
                        (very_deep, "nests deeper than 32 levels"),
                        ({"blob": "x" * 2**24}, "larger than 16,777,216 bytes")):
        with pytest.raises(ContainerError, match=match):
            pack({"w": torch.ones(2)}, path, meta={"m": meta})
    assert not path.exists()


def test_pack_refuses_long_names_many_dims_and_many_tensors(tmp_path, monkeypatch):
    path = tmp_path / "t.dcz"
    with pytest.raises(ContainerError, match="tensor name of 1,025 bytes; at most 1,024"):
        pack({"n" * 1025: torch.ones(1)}, path)
    with pytest.raises(ContainerError, match="9 dimensions; at most 8"):
        pack({"w": torch.ones([1] * 9)}, path)
    pack({"n" * 1024: torch.ones(1)}, path)
    monkeypatch.setattr(_api, "MAX_TENSORS", 3)
    with pytest.raises(ContainerError, match="4 tensors; a .dcz file holds at most 3"):
        pack({str(i): torch.ones(1) for i in range(4)}, path)


def test_load_refuses_long_names_many_dims_and_many_tensors(tmp_path, monkeypatch):
    path = tmp_path / "t.dcz"
    write(path, tensor((1,), PLAIN, bytes([F32]) + b"\0" * 4, name="n" * 1025))
    with pytest.raises(ContainerError, match="tensor name of 1,025 bytes; at most 1,024"):
        load(path)
    write(path, tensor([1] * 9, PLAIN, bytes([F32]) + b"\0" * 4))
    with pytest.raises(ContainerError, match="9 dimensions; at most 8"):
        load(path)
    write(path, *(tensor((1,), PLAIN, bytes([F32]) + b"\0" * 4, name=str(i)) for i in range(4)))
    assert len(load(path).state_dict) == 4
    monkeypatch.setattr(_api, "MAX_TENSORS", 3)
    with pytest.raises(ContainerError, match="section 4 .*more than 3 tensors"):
        load(path)

