"""Fuzz ovmftool's parser and every command that parses, in-process, with a watchdog.

    python -m tools.fuzz --dir fuzz-run --seed 1 --count 100000 [--workers 1]   # start
    python -m tools.fuzz --dir fuzz-run --resume [--count N | --seconds S]     # go on, same seed
    python -m tools.fuzz --replay fuzz-run/failures/SIG/input-N.fd --cmd CMD   # run one input again

Inputs come from seeds: small synthetic images built with tests/fvbuild.py around small real
modules of the corpus (volumes, FFS2/FFS3 files, every encapsulation, nested volumes, a reset
vector, standalone PE and TE files) and, less often, the corpus images themselves. Input number
i is a pure function of (seed, i), so a run is reproducible and resumable, and any failure can
be regenerated from its number.

Mutators are structure-aware: the seed is parsed (`model.parser.parse_flash`), a node is picked
and one of its header fields (sizes, checksums, GUIDs, stream headers, PE/TE header fields,
section table, relocation, export and debug tables, UI text) is set to an interesting value, or
the node is truncated, duplicated or wrapped in another encapsulation. Inside decoded data the
mutation is made to the decoded bytes and the container is re-encoded (`model.encoders`), and
sizes and checksums are fixed up the tree (most of the time), so mutations reach PE headers
inside compressed volumes; plain havoc (bit flips, interesting values, block copies, inserts,
deletes, truncation) is stacked on top.

Each input runs one command (info, scan, extract, patch --dry-run, patch -o, decode --image, in
their output formats) through click in a forked worker that runs many inputs: SIGALRM stops an
input after the time limit, the parent kills a worker that does not answer (hard hang) or grows
past the RSS limit, and respawns it. A failure is any of: exit code outside 0/1/2, more than one
line on stderr, an exit-2 line that is not `ovmftool: error: ...`, an internal error (traceback),
running out of memory or over the RSS limit, taking longer than the limit, unprintable text
output, JSON output that does not load, and output left behind by a command that failed. Each
distinct failure (command, symptom, place) is saved once (a few examples) under DIR/failures/
with the input bytes and what happened; DIR/state.json holds the seed, the count done and the
totals, so runs add up across days.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import resource
import select
import shutil
import signal
import struct
import sys
import tempfile
import time
import traceback
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from ovmftool.model import encoders
from ovmftool.model import structs as S
from ovmftool.model.codecs import x86_convert
from ovmftool.model.ffs import FfsFile
from ovmftool.model.node import Node, Space, walk
from ovmftool.model.parser import parse_flash
from ovmftool.model.pe import PeImage
from ovmftool.model.section import Section
from ovmftool.model.volume import Volume
from tests import fvbuild as B

ROOT = Path(__file__).resolve().parent.parent
TIME_LIMIT = 10.0  # seconds an input may take (the project's promise)
RSS_LIMIT = 1 << 30  # bytes of resident memory an input may use
VTF_GUID = "1ba0062e-c779-4582-8566-336ae8f78f09"
FVMAIN = "48db5e17-707c-472d-91cd-1613e7ef51b0"
DXEFV = "7cb8bdc9-f8eb-4f34-aaea-3ee4af6516a1"

# command name -> argv (IMG: the input file, OUT: a file, DIR: a directory that does not exist)
COMMANDS = {
    "info": ["info", "IMG"],
    "info-json": ["info", "--format", "json", "IMG"],
    "info-modules": ["info", "--modules", "IMG"],
    "scan": ["scan", "IMG"],
    "scan-json": ["scan", "--format", "json", "IMG"],
    "scan-sarif": ["scan", "--format", "sarif", "IMG"],
    "scan-junit": ["scan", "--format", "junit", "IMG"],
    "extract": ["extract", "IMG", "-o", "DIR"],
    "extract-damaged": ["extract", "--allow-damaged", "IMG", "-o", "DIR"],
    "patch-dry": ["patch", "--dry-run", "IMG"],
    "patch-o": ["patch", "IMG", "-o", "OUT"],
    "patch-json": ["patch", "--format", "json", "IMG", "-o", "OUT"],
    "decode": ["decode", "TEXT", "--image", "IMG"],
    "decode-json": ["decode", "--format", "json", "TEXT", "--image", "IMG"],
}
COMMAND_WEIGHTS = {
    "info": 14,
    "info-json": 8,
    "info-modules": 4,
    "scan": 14,
    "scan-json": 6,
    "scan-sarif": 3,
    "scan-junit": 2,
    "extract": 6,
    "extract-damaged": 6,
    "patch-dry": 14,
    "patch-o": 10,
    "patch-json": 4,
    "decode": 9,
    "decode-json": 3,
}
DECODE_TEXTS = ["f3 6e", "f3 6f", "6c", "66 ef", "[243, 110, 0, 0]", "f3 6d 90", "e4 60"]


# --- seeds ------------------------------------------------------------------------------------


@dataclass
class Seed:
    """One seed image and its parse (made once, shared by every input that starts from it)."""

    name: str
    data: bytes
    weight: float
    big: bool = False  # corpus image: no re-encoding of its large decoded spaces
    _root: Node | None = field(default=None, repr=False)

    @property
    def root(self) -> Node:
        if self._root is None:
            self._root = parse_flash(self.data, self.name)
        return self._root


def _guid(n: int) -> str:
    return f"{n:08x}-f022-4e5a-9d1c-{n * 2654435761 & 0xFFFFFFFFFFFF:012x}"


def pe_to_te(pe: bytes) -> bytes:
    """A TE image of a PE32/PE32+ one, as GenFw -t writes it: the headers before the section
    table become the 40-byte TE header (StrippedSize = offset of the section table)."""
    lfanew = struct.unpack_from("<I", pe, 0x3C)[0]
    coff = lfanew + 4
    machine, nsec, _t, _p, _n, optsize, _c = S.COFF_HEADER.unpack_from(pe, coff)
    opt = coff + S.COFF_HEADER.size
    magic = struct.unpack_from("<H", pe, opt)[0]
    entry, boc = struct.unpack_from("<II", pe, opt + 16)
    if magic == S.OPT_MAGIC_PE32_PLUS:
        base, ndir_off = struct.unpack_from("<Q", pe, opt + 24)[0], opt + 108
    else:
        base, ndir_off = struct.unpack_from("<I", pe, opt + 28)[0], opt + 92
    subsys = struct.unpack_from("<H", pe, opt + 68)[0]
    dirs = [S.DATA_DIR.unpack_from(pe, ndir_off + 4 + 8 * i) for i in range(7)]
    sec_off = opt + optsize
    hdr = S.TE_HEADER.pack(b"VZ", machine, nsec, subsys & 0xFF, sec_off, entry, boc, base, *dirs[5], *dirs[6])
    return hdr + pe[sec_off:]


def pe_xip(code: bytes, pointers: int = 4, base: int = 0x100000) -> bytes:
    """A PE32+ image laid out as GenFw writes them (file offset == RVA, 0x40 alignment): .text
    holding `code` (entry at its start), .data with `pointers` pointers into it, and .reloc
    relocating them."""
    al, hdr_size = 0x40, 0x200
    text = code + b"\0" * (-len(code) % al)
    data_rva = hdr_size + len(text)
    data = b"".join(struct.pack("<Q", base + hdr_size + 4 * i) for i in range(pointers))
    data += b"\0" * (-len(data) % al)
    rel_rva = data_rva + len(data)
    ents = b"".join(struct.pack("<H", 0xA000 | (data_rva + 8 * i) & 0xFFF) for i in range(pointers))
    ents += b"\0" * (len(ents) % 4)
    relocs = struct.pack("<II", data_rva & ~0xFFF, 8 + len(ents)) + ents
    reloc = relocs + b"\0" * (-len(relocs) % al)
    dos = bytearray(0x40)
    dos[0:2] = b"MZ"
    struct.pack_into("<I", dos, 0x3C, 0x40)
    coff = struct.pack("<4sHHIIIHH", b"PE\0\0", 0x8664, 3, 0, 0, 0, 240, 0x22)
    opt = bytearray(240)
    struct.pack_into("<HBBIIIII", opt, 0, 0x20B, 0, 0, len(text), len(data) + len(reloc), 0, hdr_size, hdr_size)
    struct.pack_into("<QII", opt, 24, base, al, al)
    struct.pack_into("<II", opt, 56, rel_rva + len(reloc), hdr_size)
    struct.pack_into("<H", opt, 68, 11)
    struct.pack_into("<I", opt, 108, 16)
    struct.pack_into("<II", opt, 112 + 8 * 5, rel_rva, len(relocs))
    secs = b"".join(
        struct.pack("<8sIIIIIIHHI", n, len(b), rva, len(b), rva, 0, 0, 0, 0, ch)
        for n, b, rva, ch in (
            (b".text", text, hdr_size, 0x60000020),
            (b".data", data, data_rva, 0xC0000040),
            (b".reloc", reloc, rel_rva, 0x42000040),
        )
    )
    h = bytes(dos) + coff + bytes(opt) + secs
    return h + b"\0" * (hdr_size - len(h)) + text + data + reloc


def _iofifo_routines() -> bytes:
    """The X64 IoFifo.nasm routines (pure REP string I/O, which patch grows a module for)."""
    doc = json.loads((ROOT / "ovmftool" / "scan" / "signatures.json").read_text())
    rs = [r for r in doc["routines"] if r["arch"] == "X64" and r["source"].endswith("/IoFifo.nasm")]
    seen, out = set(), b""
    for r in rs:
        if r["routine"] not in seen:
            seen.add(r["routine"])
            out += bytes.fromhex(r["bytes"]) + b"\xcc" * 4
    return out


def _corpus_modules() -> dict[str, bytes]:
    """Small real modules from the 2022.11 corpus image: one with string I/O sites (CpuIo2Dxe),
    small drivers with relocations, the reset vector."""
    from ovmftool.ops.modules import iter_code_blobs, iter_modules

    img = ROOT / "corpus" / "images" / "debian-2022.11" / "OVMF_CODE.fd"
    root = parse_flash(img.read_bytes(), str(img))
    by = {m.name: m.image.raw for m in iter_modules(root)}
    out = {
        "site": by["CpuIo2Dxe"],
        "site2": by["SmbiosPlatformDxe"],
        "dxe": by["WatchdogTimer"],
        "dxe2": by["DpcDxe"],
        "pei": by["ReportStatusCodeRouterPei"],
    }
    out["te"] = pe_to_te(by["ReportStatusCodeRouterPei"])
    out["te_site"] = pe_to_te(by["CpuIo2Dxe"])
    out["reset"] = next(iter_code_blobs(root)).data
    out["repfifo"] = pe_xip(b"\xc3" + b"\xcc" * 15 + _iofifo_routines())
    out["te_repfifo"] = pe_to_te(out["repfifo"])
    return out


def _module_file(n: int, ftype: int, sec_type: int, image: bytes, name: str, version: bool = False) -> bytes:
    secs = [B.section(sec_type, image), B.ui(name)]
    if version:
        secs.append(B.version(n, f"{n}.0"))
    return B.ffs(_guid(n), ftype, B.sections(*secs))


def _fit(files: list[bytes], name: str | None = None, erase: int = 0xFF, fs: str = B.FFS2, extra: int = 0) -> bytes:
    used = 72 + 48 + sum(len(f) + 8 for f in files) + extra
    size = (used + 0x1000 + 0xFFF) & ~0xFFF
    return B.fv(files, size=size, name=name, erase=erase, fs=fs)


def synthetic_seeds(mods: dict[str, bytes]) -> list[Seed]:
    """Small images that between them hold every structure the parser knows."""
    site, dxe, te, pei = mods["site"], mods["dxe"], mods["te"], mods["pei"]
    f_site = _module_file(1, 0x07, 0x10, site, "CpuIo2Dxe", version=True)
    f_dxe = _module_file(2, 0x07, 0x10, dxe, "WatchdogTimer")
    f_te = _module_file(3, 0x06, 0x12, te, "TePeim")
    f_pei = _module_file(4, 0x06, 0x10, pei, "StatusRouterPei")
    f_site2 = _module_file(5, 0x07, 0x10, mods["site2"], "SmbiosPlatformDxe")
    f_te_site = _module_file(6, 0x06, 0x12, mods["te_site"], "TeSite")
    seeds: list[tuple[str, bytes, float]] = []
    seeds.append(("plain", _fit([f_site, f_te, f_dxe], name=DXEFV), 3))
    inner = _fit([f_site, f_dxe, f_te_site], name=DXEFV)
    seeds.append(("lzma-nested", _fit([B.ffs(_guid(10), 0x0B, B.lzma_section(B.fv_section(inner)))], name=FVMAIN), 4))
    body = B.sections(B.section(0x10, site), B.ui("F86Site"))
    f86 = B.guided(B.LZMAF86, B.lzma_alone(bytes(x86_convert(bytearray(body), encoding=True))))
    seeds.append(("lzma-f86", _fit([B.ffs(_guid(11), 0x07, f86), f_pei]), 3))
    seeds.append(("brotli", _fit([B.ffs(_guid(12), 0x07, B.brotli_section(body)), f_te]), 2))
    seeds.append(("tiano", _fit([B.ffs(_guid(13), 0x07, B.tiano_section(body))]), 2))
    seeds.append(("efi", _fit([B.ffs(_guid(14), 0x07, B.efi_section(body))]), 2))
    crc = B.ffs(_guid(15), 0x07, B.crc_section(B.sections(B.section(0x10, site), B.ui("CrcSite"))), checksum=True)
    stored = B.ffs(_guid(16), 0x07, B.stored_section(B.sections(B.section(0x10, dxe), B.ui("Stored"))))
    seeds.append(("crc-stored", _fit([crc, stored]), 2))
    big = B.ffs(_guid(17), 0x07, B.sections(B.section(0x10, site), B.ui("Large")), large=True, checksum=True)
    seeds.append(("ffs3-large", _fit([big, f_te], fs=B.FFS3), 2))
    f0 = [B.ffs(_guid(18), 0x07, B.sections(B.section(0x10, dxe), B.ui("Erase0")), erase=0x00)]
    seeds.append(("erase0", _fit(f0, erase=0x00), 1))
    deep_in = _fit([f_site2], name=DXEFV)
    deep_mid = _fit([B.ffs(_guid(19), 0x0B, B.lzma_section(B.fv_section(deep_in)))])
    seeds.append(("deep", _fit([B.ffs(_guid(20), 0x0B, B.lzma_section(B.fv_section(deep_mid)))], name=FVMAIN), 2))
    vtf = B.ffs(VTF_GUID, 0x01, mods["reset"])
    vol = bytearray(_fit([f_pei], extra=len(vtf) + 32))
    free = parse_flash(bytes(vol), "vtf").children[0].free.offset
    pad = len(vol) - len(vtf) - free  # a pad file up to the volume top file, which ends the volume
    vol[free:] = B.ffs("ffffffff-ffff-ffff-ffff-ffffffffffff", 0xF0, b"\xff" * (pad - 24)) + vtf
    seeds.append(("vtf", bytes(vol), 2))
    two = _fit([f_dxe]) + b"\xff" * 0x1000 + _fit([f_te_site])
    seeds.append(("two-volumes", two, 1))
    # patch grows these modules (pure REP routines); the PEIMs execute in place, so the files
    # after a grown one move and are rebased
    rf = [
        _module_file(21, 0x06, 0x10, mods["repfifo"], "RepFifoPei"),
        _module_file(22, 0x07, 0x10, mods["repfifo"], "RepFifoDxe"),
        f_pei,
    ]
    seeds.append(("repfifo", _fit(rf), 3))
    seeds.append(
        (
            "repfifo-lzma",
            _fit([B.ffs(_guid(24), 0x0B, B.lzma_section(B.fv_section(_fit(rf[1:], name=DXEFV))))], name=FVMAIN),
            2,
        )
    )
    seeds.append(("pe-repfifo", mods["repfifo"], 1))
    seeds.append(("te-repfifo", mods["te_repfifo"], 1))
    seeds.append(("pe", site, 3))
    seeds.append(("te", mods["te_site"], 2))
    seeds.append(("pe-dxe", dxe, 1))
    return [Seed(n, d, w) for n, d, w in seeds]


def corpus_seeds() -> list[Seed]:
    """The corpus images (large: mutated at file-level nodes, rarely)."""
    out = []
    for p in sorted((ROOT / "corpus" / "images").glob("*/*.fd")):
        out.append(Seed(f"corpus:{p.parent.name}/{p.name}", p.read_bytes(), 1.0, big=True))
    return out


# --- splicing: replace bytes somewhere in the tree, fix sizes and checksums, re-encode --------


class NoFit(Exception):
    """The mutation cannot be laid out (no room in the volume, a size field overflows)."""


def _fix_file(data: bytearray, f: FfsFile, size: int) -> None:
    off, hs = f.offset, f.header_size or 24
    if hs == 32:
        struct.pack_into("<Q", data, off + 24, size)
    elif size > 0xFFFFFF:
        raise NoFit("file too large")
    elif size >= hs:
        data[off + 20 : off + 23] = size.to_bytes(3, "little")
    attrs = data[off + 19]
    data[off + 16] = 0
    data[off + 17] = (
        (-sum(data[off + hs : off + size])) & 0xFF if attrs & S.FFS_ATTRIB_CHECKSUM else S.FFS_FIXED_CHECKSUM
    )
    data[off + 16] = (-(sum(data[off : off + hs]) - data[off + 23] - data[off + 17])) & 0xFF


def _fix_volume_header(data: bytearray, v: Volume) -> None:
    hl = v.header_length
    if hl < 56 or v.offset + hl > len(data) or hl % 2:
        return
    data[v.offset + 50 : v.offset + 52] = b"\0\0"
    csum = (-sum(struct.unpack_from(f"<{hl // 2}H", data, v.offset))) & 0xFFFF
    struct.pack_into("<H", data, v.offset + 50, csum)


def _section_common(data: bytes, sec: Section) -> int:
    return 8 if data[sec.offset : sec.offset + 3] == b"\xff\xff\xff" else 4


def _fix_section(data: bytearray, sec: Section, size: int) -> None:
    common = _section_common(data, sec)
    if common == 8:
        struct.pack_into("<I", data, sec.offset + 4, size)
    elif size >= 0xFFFFFF:
        raise NoFit("section too large")
    else:
        data[sec.offset : sec.offset + 3] = size.to_bytes(3, "little")
    if sec.type == 0x02 and sec.guid == S.CRC32_GUID and sec.header_size >= common + 24:
        body = data[sec.offset + sec.header_size : sec.offset + size]
        struct.pack_into("<I", data, sec.offset + common + 20, zlib.crc32(body) & 0xFFFFFFFF)


def _encode(sec: Section, decoded: bytes) -> bytes:
    if sec.type == 0x01:
        return encoders.COMPRESSION_ENCODERS[1](decoded, sec.body, "fast")
    enc = encoders.GUIDED_ENCODERS.get(sec.guid or "")
    if enc is None:
        raise NoFit(f"no encoder for {sec.compression}")
    return enc(decoded, sec.body, "fast")


def splice(
    space: Space, start: int, end: int, new: bytes, node: Node | None, fix: bool = True, data: bytearray | None = None
) -> bytes:
    """Replace `space.data[start:end]` (inside `node`, or loose in the space when None) with
    `new`; fix the sizes (and with `fix` the checksums) of `node` and its ancestors in the
    space, let the enclosing volume absorb a change of length in its free space; when the space
    is decoded, re-encode it into its section and go on in the space that holds that. Returns
    the new bytes of the file."""
    data = bytearray(space.data) if data is None else data
    delta = len(new) - (end - start)
    if delta % 8 and node is not None:  # keep what follows 8-aligned (sections 4, files 8)
        new = new + b"\0" * (-delta % 8)
        delta = len(new) - (end - start)
    data[start:end] = new
    chain = [] if node is None else [n for n in [node, *node.ancestors()] if n.space is space]
    for n in chain:
        if isinstance(n, Section):
            if delta or fix:
                _fix_section(data, n, n.size + delta)
                if n.type == 0x01 and n.compression == "NONE" and n.size >= 9:
                    ulen = struct.unpack_from("<I", data, n.offset + _section_common(data, n))[0]
                    struct.pack_into("<I", data, n.offset + _section_common(data, n), max(0, ulen + delta))
        elif isinstance(n, FfsFile):
            if (delta or fix) and n.size:
                _fix_file(data, n, n.size + delta)
        elif isinstance(n, Volume):
            if delta > 0:
                tail = data[n.end : n.end + delta]
                if tail.count(n.erase_byte) != len(tail):
                    raise NoFit("no free space in the volume")
                del data[n.end : n.end + delta]
            elif delta < 0:
                data[n.end + delta : n.end + delta] = bytes([n.erase_byte]) * -delta
            delta = 0
            if fix:
                _fix_volume_header(data, n)
    origin = space.origin
    if origin is None or not isinstance(origin, Section):
        return bytes(data)
    body = _encode(origin, bytes(data))
    outer = bytearray(origin.space.data)
    if origin.type == 0x01:  # EFI compression section: UncompressedLength
        struct.pack_into("<I", outer, origin.offset + _section_common(outer, origin), len(data))
    old = origin.end - origin.data_offset
    if len(body) < old:
        body += b"\0" * (old - len(body))  # decoders stop at the stream's end: keep the layout
    return splice(origin.space, origin.data_offset, origin.end, body, origin, True, outer)


# --- mutators ---------------------------------------------------------------------------------

_INTERESTING = {
    1: [0, 1, 0x7F, 0x80, 0xFE, 0xFF],
    2: [0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x1000, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF],
    3: [0, 1, 3, 4, 0x18, 0x1000, 0x7FFFFF, 0xFFFFFE, 0xFFFFFF],
    4: [
        0,
        1,
        4,
        0x40,
        0x1000,
        0x10000,
        0x100000,
        0x7FFFFFFF,
        0x80000000,
        0xFFFFFFF0,
        0xFFFFFFFE,
        0xFFFFFFFF,
        0x40000000,
        0x08000000,
    ],
    8: [0, 1, 0x1000, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 32, 1 << 40, (1 << 63) - 1, 1 << 63, (1 << 64) - 1],
}
_CODE_BYTES = [
    b"\xeb\xfe",
    b"\xe9\xfb\xff\xff\xff",
    b"\xe8\0\0\0\0",
    b"\xc3",
    b"\xcc",
    b"\x90",
    b"\xf3",
    b"\x6e",
    b"\x6c",
    b"\x66",
    b"\x48",
    b"\xff\xe0",
    b"\x0f\x05",
    b"\xfd",
    b"\xfc",
    b"\x74\xfe",
    b"\xe2\xfe",
    b"\x0f\x0b",
    b"\xf4",
    b"\xcd\x03",
    b"\xc2\x08\x00",
    b"\x00",
    b"\xff",
    bytes([0x0F, 0x84]) + b"\0\0\0\x80",
]
HOSTILE_TEXT = [
    "",
    "\n",
    "A\nB",
    "\r\n\r\n",
    "\x1b[31mred\x1b[0m",
    "\u202e" + "evil",
    "\u2028\u2029",
    "x" * 300,
    "\x00mid",
    "..\\..\\..\\x",
    "../../etc/passwd",
    "%s%n%x",
    "\ud800",
    "\x85next",
    "\x07\x08\x0b\x0c",
    "名前",
    " ",
]


def _value(rng: random.Random, width: int, old: int, limit: int = 0) -> int:
    mask = (1 << (8 * width)) - 1
    r = rng.random()
    if r < 0.45:
        v = rng.choice(_INTERESTING[width])
    elif r < 0.65:
        v = old + rng.choice([-8, -4, -2, -1, 1, 2, 4, 8, 16, 0x100, -0x100, 0x1000])
    elif r < 0.75:
        v = old * rng.choice([2, 4, 16, 256])
    elif r < 0.85 and limit:
        v = limit + rng.choice([-1, 0, 1, 8, -8])
    else:
        v = rng.getrandbits(8 * width)
    return v & mask


def _field_bytes(rng: random.Random, width: int, old: bytes, limit: int = 0) -> bytes:
    if width == 16:  # a GUID
        choices = [
            S.guid_bytes(g)
            for g in (
                S.LZMA_GUID,
                S.LZMA_F86_GUID,
                S.TIANO_GUID,
                S.BROTLI_GUID,
                S.CRC32_GUID,
                S.FFS2_GUID,
                S.FFS3_GUID,
                VTF_GUID,
            )
        ]
        return rng.choice(choices + [bytes(16), b"\xff" * 16, rng.randbytes(16)])
    v = _value(rng, width, int.from_bytes(old, "little"), limit)
    return v.to_bytes(width, "little")


def _fields(node: Node, data: bytes) -> list[tuple[int, int]]:
    """(offset in the space, width) of the header fields of `node`."""
    o = node.offset
    if isinstance(node, Volume):
        out = [
            (o + 32, 8),
            (o + 40, 4),
            (o + 44, 4),
            (o + 48, 2),
            (o + 50, 2),
            (o + 52, 2),
            (o + 55, 1),
            (o + 56, 4),
            (o + 60, 4),
            (o + 64, 4),
            (o + 68, 4),
            (o + 16, 16),
        ]
        ext = struct.unpack_from("<H", data, o + 52)[0] if o + 54 <= len(data) else 0
        if ext:
            out += [(o + ext, 16), (o + ext + 16, 4), (o + ext + 20, 2), (o + ext + 22, 2)]
        return out
    if isinstance(node, FfsFile):
        out = [(o, 16), (o + 16, 1), (o + 17, 1), (o + 18, 1), (o + 19, 1), (o + 20, 3), (o + 23, 1)]
        if node.header_size == 32:
            out.append((o + 24, 8))
        return out
    if isinstance(node, Section):
        c = _section_common(data, node)
        out = [(o, 3), (o + 3, 1)] + ([(o + 4, 4)] if c == 8 else [])
        h = o + c
        if node.type == 0x01:
            out += [(h, 4), (h + 4, 1)]
        elif node.type == 0x02:
            out += [(h, 16), (h + 16, 2), (h + 18, 2)]
            if node.guid == S.CRC32_GUID:
                out.append((h + 20, 4))
        elif node.type == 0x14:
            out.append((h, 2))
        b = node.data_offset
        if node.compression in ("LZMA", "LZMAF86"):
            out += [(b, 1), (b + 1, 4), (b + 5, 8)]
        elif node.compression in ("EFI", "TIANO"):
            out += [(b, 4), (b + 4, 4)]
        elif node.compression == "BROTLI":
            out += [(b, 8), (b + 8, 8)]
        return out
    if isinstance(node, PeImage):
        return [(o + f, w) for f, w in _pe_fields(node.data)]
    return [(o, 1)]


def _pe_fields(raw: bytes) -> list[tuple[int, int]]:
    """Offsets in the image of its PE or TE header fields, section headers and the tables they point at."""
    out: list[tuple[int, int]] = []
    try:
        if raw[:2] == S.TE_MAGIC:
            out += [
                (0, 2),
                (2, 2),
                (4, 1),
                (5, 1),
                (6, 2),
                (8, 4),
                (12, 4),
                (16, 8),
                (24, 4),
                (28, 4),
                (32, 4),
                (36, 4),
            ]
            nsec, sec_off = raw[4], 40
        else:
            lfanew = struct.unpack_from("<I", raw, 0x3C)[0]
            coff = lfanew + 4
            nsec = struct.unpack_from("<H", raw, coff + 2)[0]
            optsize = struct.unpack_from("<H", raw, coff + 16)[0]
            opt = coff + 20
            plus = struct.unpack_from("<H", raw, opt)[0] == S.OPT_MAGIC_PE32_PLUS
            nd = opt + (108 if plus else 92)
            out += [
                (0, 2),
                (0x3C, 4),
                (coff, 4),
                (coff + 4, 2),
                (coff + 6, 2),
                (coff + 20, 2),
                (coff + 22, 2),
                (opt, 2),
                (opt + 16, 4),
                (opt + (24 if plus else 28), 8 if plus else 4),
                (opt + 32, 4),
                (opt + 36, 4),
                (opt + 56, 4),
                (opt + 60, 4),
                (opt + 68, 2),
                (nd, 4),
            ]
            out += [(nd + 4 + 8 * i + k, 4) for i in (0, 4, 5, 6) for k in (0, 4)]
            sec_off = opt + optsize
        for i in range(min(nsec, 8)):
            s = sec_off + 40 * i
            out += [(s, 8), (s + 8, 4), (s + 12, 4), (s + 16, 4), (s + 20, 4), (s + 36, 4)]
    except struct.error:
        pass
    return [(a, w) for a, w in out if 0 <= a and a + w <= len(raw)] or [(0, 2)]


def _pe_tables(img: PeImage) -> list[tuple[int, int]]:
    """Offsets in the image of relocation block headers and entries and debug entries."""
    out = []
    rva, size = img.directories.get(S.DIR_BASERELOC, (0, 0))
    off = img.rva_to_offset(rva) if rva else None
    if off is not None:
        raw = img.raw
        p, end = off, min(off + size, len(raw))
        while p + 8 <= end:
            bsize = struct.unpack_from("<I", raw, p + 4)[0]
            out += [(p, 4), (p + 4, 4)] + [(p + 8 + 2 * k, 2) for k in range(min(4, max(0, (bsize - 8) // 2)))]
            if bsize < 8:
                break
            p += bsize
    rva, size = img.directories.get(S.DIR_DEBUG, (0, 0))
    off = img.rva_to_offset(rva) if rva else None
    if off is not None:
        out += [(off + k, 4) for k in (12, 16, 20, 24)]
    return out


def _write_table(rng: random.Random, img: PeImage) -> tuple[int, bytes, int, int] | None:
    """A made-up export, relocation or debug table written over the image's data, for a
    directory entry to point at: (offset in image, bytes, directory index, rva)."""
    secs = [s for s in img.sections if s.raw_size >= 64 and s.raw_offset >= 0]
    if not secs:
        return None
    s = rng.choice(secs)
    room = min(s.raw_size, img.size - s.raw_offset)
    if room < 64:
        return None
    at = rng.randrange(0, room - 63) & ~3
    rva = s.rva + at
    kind = rng.choice(["export", "reloc", "debug"])
    big = rng.choice([1, 2, 0x100, 0xFFFF, 0x10000, 0x7FFFFFFF, 0xFFFFFFFF])
    if kind == "export":
        # 40-byte directory: counts (possibly huge), arrays right after it, names without NULs
        n = min(big, 4) if rng.random() < 0.5 else big
        funcs, names, ords = rva + 40, rva + 48, rva + 56
        body = struct.pack("<IIIIIIIIII", 0, 0, 0, rva + 60, 0, n, rng.choice([n, big, 1]), funcs, names, ords)
        body += struct.pack("<II", rva, rva) + struct.pack("<II", rva + 60, rva + 60) + struct.pack("<HH", 0, 0)
        body += b"A" * rng.choice([4, 200, room - 64 - at if room - 64 > at else 4])
        return s.raw_offset + at, body[: room - at], 0, rva
    if kind == "reloc":
        blocks = b""
        for _ in range(rng.randint(1, 6)):
            n = rng.randint(0, 8)
            bsize = rng.choice([8 + 2 * n, 0, 4, 0xFFFFFFFF, 8 + 2 * n + 1])
            ents = b"".join(struct.pack("<H", (rng.randrange(16) << 12) | rng.randrange(0x1000)) for _ in range(n))
            blocks += struct.pack("<II", rng.choice([0, s.rva, 0xFFFFF000, rng.getrandbits(32)]), bsize) + ents
        return s.raw_offset + at, blocks[: room - at], 5, rva
    path = rng.choice(HOSTILE_TEXT + ["/Build/OvmfX64/RELEASE_GCC5/X64/MdeModulePkg/X/DEBUG/X.dll"])
    cv = b"RSDS" + bytes(20) + path.encode("utf-8", "surrogatepass") + rng.choice([b"\0", b""])
    ent = struct.pack(
        "<IIHHIIII",
        0,
        0,
        0,
        0,
        S.IMAGE_DEBUG_TYPE_CODEVIEW,
        rng.choice([len(cv), big]),
        rva + 28,
        s.raw_offset + at + 28,
    )
    return s.raw_offset + at, (ent + cv)[: room - at], 6, rva


def _dir_entry_offset(raw: bytes, index: int) -> int | None:
    """Offset of data directory `index` (va, size) in a PE image, or the TE header's reloc/debug one."""
    if raw[:2] == S.TE_MAGIC:
        return {5: 24, 6: 32}.get(index)
    try:
        lfanew = struct.unpack_from("<I", raw, 0x3C)[0]
        opt = lfanew + 24
        plus = struct.unpack_from("<H", raw, opt)[0] == S.OPT_MAGIC_PE32_PLUS
    except struct.error:
        return None
    off = opt + (108 if plus else 92) + 4 + 8 * index
    return off if off + 8 <= len(raw) else None


