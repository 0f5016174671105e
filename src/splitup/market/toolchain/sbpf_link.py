"""Link clang's BPF relocatable objects into a Solana SBPFv0 program (an ET_DYN shared object).

No linker from the registries does this: lld rejects the BPF relocations or the e_machine, and
binutils-bpf has no ``-shared``. The loader's needs are small, so we do it here:

* ``.text*`` -> one ``.text``; ``.rodata*`` / ``.data.rel.ro*`` -> one ``.rodata``;
* ``R_BPF_64_64`` (lddw of an address) and ``R_BPF_64_ABS64`` (pointer in rodata): patched, and
  recorded as dynamic ``R_BPF_64_RELATIVE`` so the loader rebases them;
* ``R_BPF_64_32`` (call): pc-relative when the callee is defined, else a syscall resolved by name
  (``imm = -1`` plus a dynamic ``R_BPF_64_32`` against an undefined dynamic symbol).

Refused, because they would run wrongly rather than fail: writable ``.data``/``.bss`` (no mutable
globals on Solana), ALU32 add/sub/mul (SBPFv0 sign-extends their results, eBPF zero-extends) and the
JMP32 class (absent from v0). The output depends only on the input bytes, so builds are reproducible.

    python -m splitup.market.toolchain.sbpf_link -o prog.so a.o [b.o ...]
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from splitup.errors import SplitUpError

SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_RELA, SHT_DYNAMIC, SHT_NOBITS, SHT_REL, SHT_DYNSYM = 1, 2, 3, 4, 6, 8, 9, 11
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 1, 2, 4
STT_SECTION = 3
SHN_UNDEF, SHN_ABS, SHN_COMMON = 0, 0xFFF1, 0xFFF2
R_BPF_64_64, R_BPF_64_ABS64, R_BPF_64_ABS32, R_BPF_64_NODYLD32, R_BPF_64_RELATIVE, R_BPF_64_32 = 1, 2, 3, 4, 8, 10
EM_BPF = 247
OP_LDDW, OP_CALL, OP_CALLX = 0x18, 0x85, 0x8D
IGNORED_PREFIXES = (".BTF", ".debug", ".llvm", ".comment", ".note", ".eh_frame", ".rel.BTF", ".rel.debug",
                    ".rel.eh_frame", ".maps", "license")
# Opcodes whose 32-bit results SBPFv0 sign-extends while clang assumes zero-extension.
ALU32_DIFFERENT = {0x04: "add32", 0x0C: "add32", 0x14: "sub32", 0x1C: "sub32", 0x24: "mul32", 0x2C: "mul32"}
MEM_BUILTINS = ("memcpy", "memmove", "memset", "memcmp")


class LinkError(SplitUpError):
    """The objects cannot be turned into a loadable SBPFv0 program; the message says why."""


@dataclass
class Section:
    name: str
    type: int
    flags: int
    off: int
    size: int
    link: int
    info: int
    align: int


@dataclass
class Symbol:
    name: str
    bind: int
    type: int
    shndx: int
    value: int


@dataclass
class ObjFile:
    name: str
    raw: bytes
    sections: list[Section] = field(default_factory=list)
    symbols: list[Symbol] = field(default_factory=list)

    def data(self, s: Section) -> bytes:
        return self.raw[s.off : s.off + s.size]


def _cstr(buf: bytes, off: int) -> str:
    return buf[off : buf.index(b"\0", off)].decode()


def parse_object(name: str, raw: bytes) -> ObjFile:
    if raw[:4] != b"\x7fELF" or len(raw) < 64 or raw[4] != 2 or raw[5] != 1:
        raise LinkError(f"{name}: not an ELF64 little-endian file")
    e_type, e_machine = struct.unpack_from("<HH", raw, 16)
    if e_type != 1 or e_machine != EM_BPF:
        raise LinkError(f"{name}: not a BPF relocatable object (type={e_type}, machine={e_machine})")
    (e_shoff,) = struct.unpack_from("<Q", raw, 0x28)
    e_shentsize, e_shnum, e_shstrndx = struct.unpack_from("<HHH", raw, 0x3A)
    obj = ObjFile(name, raw)
    name_offs = []
    for i in range(e_shnum):
        nm, typ, flags, _addr, off, size, link, info, align, _ent = struct.unpack_from(
            "<IIQQQQIIQQ", raw, e_shoff + i * e_shentsize)
        name_offs.append(nm)
        obj.sections.append(Section("", typ, flags, off, size, link, info, max(align, 1)))
    shstr = obj.sections[e_shstrndx]
    for s, nm in zip(obj.sections, name_offs, strict=True):
        s.name = _cstr(raw, shstr.off + nm)
    for s in obj.sections:
        if s.type == SHT_SYMTAB:
            strtab = obj.sections[s.link]
            for j in range(s.size // 24):
                st_name, st_info, _other, st_shndx, st_value, _size = struct.unpack_from(
                    "<IBBHQQ", raw, s.off + j * 24)
                obj.symbols.append(Symbol(_cstr(raw, strtab.off + st_name), st_info >> 4, st_info & 0xF,
                                          st_shndx, st_value))
    return obj


def classify(sec: Section) -> str | None:
    """Which output section an input section goes to: "text", "rodata" or None (dropped)."""
    if not (sec.flags & SHF_ALLOC) or sec.name.startswith(IGNORED_PREFIXES):
        return None
    if sec.flags & SHF_EXECINSTR:
        return "text"
    if sec.name.startswith(".data.rel.ro") or (not (sec.flags & SHF_WRITE) and sec.type == SHT_PROGBITS):
        return "rodata"
    if sec.type == SHT_NOBITS or (sec.flags & SHF_WRITE):
        if sec.size == 0:
            return None
        raise LinkError(f"writable section {sec.name} ({sec.size} bytes): Solana programs have no mutable "
                        "global or static data; keep state in account data")
    return None


def align_up(x: int, a: int) -> int:
    return (x + a - 1) // a * a


@dataclass
class LinkResult:
    so: bytes
    text_size: int
    rodata_size: int
    syscalls: list[str]
    relocations: int


def check_instructions(text: bytearray) -> None:
    """Refuse instructions with other semantics in SBPFv0; move callx's register to where v0 reads it."""
    i = 0
    while i < len(text) // 8:
        op = text[i * 8]
        if op in ALU32_DIFFERENT:
            raise LinkError(f"instruction {i}: ALU32 {ALU32_DIFFERENT[op]} behaves differently in SBPFv0 "
                            "(compile with -mcpu=v2, without alu32)")
        if op & 7 == 0x06:
            raise LinkError(f"instruction {i}: the JMP32 class does not exist in SBPFv0 (use -mcpu=v2)")
        if op == OP_CALLX and text[i * 8 + 1] & 0xF and struct.unpack_from("<i", text, i * 8 + 4)[0] == 0:
            # newer LLVM puts callx's register in dst; SBPFv0 reads it from imm
            struct.pack_into("<i", text, i * 8 + 4, text[i * 8 + 1] & 0xF)
            text[i * 8 + 1] &= 0xF0
        i += 2 if op == OP_LDDW else 1


