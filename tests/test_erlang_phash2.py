"""The stand-in's binding ids are the real server's: `erlang:phash2/1`, checked against values
computed by OTP 25 (`erl -noshell -eval 'io:format("~w~n", [erlang:phash2(T)])'`)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devtools.erlang_phash2 import PHASH2_RANGE, phash2

COACH_FILTER = "coach_id=eq.0b7e9c1a-2d3f-4e5a-8b6c-7d8e9f0a1b2c"

# (Python term, the Erlang term it stands for in a comment when not obvious, erlang:phash2)
OTP_VALUES: list[tuple[Any, int]] = [
    (b"", 13708901),
    (b"a", 112802447),
    (b"public", 46515530),
    (b"session_ratings", 44632004),
    (b"exactly12byt", 119264439),  # one full 12-byte block, empty tail
    (b"twenty-four bytes long!!", 31426968),
    (COACH_FILTER, 107797089),
    ("café", 94684372),  # <<"caf", 195, 169>>: str is hashed as its UTF-8 binary
    ([], 113427502),
    (["id"], 110552926),
    (["id", "status"], 8722192),
    ([1, 2, 3], 25788620),  # a byte list: packed four to a word
    ([1, 2, 3, 4, 5], 66056394),
    ([300], 99763619),
    ([1, "x", 2], 50309542),
    (None, 29948),  # nil
    (True, 506293),
    (False, 7111573),
    (0, 88723725),
    (1, 2614250),
    (-1, 44071773),
    (134217727, 112602999),  # 2**27 - 1, the largest 28-bit small
    (134217728, 12354923),
    (-134217728, 69672967),
    (-134217729, 76739502),
    (4294967296, 95057355),
    (576460752303423487, 27520264),  # 2**59 - 1, the largest small on 64 bits
    ((), 87486268),
    (("a", 1), 32596747),
    ({}, 39679005),
    ({"a": None}, 109231579),
    ({"event": "*", "schema": "public", "table": "sessions"}, 124901999),
    ({"event": "*", "schema": "public", "table": "session_ratings"}, 58453975),
    (
        {"event": "INSERT", "schema": "public", "table": "sessions", "filter": COACH_FILTER},
        57098628,
    ),
    (
        {"event": "*", "schema": "public", "table": "sessions", "select": ["id", "status"]},
        115169428,
    ),
    ({"nested": {"k": [1, None, True]}, "n": 42}, 46314745),
]


@pytest.mark.parametrize(
    ("term", "expected"), OTP_VALUES, ids=[repr(t)[:40] for t, _ in OTP_VALUES]
)
def test_phash2_equals_otp(term: Any, expected: int) -> None:
    assert phash2(term) == expected


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(st.dictionaries(st.text(max_size=10), json_values, max_size=6))
def test_key_order_does_not_matter_and_the_range_is_27_bits(binding: dict[str, Any]) -> None:
    value = phash2(binding)
    assert 0 <= value < PHASH2_RANGE
    assert phash2(dict(reversed(list(binding.items())))) == value


@pytest.mark.parametrize("term", [1.5, 2**60, {"a": object()}])
def test_unsupported_terms_raise_type_error(term: Any) -> None:
    with pytest.raises(TypeError):
        phash2(term)