@dataclass
class Mutated:
    """An input: its bytes and how it was made."""

    data: bytes
    seed: str
    steps: list[str]


class Generator:
    """Input number i of a campaign with `seed`: always the same bytes and command."""

    def __init__(self, seed: int, seeds: list[Seed], corpus_weight: float = 0.03) -> None:
        self.seed = seed
        self.small = [s for s in seeds if not s.big]
        self.big = [s for s in seeds if s.big]
        self.corpus_weight = corpus_weight if self.big else 0.0
        self.cmds = list(COMMAND_WEIGHTS)
        self.cmd_w = [COMMAND_WEIGHTS[c] for c in self.cmds]

    def command(self, i: int) -> tuple[str, list[str]]:
        rng = random.Random(f"cmd:{self.seed}:{i}")
        name = rng.choices(self.cmds, self.cmd_w)[0]
        argv = list(COMMANDS[name])
        if "TEXT" in argv:
            t = rng.choice(DECODE_TEXTS) if rng.random() < 0.8 else rng.randbytes(rng.randint(1, 15)).hex(" ")
            argv[argv.index("TEXT")] = t
        return name, argv

    def make(self, i: int) -> Mutated:
        rng = random.Random(f"in:{self.seed}:{i}")
        if self.big and rng.random() < self.corpus_weight:
            seed = rng.choice(self.big)
        else:
            seed = rng.choices(self.small, [s.weight for s in self.small])[0]
        data, root, steps = seed.data, seed.root, []
        mode = rng.random()
        n_struct = 0 if mode < 0.15 else rng.choice([1, 1, 1, 2, 2, 3])
        if seed.big:
            n_struct = min(n_struct, 1)
        for k in range(n_struct):
            try:
                data, what = self._structural(rng, data, root, seed.big)
                steps.append(what)
            except (NoFit, struct.error, ValueError, IndexError, OverflowError, encoders.EncodeError) as e:
                steps.append(f"skip ({type(e).__name__})")
                continue
            if k + 1 < n_struct:
                try:
                    root = parse_flash(data, seed.name)
                except Exception:
                    break
        if mode < 0.15 or rng.random() < 0.3:
            data = self._havoc(rng, data, big=seed.big)
            steps.append("havoc")
        return Mutated(data, seed.name, steps)

    # structure-aware: one mutation at one node
    def _structural(self, rng: random.Random, data: bytes, root: Node, big: bool) -> tuple[bytes, str]:
        nodes = [n for n in walk(root) if n is not root]
        if big:  # do not re-encode megabytes: file-level nodes only
            nodes = [n for n in nodes if n.space.origin is None] or nodes[:1]
        if not nodes:
            raise NoFit("no nodes")
        weights = [3 if isinstance(n, PeImage) else 2 if isinstance(n, Section) else 1 for n in nodes]
        n = rng.choices(nodes, weights)[0]
        space, sd = n.space, n.space.data
        fix = rng.random() < 0.7
        op = rng.choices(
            ["field", "truncate", "text", "table", "dup", "wrap", "cut-space", "resize", "code"],
            [
                10,
                2,
                1 if isinstance(n, Section) and n.type in (0x14, 0x15) else 0,
                3 if isinstance(n, PeImage) else 0,
                1,
                1,
                1,
                1,
                4 if isinstance(n, PeImage) else 0,
            ],
        )[0]
        kind = type(n).__name__
        if op == "field":
            fields = _fields(n, sd)
            if isinstance(n, PeImage) and rng.random() < 0.3:
                fields = [(n.offset + a, w) for a, w in _pe_tables(n)] or fields
            a, w = rng.choice(fields)
            if a + w > len(sd):
                raise NoFit("field past the end")
            new = _field_bytes(rng, w, sd[a : a + w], n.size)
            return splice(space, a, a + w, new, n, fix), f"{kind} field +0x{a - n.offset:X}/{w} fix={fix}"
        if op == "text":
            t = rng.choice(HOSTILE_TEXT)
            body = t.encode("utf-16-le", "surrogatepass") + (b"\0\0" if rng.random() < 0.8 else b"")
            if n.type == 0x14:
                body = sd[n.data_offset : n.data_offset + 2] + body
            return splice(space, n.data_offset, n.end, body, n, True), f"text {t[:12]!r}"
        if op == "table":
            t = _write_table(rng, n)
            if t is None:
                raise NoFit("no room for a table")
            off, body, index, rva = t
            b = bytearray(n.data)
            b[off : off + len(body)] = body
            d = _dir_entry_offset(bytes(b), index)
            if d is not None:
                struct.pack_into("<II", b, d, rva, len(body) if index != 0 else 40)
            return splice(space, n.offset, n.end, bytes(b), n, True), f"table {index}"
        if op == "code":  # instruction bytes in an executable section, near string I/O when there is some
            b = bytearray(n.data)
            secs = [s for s in n.sections if s.executable and 0 <= s.raw_offset < len(b) and s.raw_size]
            if not secs:
                raise NoFit("no code")
            s = rng.choice(secs)
            lo, hi = s.raw_offset, min(len(b), s.raw_offset + s.raw_size)
            sio = [m.start() for m in re.finditer(rb"[\x6c-\x6f]", bytes(b[lo:hi]))]
            at = lo + (rng.choice(sio) + rng.randint(-48, 48) if sio and rng.random() < 0.7 else rng.randrange(hi - lo))
            at = max(lo, min(at, hi - 1))
            for _ in range(rng.choice([1, 1, 2, 4])):
                ins = rng.choice(_CODE_BYTES)
                b[at : at + len(ins)] = ins[: hi - at]
                at = max(lo, min(hi - 1, at + rng.randint(-8, 8)))
            return splice(space, n.offset, n.end, bytes(b), n, True), "code"
        if op == "truncate":  # the node ends early: cut inside it (the space gets shorter)
            cut = n.offset + rng.choice([0, 1, 4, 8, 16, 23, 24, 40, 56, 72, n.size // 2, n.size - 1])
            cut = max(n.offset, min(cut, n.end))
            if space.origin is None:
                return sd[:cut], f"truncate file at 0x{cut:X}"
            return splice(space, cut, len(sd), b"", None, True), f"truncate decoded space at 0x{cut:X}"
        if op == "cut-space":  # drop the node's bytes, keeping the containers consistent
            return splice(
                space, n.offset, n.end, b"", n.parent if n.parent and n.parent.space is space else None, True
            ), f"remove {kind}"
        if op == "dup":
            parent = n.parent if n.parent is not None and n.parent.space is space else None
            times = rng.choice([1, 2, 8])
            return splice(space, n.end, n.end, bytes(n.data) * times, parent, True), f"duplicate {kind} x{times}"
        if op == "wrap":
            if not isinstance(n, (Section, FfsFile)):
                raise NoFit("wrap needs a section or file")
            inner = n.data if isinstance(n, Section) else n.body
            how = rng.choice(["lzma", "f86", "fv", "crc", "stored", "brotli", "guided-opaque"])
            if how == "lzma":
                w = B.lzma_section(inner)
            elif how == "f86":
                w = B.guided(B.LZMAF86, B.lzma_alone(bytes(x86_convert(bytearray(inner), encoding=True))))
            elif how == "fv":
                w = B.fv_section(_fit([B.ffs(_guid(99), 0x07, inner)]))
            elif how == "crc":
                w = B.crc_section(inner)
            elif how == "stored":
                w = B.stored_section(inner)
            elif how == "brotli":
                w = B.brotli_section(inner)
            else:
                w = B.guided(rng.choice([S.LZMA_GUID, _guid(7)]), inner, attrs=rng.choice([0, 1, 2]))
            if isinstance(n, Section):
                return splice(
                    space, n.offset, n.end, w, n.parent if n.parent.space is space else None, True
                ), f"wrap section in {how}"
            return splice(space, n.data_offset, n.end, w, n, True), f"wrap file body in {how}"
        # resize: grow or shrink the node's bytes (insert/delete inside it), sizes fixed above it
        at = n.offset + rng.randrange(max(1, n.size))
        if rng.random() < 0.5:
            return splice(space, at, at, rng.randbytes(rng.choice([1, 4, 8, 64, 4096])), n, fix), f"grow {kind}"
        return splice(space, at, min(n.end, at + rng.choice([1, 4, 8, 64])), b"", n, fix), f"shrink {kind}"

    @staticmethod
    def _havoc(rng: random.Random, data: bytes, big: bool = False) -> bytes:
        b = bytearray(data)
        for _ in range(rng.choice([1, 2, 4, 8, 16])):
            if not b:
                break
            r = rng.random()
            p = rng.randrange(len(b))
            if r < 0.25:
                b[p] ^= 1 << rng.randrange(8)
            elif r < 0.45:
                b[p] = rng.choice(_INTERESTING[1])
            elif r < 0.6:
                w = rng.choice([2, 4, 8])
                v = rng.choice(_INTERESTING[w]).to_bytes(w, "little")
                b[p : p + w] = v[: max(0, len(b) - p)]
            elif r < 0.7:
                q, n = rng.randrange(len(b)), rng.choice([4, 16, 64, 512])
                chunk = bytes(b[q : q + n])
                b[p : p + len(chunk)] = chunk
            elif r < 0.8 and not big:
                b[p:p] = rng.randbytes(rng.choice([1, 3, 8, 100]))
            elif r < 0.9 and not big:
                del b[p : p + rng.choice([1, 3, 8, 100])]
            elif r < 0.95:
                b[p : p + 4] = b"_FVH"[: len(b) - p] if rng.random() < 0.5 else b"\xe8\0\0\0"[: len(b) - p]
            else:
                del b[p:]
        return bytes(b)


# --- running one input ------------------------------------------------------------------------


class InputTimeout(BaseException):
    """Raised by SIGALRM in the worker: the input ran past the time limit."""


def _on_alarm(signum, frame):
    raise InputTimeout()


_CTRL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x85\u2028\u2029\u202a-\u202e\u2066-\u2069]")


@dataclass
class Outcome:
    """What one command did with one input."""

    cmd: str
    exit_code: int | None
    seconds: float
    symptom: str | None = None  # None: fine
    detail: str = ""
    where: str = ""  # innermost ovmftool frame of an exception
    stderr: str = ""

    @property
    def signature(self) -> str:
        """What makes two failures the same: command family, symptom, and the place in the code
        (or the message's words, without paths, numbers and the bytes the input supplied)."""
        fam = self.cmd.split("-")[0]
        if self.where or self.symptom in ("rss", "memory", "hang", "crash", "slow"):
            return f"{fam}:{self.symptom}:{self.where}"
        d = re.sub(r"\S*/\S*", "", self.detail)  # paths
        d = re.sub(r"0x[0-9A-Fa-f]+|\d+", "N", d)
        d = " ".join(re.findall(r"[a-z]{3,}", d))[:60]
        return f"{fam}:{self.symptom}:{d}"


def _where(tb) -> str:
    frames = [f for f in traceback.extract_tb(tb) if "/ovmftool/" in f.filename]
    if not frames:
        frames = traceback.extract_tb(tb)[-1:]
    if not frames:
        return ""
    f = frames[-1]
    return f"{f.filename.rsplit('/ovmftool/', 1)[-1]}:{f.lineno}:{f.name}"


def run_one(data: bytes, cmd: str, argv: list[str], work: str, time_limit: float = TIME_LIMIT) -> Outcome:
    """Run `argv` (COMMANDS form) on `data` in this process, and judge what it did."""
    from click.testing import CliRunner

    from ovmftool.cli import main

    img = os.path.join(work, "input.fd")
    out_file, out_dir = os.path.join(work, "out.fd"), os.path.join(work, "outdir")
    with open(img, "wb") as fh:
        fh.write(data)
    args = [img if a == "IMG" else out_file if a == "OUT" else out_dir if a == "DIR" else a for a in argv]
    runner = CliRunner(env={"OVMFTOOL_DEBUG": "1"})  # exceptions reach us with their traceback
    t0 = time.monotonic()
    old = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, time_limit)
    try:
        try:
            r = runner.invoke(main, args, catch_exceptions=True)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
    except InputTimeout:
        o = Outcome(cmd, None, time.monotonic() - t0, "timeout", f"over {time_limit:.0f} s", _where(sys.exc_info()[2]))
        _clean(work)
        return o
    dt = time.monotonic() - t0
    code = r.exit_code
    stdout, stderr = r.stdout, r.stderr
    o = Outcome(cmd, code, dt, stderr=stderr[-500:])
    exc = r.exception
    if exc is not None and not isinstance(exc, SystemExit):
        o.symptom = "memory" if isinstance(exc, MemoryError) else "exception"
        o.detail = f"{type(exc).__name__}: {exc}"[:300]
        o.where = _where(r.exc_info[2]) if r.exc_info else ""
    elif code not in (0, 1, 2):
        o.symptom, o.detail = "exit-code", f"exit {code}"
    elif len(stderr.splitlines()) > 1:
        o.symptom, o.detail = "stderr-lines", stderr[:200]
    elif code == 2 and not stderr.startswith("ovmftool: error: "):
        o.symptom, o.detail = "error-line", stderr[:200] or "(empty stderr)"
    elif "internal error" in stderr or "Traceback" in stderr + stdout:
        o.symptom, o.detail = "internal-error", stderr[:200]
    elif "out of memory" in stderr:
        o.symptom, o.detail = "memory", stderr[:200]
    elif dt > time_limit:
        o.symptom, o.detail = "slow", f"{dt:.1f} s"
    elif _CTRL.search(stdout) or _CTRL.search(stderr):
        m = _CTRL.search(stdout) or _CTRL.search(stderr)
        o.symptom, o.detail = "unprintable", repr(m.group(0)) if m else ""
    elif ("json" in cmd or "sarif" in cmd) and code in (0, 1) and not _loads(stdout):
        o.symptom, o.detail = "bad-json", stdout[:100]
    elif "junit" in cmd and code in (0, 1) and not _xml(stdout):
        o.symptom, o.detail = "bad-xml", stdout[:100]
    elif cmd.startswith("patch-") and code != 0 and os.path.exists(out_file):
        o.symptom, o.detail = "output-left", f"exit {code} but {os.path.basename(out_file)} written"
    elif cmd == "extract" and code != 0 and os.path.exists(out_dir):
        o.symptom, o.detail = "output-left", f"exit {code} but the directory was written"
    _clean(work)
    return o


