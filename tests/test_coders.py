"""Bit packing, canonical Huffman and rANS streams on hand-computable inputs."""
from __future__ import annotations

import heapq
import time

import numpy as np
import pytest

from dcz import _huffman, _streams
from dcz._bits import pack_codes, pack_fixed, unpack_fixed
from dcz._format import Reader
from dccore.errors import ContainerError


def _reference_bits(codes, lengths) -> bytes:
    s = "".join(format(int(c), f"0{int(n)}b") for c, n in zip(codes, lengths))
    s += "0" * (-len(s) % 8)
    return int(s, 2).to_bytes(len(s) // 8, "big") if s else b""


def test_pack_codes_matches_string_concatenation():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(0, 200))
        lengths = rng.integers(1, 33, size=n).astype(np.uint64)
        codes = rng.integers(0, 2**63, size=n, dtype=np.uint64) & ((np.uint64(1) << lengths) - 1)
        data, total = pack_codes(codes, lengths)
        assert total == int(lengths.sum())
        assert data == _reference_bits(codes, lengths)


def test_pack_codes_hand_example():
    # 1, 01, 001 -> 101001 -> 0b10100100
    data, total = pack_codes(np.array([1, 1, 1]), np.array([1, 2, 3]))
    assert (data, total) == (bytes([0b10100100]), 6)


@pytest.mark.parametrize("width", [1, 3, 5, 8, 13, 16, 32])
def test_fixed_width_round_trip(width):
    rng = np.random.default_rng(width)
    values = rng.integers(0, 2**width, size=1001, dtype=np.uint64)
    data = pack_fixed(values, width)
    assert len(data) == (1001 * width + 7) // 8
    assert data == _reference_bits(values, [width] * values.size)
    assert np.array_equal(unpack_fixed(data, values.size, width), values)


def test_huffman_lengths_known_distribution():
    # Dyadic probabilities 1/2, 1/4, 1/8, 1/16, 1/16: lengths are exactly -log2(p).
    lengths = _huffman.code_lengths(np.array([8, 4, 2, 1, 1]))
    assert lengths.tolist() == [1, 2, 3, 4, 4]
    # Absent symbols get no code; a lone symbol gets one bit.
    assert _huffman.code_lengths(np.array([0, 5, 0, 5])).tolist() == [0, 1, 0, 1]
    assert _huffman.code_lengths(np.array([0, 7])).tolist() == [0, 1]


def test_canonical_codes_from_lengths():
    order, lens, codes, max_len = _huffman.canonical(np.array([2, 1, 3, 3], dtype=np.uint8))
    # (length, symbol) order: 1 -> "0", 0 -> "10", 2 -> "110", 3 -> "111"
    assert order.tolist() == [1, 0, 2, 3]
    assert [format(c, f"0{n}b") for c, n in zip(codes, lens)] == ["0", "10", "110", "111"]
    assert max_len == 3


def _optimal_cost(weights) -> int:
    heap = [int(w) for w in weights]
    heapq.heapify(heap)
    cost = 0
    while len(heap) > 1:
        a, b = heapq.heappop(heap), heapq.heappop(heap)
        cost += a + b
        heapq.heappush(heap, a + b)
    return cost


def test_huffman_lengths_are_optimal():
    rng = np.random.default_rng(1)
    for _ in range(100):
        counts = rng.integers(1, 1000, size=int(rng.integers(2, 60)))
        lengths = _huffman.code_lengths(counts).astype(np.int64)
        assert int((lengths * counts).sum()) == _optimal_cost(counts)
        assert _huffman.kraft_ok(lengths)


def test_huffman_length_limit_on_fibonacci_counts():
    fib = [1, 1]
    while len(fib) < 40:
        fib.append(fib[-1] + fib[-2])
    counts = np.array(fib)
    assert _huffman._huffman_depths(counts).max() == 39  # unlimited: a 39-deep chain
    lengths = _huffman.code_lengths(counts)
    assert lengths.max() <= _huffman.MAX_LEN and _huffman.kraft_ok(lengths)
    symbols = np.repeat(np.arange(40), 3)
    data, total, starts = _huffman.encode(symbols, lengths)
    assert np.array_equal(_huffman.decode(data, total, symbols.size, lengths, starts), symbols)