def link(objects: Sequence[tuple[str, bytes]], entry: str = "entrypoint") -> LinkResult:
    """Link (name, object bytes) pairs into SBPFv0 program bytes."""
    objs = [parse_object(n, b) for n, b in objects]
    text, rodata = bytearray(), bytearray()
    place: dict[tuple[int, int], tuple[str, int]] = {}
    for oi, o in enumerate(objs):
        for si, s in enumerate(o.sections):
            kind = classify(s)
            if kind is None:
                continue
            buf = text if kind == "text" else rodata
            buf.extend(b"\0" * (align_up(len(buf), 8 if kind == "text" else s.align) - len(buf)))
            place[(oi, si)] = (kind, len(buf))
            buf.extend(o.data(s) if s.type != SHT_NOBITS else b"\0" * s.size)

    globals_: dict[str, tuple[str, int]] = {}
    for oi, o in enumerate(objs):
        for sym in o.symbols:
            if sym.bind in (1, 2) and sym.shndx not in (SHN_UNDEF, SHN_ABS, SHN_COMMON) and (oi, sym.shndx) in place:
                if sym.name in globals_ and sym.bind == 1:
                    raise LinkError(f"duplicate symbol {sym.name}")
                kind, base = place[(oi, sym.shndx)]
                globals_[sym.name] = (kind, base + sym.value)

    n_phdr = 4 if rodata else 3
    text_off = align_up(64 + 56 * n_phdr, 8)
    ro_off = align_up(text_off + len(text), 8)

    def addr_of(kind: str, off: int) -> int:
        return (text_off if kind == "text" else ro_off) + off

    def target(oi: int, o: ObjFile, sym: Symbol) -> tuple[str, int] | None:
        if sym.shndx == SHN_UNDEF:
            return globals_.get(sym.name)
        if (oi, sym.shndx) not in place:
            raise LinkError(f"{o.name}: symbol {sym.name!r} lives in a discarded section")
        kind, base = place[(oi, sym.shndx)]
        return kind, base + (0 if sym.type == STT_SECTION else sym.value)

    dyn_syms: list[str] = []
    dyn_rel: list[tuple[int, int, int]] = []  # (file offset, type, dynamic symbol index)
    for oi, o in enumerate(objs):
        for s in o.sections:
            if s.type not in (SHT_REL, SHT_RELA) or (oi, s.info) not in place:
                continue
            if s.type == SHT_RELA:
                raise LinkError(f"{o.name}: RELA relocations are not produced for BPF; unexpected object")
            kind, base = place[(oi, s.info)]
            buf = text if kind == "text" else rodata
            for j in range(s.size // 16):
                r_offset, r_info = struct.unpack_from("<QQ", o.raw, s.off + j * 16)
                rtype, sym = r_info & 0xFFFFFFFF, o.symbols[r_info >> 32]
                loc = base + r_offset
                tgt = target(oi, o, sym)
                where = f"{o.name} {s.name}+{r_offset:#x}"
                if rtype == R_BPF_64_64:
                    if kind != "text" or buf[loc] != OP_LDDW:
                        raise LinkError(f"R_BPF_64_64 not at an lddw ({where})")
                    if tgt is None:
                        raise LinkError(f"undefined data symbol {sym.name!r} ({where})")
                    v = addr_of(*tgt) + struct.unpack_from("<I", buf, loc + 4)[0]
                    struct.pack_into("<I", buf, loc + 4, v & 0xFFFFFFFF)
                    struct.pack_into("<I", buf, loc + 12, v >> 32)
                    dyn_rel.append((addr_of(kind, loc), R_BPF_64_RELATIVE, 0))
                elif rtype == R_BPF_64_ABS64:
                    if kind != "rodata":
                        raise LinkError(f"R_BPF_64_ABS64 in text ({where})")
                    if tgt is None:
                        raise LinkError(f"undefined data symbol {sym.name!r} ({where})")
                    v = addr_of(*tgt) + struct.unpack_from("<Q", buf, loc)[0]
                    # SBPFv0's loader reads the u32 at +4, adds the load base and writes a u64 at +0
                    struct.pack_into("<II", buf, loc, 0, v)
                    dyn_rel.append((addr_of(kind, loc), R_BPF_64_RELATIVE, 0))
                elif rtype == R_BPF_64_32:
                    if kind != "text" or buf[loc] != OP_CALL:
                        raise LinkError(f"R_BPF_64_32 not at a call ({where})")
                    pc = loc // 8
                    if tgt is not None:
                        if tgt[0] != "text":
                            raise LinkError(f"call to non-code symbol {sym.name!r} ({where})")
                        addend = struct.unpack_from("<i", buf, loc + 4)[0]
                        tpc = (tgt[1] + (addend + 1) * 8 if sym.type == STT_SECTION else tgt[1]) // 8
                        struct.pack_into("<i", buf, loc + 4, tpc - (pc + 1))
                    else:
                        if sym.name in MEM_BUILTINS:
                            raise LinkError(f"the compiler emitted a call to {sym.name}; define it in C "
                                            f"(wrapping sol_{sym.name}_)")
                        if sym.name not in dyn_syms:
                            dyn_syms.append(sym.name)
                        struct.pack_into("<i", buf, loc + 4, -1)
                        dyn_rel.append((addr_of(kind, loc), R_BPF_64_32, 1 + dyn_syms.index(sym.name)))
                elif rtype in (R_BPF_64_ABS32, R_BPF_64_NODYLD32):
                    raise LinkError(f"32-bit absolute relocation unsupported ({where})")
                else:
                    raise LinkError(f"unknown relocation type {rtype} ({where})")

    check_instructions(text)
    if entry not in globals_ or globals_[entry][0] != "text":
        raise LinkError(f"entry symbol {entry!r} is not defined in .text")
    so = _write_elf(text, rodata, text_off, ro_off, text_off + globals_[entry][1], dyn_syms, dyn_rel)
    return LinkResult(so, len(text), len(rodata), dyn_syms, len(dyn_rel))


def _write_elf(text: bytearray, rodata: bytearray, text_off: int, ro_off: int, e_entry: int,
               dyn_syms: list[str], dyn_rel: list[tuple[int, int, int]]) -> bytes:
    """Lay out: ehdr | phdrs | .text | .rodata | .dynamic | .dynsym | .dynstr | .rel.dyn | .shstrtab | shdrs."""
    dynstr = bytearray(b"\0")
    dynsym = bytearray(24)
    for name in dyn_syms:
        name_off = len(dynstr)
        dynstr += name.encode() + b"\0"
        dynsym += struct.pack("<IBBHQQ", name_off, 1 << 4, 0, SHN_UNDEF, 0, 0)  # GLOBAL NOTYPE UNDEF
    rel = b"".join(struct.pack("<QQ", off, (sym << 32) | t) for off, t, sym in dyn_rel)

    dyn_off = align_up(ro_off + len(rodata), 8)
    n_dyn = 9 if rel else 5
    dynsym_off = dyn_off + 16 * n_dyn
    dynstr_off = dynsym_off + len(dynsym)
    rel_off = align_up(dynstr_off + len(dynstr), 8)
    entries: list[tuple[int, int]] = []
    if rel:
        entries += [(0x11, rel_off), (0x12, len(rel)), (0x13, 16), (0x16, 0)]  # DT_REL RELSZ RELENT TEXTREL
    entries += [(6, dynsym_off), (11, 24), (5, dynstr_off), (10, len(dynstr)), (0, 0)]
    dynamic = b"".join(struct.pack("<qQ", t, v) for t, v in entries)

    shstr = bytearray(b"\0")

    def sname(n: str) -> int:
        o = len(shstr)
        shstr.extend(n.encode() + b"\0")
        return o

    shstr_off = rel_off + len(rel)
    # (name, type, flags, addr==offset, size, link, info, align, entsize)
    sections: list[tuple[int, ...]] = [(0,) * 9]
    sections.append((sname(".text"), SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, text_off, len(text), 0, 0, 8, 0))
    if rodata:
        sections.append((sname(".rodata"), SHT_PROGBITS, SHF_ALLOC, ro_off, len(rodata), 0, 0, 8, 0))
    i_dyn = len(sections)
    sections.append((sname(".dynamic"), SHT_DYNAMIC, SHF_ALLOC | SHF_WRITE, dyn_off, len(dynamic), i_dyn + 2, 0, 8, 16))
    sections.append((sname(".dynsym"), SHT_DYNSYM, SHF_ALLOC, dynsym_off, len(dynsym), i_dyn + 2, 1, 8, 24))
    sections.append((sname(".dynstr"), SHT_STRTAB, SHF_ALLOC, dynstr_off, len(dynstr), 0, 0, 1, 0))
    if rel:
        sections.append((sname(".rel.dyn"), SHT_REL, SHF_ALLOC, rel_off, len(rel), i_dyn + 1, 0, 8, 16))
    i_shstr = len(sections)
    sections.append((sname(".shstrtab"), SHT_STRTAB, 0, 0, len(shstr), 0, 0, 1, 0))
    sh_off = align_up(shstr_off + len(shstr), 8)

    n_phdr = 4 if rodata else 3
    out = bytearray(sh_off + 64 * len(sections))
    struct.pack_into("<4sBBBBB7sHHIQQQIHHHHHH", out, 0, b"\x7fELF", 2, 1, 1, 0, 0, bytes(7),
                     3, EM_BPF, 1, e_entry, 64, sh_off, 0, 64, 56, n_phdr, 64, len(sections), i_shstr)
    phdrs = [(1, 5, text_off, len(text))]  # PT_LOAD R+X .text
    if rodata:
        phdrs.append((1, 4, ro_off, len(rodata)))  # PT_LOAD R .rodata
    phdrs += [(1, 4, dyn_off, rel_off + len(rel) - dyn_off), (2, 6, dyn_off, len(dynamic))]  # tables, PT_DYNAMIC
    for i, (pt, pf, off, size) in enumerate(phdrs):
        struct.pack_into("<IIQQQQQQ", out, 64 + 56 * i, pt, pf, off, off, off, size, size, 8)
    for off, blob in ((text_off, text), (ro_off, rodata), (dyn_off, dynamic), (dynsym_off, dynsym),
                      (dynstr_off, dynstr), (rel_off, rel), (shstr_off, shstr)):
        out[off : off + len(blob)] = blob
    for i, (name, typ, flags, addr, size, link, info, align, entsize) in enumerate(sections):
        off = shstr_off if i == i_shstr else addr
        struct.pack_into("<IIQQQQIIQQ", out, sh_off + 64 * i, name, typ, flags, addr, off, size, link, info,
                         align, entsize)
    return bytes(out)


def main(argv: Sequence[str]) -> int:
    out, entry, inputs = None, "entrypoint", []
    it = iter(argv)
    for a in it:
        if a == "-o":
            out = next(it, None)
        elif a == "--entry":
            entry = next(it, entry)
        else:
            inputs.append(a)
    if not out or not inputs:
        print(__doc__)
        return 2
    try:
        res = link([(p, Path(p).read_bytes()) for p in inputs], entry)
    except LinkError as e:
        print(f"sbpf_link: error: {e}", file=sys.stderr)
        return 1
    Path(out).write_bytes(res.so)
    print(f"sbpf_link: wrote {out}: text={res.text_size} rodata={res.rodata_size} "
          f"relocations={res.relocations} syscalls={','.join(res.syscalls)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
