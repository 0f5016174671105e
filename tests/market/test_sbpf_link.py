"""Unit tests of the SBPFv0 linker on hand-made objects (no compiler needed)."""

from __future__ import annotations

import struct

import pytest
from bpf_elf import EXIT, SHF_ALLOC, SHF_WRITE, Obj, Sec, Sym, insn, lddw, sections_of
from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.litesvm import LiteSVM
from solders.message import Message
from solders.pubkey import Pubkey
from solders.transaction import Transaction
from solders.transaction_metadata import TransactionMetadata

from splitup.market.toolchain.sbpf_link import R_BPF_64_32, R_BPF_64_64, R_BPF_64_RELATIVE, LinkError, link


def _rel_dyn(so: bytes) -> list[tuple[int, int, int]]:
    raw = sections_of(so)[".rel.dyn"][1]
    return [(off, info & 0xFFFFFFFF, info >> 32) for off, info in struct.iter_unpack("<QQ", raw)]


def _imm(text: bytes, pc: int) -> int:
    return struct.unpack_from("<i", text, pc * 8 + 4)[0]


def test_local_call_becomes_pc_relative() -> None:
    text = insn(0x85) + EXIT + insn(0xB7, 0, imm=7) + EXIT  # call f; exit; f: r0 = 7; exit
    obj = Obj([Sec(".text", text)], [Sym("entrypoint", ".text", 0), Sym("f", ".text", 16)],
              {".text": [(0, R_BPF_64_32, "f")]})
    res = link([("a.o", obj.build())])
    out = sections_of(res.so)[".text"][1]
    assert _imm(out, 0) == 1  # target pc 2 - (pc 0 + 1)
    assert res.syscalls == [] and res.relocations == 0


def test_call_across_objects() -> None:
    a = Obj([Sec(".text", insn(0x85) + EXIT)], [Sym("entrypoint", ".text"), Sym("helper", None)],
            {".text": [(0, R_BPF_64_32, "helper")]})
    b = Obj([Sec(".text", insn(0xB7, 0, imm=1) + EXIT)], [Sym("helper", ".text")])
    out = sections_of(link([("a.o", a.build()), ("b.o", b.build())]).so)[".text"][1]
    assert _imm(out, 0) == 1  # helper starts right after a's two instructions


def test_undefined_call_becomes_syscall() -> None:
    obj = Obj([Sec(".text", insn(0x85) + EXIT)], [Sym("entrypoint", ".text"), Sym("sol_log_", None)],
              {".text": [(0, R_BPF_64_32, "sol_log_")]})
    res = link([("a.o", obj.build())])
    secs = sections_of(res.so)
    text_off, text = secs[".text"]
    assert _imm(text, 0) == -1 and res.syscalls == ["sol_log_"]
    assert _rel_dyn(res.so) == [(text_off, R_BPF_64_32, 1)]
    assert b"sol_log_\0" in secs[".dynstr"][1]


def test_address_of_rodata_is_patched_and_relocated() -> None:
    text = lddw(1, 4) + EXIT  # r1 = &.rodata + 4
    obj = Obj([Sec(".text", text), Sec(".rodata", b"abcdefgh", flags=SHF_ALLOC)],
              [Sym(".rodata", ".rodata", type=3, bind=0), Sym("entrypoint", ".text")],
              {".text": [(0, R_BPF_64_64, ".rodata")]})
    res = link([("a.o", obj.build())])
    secs = sections_of(res.so)
    text_off, out = secs[".text"]
    ro_off, ro = secs[".rodata"]
    assert ro == b"abcdefgh"
    lo, hi = _imm(out, 0), _imm(out, 1)
    assert (hi << 32) | lo == ro_off + 4
    assert _rel_dyn(res.so) == [(text_off, R_BPF_64_RELATIVE, 0)]


@pytest.mark.parametrize("code, message", [
    (insn(0x04, 1, imm=1), "ALU32"),       # add32: sign- vs zero-extension differs in SBPFv0
    (insn(0x1C, 1, 2), "ALU32"),           # sub32 reg
    (insn(0x16, 1, off=0, imm=0), "JMP32"),  # jeq32
])
def test_refuses_instructions_with_other_semantics(code: bytes, message: str) -> None:
    obj = Obj([Sec(".text", code + EXIT)], [Sym("entrypoint", ".text")])
    with pytest.raises(LinkError, match=message):
        link([("a.o", obj.build())])


def test_refuses_mutable_globals() -> None:
    obj = Obj([Sec(".text", EXIT), Sec(".data", b"\1\2\3\4", flags=SHF_ALLOC | SHF_WRITE)],
              [Sym("entrypoint", ".text")])
    with pytest.raises(LinkError, match="writable section .data"):
        link([("a.o", obj.build())])


def test_refuses_compiler_memcpy_and_missing_entry_and_non_elf() -> None:
    obj = Obj([Sec(".text", insn(0x85) + EXIT)], [Sym("entrypoint", ".text"), Sym("memcpy", None)],
              {".text": [(0, R_BPF_64_32, "memcpy")]})
    with pytest.raises(LinkError, match="memcpy"):
        link([("a.o", obj.build())])
    with pytest.raises(LinkError, match="entry symbol"):
        link([("a.o", Obj([Sec(".text", EXIT)], [Sym("main", ".text")]).build())])
    with pytest.raises(LinkError, match="not an ELF"):
        link([("a.o", b"not an object at all, just some bytes" * 3)])


def test_duplicate_symbols_refused() -> None:
    a = Obj([Sec(".text", EXIT)], [Sym("entrypoint", ".text")])
    with pytest.raises(LinkError, match="duplicate"):
        link([("a.o", a.build()), ("b.o", a.build())])


def test_output_is_deterministic_and_loads_in_the_runtime() -> None:
    # entrypoint: r0 = 0; exit  — accepted by the real loader and run
    obj = Obj([Sec(".text", insn(0xB7, 0, imm=0) + EXIT)], [Sym("entrypoint", ".text")]).build()
    so = link([("a.o", obj)]).so
    assert so == link([("a.o", obj)]).so
    svm, payer, pid = LiteSVM(), Keypair(), Pubkey.new_unique()
    svm.add_program(pid, so)
    svm.airdrop(payer.pubkey(), 10**9)
    msg = Message.new_with_blockhash([Instruction(pid, b"", [])], payer.pubkey(), svm.latest_blockhash())
    res = svm.send_transaction(Transaction([payer], msg, svm.latest_blockhash()))
    assert isinstance(res, TransactionMetadata), res