@pytest.mark.parametrize("table", [True, False])
def test_huffman_multi_lane_round_trip_and_corruption(monkeypatch, table):
    monkeypatch.setattr(_huffman, "uses_table", lambda max_len, count: table)
    rng = np.random.default_rng(2)
    n = 3 * _huffman.LANE + 17
    symbols = np.minimum(rng.geometric(0.3, size=n) - 1, 40)
    lengths = _huffman.code_lengths(np.bincount(symbols, minlength=41))
    data, total, starts = _huffman.encode(symbols, lengths)
    assert starts.size == 3
    assert np.array_equal(_huffman.decode(data, total, n, lengths, starts), symbols)
    bad = bytearray(data)
    bad[len(bad) // 2] ^= 0x10
    with pytest.raises(ValueError):
        _huffman.decode(bytes(bad), total, n, lengths, starts)


def test_huffman_short_stream_with_a_20_bit_code_builds_no_table():
    """Lengths 1 and 20 (an incomplete code): a flat table would be 2**20 entries for one
    symbol, milliseconds per 40 bytes of file; the codes' starts are searched instead."""
    lengths = np.array([1, 20, 0, 0], dtype=np.uint8)
    assert not _huffman.uses_table(20, 1) and _huffman.uses_table(12, 1)
    one = b"\x80\x00\x00"  # symbol 1's code: 1 then nineteen 0s
    t = time.perf_counter()
    for _ in range(20):
        assert _huffman.decode(one, 20, 1, lengths, np.zeros(0, np.uint64)).tolist() == [1]
    assert (time.perf_counter() - t) / 20 < 0.005
    assert _huffman.decode(b"\x00", 1, 1, lengths, np.zeros(0, np.uint64)).tolist() == [0]
    with pytest.raises(ValueError, match="no code"):  # 11...: no code starts so
        _huffman.decode(b"\xc0\x00\x00", 20, 1, lengths, np.zeros(0, np.uint64))


def _skewed(n: int, seed: int = 0) -> np.ndarray:
    p = np.exp(-np.arange(32) / 3.0)
    return np.random.default_rng(seed).choice(32, size=n, p=p / p.sum())


def _round_trip(symbols, alphabet, coder):
    data, info = _streams.encode(symbols, alphabet, coder, "s")
    reader = Reader(data, "test")
    out, info2 = _streams.decode(reader, "s", max_count=symbols.size)
    reader.done()
    assert np.array_equal(out, symbols)
    assert info2 == info
    return info


def test_ans_within_one_percent_of_entropy():
    info = _round_trip(_skewed(200_000), 32, "ans")
    assert info.coder == "ans"
    assert 0 <= info.payload_overhead < 0.01


def test_huffman_within_one_bit_of_entropy():
    symbols = _skewed(50_000, seed=1)
    info = _round_trip(symbols, 32, "huffman")
    assert info.entropy_bits <= info.payload_bytes * 8 < info.entropy_bits + symbols.size + 8


@pytest.mark.parametrize("coder", ["none", "huffman", "ans"])
@pytest.mark.parametrize("symbols,alphabet", [
    (np.zeros(0, np.int64), 4),              # empty
    (np.array([3]), 4),                      # one symbol
    (np.full(1000, 2), 4),                   # one distinct symbol: no payload for Huffman/ANS
    (np.array([0, 65535, 7, 65535]), 2**16),  # huge, sparse alphabet (table stored as a list)
    (np.arange(64) % 64, 64),                # every symbol present (table stored as a bitmap)
])
def test_stream_round_trips(coder, symbols, alphabet):
    info = _round_trip(np.asarray(symbols, dtype=np.int64), alphabet, coder)
    if coder != "none":  # never larger than fixed width; one distinct symbol: no payload
        assert info.bytes <= _streams.fixed_bytes(info.count, alphabet)
        if info.distinct <= 1 and info.count > 16:
            assert info.coder == "constant" and info.payload_bytes == 0


def test_stream_decoder_rejects_counts_beyond_its_limit():
    data, _ = _streams.encode(np.full(10, 1), 4, "huffman", "s")
    with pytest.raises(ContainerError, match="at most 5"):
        _streams.decode(Reader(data, "f"), "s", max_count=5)
