"""Crash triage from a whole log: every `InstEmul` VM exit propolis reported, grouped by the
instruction bytes, each group with the decode verdict (`triage.decode`), how often, when, and on
which VMs and vCPUs the log says.

Propolis prints the exit with Rust's Debug formatting: propolis-server panics with
`vCPU 0: Unhandled VM exit: InstEmul(InstEmul { inst_data: [243, 110, ...], len: 15 })`, on one
line (`{:?}`) or pretty-printed over several (`{:#?}`), and propolis-standalone logs
`Unhandled exit @rip:00859f60 InstEmul(InstEmul { ... })`. In production builds the bytes are
wrapped in propolis' `GuestData`, which prints `<guest data redacted>` instead. The log is the
services' plain text, their bunyan JSON records (one object per line, the text in `msg` or in any
other field), or both mixed (a panic goes to stderr as plain text, beside the JSON records on
stdout); gzip, xz and bzip2 compressed logs are read as they are.

What is read: the log streamed line by line (a line is cut at `MAX_LINE` bytes), an exit's text
followed over at most `MAX_SPAN_LINES` lines; the first `MAX_DISTINCT` distinct byte streams are
kept and decoded, exits of further ones only counted, so memory stays bounded on any log. A file that cannot be
opened or decompressed, or that
holds NUL bytes (not a text log), is an error: "no InstEmul exits" must mean a log was read.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import re
import sys
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone

from ovmftool.errors import OvmfToolError, one_line
from ovmftool.model.binary import BinaryFile
from ovmftool.model.parser import read_image
from ovmftool.scan.scanner import check_scannable
from ovmftool.triage.decode import Triage, decimal, decode
from ovmftool.triage.decode import find_in_image as find

MAX_LINE = 1 << 20  # bytes of one log line kept (the rest of a longer line is skipped)
MAX_SPAN_LINES = 64  # lines an exit's pretty-printed text may run over
MAX_SPAN_CHARS = 64 << 10
MAX_DISTINCT = 256  # distinct byte streams kept and decoded (the first in the log); exits of more are counted
MAX_KEPT = 100  # line numbers, VMs, hosts, RIPs kept per group (the counts are exact)

REDACTED = "<guest data redacted>"
_EXIT = re.compile(r"\bInstEmul\s*\(")
_INST = re.compile(r"\binst_data\W{0,2}\s*[:=]\s*")
_LEN = re.compile(r"\blen\W{0,2}\s*[:=]\s*(0x[0-9a-fA-F]+|[0-9]+)")
_VCPU = re.compile(r"\bvCPU\s+([0-9]+)\b")
_RIP = re.compile(r"@rip:\s*(?:0x)?([0-9a-fA-F]+)")
_ISO = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})?")
_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
VM_KEYS = ("instance_id", "vm_id", "vmm_id", "propolis_id")  # the fields that name the VM
_VM_TEXT = re.compile(r"\b(" + "|".join(VM_KEYS) + r")\b\W{0,2}\s*[:=]\s*\W?(" + _UUID + ")")
_OPEN, _CLOSE = "([{", ")]}"

HOW_TO_UNREDACT = (
    "propolis wraps guest data in GuestData, which prints '<guest data redacted>' unless "
    "DISPLAY_GUEST_DATA (lib/propolis/src/common.rs) is set; propolis-server sets it when built "
    "without the 'omicron-build' Cargo feature that Omicron's production builds use. Run a "
    "propolis-server built without 'omicron-build' (or with DISPLAY_GUEST_DATA initialised to true), "
    "reproduce the crash and run 'ovmftool decode --log' on the new log (docs/propolis.md)"
)


@dataclass
class Group:
    """Exits that share what the log gave for them (one instruction stream, or redacted bytes)."""

    count: int = 0
    lines: list[int] = field(default_factory=list)  # the first MAX_KEPT line numbers (1-based)
    first_time: str | None = None
    last_time: str | None = None
    untimed: int = 0  # exits whose record carries no time
    vms: set[str] = field(default_factory=set)  # "instance_id=UUID"
    vcpus: set[int] = field(default_factory=set)
    hosts: set[str] = field(default_factory=set)
    rips: set[str] = field(default_factory=set)
    _first: datetime | None = None
    _last: datetime | None = None

    def add(self, ex: _Exit) -> None:
        self.count += 1
        if len(self.lines) < MAX_KEPT:
            self.lines.append(ex.line)
        if ex.time is None:
            self.untimed += 1
        else:
            t, shown = ex.time
            if self._first is None or t < self._first:
                self._first, self.first_time = t, shown
            if self._last is None or t > self._last:
                self._last, self.last_time = t, shown
        for mine, theirs in ((self.vms, ex.vms), (self.hosts, ex.hosts), (self.rips, ex.rips)):
            for x in theirs:
                if len(mine) < MAX_KEPT:
                    mine.add(x)
        if ex.vcpu is not None and len(self.vcpus) < MAX_KEPT:
            self.vcpus.add(ex.vcpu)


@dataclass
class Instruction(Group):
    """A distinct instruction stream: its decode verdict and where the log reported it."""

    data: bytes = b""
    triage: Triage | None = None


@dataclass
class Unreadable(Group):
    """Exits whose inst_data could not be read (cut off, or not a byte list), by reason."""

    reasons: dict[str, int] = field(default_factory=dict)


@dataclass
class LogTriage:
    """What a log holds: the instructions (most exits first), the redacted and unreadable exits."""

    source: str
    compression: str | None
    lines_read: int
    bits: int
    instructions: list[Instruction]
    redacted: Group
    unreadable: Unreadable
    more: Group  # exits of distinct streams past the first MAX_DISTINCT (counted, not decoded)
    image_path: str | None = None
    image_sha256: str | None = None
    image_standalone: bool = False

    @property
    def exits(self) -> int:
        return sum(i.count for i in self.instructions) + self.redacted.count + self.unreadable.count + self.more.count


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


@dataclass
class _Exit:
    """One exit as the log reported it."""

    line: int
    data: bytes | None  # None: redacted or unreadable
    redacted: bool = False
    reason: str | None = None  # why the bytes could not be read
    time: tuple[datetime, str] | None = None
    vms: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    rips: list[str] = field(default_factory=list)
    vcpu: int | None = None


# --- reading the log -------------------------------------------------------------------------


def _open(path: str):
    """The log as a binary stream (decompressed), and the compression's name."""
    if path == "-":
        raw = sys.stdin.buffer
        name = "standard input"
    else:
        name = path
        try:
            raw = open(path, "rb")  # noqa: SIM115 (closed by read_log)
        except OSError as e:
            raise OvmfToolError(f"cannot read {path}: {e.strerror or e}") from None
    if not isinstance(raw, io.BufferedReader):
        raw = io.BufferedReader(raw)
    try:
        head = raw.peek(6)[:6]
    except OSError as e:
        raise OvmfToolError(f"cannot read {name}: {e.strerror or e}") from None
    if head[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw), "gzip", raw
    if head[:6] == b"\xfd7zXZ\x00":
        return lzma.LZMAFile(raw), "xz", raw
    if head[:3] == b"BZh":
        return bz2.BZ2File(raw), "bzip2", raw
    return raw, None, raw


