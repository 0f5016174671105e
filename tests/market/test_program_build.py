"""The committed program is exactly what its sources build to (a reproducible, verifiable build)."""

from __future__ import annotations

import pytest

from splitup.market.codegen import header
from splitup.market.layout import ACCOUNT_LAYOUTS, ARG_LAYOUTS
from splitup.market.toolchain.program import (
    LAYOUTS_H,
    PROGRAM_DIR,
    PROGRAM_SO,
    check_program,
    compile_and_link,
    compiler,
    compiler_version,
    recorded_compiler,
)


@pytest.mark.skipif(not PROGRAM_DIR.is_dir(), reason="program/ sources not present (installed package)")
def test_generated_header_is_committed() -> None:
    assert LAYOUTS_H.read_text() == header(), "program/layouts.h is stale: run `make program`"


def test_layout_sizes_are_multiples_of_eight() -> None:
    # account records are laid over 8-byte aligned account data and arrays of them must stay aligned
    for cls in ACCOUNT_LAYOUTS + ARG_LAYOUTS:
        assert cls.size() % 8 == 0, cls.__name__


@pytest.mark.skipif(not PROGRAM_DIR.is_dir(), reason="program/ sources not present (installed package)")
@pytest.mark.skipif(compiler() is None, reason="clang-19 is not installed (apt-get install clang-19); "
                    "cannot check that splitup_market.so rebuilds byte-identically")
def test_program_rebuilds_byte_identically() -> None:
    assert PROGRAM_SO.exists()
    have, built_with = compiler_version(), recorded_compiler()
    if have != built_with:
        # another compiler release may emit other (valid) code: build it, but byte equality is moot
        compile_and_link()
        pytest.skip(f"the committed program was built with {built_with!r}, this machine has {have!r}; "
                    "it compiles and links, but byte-identity holds only for the same compiler")
    assert check_program() == []
