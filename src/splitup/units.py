"""Byte quantities as people write them (``12GiB``, ``500MB``, ``4096``) and back."""

from __future__ import annotations

import re

from splitup.errors import SplitUpError

_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
    # Bare prefixes mean binary units: that is how memory sizes are usually meant.
    "k": 2**10,
    "m": 2**20,
    "g": 2**30,
    "t": 2**40,
}

_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


class BadByteSize(SplitUpError, ValueError):
    """A byte quantity that could not be understood."""


def parse_bytes(text: str | int) -> int:
    """``"12GiB"`` -> 12884901888. Decimal (kB, MB, GB) and binary (KiB, MiB, GiB) units, case-insensitive."""
    if isinstance(text, bool):
        raise BadByteSize(f"not a byte size: {text!r}")
    if isinstance(text, int):
        if text < 0:
            raise BadByteSize(f"byte size must not be negative: {text}")
        return text
    match = _PATTERN.match(text)
    if not match:
        raise BadByteSize(f"not a byte size: {text!r} (examples: 4096, 500MB, 12GiB)")
    number, unit = match.groups()
    factor = _UNITS.get(unit.lower())
    if factor is None:
        raise BadByteSize(f"unknown byte unit {unit!r} in {text!r}")
    if "." in number:
        # Exact decimal arithmetic: 1.5GiB must be an exact integer, not a float rounding.
        whole, frac = number.split(".")
        return (int(whole + frac) * factor) // (10 ** len(frac))
    return int(number) * factor


def format_bytes(n: int) -> str:
    """Binary units with at most three significant digits: 1536 -> ``1.50 KiB``."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        value /= 1024
        if value < 1024 or unit == "PiB":
            break
    if value >= 100:
        return f"{value:.0f} {unit}"
    if value >= 10:
        return f"{value:.1f} {unit}"
    return f"{value:.2f} {unit}"


# The weight types ``--dtype`` accepts wherever a model is planned or written (splitup.graph.quant).
DTYPE_CHOICES = ("fp32", "fp16", "int8", "int4")