def _lines(stream, name: str):
    """(line number, text) of every line; a line is cut at MAX_LINE bytes."""
    n = 0
    while True:
        try:
            b = stream.readline(MAX_LINE)
            if b and not b.endswith(b"\n") and len(b) >= MAX_LINE:
                rest = b
                while rest and not rest.endswith(b"\n"):
                    rest = stream.readline(MAX_LINE)
        except (OSError, EOFError, lzma.LZMAError, zlib.error) as e:
            raise OvmfToolError(f"cannot read {name}: {one_line(str(e)) or type(e).__name__}") from None
        if not b:
            return
        n += 1
        if b"\0" in b:
            raise OvmfToolError(f"{name} is not a text log (a NUL byte on line {n})")
        yield n, b.decode("utf-8", "replace").rstrip("\r\n")


def _closing(text: str, start: int) -> int | None:
    """Index just past the bracket that closes the one at `start`, or None when the text ends
    first."""
    depth = 0
    for i in range(start, len(text)):
        c = text[i]
        if c in _OPEN:
            depth += 1
        elif c in _CLOSE:
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def _spans(text: str) -> tuple[list[tuple[int, int]], int | None]:
    """The complete exit texts in `text` as (start, end), and the start of a last, unclosed one."""
    out, pos = [], 0
    while True:
        m = _EXIT.search(text, pos)
        if m is None:
            return out, None
        end = _closing(text, m.end() - 1)
        if end is None:
            return out, m.start()
        out.append((m.start(), end))
        pos = end


