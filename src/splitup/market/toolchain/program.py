"""Reproducible build of ``program/*.c`` into the committed ``splitup_market.so``.

Steps: regenerate ``program/layouts.h`` from the Python declarations, compile every C file with
Debian's clang-19 to a BPF object (fixed flags, sorted order, no debug info, so no paths leak in),
and link them with our SBPFv0 linker. Same sources and compiler -> byte-identical program.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from splitup.errors import SplitUpError
from splitup.market.codegen import header
from splitup.market.toolchain.sbpf_link import link

REPO = Path(__file__).resolve().parents[4]
PROGRAM_DIR = REPO / "program"
LAYOUTS_H = PROGRAM_DIR / "layouts.h"
# The compiler that built the committed .so; a rebuild is byte-identical with this same compiler.
TOOLCHAIN_TXT = PROGRAM_DIR / "TOOLCHAIN"
PROGRAM_SO = Path(__file__).resolve().parents[1] / "splitup_market.so"
DEFAULT_CC = "clang-19"
CFLAGS = (
    "-target", "bpfel", "-mcpu=v2", "-O2", "-mllvm", "-bpf-stack-size=4096",
    "-fno-builtin", "-ffreestanding", "-nostdlib", "-fno-stack-protector",
    "-Wall", "-Werror", "-Werror=implicit-function-declaration",
)


class BuildError(SplitUpError):
    """The program could not be built: no compiler, a compile error, or a link error."""


def compiler(cc: str = DEFAULT_CC) -> str | None:
    return shutil.which(cc)


def compiler_version(cc: str = DEFAULT_CC) -> str:
    """The first line of ``cc --version``, e.g. "Debian clang version 19.1.7 (3~deb12u1)"."""
    exe = compiler(cc)
    if exe is None:
        raise BuildError(f"{cc} not found (Debian: apt-get install {cc})")
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False).stdout
    return out.splitlines()[0].strip() if out else "unknown"


def recorded_compiler() -> str | None:
    return TOOLCHAIN_TXT.read_text().strip() if TOOLCHAIN_TXT.exists() else None


def compile_and_link(src_dir: Path = PROGRAM_DIR, cc: str = DEFAULT_CC) -> bytes:
    """Compile and link the C sources in ``src_dir`` (whose layouts.h must be current)."""
    exe = compiler(cc)
    if exe is None:
        raise BuildError(f"{cc} not found (Debian: apt-get install {cc})")
    sources = sorted(src_dir.glob("*.c"))
    if not sources:
        raise BuildError(f"no C sources in {src_dir}")
    objects = []
    with tempfile.TemporaryDirectory() as tmp:
        for src in sources:
            obj = Path(tmp) / (src.stem + ".o")
            proc = subprocess.run([exe, *CFLAGS, "-c", src.name, "-o", str(obj)], cwd=src_dir,
                                  capture_output=True, text=True, check=False)
            if proc.returncode:
                raise BuildError(f"{src.name}: {proc.stderr.strip()}")
            objects.append((src.name, obj.read_bytes()))
    return link(objects).so


def build_program(cc: str = DEFAULT_CC, write: bool = False) -> bytes:
    """Regenerate the header, build, and (if ``write``) store the .so where the package ships it."""
    text = header()
    if not LAYOUTS_H.exists() or LAYOUTS_H.read_text() != text:
        LAYOUTS_H.write_text(text)
    so = compile_and_link(PROGRAM_DIR, cc)
    if write:
        PROGRAM_SO.write_bytes(so)
        TOOLCHAIN_TXT.write_text(compiler_version(cc) + "\n")
    return so


def check_program(cc: str = DEFAULT_CC) -> list[str]:
    """What differs between the committed header/.so and a fresh build (empty when reproducible)."""
    problems = []
    if LAYOUTS_H.read_text() != header():
        problems.append(f"{LAYOUTS_H} is stale: run `make program`")
    with tempfile.TemporaryDirectory() as tmp:
        # build from a copy so a check never writes into the tree
        copy = Path(tmp) / "program"
        shutil.copytree(PROGRAM_DIR, copy)
        (copy / "layouts.h").write_text(header())
        so = compile_and_link(copy, cc)
    if not PROGRAM_SO.exists() or PROGRAM_SO.read_bytes() != so:
        problems.append(f"{PROGRAM_SO} differs from a fresh build of {PROGRAM_DIR}: run `make program`")
    return problems
