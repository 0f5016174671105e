"""Hand-made BPF relocatable objects (what clang emits) and a reader for linked output, for linker tests."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 1, 2, 4


def insn(op: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", op, (src << 4) | dst, off, imm)


def lddw(dst: int, imm: int = 0) -> bytes:
    return insn(0x18, dst, imm=imm & 0xFFFFFFFF) + insn(0, imm=imm >> 32)


EXIT = insn(0x95)


@dataclass
class Sec:
    name: str
    data: bytes
    flags: int = SHF_ALLOC | SHF_EXECINSTR
    type: int = 1  # PROGBITS
    align: int = 8


@dataclass
class Sym:
    name: str
    section: str | None  # None: undefined
    value: int = 0
    bind: int = 1  # GLOBAL
    type: int = 2  # FUNC


@dataclass
class Obj:
    sections: list[Sec]
    symbols: list[Sym] = field(default_factory=list)
    relocs: dict[str, list[tuple[int, int, str]]] = field(default_factory=dict)  # sec -> (offset, type, sym)

    def build(self) -> bytes:
        names = [s.name for s in self.sections]
        shstr = bytearray(b"\0")

        def sn(n: str) -> int:
            o = len(shstr)
            shstr.extend(n.encode() + b"\0")
            return o

        strtab = bytearray(b"\0")
        symtab = bytearray(24)
        sym_index: dict[str, int] = {}
        for i, s in enumerate(self.symbols, start=1):
            no = len(strtab)
            strtab.extend(s.name.encode() + b"\0")
            shndx = 0 if s.section is None else 1 + names.index(s.section)
            symtab += struct.pack("<IBBHQQ", no, (s.bind << 4) | s.type, 0, shndx, s.value, 0)
            sym_index[s.name] = i
        # section list: null, user sections, rel sections, symtab, strtab, shstrtab
        blobs: list[tuple[int, int, int, bytes, int, int, int, int]] = []  # name,type,flags,data,link,info,align,ent
        for s in self.sections:
            blobs.append((sn(s.name), s.type, s.flags, s.data, 0, 0, s.align, 0))
        n_user = len(blobs)
        symtab_idx = 1 + n_user + len(self.relocs)
        for sec, rels in self.relocs.items():
            raw = b"".join(struct.pack("<QQ", off, (sym_index[sym] << 32) | t) for off, t, sym in rels)
            blobs.append((sn(".rel" + sec), 9, 0, raw, symtab_idx, 1 + names.index(sec), 8, 16))
        blobs.append((sn(".symtab"), 2, 0, bytes(symtab), symtab_idx + 1, 1, 8, 24))
        blobs.append((sn(".strtab"), 3, 0, bytes(strtab), 0, 0, 1, 0))
        shstr_name = sn(".shstrtab")
        blobs.append((shstr_name, 3, 0, b"", 0, 0, 1, 0))
        out = bytearray(64)
        offsets = []
        for i, b in enumerate(blobs):
            data = bytes(shstr) if i == len(blobs) - 1 else b[3]
            while len(out) % 8:
                out.append(0)
            offsets.append((len(out), len(data)))
            out += data
        while len(out) % 8:
            out.append(0)
        sh_off = len(out)
        out += bytes(64)  # null section header
        for (name, typ, flags, _d, link, info, align, ent), (off, size) in zip(blobs, offsets, strict=True):
            out += struct.pack("<IIQQQQIIQQ", name, typ, flags, 0, off, size, link, info, align, ent)
        struct.pack_into("<4sBBBBB7sHHIQQQIHHHHHH", out, 0, b"\x7fELF", 2, 1, 1, 0, 0, bytes(7), 1, 247, 1, 0, 0,
                         sh_off, 0, 64, 0, 0, 64, 1 + len(blobs), len(blobs))
        return bytes(out)


def sections_of(so: bytes) -> dict[str, tuple[int, bytes]]:
    """name -> (file offset, bytes) of each section in a linked program."""
    (sh_off,) = struct.unpack_from("<Q", so, 0x28)
    shnum, shstrndx = struct.unpack_from("<HH", so, 0x3C)
    hdrs = [struct.unpack_from("<IIQQQQIIQQ", so, sh_off + 64 * i) for i in range(shnum)]
    stroff = hdrs[shstrndx][4]
    out = {}
    for h in hdrs[1:]:
        name = so[stroff + h[0] : so.index(b"\0", stroff + h[0])].decode()
        out[name] = (h[4], so[h[4] : h[4] + h[5]])
    return out