def _loads(text: str) -> bool:
    try:
        json.loads(text)
        return True
    except ValueError:
        return False


def _xml(text: str) -> bool:
    import xml.etree.ElementTree as ET

    try:
        ET.fromstring(text)
        return True
    except ET.ParseError:
        return False


def _clean(work: str) -> None:
    for name in os.listdir(work):
        p = os.path.join(work, name)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            try:
                os.unlink(p)
            except OSError:
                pass


def _maxrss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


# --- workers and the campaign -------------------------------------------------------------------


_PARENT_FDS: set[int] = set()  # the parent's ends of every worker's pipes (a new worker closes them)


class Worker:
    """A forked process that runs inputs by number and answers one JSON line per input."""

    def __init__(self, gen: Generator, time_limit: float, rss_limit: int, recycle: int) -> None:
        self.gen, self.time_limit, self.rss_limit, self.recycle = gen, time_limit, rss_limit, recycle
        self.index: int | None = None
        self.started = 0.0
        self.spawn()

    def spawn(self) -> None:
        # the scratch directory is the parent's to remove: a worker killed mid-input cannot
        self.work = tempfile.mkdtemp(prefix="ovmftool-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        tr, tw = os.pipe()
        rr, rw = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker
            try:
                for fd in _PARENT_FDS | {tw, rr}:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
                self.done = 0
                self._loop(os.fdopen(tr, "r"), os.fdopen(rw, "w", buffering=1))
            finally:
                os._exit(0)
        os.close(tr)
        os.close(rw)
        _PARENT_FDS.update((tw, rr))
        self.pid, self.tasks, self.results = pid, os.fdopen(tw, "w", buffering=1), os.fdopen(rr, "r")
        self.done = 0

    def _loop(self, tasks, results) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        work = self.work
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)  # a stray write to the real stderr (C libraries) stays out of the report
        try:
            for line in tasks:
                i = int(line)
                t0 = time.monotonic()
                cmd, argv = self.gen.command(i)
                try:
                    m = self.gen.make(i)
                except Exception as e:  # a bug of the fuzzer's own: reported, never silently skipped
                    m = None
                    o = Outcome(cmd, None, 0.0, "fuzzer", f"{type(e).__name__}: {e}"[:300], _where(e.__traceback__))
                gen_s = time.monotonic() - t0
                if m is not None:
                    o = run_one(m.data, cmd, argv, work, self.time_limit)
                else:
                    m = Mutated(b"", "", [])
                if _maxrss() > self.rss_limit and o.symptom is None:
                    o.symptom, o.detail = "rss", f"resident set reached {_maxrss() >> 20} MiB"
                self.done += 1
                # a fresh process after a memory or time failure, a high-water mark of half the
                # limit (ru_maxrss never goes down), or `recycle` inputs
                exiting = (
                    o.symptom in ("rss", "memory", "timeout")
                    or _maxrss() > self.rss_limit // 2
                    or self.done >= self.recycle
                )
                results.write(
                    json.dumps(
                        {
                            "i": i,
                            "cmd": cmd,
                            "exit": o.exit_code,
                            "s": o.seconds,
                            "gen": gen_s,
                            "symptom": o.symptom,
                            "detail": o.detail,
                            "where": o.where,
                            "sig": o.signature if o.symptom else None,
                            "stderr": o.stderr,
                            "argv": argv,
                            "seed": m.seed,
                            "steps": m.steps,
                            "exiting": exiting,
                        }
                    )
                    + "\n"
                )
                if exiting:
                    break
        finally:
            _clean(work)

    def send(self, i: int) -> None:
        self.index, self.started = i, time.monotonic()
        self.tasks.write(f"{i}\n")
        self.tasks.flush()

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.close()

    def close(self) -> int | None:
        """Close the pipes (a live worker then ends) and reap it: its wait status."""
        for f in (self.tasks, self.results):
            _PARENT_FDS.discard(f.fileno()) if not f.closed else None
            try:
                f.close()
            except OSError:
                pass
        try:
            return os.waitpid(self.pid, 0)[1]
        except ChildProcessError:
            return None
        finally:
            shutil.rmtree(self.work, ignore_errors=True)

    def restart(self) -> int | None:
        status = self.close()
        self.spawn()
        return status


