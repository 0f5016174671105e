"""Compute units of every marketplace instruction, measured on the real program in LiteSVM.

Run: .venv/bin/python bench/market_compute_units.py
Worst case over 48-task jobs; the `sample` figure scans the whole SlotHashes history. The table in
docs/market.md comes from this; tests/market/test_compute_units.py keeps each under 40k of 200k.
"""

from __future__ import annotations

from splitup.market.bench import measure, table


def main() -> None:
    print(table(measure()))


if __name__ == "__main__":
    main()
