"""Every instruction stays well under the default 200k compute-unit budget (table: docs/market.md)."""

from __future__ import annotations

from splitup.market.bench import measure, table
from splitup.market.constants import Ix


def test_every_instruction_is_cheap() -> None:
    cu = measure()
    assert set(cu) == {i.name.lower() for i in Ix}
    print("\n" + table(cu))
    assert all(0 < units < 40_000 for units in cu.values()), cu