@dataclass
class Campaign:
    """A resumable run: state in DIR/state.json, failures in DIR/failures/."""

    out_dir: Path
    seed: int = 1
    next_index: int = 0
    inputs: int = 0
    seconds: float = 0.0
    failures: dict = field(default_factory=dict)  # signature -> {count, first, cmd, symptom, detail, where}
    exits: dict = field(default_factory=dict)
    commands: dict = field(default_factory=dict)  # cmd -> [count, seconds]
    config: dict = field(default_factory=dict)  # what input i depends on besides the seed (corpus seeds)

    @classmethod
    def load(cls, out_dir: Path) -> Campaign:
        st = json.loads((out_dir / "state.json").read_text())
        c = cls(
            out_dir,
            st["seed"],
            st["next_index"],
            st["inputs"],
            st["seconds"],
            st["failures"],
            st["exits"],
            st.get("commands", {}),
            st.get("config", {}),
        )
        return c

    def save(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        doc = {
            "seed": self.seed,
            "config": self.config,
            "next_index": self.next_index,
            "inputs": self.inputs,
            "seconds": round(self.seconds, 1),
            "rate": round(self.inputs / self.seconds, 1) if self.seconds else None,
            "failures": self.failures,
            "exits": self.exits,
            "commands": self.commands,
        }
        tmp = self.out_dir / "state.json.tmp"
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, self.out_dir / "state.json")

    def record(self, res: dict, gen: Generator) -> bool:
        """Count one result; save the input of a new (or still rare) failure. True if it failed."""
        self.inputs += 1
        key = str(res["exit"])
        self.exits[key] = self.exits.get(key, 0) + 1
        c = self.commands.setdefault(res["cmd"], [0, 0.0])
        c[0] += 1
        c[1] = round(c[1] + res["s"], 3)
        if not res["symptom"]:
            return False
        sig = res["sig"]
        f = self.failures.setdefault(
            sig,
            {
                "count": 0,
                "first": res["i"],
                "cmd": res["cmd"],
                "symptom": res["symptom"],
                "detail": res["detail"],
                "where": res["where"],
                "examples": [],
            },
        )
        f["count"] += 1
        if len(f["examples"]) < 3:
            d = self.out_dir / "failures" / hashlib.sha1(sig.encode()).hexdigest()[:12]
            d.mkdir(parents=True, exist_ok=True)
            m = gen.make(res["i"])  # the same bytes the worker ran (a dead worker could not say)
            data = m.data
            res = {**res, "seed": m.seed, "steps": m.steps}
            path = d / f"input-{res['i']}.fd"
            path.write_bytes(data)
            replay_cmd = f"python -m tools.fuzz --replay {path} --cmd '{json.dumps(res['argv'])}'"
            path.with_suffix(".json").write_text(
                json.dumps(
                    {**res, "signature": sig, "campaign_seed": self.seed, "size": len(data), "replay": replay_cmd},
                    indent=1,
                    sort_keys=True,
                )
                + "\n"
            )
            f["examples"].append(str(d / f"input-{res['i']}.fd"))
        return True


