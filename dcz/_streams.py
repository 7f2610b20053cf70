"""Symbol streams (gaps, cluster indices) and their coders: fixed width, Huffman, rANS.

A stream is a sequence of integers in ``[0, alphabet)``. Layout (after a u8 coder id, a u32
alphabet size and a u64 symbol count)::

    none      u8 width, then count*width bits, MSB first
    constant  u32 symbol (Huffman/ANS streams with one distinct symbol cost no payload bits)
    huffman   table (code lengths, 5 bits each), u32 lane, u8 offset width, lane offsets,
              u64 payload bits, payload
    ans       u8 frequency format, table (frequencies), u64 payload bytes, payload
              (constriction's u32 words, little-endian, minus the last word's zero high bytes)

A table lists the symbols present (a bitmap of the alphabet, or a list, whichever is smaller) and
one fixed-width value per present symbol.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import _huffman
from ._bits import pack_fixed, unpack_fixed
from ._format import Reader

CODERS = ("none", "huffman", "ans")
_ID = {"none": 0, "huffman": 1, "ans": 2, "constant": 3}
_NAME = {v: k for k, v in _ID.items()}
MAX_ALPHABET = 2**16
_LEN_WIDTH = 5  # Huffman code lengths are 1..20


@dataclass(frozen=True)
class StreamInfo:
    """What one coded stream costs, against its order-0 entropy bound."""

    name: str            # "gaps" or "indices"
    coder: str           # "none", "huffman", "ans" or "constant"
    count: int           # symbols
    alphabet: int        # size of the symbol range
    distinct: int        # symbols that occur
    bytes: int           # the whole stream as stored: header + table + payload
    table_bytes: int     # code lengths / frequencies (plus Huffman lane offsets)
    payload_bytes: int   # the coded symbols
    entropy_bits: float  # count * H0(empirical distribution): the order-0 bound on the payload

    @property
    def payload_overhead(self) -> float | None:
        """Payload bits over the entropy bound, as a fraction (0.01 = 1% above)."""
        return overhead(self.payload_bytes, self.entropy_bits)

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["bits_per_symbol"] = self.bytes * 8 / self.count if self.count else 0.0
        d["payload_bits_per_symbol"] = self.payload_bytes * 8 / self.count if self.count else 0.0
        d["entropy_bits_per_symbol"] = self.entropy_bits / self.count if self.count else 0.0
        d["payload_overhead"] = self.payload_overhead
        return d


def overhead(payload_bytes: int, entropy_bits: float) -> float | None:
    """Payload bits over the order-0 entropy bound, as a fraction; None where the bound is 0."""
    return payload_bytes * 8 / entropy_bits - 1 if entropy_bits > 0 else None


def entropy_bits(counts: np.ndarray) -> float:
    counts = np.asarray(counts, dtype=np.float64)
    counts = counts[counts > 0]
    n = counts.sum()
    if n == 0:
        return 0.0
    return max(0.0, float(-(counts * np.log2(counts / n)).sum()))  # one symbol: 0, not -0


def width_for(alphabet: int) -> int:
    return max(alphabet - 1, 0).bit_length()


# ---------------------------------------------------------------------------------------- tables

def _encode_table(alphabet: int, symbols: np.ndarray, values: np.ndarray,
                  value_width: int) -> bytes:
    sym_width = width_for(alphabet)
    as_list = symbols.size * sym_width < alphabet
    if as_list:
        presence = pack_fixed(symbols, sym_width)
    else:
        bitmap = np.zeros(alphabet, dtype=np.uint8)
        bitmap[symbols] = 1
        presence = np.packbits(bitmap).tobytes()
    return (int(symbols.size).to_bytes(4, "little") + bytes([int(as_list), value_width])
            + presence + pack_fixed(values, value_width))


def _decode_table(r: Reader, alphabet: int, what: str) -> tuple[np.ndarray, np.ndarray, int]:
    count = r.u32(f"{what} table size")
    as_list, value_width = r.u8(f"{what} table mode"), r.u8(f"{what} table value width")
    if count > alphabet or as_list > 1 or not 1 <= value_width <= 32:
        r.fail(f"{what}: malformed table ({count} symbols of {alphabet}, mode {as_list}, "
               f"{value_width}-bit values)")
    if as_list:
        sym_width = width_for(alphabet)
        raw = r.take((count * sym_width + 7) // 8, f"{what} table symbols")
        symbols = unpack_fixed(raw, count, sym_width).astype(np.int64)
        if count and (np.any(np.diff(symbols) <= 0) or symbols[-1] >= alphabet):
            r.fail(f"{what}: table symbols are not increasing within the alphabet")
    else:
        raw = r.take((alphabet + 7) // 8, f"{what} table bitmap")
        bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8))
        symbols = np.flatnonzero(bits[:alphabet])
        if symbols.size != count or bits[alphabet:].any():
            r.fail(f"{what}: table bitmap does not match its symbol count")
    raw = r.take((count * value_width + 7) // 8, f"{what} table values")
    values = unpack_fixed(raw, count, value_width).astype(np.int64)
    return symbols, values, value_width


# ---------------------------------------------------------------------------------------- encode

def encode(symbols: np.ndarray, alphabet: int, coder: str, name: str,
           counts: np.ndarray | None = None) -> tuple[bytes, StreamInfo]:
    """Encode ``symbols`` (ints in [0, alphabet)) with ``coder``; return (bytes, StreamInfo).

    Each stream records its own coder, so where an entropy coder's table and flush cost more
    than they save (short, nearly uniform streams) the stream is stored fixed-width instead.
    """
    data, info = _encode_as(symbols, alphabet, coder, name, counts)
    if coder != "none" and fixed_bytes(int(symbols.size), alphabet) < len(data):
        return _encode_as(symbols, alphabet, "none", name, counts)
    return data, info


def fixed_bytes(count: int, alphabet: int) -> int:
    """Stored size of a fixed-width ("none") stream: 14-byte header, then the packed symbols."""
    return 14 + (count * width_for(alphabet) + 7) // 8


def _encode_as(symbols: np.ndarray, alphabet: int, coder: str, name: str,
               counts: np.ndarray | None = None) -> tuple[bytes, StreamInfo]:
    if not 1 <= alphabet <= MAX_ALPHABET:
        raise ValueError(f"alphabet of {alphabet} symbols is outside 1..{MAX_ALPHABET}")
    n = int(symbols.size)
    if counts is None:
        counts = np.bincount(symbols, minlength=alphabet) if n else np.zeros(alphabet, np.int64)
    present = np.flatnonzero(counts)
    kind = coder
    if coder != "none" and present.size <= 1:
        kind = "constant"
    head = bytes([_ID[kind]]) + alphabet.to_bytes(4, "little") + n.to_bytes(8, "little")
    table = b""
    if kind == "none":
        width = width_for(alphabet)
        head += bytes([width])
        payload = pack_fixed(symbols, width)
    elif kind == "constant":
        head += int(present[0] if present.size else 0).to_bytes(4, "little")
        payload = b""
    elif kind == "huffman":
        lengths = _huffman.code_lengths(counts)
        payload, total_bits, lane_bits = _huffman.encode(symbols, lengths)
        off_width = int(lane_bits.max()).bit_length() if lane_bits.size else 0
        table = (_encode_table(alphabet, present, lengths[present], _LEN_WIDTH)
                 + _huffman.LANE.to_bytes(4, "little") + bytes([off_width])
                 + pack_fixed(lane_bits, off_width) + total_bits.to_bytes(8, "little"))
    elif kind == "ans":
        fmt, values, width, freqs = _ans_frequencies(counts[present])
        table = bytes([fmt]) + _encode_table(alphabet, present, values, width)
        words = _ans_encode(symbols, alphabet, present, freqs)
        # The last word (the top of the ANS state) is never zero; drop its zero high bytes.
        payload = words.astype("<u4").tobytes().rstrip(b"\0")
        table += len(payload).to_bytes(8, "little")
    else:
        raise ValueError(f"unknown coder {coder!r}; choose from {CODERS}")
    data = head + table + payload
    return data, StreamInfo(name=name, coder=kind, count=n, alphabet=alphabet,
                            distinct=int(present.size), bytes=len(data),
                            table_bytes=len(table), payload_bytes=len(payload),
                            entropy_bits=entropy_bits(counts[present]))


def estimate_bits(counts: np.ndarray, alphabet: int, coder: str, exact: bool = False) -> float:
    """Approximate stored bits of a stream with this histogram (used to choose the gap width)."""
    present = np.flatnonzero(counts)
    n = float(counts.sum())
    if coder == "none":
        return n * width_for(alphabet)
    if present.size <= 1:
        return 32.0  # a "constant" stream: its one symbol
    # The table as _encode_table writes it: 6 bytes, then a symbol list or bitmap, then values.
    table = 48 + min(alphabet, present.size * width_for(alphabet))
    if coder == "huffman":
        # + lane size, offset width, one offset per lane (~24 bits), total bits: 13 + 3/lane bytes
        table += present.size * _LEN_WIDTH + 104 + 24 * -(-n // _huffman.LANE)
        if exact:
            lengths = _huffman.code_lengths(counts)
            return float((lengths[present].astype(np.float64) * counts[present]).sum()) + table
        return entropy_bits(counts[present]) + 0.03 * n + table
    # + format byte, ~12-bit frequencies, payload length; the coder's flush costs ~3 bytes
    return entropy_bits(counts[present]) + table + present.size * 12 + 72 + 24


# ------------------------------------------------------------------------------------------- ANS

_LINEAR = 0  # ANS table formats: 0 = linear, m = 1..4 = "float" codes with an m-bit mantissa
_MAX_MANTISSA = 4


def float_freq(codes: np.ndarray, mantissa: int) -> np.ndarray:
    """Frequencies from "float" codes with an ``mantissa``-bit mantissa: a code c below
    2**mantissa is c itself; above, (2**mantissa | low bits) << (exponent - 1), exponent being
    c >> mantissa. Integers only, so the model is bit-identical on every machine."""
    codes = np.asarray(codes, dtype=np.int64)
    one = 1 << mantissa
    return np.where(codes < one, codes,
                    (one | (codes & (one - 1))) << np.maximum((codes >> mantissa) - 1, 0))


def _float_codes(x: np.ndarray, mantissa: int) -> np.ndarray:
    """Nearest float code (rounded in the mantissa) for each target frequency ``x`` >= 1."""
    one = 1 << mantissa
    small = x < one - 0.5
    e = np.maximum(np.floor(np.log2(np.maximum(x, one))).astype(np.int64) - mantissa, 0)
    m = np.rint(x / np.exp2(e)).astype(np.int64)
    carry = m >= 2 * one
    e, m = np.where(carry, e + 1, e), np.where(carry, one, m)
    codes = ((e + 1) << mantissa) | (m - one)
    return np.where(small, np.maximum(1, np.rint(x)).astype(np.int64), codes)


def _ans_frequencies(counts: np.ndarray) -> tuple[int, np.ndarray, int, np.ndarray]:
    """Choose how to store the model: (format, table values, value width, frequencies).

    Linear: counts scaled to ``width``-bit integers. Float: short codes with a 1-4 bit mantissa,
    cheaper for the long tails of gap streams. The choice minimises table bits + payload bits
    (the cross-entropy of the counts under the stored model)."""
    counts = counts.astype(np.float64)
    n, top = counts.sum(), counts.max()

    def cost(freqs: np.ndarray, width: int) -> float:
        return counts.size * width - float((counts * np.log2(freqs / freqs.sum())).sum())

    best = None
    for width in range(4, 25):
        q = np.maximum(1, np.rint(counts / top * ((1 << width) - 1))).astype(np.int64)
        c = cost(q, width)
        if best is None or c < best[0]:
            best = (c, _LINEAR, q, width, q)
        if (1 << width) > 64 * n:  # more precision than the stream can use
            break
    for mantissa in range(1, _MAX_MANTISSA + 1):
        for scale_bits in range(4, 31, 2):
            codes = _float_codes(counts / top * 2.0**scale_bits, mantissa)
            width = int(codes.max()).bit_length()
            freqs = float_freq(codes, mantissa)
            c = cost(freqs, width)
            if c < best[0]:
                best = (c, mantissa, codes, width, freqs)
    return best[1:]


def _ans_model(freqs: np.ndarray):
    import constriction  # a declared dependency; imported here to keep `import compression` cheap

    probs = freqs.astype(np.float64)
    return constriction.stream.model.Categorical(probs / probs.sum(), perfect=False)


def _ans_encode(symbols: np.ndarray, alphabet: int, present: np.ndarray,
                freqs: np.ndarray) -> np.ndarray:
    import constriction

    rank = np.zeros(alphabet, dtype=np.int32)
    rank[present] = np.arange(present.size, dtype=np.int32)
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(rank[symbols], _ans_model(freqs))
    return np.asarray(coder.get_compressed(), dtype=np.uint32)


# ---------------------------------------------------------------------------------------- decode
#
# Decoding is two steps. parse() reads a stream's header and table and checks every claim that is
# free to check: lengths against the bytes present, and symbol counts against what those bytes
# can hold (fixed width: exactly count * width bits; Huffman: at least the shortest code and at
# most the longest per symbol). Stream.symbols() then does the work, in memory proportional to
# the symbols (one or two bytes each) plus the payload. A tensor parses all its streams before it
# decodes any, so a false claim fails before anything large is allocated. An rANS stream's count
# is not bounded by its payload: symbols the coder's state already determines cost no bits (a
# run of the first table symbol at a stream's end is free), so its tensor bounds it instead.

DECODE_CHUNK = 1 << 20  # symbols per step where decoding works in pieces (ANS, histograms)


def symbol_dtype(alphabet: int) -> type:
    """The narrowest unsigned type that holds every symbol (alphabets are at most 2**16)."""
    return np.uint8 if alphabet <= 256 else np.uint16


@dataclass(frozen=True)
class Stream:
    """A parsed stream: header and table read and checked, payload located but not decoded."""

    name: str
    coder: str
    alphabet: int
    count: int
    bytes: int
    table_bytes: int
    payload_bytes: int
    symbol: int | None       # the only symbol, when a stream has no payload (constant, width 0)
    work_bytes: int          # memory that symbols() needs, its result included
    _decode: Callable[[], np.ndarray] | None = field(default=None, repr=False)

    def symbols(self) -> np.ndarray:
        """The symbols as symbol_dtype(alphabet); a read-only broadcast when ``symbol`` is set."""
        if self.symbol is not None:
            return np.broadcast_to(symbol_dtype(self.alphabet)(self.symbol), (self.count,))
        return self._decode()

    def info(self, symbols: np.ndarray) -> StreamInfo:
        counts = np.zeros(self.alphabet, dtype=np.int64)
        if self.symbol is not None:
            counts[self.symbol] = self.count
        else:
            for i in range(0, symbols.size, DECODE_CHUNK):  # bincount copies its input to int64
                counts += np.bincount(symbols[i:i + DECODE_CHUNK], minlength=self.alphabet)
        return StreamInfo(name=self.name, coder=self.coder, count=self.count,
                          alphabet=self.alphabet, distinct=int(np.count_nonzero(counts)),
                          bytes=self.bytes, table_bytes=self.table_bytes,
                          payload_bytes=self.payload_bytes, entropy_bits=entropy_bits(counts))


def decode(r: Reader, name: str, max_count: int) -> tuple[np.ndarray, StreamInfo]:
    """Read and decode one stream at the reader's position; ``max_count`` bounds its symbol
    count."""
    stream = parse(r, name, max_count)
    symbols = stream.symbols()
    return symbols, stream.info(symbols)


def parse(r: Reader, name: str, max_count: int) -> Stream:
    """Read one stream's header, table and payload location; check what can be checked without
    decoding. ``max_count`` bounds the claimed symbol count."""
    start = r.pos
    kind_id = r.u8(f"{name} stream coder")
    kind = _NAME.get(kind_id)
    if kind is None:
        r.fail(f"{name} stream: unknown coder id {kind_id}")
    alphabet = r.u32(f"{name} stream alphabet")
    n = r.u64(f"{name} stream length")
    if not 1 <= alphabet <= MAX_ALPHABET:
        r.fail(f"{name} stream: alphabet of {alphabet:,} symbols is outside 1..{MAX_ALPHABET:,}")
    if n > max_count:
        r.fail(f"{name} stream claims {n:,} symbols; at most {max_count:,} fit the tensor")
    parser = {"none": _parse_fixed, "constant": _parse_constant, "huffman": _parse_huffman,
              "ans": _parse_ans}[kind]
    table_start, table_end, symbol, work, run = parser(r, name, alphabet, n)
    return Stream(name=name, coder=kind, alphabet=alphabet, count=n, bytes=r.pos - start,
                  table_bytes=table_end - table_start, payload_bytes=r.pos - table_end,
                  symbol=symbol, work_bytes=work, _decode=run)


# Each _parse_* reads what follows the stream header and returns (table start, table end, the
# only symbol or None, bytes symbols() will need, the decoding function or None).

def _parse_fixed(r: Reader, name: str, alphabet: int, n: int):
    width = r.u8(f"{name} stream width")
    if width != width_for(alphabet):
        r.fail(f"{name} stream: width {width} does not match alphabet {alphabet}")
    mark = r.pos
    raw = r.take((n * width + 7) // 8, f"{name} stream payload")
    if width == 0:  # an alphabet of one symbol: nothing to store
        return mark, mark, 0, 0, None
    dtype = symbol_dtype(alphabet)

    def run() -> np.ndarray:
        symbols = unpack_fixed(raw, n, width, dtype)
        if symbols.size and int(symbols.max()) >= alphabet:
            r.fail(f"{name} stream: symbol outside its alphabet")
        return symbols

    return mark, mark, None, n * np.dtype(dtype).itemsize, run


def _parse_constant(r: Reader, name: str, alphabet: int, n: int):
    symbol = r.u32(f"{name} stream symbol")
    if symbol >= alphabet:
        r.fail(f"{name} stream: constant symbol {symbol} outside its alphabet")
    return r.pos, r.pos, symbol, 0, None


def _parse_huffman(r: Reader, name: str, alphabet: int, n: int):
    table_start = r.pos
    symbols, lengths, _ = _decode_table(r, alphabet, f"{name} stream Huffman")
    if symbols.size < 2 or np.any(lengths < 1) or np.any(lengths > _huffman.MAX_LEN):
        r.fail(f"{name} stream: Huffman table needs at least two symbols with code lengths "
               f"1..{_huffman.MAX_LEN}")
    full = np.zeros(alphabet, dtype=np.uint8)
    full[symbols] = lengths
    if not _huffman.kraft_ok(full):
        r.fail(f"{name} stream: Huffman code lengths violate the Kraft inequality")
    lane = r.u32(f"{name} stream lane size")
    off_width = r.u8(f"{name} stream lane offset width")
    if not 64 <= lane <= 2**16 or off_width > 40:
        r.fail(f"{name} stream: unsupported lane layout ({lane} symbols, {off_width}-bit offsets)")
    n_off = max(-(-n // lane) - 1, 0)
    raw = r.take((n_off * off_width + 7) // 8, f"{name} stream lane offsets")
    total_bits = r.u64(f"{name} stream payload bits")
    table_end = r.pos
    shortest, longest = int(lengths.min()), int(lengths.max())
    # Every code is shortest..longest bits: the payload bounds the count from both sides.
    if not n * shortest <= total_bits <= n * longest:
        r.fail(f"{name} stream: {total_bits:,} payload bits cannot hold {n:,} symbols of "
               f"{shortest}..{longest} bits")
    data = r.take((total_bits + 7) // 8, f"{name} stream payload")
    dtype = symbol_dtype(alphabet)
    # The result twice (padded to whole lanes), the payload's 8-byte windows, the lookup table
    # and five per-lane position arrays.
    table = 10 << longest if _huffman.uses_table(longest, n) else 17 * (symbols.size + 1)
    work = 2 * (n + lane) * np.dtype(dtype).itemsize + 8 * len(data) + table + 40 * (n_off + 1)

    def run() -> np.ndarray:
        lane_bits = unpack_fixed(raw, n_off, off_width)
        try:
            return _huffman.decode(data, total_bits, n, full, lane_bits, lane=lane, dtype=dtype)
        except ValueError as exc:
            r.fail(f"{name} stream: {exc}")

    return table_start, table_end, None, work, run


def _parse_ans(r: Reader, name: str, alphabet: int, n: int):
    table_start = r.pos
    fmt = r.u8(f"{name} stream ANS table format")
    if fmt > _MAX_MANTISSA:
        r.fail(f"{name} stream: unknown ANS table format {fmt}")
    symbols, freqs, _ = _decode_table(r, alphabet, f"{name} stream ANS")
    if fmt != _LINEAR:
        if np.any(freqs >= (40 << fmt)):  # exponents past 2**39 are no real frequency
            r.fail(f"{name} stream: ANS frequency code out of range")
        freqs = float_freq(freqs, fmt)
    if symbols.size < 2 or np.any(freqs < 1):
        r.fail(f"{name} stream: ANS table needs at least two symbols with non-zero frequencies")
    n_bytes = r.u64(f"{name} stream ANS payload bytes")
    table_end = r.pos
    raw = r.take(n_bytes, f"{name} stream payload")
    if n_bytes and raw[-1] == 0:
        r.fail(f"{name} stream: ANS payload ends in a zero byte")
    dtype = symbol_dtype(alphabet)
    # The result, the payload as u32 words, and one chunk of int32 ranks and their symbols.
    work = n * np.dtype(dtype).itemsize + 2 * (n_bytes + 4) + 6 * DECODE_CHUNK

    def run() -> np.ndarray:
        import constriction

        words = np.frombuffer(bytes(raw) + b"\0" * (-n_bytes % 4), dtype="<u4").astype(np.uint32)
        out = np.empty(n, dtype=dtype)
        table = symbols.astype(dtype)
        try:
            coder = constriction.stream.stack.AnsCoder(words)
            model = _ans_model(freqs)
            for i in range(0, n, DECODE_CHUNK):
                ranks = coder.decode(model, min(DECODE_CHUNK, n - i))
                if ranks.size != min(DECODE_CHUNK, n - i) or (
                        ranks.size and (ranks.min() < 0 or ranks.max() >= symbols.size)):
                    break
                out[i:i + ranks.size] = table[ranks]
            else:
                if coder.is_empty():
                    return out
        except Exception as exc:  # constriction reports malformed data as ValueError / pyo3 errors
            r.fail(f"{name} stream: ANS payload does not decode ({exc})")
        r.fail(f"{name} stream: ANS payload does not decode to exactly {n:,} symbols")

    return table_start, table_end, None, work, run
