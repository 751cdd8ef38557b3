"""Crash triage: decode what propolis prints for an `Unhandled VM exit: InstEmul`, explain the
faulting instruction, and find where those bytes sit in a firmware image's code."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ovmftool.errors import OvmfToolError
from ovmftool.scan.disasm import cs, string_io

_INST_DATA = re.compile(r"inst_data\s*:\s*\[([^\]]*)\]")
_LEN = re.compile(r"\blen\s*:\s*(\d+)")
_BRACKETS = re.compile(r"\[([^\]]*)\]")


def parse_bytes(text: str) -> bytes:
    """The instruction bytes in propolis' panic text, a decimal list (Rust's Debug of [u8]), or hex."""
    t = text.strip()
    if not t:
        raise OvmfToolError("no instruction bytes given")
    m = _INST_DATA.search(t) or _BRACKETS.search(t)
    if m is not None:
        items = [x.strip() for x in m.group(1).replace("\n", " ").split(",") if x.strip()]
        try:
            vals = [int(x, 16) if x.lower().startswith("0x") else int(x, 10) for x in items]
        except ValueError:
            raise OvmfToolError(f"cannot read {m.group(0)[:60]!r} as a list of byte values") from None
        ln = _LEN.search(t[m.end():])
        if ln:
            vals = vals[: int(ln.group(1))]
    else:
        h = re.sub(r"0x|[\s,:]", "", t, flags=re.I)
        if not h or len(h) % 2 or not re.fullmatch(r"[0-9a-fA-F]+", h):
            raise OvmfToolError(f"cannot read {t[:60]!r} as instruction bytes (give propolis' inst_data line, "
                                "a decimal list in brackets, or hex)")
        vals = list(bytes.fromhex(h))
    if not vals or any(not 0 <= v <= 255 for v in vals):
        raise OvmfToolError("instruction bytes must be values 0..255")
    return bytes(vals)


@dataclass
class Decoded:
    """One decoded instruction of the stream."""

    offset: int
    bytes: str
    mnemonic: str
    operands: str


@dataclass
class Match:
    """A place in the image whose code bytes match the stream."""

    module: str
    guid: str
    arch: str
    volume: str
    rva: int
    fd_offset: int | None
    matched: int  # bytes of the stream that match
    function: str | None
    function_source: str | None
    is_site: bool  # the matched instruction is a string I/O site the scanner reports


@dataclass
class Triage:
    """The decoded stream, what faulted and why, and matches in an image."""

    data: bytes
    bits: int
    instructions: list[Decoded]
    explanation: str
    matches: list[Match] = field(default_factory=list)

    @property
    def faulting(self) -> Decoded | None:
        return self.instructions[0] if self.instructions else None


def _explain(first: Decoded | None, bits: int) -> str:
    if first is None:
        return (f"The bytes do not decode as a {bits}-bit x86 instruction; try --bits 16 or 32 (a guest still in "
                "real or protected mode) or check the input.")
    sio = string_io(first.mnemonic)
    if sio is None:
        return (f"The faulting instruction is {first.mnemonic.upper()} {first.operands}. It is not string port "
                "I/O; propolis hands an InstEmul exit to its instruction emulator, which handles only what it "
                "knows; this one it could not.")
    unit = {8: "byte", 16: "word", 32: "doubleword"}[sio.width]
    rep = {"rep": "REP-prefixed ", "repne": "REPNE-prefixed ", None: ""}[sio.rep]
    if sio.direction == "out":
        act = (f"reads a {unit} from memory at [RSI] and writes it to the I/O port in DX, advancing RSI"
               + (", repeating RCX times" if sio.rep else ""))
    else:
        act = (f"reads a {unit} from the I/O port in DX and stores it to memory at [RDI], advancing RDI"
               + (", repeating RCX times" if sio.rep else ""))
    return (f"The faulting instruction is {rep}{first.mnemonic.split()[-1].upper()}: it {act}. On AMD hosts with "
            "DecodeAssist the CPU decodes string I/O itself and bhyve gets a structured INOUT exit that it splits "
            "into single port accesses. Without DecodeAssist (nested virtualization, e.g. bhyve under KVM) the "
            "CPU cannot describe the operation, bhyve falls back to an InstEmul exit with the raw bytes, and "
            "propolis, which does not emulate string I/O, panics with 'Unhandled VM exit: InstEmul'. In OVMF "
            "these instructions come from the FIFO routines of BaseIoLibIntrinsic (IoFifoSev.nasm / IoFifo.nasm).")


def decode(data: bytes, bits: int = 64) -> Triage:
    """Decode the stream; the first instruction is the one that faulted."""
    out = []
    for a, size, mn, op in cs(bits).disasm_lite(data, 0):
        out.append(Decoded(a, data[a : a + size].hex(), mn, op))
    return Triage(data, bits, out, _explain(out[0] if out else None, bits))


def find_in_image(t: Triage, root) -> list[Match]:
    """Places in the image's executable sections matching the stream, longest match first."""
    from ovmftool.ops.modules import iter_modules
    from ovmftool.scan.scanner import scan_module

    first_len = len(bytes.fromhex(t.faulting.bytes)) if t.faulting else len(t.data)
    matches: list[Match] = []
    for m in iter_modules(root):
        if (m.image.bits == 64) != (t.bits == 64):
            continue
        mem = m.image.memory
        ranges = [(s.rva, s.rva + (s.virtual_size or s.raw_size)) for s in m.image.sections if s.executable]
        hits: dict[int, int] = {}
        for lo, hi in ranges:
            p = mem.find(t.data[:first_len], lo, hi)
            while p >= 0:
                n = first_len
                while n < len(t.data) and p + n < hi and mem[p + n] == t.data[n]:
                    n += 1
                hits[p] = n
                p = mem.find(t.data[:first_len], p + 1, hi)
        if not hits:
            continue
        scanned = scan_module(m)
        sites = {f.rva: f for f in scanned.findings}
        for rva, n in hits.items():
            f = sites.get(rva)
            off = m.image.rva_to_offset(rva)
            fd = m.image.abs_offset + off if (m.image.abs_offset is not None and off is not None) else None
            matches.append(Match(m.name, m.guid, m.arch, m.volume, rva, fd, n, f.function if f else None,
                                 f.function_source if f else None, f is not None))
    matches.sort(key=lambda x: (-x.matched, not x.is_site, x.volume, x.module, x.rva))
    return matches
