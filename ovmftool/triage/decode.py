"""Crash triage: decode what propolis prints for an `Unhandled VM exit: InstEmul`, name the routine
the faulting instruction belongs to, and find where those bytes sit in a firmware image's code.

Propolis prints the bytes starting at the faulting RIP (usually 15: the longest x86 instruction),
so the stream starts in the middle of a routine and may run past its end. It is matched against
every built-in signature (`scan.signatures`: BaseIoLibIntrinsic's IoFifoSev.nasm and IoFifo.nasm
routines, IA32 and X64) at each of the routine's instruction starts (RIP is always one), byte by
byte, with the signatures' wildcards (branch and call displacements; the twin encodings of
register-register forms). Where the stream runs past the routine's end, the rest is matched
against the start of the routines of the same source file (the routines of one NASM file lie one
after another). This needs no image: the verdict names instruction, routine, source file and
library instance. With an image, the stream is also found in the image's code, literally.

A match that agrees only on the faulting instruction's own bytes (a REP OUTSB is a REP OUTSB in
every routine that has one) tells nothing; those, and any match shorter than the longest, are
counted, not listed.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from functools import cache

from ovmftool.errors import LimitExceeded, OvmfToolError
from ovmftool.model.binary import BinaryFile
from ovmftool.model.parser import read_image
from ovmftool.ops.modules import iter_modules
from ovmftool.scan import signatures as sigs
from ovmftool.scan.disasm import cs
from ovmftool.scan.records import SiteSignature
from ovmftool.scan.scanner import MAX_SCAN_MEMORY, check_scannable, exec_ranges, scan_module

_INST_DATA = re.compile(r"inst_data\s*:\s*\[([^\]]*)\]")
_LEN = re.compile(r"\blen\s*:\s*([0-9]+)")
_HUGE = 1 << 64  # what a number of more than 18 digits reads as: more than any byte, length or vCPU


def decimal(text: str) -> int:
    """A run of ASCII digits as an int; more than 18 digits (after leading zeros) as `_HUGE`:
    Python refuses to convert over 4,300 digits, and no byte, length or vCPU needs 19."""
    digits = text.lstrip("0")
    return int(digits or "0") if len(digits) <= 18 else _HUGE


_BRACKETS = re.compile(r"\[([^\]]*)\]")
_SEPARATORS = re.compile(r"[\s,:]+")
_HEX = re.compile(r"[0-9a-fA-F]+")
_HOW = "give propolis' inst_data line, a decimal list in brackets ([243, 110]), or hex (f36e, f3 6e)"


def parse_bytes(text: str) -> bytes:
    """The instruction bytes in propolis' panic text, a decimal list (Rust's Debug of [u8]), or hex.

    In brackets (`inst_data: [243, 110, ...]`, `[243, 110]`) every value is decimal unless
    0x-prefixed. Without brackets, tokens are separated by commas, colons or whitespace and each is
    one byte: `0x..` is hex; two characters with a letter a-f are hex; three digits, or one, are
    decimal (a hex byte has two digits); four or more characters are a hex string (`f36eeb0a`).
    Two digits alone (`10`) read as hex or as decimal by the other tokens; when none tells, or
    tokens say both, the input is ambiguous and refused (one line naming the ambiguity)."""
    t = text.strip()
    if not t:
        raise OvmfToolError("no instruction bytes given")
    m = _INST_DATA.search(t) or _BRACKETS.search(t)
    if m is not None:
        items = [x for x in _SEPARATORS.split(m.group(1)) if x]
        vals = []
        for x in items:
            if x[:2].lower() == "0x" and _HEX.fullmatch(x[2:]):
                vals.append(int(x[2:], 16))
            elif x.isascii() and x.isdigit():
                vals.append(decimal(x))
            else:
                raise OvmfToolError(
                    f"cannot read {m.group(0)[:60]!r} as a list of byte values (decimal, or 0x-prefixed hex)"
                )
        ln = _LEN.search(t[m.end() :])
        if ln:
            vals = vals[: decimal(ln.group(1))]
        if not vals:
            raise OvmfToolError("no instruction bytes given")
        bad = next((x for x, v in zip(items, vals) if not 0 <= v <= 255), None)
        if bad is not None:
            raise OvmfToolError(f"instruction bytes must be values 0..255 ({bad} is not)")
        return bytes(vals)
    return bytes(_tokens_to_bytes(t))


def _tokens_to_bytes(t: str) -> list[int]:
    """Separated tokens without brackets (see `parse_bytes`)."""
    shown = t[:60]
    kinds: list[tuple[str, str]] = []  # (kind, token): "x" 0x-prefixed, "h" hex, "d" decimal, "a" either
    for tok in _SEPARATORS.split(t):
        if not tok:
            continue
        low = tok.lower()
        if low.startswith("0x"):
            digits = tok[2:]
            if not _HEX.fullmatch(digits or "-") or (len(digits) > 2 and len(digits) % 2):
                raise OvmfToolError(f"cannot read {tok!r} in {shown!r} as hex bytes ({_HOW})")
            kinds.append(("x", digits))
        elif not _HEX.fullmatch(tok):
            raise OvmfToolError(f"cannot read {tok!r} in {shown!r} as a byte ({_HOW})")
        elif len(tok) >= 4:
            if len(tok) % 2:
                raise OvmfToolError(f"cannot read {tok!r} in {shown!r} as hex bytes: an odd number of digits")
            kinds.append(("h", tok))
        elif tok.isdigit() and len(tok) in (1, 3):
            kinds.append(("d", tok))
        elif len(tok) == 2:
            kinds.append(("a" if tok.isdigit() else "h", tok))
        else:  # one or three characters with a letter: not a hex byte (two digits)
            raise OvmfToolError(f"cannot read {tok!r} in {shown!r} as a byte: hex bytes have two digits ({_HOW})")
    if not kinds:
        raise OvmfToolError("no instruction bytes given")
    hexes = [tok for k, tok in kinds if k == "h"]
    decs = [tok for k, tok in kinds if k == "d"]
    either = [tok for k, tok in kinds if k == "a"]
    if hexes and decs and all(len(x) == 1 for x in decs):
        raise OvmfToolError(f"cannot read {decs[0]!r} in {shown!r} as a byte: hex bytes have two digits")
    if hexes and decs:
        raise OvmfToolError(
            f"{shown!r} mixes decimal ({decs[0]}) and hex ({hexes[0]}) bytes: give 0x-prefixed "
            "hex, or decimal in brackets"
        )
    if not hexes and not decs and any(int(x, 16) != int(x, 10) for x in either):
        ex = either[:2]
        joined = f", hex without separators ({''.join(ex)})," if len(ex) > 1 else ""
        raise OvmfToolError(
            f"{shown!r} could be hex or decimal bytes: give 0x-prefixed hex "
            f"({' '.join('0x' + x for x in ex)}){joined} or decimal in brackets "
            f"([{', '.join(ex)}])"
        )
    base = 10 if decs else 16
    vals: list[int] = []
    for k, tok in kinds:
        if k == "d" or (k == "a" and base == 10):
            v = int(tok, 10)
            if v > 255:
                raise OvmfToolError(f"instruction bytes must be values 0..255 ({tok} is not)")
            vals.append(v)
        elif k == "x" and len(tok) <= 2:
            vals.append(int(tok, 16))
        else:
            vals += bytes.fromhex(tok)
    return vals


@dataclass
class Decoded:
    """One decoded instruction of the stream."""

    offset: int
    bytes: str
    mnemonic: str
    operands: str


@dataclass
class Following:
    """The routine(s) whose start the bytes past a routine's end match."""

    routines: list[str]
    matched: int


