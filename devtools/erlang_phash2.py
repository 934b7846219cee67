"""Erlang's `erlang:phash2/1` for the terms a JSON document decodes to, so the Realtime stand-in
can assign `postgres_changes` binding ids exactly as the real server does.

The server (supabase/realtime `RealtimeChannel.add_id_to_postgres_changes` and
`postgres_cdc_subscribe`) gives each binding of a join the id `:erlang.phash2(params)`, where
`params` is the binding map as Jason decoded it from the join: string keys and values become
binaries, arrays lists, `null` the atom `nil`, `true`/`false` atoms, integers integers. The hash is
OTP's portable `make_hash2` (erts `erl_term_hashing.c`: Bob Jenkins' lookup2 mix over 32-bit
words, map pairs hashed on their own and combined with XOR so key order does not matter), masked
to 27 bits. It is the same on every platform and OTP release since maps were introduced;
`tests/test_erlang_phash2.py` pins values computed by OTP 25's `erlang:phash2/1`.

Supported terms: `str` and `bytes` (binaries), `dict` (maps), `list` (lists), `tuple` (tuples),
`int` (small integers, |n| < 2**59), `bool` and `None` (the atoms `true`, `false`, `nil`). Floats,
big integers and other atoms raise TypeError: binding maps never hold them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

MASK32 = 0xFFFFFFFF
PHASH2_RANGE = 1 << 27
"""`erlang:phash2/1` returns a value in [0, 2**27)."""

GOLDEN = 0x9E3779B9
# GOLDEN * n mod 2**32, the type constants of make_hash2
H_NIL = 0x3C6EF372  # HCONST_2
H_ATOM = 0xDAA66D2B  # HCONST_3
H_BYTES = 0x78DDE6E4  # HCONST_4
H_TUPLE = 0x8FF34781  # HCONST_9
H_NEG_BIG = 0x2E2AC13A  # HCONST_10
H_POS_BIG = 0xCC623AF3  # HCONST_11
H_BINARY = 0x08D12E65  # HCONST_13
H_MAP = 0xE3779B90  # HCONST_16
H_MAP_PAIRS = 0xBE1E08BB  # HCONST_19
NIL_FIRST = 3468870702
"""make_hash2 of `[]` when nothing was hashed before it."""
NIL_DEF = 0x2
"""The value make_hash2 mixes for `[]` after other terms (erts `NIL_DEF`)."""
SMALL_BITS = 60
"""Small integers on a 64-bit emulator; larger ones are bignums, not supported here."""


def phash2(term: Any) -> int:
    """`erlang:phash2(term)`: an int in [0, 2**27) (TypeError for unsupported terms)."""
    return _hash(term, 0) & (PHASH2_RANGE - 1)


MIX_SHIFTS = (-13, 8, -13, -12, 16, -5, -3, 10, -15)
"""Bob Jenkins' lookup2 mix, step by step: step i updates word i mod 3 from the two others and
XORs in the last of them shifted right (negative) or left (positive) by this much."""


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    """Bob Jenkins' lookup2 mix of three 32-bit words."""
    words = [a, b, c]
    for step, shift in enumerate(MIX_SHIFTS):
        target, first, last = step % 3, (step + 1) % 3, (step + 2) % 3
        value = (words[target] - words[first] - words[last]) & MASK32
        mixed = words[last] >> -shift if shift < 0 else (words[last] << shift) & MASK32
        words[target] = value ^ mixed
    return words[0], words[1], words[2]


def _mix_words(first: int, second: int, constant: int, hash_value: int) -> int:
    return _mix((constant + first) & MASK32, (constant + second) & MASK32, hash_value)[2]


