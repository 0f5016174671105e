"""The single layout declarations: encode/decode round trips, alignment, error-code mapping."""

from __future__ import annotations

import dataclasses
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from solders.pubkey import Pubkey

from splitup.market.constants import ErrorCode
from splitup.market.errors import ERRORS, ArithmeticOverflowError, TransactionFailed, error_from
from splitup.market.layout import ACCOUNT_LAYOUTS, ARG_LAYOUTS, PUBKEY, Record


def values_for(cls: type[Record]) -> st.SearchStrategy[Record]:
    fields = {}
    for s in cls.slots():
        if s.name.startswith("_pad"):
            continue
        if s.ty is PUBKEY:
            fields[s.name] = st.binary(min_size=32, max_size=32).map(Pubkey.from_bytes)
        elif s.ty.fmt is None:
            fields[s.name] = st.binary(min_size=s.ty.size, max_size=s.ty.size)
        else:
            fields[s.name] = st.integers(0, 2 ** (8 * s.ty.size) - 1)
    return st.fixed_dictionaries(fields).map(lambda kw: cls(**kw))


@pytest.mark.parametrize("cls", ACCOUNT_LAYOUTS + ARG_LAYOUTS, ids=lambda c: c.__name__)
@given(data=st.data())
def test_round_trip(cls: type[Record], data: st.DataObject) -> None:
    rec = data.draw(values_for(cls))
    raw = rec.encode()
    assert len(raw) == cls.size()
    assert cls.decode(raw) == rec
    assert cls.decode(b"\xff" * 3 + raw, offset=3) == rec


def test_layout_errors() -> None:
    from splitup.market.layout import TaskArgs

    with pytest.raises(ValueError):
        TaskArgs.decode(b"\0" * 7)
    with pytest.raises(struct.error):
        TaskArgs(index=2**64).encode()
    with pytest.raises(TypeError, match="aligned"):

        @dataclasses.dataclass(kw_only=True)
        class Bad(Record):
            from splitup.market.layout import U8, U64, wire

            a: int = wire(U8)
            b: int = wire(U64)

        Bad.slots()


def test_every_error_code_has_its_exception() -> None:
    assert set(ERRORS) == {int(c) for c in ErrorCode}
    assert isinstance(error_from("TransactionErrorInstructionError((0, Tagged(InstructionErrorCustom(9))))"),
                      ArithmeticOverflowError)
    assert isinstance(error_from("InsufficientFundsForFee"), TransactionFailed)
    assert isinstance(error_from("Custom(9999)"), TransactionFailed)