@dataclass
class RoutineMatch:
    """A built-in signature the stream matches."""

    routine: str
    aliases: list[str]
    library: str
    source: str
    arch: str
    variant: str  # "Sev" (IoFifoSev.nasm) or "non-Sev" (IoFifo.nasm)
    trees: list[str]
    offset: int  # where the stream starts in the routine
    at_site: bool  # ... at the routine's string I/O instruction
    matched: int  # stream bytes that agree with the routine from `offset`
    complete: bool  # no byte disagrees: the stream ends in the routine, or runs past its end
    followed_by: list[Following] = field(default_factory=list)

    @property
    def explained(self) -> int:
        """Stream bytes accounted for: the routine's and the following routines'."""
        return self.matched + sum(f.matched for f in self.followed_by)


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
    signature: SiteSignature | None = None  # the site's signature (routine, library, source) when one matched


@dataclass
class Shorter:
    """Matches not listed: how many, by matched length."""

    count: int = 0
    by_length: dict[int, int] = field(default_factory=dict)


@dataclass
class Triage:
    """The decoded stream, what faulted and why, the routines it matches, matches in an image."""

    data: bytes
    bits: int
    instructions: list[Decoded]
    routines: list[RoutineMatch] = field(default_factory=list)
    shorter_routines: Shorter = field(default_factory=Shorter)
    image_path: str | None = None
    image_sha256: str | None = None
    image_standalone: bool = False
    matches: list[Match] = field(default_factory=list)
    shorter_matches: Shorter = field(default_factory=Shorter)

    @property
    def faulting(self) -> Decoded | None:
        return self.instructions[0] if self.instructions else None

    @property
    def first_len(self) -> int:
        """Bytes of the faulting instruction (all of them when nothing decodes)."""
        return len(bytes.fromhex(self.faulting.bytes)) if self.faulting else len(self.data)

    @property
    def instruction(self) -> str | None:
        """`REP OUTSB`: the faulting instruction's mnemonic."""
        return self.faulting.mnemonic.upper() if self.faulting else None