def default_seeds(corpus: bool = True) -> list[Seed]:
    seeds = synthetic_seeds(_corpus_modules())
    if corpus:
        seeds += corpus_seeds()
    return seeds


def run_campaign(
    out_dir: str | Path,
    seed: int = 1,
    count: int | None = None,
    seconds: float | None = None,
    workers: int = 1,
    resume: bool = False,
    corpus: bool = True,
    time_limit: float = TIME_LIMIT,
    rss_limit: int = RSS_LIMIT,
    recycle: int = 5000,
    report=None,
    seeds: list[Seed] | None = None,
    corpus_weight: float = 0.03,
) -> Campaign:
    """Run inputs [next, next + count) (or for `seconds`) and return the campaign's totals."""
    out_dir = Path(out_dir)
    if resume and (out_dir / "state.json").exists():
        camp = Campaign.load(out_dir)
        corpus = camp.config.get("corpus", corpus)  # input i must stay the input it was
        corpus_weight = camp.config.get("corpus_weight", corpus_weight)
    else:
        camp = Campaign(out_dir, seed)
    camp.config = {"corpus": corpus, "corpus_weight": corpus_weight}
    seeds = seeds if seeds is not None else default_seeds(corpus)
    for s in seeds:
        _ = s.root  # parse once, before forking: every worker shares the trees
    gen = Generator(camp.seed, seeds, corpus_weight)
    stop_at = camp.next_index + count if count is not None else None
    deadline = time.monotonic() + seconds if seconds is not None else None
    pool = [Worker(gen, time_limit, rss_limit, recycle) for _ in range(max(1, workers))]
    inflight: dict[int, Worker] = {}
    nxt = camp.next_index
    base_seconds, t_start = camp.seconds, time.monotonic()
    last_report = last_save = t_start
    run_inputs = 0
    hard = time_limit * 2 + 5  # generation and a command that ignores SIGALRM (C code) included

    def dispatch(w: Worker) -> None:
        nonlocal nxt
        if (stop_at is None or nxt < stop_at) and (deadline is None or time.monotonic() < deadline):
            w.send(nxt)
            inflight[nxt] = w
            nxt += 1

    def lost(i: int, what: str, detail: str, seconds: float) -> dict:
        cmd, argv = gen.command(i)
        return {
            "i": i,
            "cmd": cmd,
            "exit": None,
            "s": seconds,
            "gen": 0.0,
            "symptom": what,
            "detail": detail,
            "where": "",
            "argv": argv,
            "sig": f"{cmd.split('-')[0]}:{what}:",
            "stderr": "",
            "seed": "",
            "steps": [],
        }

    try:
        for w in pool:
            dispatch(w)
        while inflight:
            fds = {w.results.fileno(): w for w in inflight.values()}
            ready, _, _ = select.select(list(fds), [], [], 0.05)
            now = time.monotonic()
            for fd in ready:
                w = fds[fd]
                i = w.index
                del inflight[i]
                line = w.results.readline()
                if line:
                    res = json.loads(line)
                    if res.get("exiting"):
                        w.restart()
                else:  # the worker died on this input (a signal: segfault, abort, the kernel's OOM killer)
                    status = w.restart()
                    res = lost(i, "crash", f"worker ended with wait status {status}", now - w.started)
                camp.record(res, gen)
                run_inputs += 1
                dispatch(w)
            for i, w in list(inflight.items()):
                if now - w.started > hard or _rss(w.pid) > rss_limit * 3 // 2:
                    over = now - w.started > hard
                    w.kill()
                    w.spawn()
                    del inflight[i]
                    camp.record(
                        lost(
                            i,
                            "hang" if over else "rss",
                            f"killed after {now - w.started:.0f} s" if over else "killed over 1.5x the RSS limit",
                            now - w.started,
                        ),
                        gen,
                    )
                    run_inputs += 1
                    dispatch(w)
            camp.next_index = min(inflight) if inflight else nxt
            if now - last_save > 30:
                camp.seconds = base_seconds + (now - t_start)
                camp.save()
                last_save = now
            if report is not None and now - last_report > 10:
                elapsed = now - t_start
                report(
                    f"{camp.inputs} inputs in total, {run_inputs} this run ({run_inputs / elapsed:.1f}/s), "
                    f"{sum(f['count'] for f in camp.failures.values())} failures ({len(camp.failures)} distinct), "
                    f"next input {camp.next_index}"
                )
                last_report = now
    finally:
        for w in pool:
            if w.index in inflight:
                w.kill()
            else:
                w.close()
        camp.seconds = base_seconds + (time.monotonic() - t_start)
        camp.next_index = min(inflight) if inflight else nxt
        camp.save()
    return camp