def _block_hash(data: bytes, initial: int) -> int:
    """lookup2 over a byte string, 12 bytes at a time, little-endian words."""
    a = b = GOLDEN
    c = initial
    full = len(data) - len(data) % 12
    for start in range(0, full, 12):
        a = (a + int.from_bytes(data[start : start + 4], "little")) & MASK32
        b = (b + int.from_bytes(data[start + 4 : start + 8], "little")) & MASK32
        c = (c + int.from_bytes(data[start + 8 : start + 12], "little")) & MASK32
        a, b, c = _mix(a, b, c)
    tail = data[full:]
    c = (c + len(data)) & MASK32
    a = (a + int.from_bytes(tail[0:4], "little")) & MASK32
    b = (b + int.from_bytes(tail[4:8], "little")) & MASK32
    # the first byte of `c` is reserved for the length: the tail's bytes 8..10 go above it
    c = (c + (int.from_bytes(tail[8:11], "little") << 8)) & MASK32
    return _mix(a, b, c)[2]


def _atom_value(name: str) -> int:
    """The atom table's hash of an ASCII atom name (hashpjw, erts `atom.c`)."""
    value = 0
    for byte in name.encode("ascii"):
        value = ((value << 4) + byte) & MASK32
        high = value & 0xF0000000
        if high:
            value ^= high >> 24
            value ^= high
    return value


def _hash(term: Any, hash_value: int) -> int:
    """make_hash2 of `term`, continuing from the hash of what came before it."""
    if term is None or isinstance(term, bool):
        atom = {None: "nil", True: "true", False: "false"}[term]
        if hash_value == 0:
            return _atom_value(atom)
        return _mix_words(_atom_value(atom), 0, H_ATOM, hash_value)
    if isinstance(term, int):
        return _hash_integer(term, hash_value)
    if isinstance(term, str | bytes):
        data = term.encode() if isinstance(term, str) else term
        initial = (H_BINARY + hash_value) & MASK32
        return _block_hash(data, initial) if data else initial
    if isinstance(term, Mapping):
        hash_value = _mix_words(len(term), 0, H_MAP, hash_value)
        if not term:
            return hash_value
        pairs = 0
        for key, value in term.items():
            pairs ^= _hash(value, _hash(key, 0))
        return _mix_words(pairs, 0, H_MAP_PAIRS, hash_value)
    if isinstance(term, tuple):
        hash_value = _mix_words(len(term), 0, H_TUPLE, hash_value)
        for element in term:
            hash_value = _hash(element, hash_value)
        return hash_value
    if isinstance(term, list):
        return _hash_list(term, hash_value)
    raise TypeError(f"phash2 of {type(term).__name__} is not supported")


def _hash_integer(number: int, hash_value: int) -> int:
    if not -(1 << (SMALL_BITS - 1)) <= number < 1 << (SMALL_BITS - 1):
        raise TypeError("phash2 of a bignum is not supported")
    if -(1 << 27) <= number < 1 << 27:
        if number < 0:  # negative numbers are mixed twice, as in OTP
            hash_value = _mix_words(-number, 0, GOLDEN, hash_value)
        return _mix_words(number & MASK32, 0, GOLDEN, hash_value)
    constant = H_NEG_BIG if number < 0 else H_POS_BIG
    magnitude = abs(number)
    return _mix_words(magnitude & MASK32, magnitude >> 32, constant, hash_value)


def _is_byte(term: Any) -> bool:
    return isinstance(term, int) and not isinstance(term, bool) and 0 <= term <= 255


def _hash_nil(hash_value: int) -> int:
    return NIL_FIRST if hash_value == 0 else _mix_words(NIL_DEF, 0, H_NIL, hash_value)


def _hash_list(items: Sequence[Any], hash_value: int) -> int:
    """A proper list: runs of bytes packed four to a word (the string optimisation), other
    elements hashed in turn, then the closing `[]`."""
    if not items:
        return _hash_nil(hash_value)
    index = 0
    while True:
        count = packed = 0
        while index < len(items) and _is_byte(items[index]):
            packed = ((packed << 8) + items[index]) & MASK32
            if count == 3:
                hash_value = _mix_words(packed, 0, H_BYTES, hash_value)
                count = packed = 0
            else:
                count += 1
            index += 1
        if count:
            hash_value = _mix_words(packed, 0, H_BYTES, hash_value)
        if index == len(items):
            return _hash_nil(hash_value)
        hash_value = _hash(items[index], hash_value)
        index += 1
        if index == len(items):
            return _hash_nil(hash_value)