def decode(data: bytes, bits: int = 64) -> Triage:
    """Decode the stream (the first instruction is the one that faulted) and match it against
    the built-in signatures."""
    out = []
    for a, size, mn, op in cs(bits).disasm_lite(data, 0):
        out.append(Decoded(a, data[a : a + size].hex(), mn, op))
    t = Triage(data, bits, out)
    t.routines, t.shorter_routines = _collapse(
        match_signatures(data, bits), lambda r: r.explained, t.first_len, len(data)
    )
    return t


def triage(text: str, bits: int = 64, image: str | None = None) -> Triage:
    """`ovmftool decode TEXT [--image IMAGE]`: the bytes read from `text` and decoded, then found
    in the image at `image` (read after the bytes, so bad bytes are the error reported first)."""

    t = decode(parse_bytes(text), bits)
    if image:
        find_in_image(t, read_image(image))
    return t


# --- the signatures, one token per instruction -----------------------------------------------


@cache
def _tokens(sig: sigs.Signature) -> tuple[sigs.Token, ...]:
    """The routine as instructions with their accepted encodings (the signatures' own rules)."""
    return tuple(t for t, _site in sigs.tokens(sig.code, 64 if sig.arch == "X64" else 32))


def _agree(tokens: tuple[sigs.Token, ...], start: int, data: bytes) -> tuple[int, bool]:
    """Bytes of `data` that agree with the routine from token `start` on, and whether none
    disagrees before `data` or the routine ends."""
    pos = 0
    for _off, alts in tokens[start:]:
        size = len(alts[0])
        want = min(size, len(data) - pos)
        best = 0
        for alt in alts:
            k = 0
            while k < want and (alt[k] is None or alt[k] == data[pos + k]):
                k += 1
            best = max(best, k)
        pos += best
        if best < want:
            return pos, False
        if pos >= len(data):
            return pos, True
    return pos, True


def _following(sig: sigs.Signature, rest: bytes, depth: int = 0) -> list[Following]:
    """The routines of `sig`'s source file whose start the bytes past `sig`'s end match."""
    if not rest or depth > 4:
        return []
    best, names, only = 0, [], None
    for other in sigs.load():
        if other.arch != sig.arch or other.source != sig.source:
            continue
        n, ok = _agree(_tokens(other), 0, rest)
        if not ok or n == 0:
            continue
        if n > best:
            best, names, only = n, [other.routine], other
        elif n == best:
            names.append(other.routine)
            only = None
    if not names:
        return []
    out = [Following(names, best)]
    if only is not None and best == len(only.code):
        out += _following(only, rest[best:], depth + 1)
    return out