def _hexlike(tok: str) -> bool:
    return bool(re.fullmatch(r"[0-9a-fA-F]{1,2}", tok))


def _read_bytes(span: str) -> tuple[bytes | None, bool, str | None]:
    """(bytes, redacted, why unreadable) from an exit's text."""
    m = _INST.search(span)
    if m is None:
        return None, False, "no inst_data field"
    rest = span[m.end() :]
    if rest.startswith(REDACTED):
        return None, True, None
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            return None, False, "inst_data list is not closed"
        toks = [t for t in re.split(r"[\s,]+", rest[1:end]) if t]
        if all(t.isascii() and t.isdigit() for t in toks):
            vals = [decimal(t) for t in toks]
        elif all(t.lower().startswith("0x") and _hexlike(t[2:]) for t in toks):
            vals = [int(t, 16) for t in toks]
        elif all(_hexlike(t) for t in toks):  # Rust's {:x?}: hex without 0x
            vals = [int(t, 16) for t in toks]
        else:
            return None, False, "inst_data is not a list of byte values"
        if any(v > 255 for v in vals):
            return None, False, "inst_data has values over 255"
        after = rest[end + 1 :]
    else:
        hm = re.match(r"\"?((?:[0-9a-fA-F]{2})+)\"?(?![0-9A-Za-z])", rest)
        if hm is None:
            return None, False, "inst_data is neither a byte list nor hex"
        vals = list(bytes.fromhex(hm.group(1)))
        after = rest[hm.end() :]
    ln = _LEN.search(after)
    if ln is not None:
        n = int(ln.group(1)[2:], 16) if ln.group(1).startswith("0x") else decimal(ln.group(1))
        if n == 0:
            return None, False, "len: 0 (no valid instruction bytes)"
        vals = vals[:n]
    if not vals:
        return None, False, "inst_data is empty"
    return bytes(vals), False, None


def _time(s: str | None) -> tuple[datetime, str] | None:
    if not s:
        return None
    try:
        t = datetime.fromisoformat(s.replace(" ", "T", 1))
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=timezone.utc)
    return t, one_line(s)


@dataclass
class _Meta:
    """What the record an exit sits in says about it."""

    time: tuple[datetime, str] | None = None
    vms: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    vcpu: int | None = None
    rip: str | None = None


def _text_meta(text: str) -> _Meta:
    m = _ISO.match(text.lstrip())
    meta = _Meta(time=_time(m.group(0)) if m else None)
    meta.vms = sorted({f"{k}={v.lower()}" for k, v in _VM_TEXT.findall(text)})
    return meta


def _json_record(obj: dict) -> tuple[str, _Meta]:
    """A bunyan record as text to search (msg first, then every other field as `key: value`) and
    what its fields say."""
    parts = [obj["msg"]] if isinstance(obj.get("msg"), str) else []
    for k, v in obj.items():
        if k == "msg":
            continue
        parts.append(f"{k}: {v}" if isinstance(v, str) else f"{k}: {json.dumps(v)}")
    meta = _Meta(time=_time(obj["time"]) if isinstance(obj.get("time"), str) else None)
    meta.vms = sorted({f"{k}={one_line(str(obj[k]))}" for k in VM_KEYS if isinstance(obj.get(k), (str, int))})
    if isinstance(obj.get("hostname"), str):
        meta.hosts = [one_line(obj["hostname"])]
    if isinstance(obj.get("vcpu"), int) and not isinstance(obj.get("vcpu"), bool):
        meta.vcpu = obj["vcpu"]
    if isinstance(obj.get("rip"), int) and not isinstance(obj.get("rip"), bool):
        meta.rip = f"{obj['rip']:x}"
    return "\n".join(parts), meta


def _exit(span: str, before: str, line: int, meta: _Meta) -> _Exit:
    data, redacted, reason = _read_bytes(span)
    ex = _Exit(line, data, redacted, reason, meta.time, list(meta.vms), list(meta.hosts))
    v = _VCPU.findall(before)
    ex.vcpu = decimal(v[-1]) if v else meta.vcpu
    r = _RIP.findall(before)
    if r:
        ex.rips = [r[-1].lower().lstrip("0") or "0"]
    elif meta.rip:
        ex.rips = [meta.rip]
    return ex


