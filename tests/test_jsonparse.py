"""Every way JSON from outside can be wrong is a ValueError, so one handler catches them all."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from splitup import jsonparse

DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize("text", [DEEP, '{"a": ' * 100_000 + "1" + "}" * 100_000, "1" * 5_000, b"\xff\xfe",
                                  "{", "[1,]", "1 2"], ids=["deep array", "deep object", "long integer",
                                                           "not utf-8", "unfinished", "trailing comma", "extra"])
def test_malformed_json_is_a_value_error(text: str | bytes) -> None:
    with pytest.raises(ValueError):
        jsonparse.loads(text)


def test_options_reach_the_parser() -> None:
    assert jsonparse.loads("1.5", parse_float=str) == "1.5"
    assert math.isnan(jsonparse.loads("NaN"))


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                           lambda kids: st.lists(kids) | st.dictionaries(st.text(), kids), max_leaves=20)


@given(json_values)
def test_json_parses_as_json_loads_would(value: object) -> None:
    text = json.dumps(value)
    assert jsonparse.loads(text) == json.loads(text)