def match_signatures(data: bytes, bits: int = 64) -> list[RoutineMatch]:
    """Every built-in signature and instruction start where at least the stream's first
    instruction agrees, best first. The stream's `bits` only orders ties (its arch first)."""
    first_len = next((size for _a, size, _m, _o in cs(bits).disasm_lite(data, 0)), len(data))
    arch = "X64" if bits == 64 else "IA32"
    out = []
    for sig in sigs.load():
        toks = _tokens(sig)
        for i, (off, _alts) in enumerate(toks):
            n, complete = _agree(toks, i, data)
            if n < min(first_len, len(data)):
                continue
            rm = RoutineMatch(
                sig.routine,
                list(sig.aliases),
                sig.library,
                sig.source,
                sig.arch,
                "Sev" if sig.library.endswith("Sev") else "non-Sev",
                list(sig.trees),
                off,
                off in sig.sites,
                n,
                complete,
            )
            if complete and n < len(data):
                rm.followed_by = _following(sig, data[n:])
            out.append(rm)
    out.sort(key=lambda r: (-r.explained, not r.complete, r.arch != arch, not r.at_site, r.source, r.routine, r.offset))
    return out


def _collapse(items: list, length, first_len: int, total: int) -> tuple[list, Shorter]:
    """List the items of the longest match (when it says more than the faulting instruction's
    own bytes, or covers the whole stream); count the rest by length."""
    best = max((length(x) for x in items), default=0)
    listed = [x for x in items if length(x) == best and (best > first_len or best == total)]
    rest = [x for x in items if not (length(x) == best and (best > first_len or best == total))]
    c = Counter(length(x) for x in rest)
    return listed, Shorter(len(rest), dict(sorted(c.items())))


# --- an image --------------------------------------------------------------------------------

MAX_HITS_PER_MODULE = 65536  # as the scanner's cap on string I/O anchors in one module


def find_in_image(t: Triage, root) -> None:
    """Fill `t` with the places in the image's executable sections matching the stream (the
    longest listed first, shorter ones counted). A damaged image, or one without code, is an
    error as for scan ("no match" must mean the image was read whole)."""

    check_scannable(root.path, root)
    t.image_path, t.image_sha256 = root.path, root.sha256
    t.image_standalone = isinstance(root, BinaryFile)
    first = t.data[: t.first_len]
    matches: list[Match] = []
    for m in iter_modules(root):
        if (m.image.bits == 64) != (t.bits == 64):
            continue
        if m.image.mem_size > MAX_SCAN_MEMORY:
            scan_module(m)  # refuses it (LimitExceeded): a module the scan cannot vouch for is no "no match"
        mem = m.image.memory
        hits: dict[int, int] = {}
        for lo, hi in exec_ranges(m.image):
            p = mem.find(first, lo, hi)
            while p >= 0:
                if len(hits) >= MAX_HITS_PER_MODULE:
                    raise LimitExceeded(
                        f"module {m.name}: more than {MAX_HITS_PER_MODULE} places match the first "
                        "instruction's bytes (not code)",
                        m.volume or "its file",
                    )
                n = len(first)
                while n < len(t.data) and p + n < hi and mem[p + n] == t.data[n]:
                    n += 1
                hits[p] = n
                p = mem.find(first, p + 1, hi)
        if not hits:
            continue
        sites = {f.rva: f for f in scan_module(m).findings}
        for rva, n in hits.items():
            f = sites.get(rva)
            off = m.image.rva_to_offset(rva)
            fd = m.image.abs_offset + off if (m.image.abs_offset is not None and off is not None) else None
            matches.append(
                Match(
                    m.name,
                    m.guid,
                    m.arch,
                    m.volume,
                    rva,
                    fd,
                    n,
                    f.function if f else None,
                    f.function_source if f else None,
                    f is not None,
                    f.signature if f else None,
                )
            )
    matches.sort(key=lambda x: (-x.matched, not x.is_site, x.volume, x.module, x.guid, x.rva))
    t.matches, t.shorter_matches = _collapse(matches, lambda x: x.matched, t.first_len, len(t.data))