def _exits_in(text: str, line: int, meta: _Meta) -> list[_Exit]:
    """The complete exits of one record (the same text twice in a record counts once)."""
    spans, open_at = _spans(text)
    if open_at is not None:  # cut off inside the record: read what is there
        spans.append((open_at, len(text)))
    seen, out = set(), []
    for a, b in spans:
        s = text[a:b]
        if s not in seen:
            seen.add(s)
            out.append(_exit(s, text[text.rfind("\n", 0, a) + 1 : a], line, meta))
    return out


def _parse_json(t: str) -> dict | None:
    try:
        obj = json.loads(t)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def _walk(lines):
    """Every exit in the log."""
    pending: tuple[int, str, str, _Meta] | None = None  # (line, text, prefix, meta) of an unclosed exit
    taken = 0  # lines the pending exit has taken
    for n, text in lines:
        st = text.strip()
        # a bunyan record, parsed only when it may hold an exit or end an unclosed one
        obj = (
            _parse_json(st)
            if st.startswith("{") and st.endswith("}") and (pending is not None or "InstEmul" in st)
            else None
        )
        if pending is not None and obj is None:
            pl, ptext, before, pmeta = pending
            ptext += "\n" + text
            taken += 1
            end = _closing(ptext, _EXIT.match(ptext).end() - 1)
            if end is not None or taken >= MAX_SPAN_LINES or len(ptext) >= MAX_SPAN_CHARS:
                pending = None
                yield _exit(ptext[:end] if end else ptext, before, pl, pmeta)
                if end is None:
                    continue
                text = ptext[end:]  # the rest of this line, after the exit's closing bracket
            else:
                pending = (pl, ptext, before, pmeta)
                continue
        elif pending is not None:  # a JSON record: the unclosed exit ends here
            pl, ptext, before, pmeta = pending
            pending = None
            yield _exit(ptext, before, pl, pmeta)
        if obj is not None:
            rtext, meta = _json_record(obj)
            yield from _exits_in(rtext, n, meta)
            continue
        if "InstEmul" not in text:
            continue
        meta = _text_meta(text)
        spans, open_at = _spans(text)
        for a, b in spans:
            yield _exit(text[a:b], text[:a], n, meta)
        if open_at is not None:
            pending, taken = (n, text[open_at:], text[:open_at], meta), 0
    if pending is not None:
        pl, ptext, before, pmeta = pending
        yield _exit(ptext, before, pl, pmeta)


def read_log(path: str, bits: int = 64) -> LogTriage:
    """Every InstEmul exit of the log at `path` (`-`: standard input), grouped and decoded."""
    stream, compression, raw = _open(path)
    name = "standard input" if path == "-" else path
    groups: dict[bytes, Instruction] = {}
    redacted, unreadable, more = Group(), Unreadable(), Group()
    count = [0]

    def counted():
        for n, t in _lines(stream, name):
            count[0] = n
            yield n, t

    try:
        for ex in _walk(counted()):
            if ex.redacted:
                redacted.add(ex)
            elif ex.data is None:
                unreadable.add(ex)
                unreadable.reasons[ex.reason] = unreadable.reasons.get(ex.reason, 0) + 1
            else:
                g = groups.get(ex.data)
                if g is None and len(groups) >= MAX_DISTINCT:
                    more.add(ex)
                    continue
                if g is None:
                    g = groups[ex.data] = Instruction(data=ex.data)
                g.add(ex)
    finally:
        if path != "-":
            raw.close()
    out = sorted(groups.values(), key=lambda g: (-g.count, g.data))
    for g in out:
        g.triage = decode(g.data, bits)
    return LogTriage(name, compression, count[0], bits, out, redacted, unreadable, more)


def find_in_image(lt: LogTriage, root) -> None:
    """Each decoded instruction's places in the image (`triage.decode.find_in_image`)."""

    check_scannable(root.path, root)  # a damaged image is an error even when the log has no exit
    for g in lt.instructions:
        find(g.triage, root)
    lt.image_path, lt.image_sha256 = root.path, root.sha256
    lt.image_standalone = isinstance(root, BinaryFile)


def triage_log(path: str, bits: int = 64, image: str | None = None) -> LogTriage:
    """`ovmftool decode --log FILE [--image IMAGE]`: the image read first (an unreadable image is
    the error before the log is read), then every exit of the log, found in the image."""

    root = read_image(image) if image else None
    lt = read_log(path, bits)
    if root is not None:
        find_in_image(lt, root)
    return lt