def replay(path: str, cmd: str, time_limit: float = TIME_LIMIT) -> Outcome:
    """Run one saved input again with `cmd` (a COMMANDS name or an argv JSON list)."""
    argv = COMMANDS[cmd] if cmd in COMMANDS else json.loads(cmd)
    argv = ["f3 6e" if a == "TEXT" else a for a in argv]
    work = tempfile.mkdtemp(prefix="ovmftool-replay-")
    try:
        return run_one(Path(path).read_bytes(), cmd if cmd in COMMANDS else "custom", argv, work, time_limit)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dir", default="fuzz-run", help="campaign directory (state.json, failures/)")
    ap.add_argument("--seed", type=int, default=1, help="campaign seed (ignored with --resume)")
    ap.add_argument("--count", type=int, help="inputs to run (default: until --seconds or Ctrl-C)")
    ap.add_argument("--seconds", type=float, help="stop after this long")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--resume", action="store_true", help="continue the campaign in --dir")
    ap.add_argument("--no-corpus", action="store_true", help="synthetic seeds only")
    ap.add_argument("--corpus-weight", type=float, default=0.03, help="share of inputs from corpus images")
    ap.add_argument("--time-limit", type=float, default=TIME_LIMIT)
    ap.add_argument("--rss-mb", type=int, default=RSS_LIMIT >> 20)
    ap.add_argument("--replay", metavar="FILE", help="run one input file again (with --cmd) and print the outcome")
    ap.add_argument("--cmd", default="info", help="command for --replay: " + ", ".join(COMMANDS))
    a = ap.parse_args(argv)
    if a.replay:
        o = replay(a.replay, a.cmd, a.time_limit)
        print(json.dumps(o.__dict__, indent=1))
        return 1 if o.symptom else 0
    if (Path(a.dir) / "state.json").exists() and not a.resume:
        print(f"{a.dir}/state.json exists: give --resume to continue it, or another --dir", file=sys.stderr)
        return 2

    def report(msg: str) -> None:
        print(time.strftime("%H:%M:%S"), msg, flush=True)

    t0 = time.monotonic()
    try:
        camp = run_campaign(
            a.dir,
            a.seed,
            a.count,
            a.seconds,
            a.workers,
            a.resume,
            not a.no_corpus,
            a.time_limit,
            a.rss_mb << 20,
            report=report,
            corpus_weight=a.corpus_weight,
        )
    except KeyboardInterrupt:
        camp = Campaign.load(Path(a.dir))
    dt = time.monotonic() - t0
    print(
        f"campaign seed {camp.seed}: {camp.inputs} inputs in total ({camp.seconds:.0f} s, "
        f"{camp.inputs / camp.seconds if camp.seconds else 0:.1f}/s overall; this run {dt:.0f} s), next input "
        f"{camp.next_index}, exits {dict(sorted(camp.exits.items()))}"
    )
    for sig, f in sorted(camp.failures.items(), key=lambda kv: -kv[1]["count"]):
        print(f"  {f['count']:6d}  {sig}  {f['detail'][:100]}  e.g. {f['examples'][:1]}")
    return 1 if camp.failures else 0


if __name__ == "__main__":
    sys.exit(main())
