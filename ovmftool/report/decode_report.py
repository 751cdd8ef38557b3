"""Render a crash triage (`ovmftool decode`): text whose first line is the verdict, or JSON
(schema ovmftool.decode/1, docs/schema/decode-1.json); for a whole log (`decode --log`), the
summary line first, then one verdict per distinct instruction (schema ovmftool.decode-log/1,
docs/schema/decode-log-1.json)."""

from __future__ import annotations

from dataclasses import asdict

from ovmftool.errors import printable
from ovmftool.report.document import header, to_json
from ovmftool.scan.disasm import cs, string_io
from ovmftool.triage.decode import RoutineMatch, Shorter, Triage
from ovmftool.triage.log import HOW_TO_UNREDACT, MAX_DISTINCT, Group, LogTriage

_RENAMED_IN = "edk2-stable202205"  # the TDX wrapper renamed the X64 Sev routines SevIo*


def routine_text(r: RoutineMatch) -> str:
    """`IoWriteFifo8 of BaseIoLibIntrinsic (X64/IoFifo.nasm, non-Sev)`."""
    alias = f"; {'/'.join(r.aliases)} before {_RENAMED_IN}" if r.aliases else ""
    return f"{r.routine} of {r.library} ({r.source}, {r.variant}{alias})"


def verdict(t: Triage) -> str:
    """One line: instruction, then routine, source file and library instance (or why none)."""
    head = t.instruction or f"undecodable as {t.bits}-bit code"
    if t.faulting and string_io(t.faulting.mnemonic) is None:
        head += " (not string port I/O)"
    if not t.routines:
        return (
            f"{head}: no built-in signature matches (not a FIFO routine of BaseIoLibIntrinsic or "
            "BaseIoLibIntrinsicSev as the covered EDK II trees build it)"
        )
    if not any(r.complete for r in t.routines):
        n = t.routines[0].explained
        return f"{head}: no built-in signature matches all {len(t.data)} bytes; closest ({n} bytes): " + " or ".join(
            routine_text(r) for r in t.routines
        )
    return f"{head}: " + " or ".join(routine_text(r) for r in t.routines)


def log_verdict(lt: LogTriage) -> str:
    """One line: how many exits, how many distinct instructions, redacted and unreadable ones."""
    n = lt.exits
    if not n:
        return f"no InstEmul exits in the log ({_count(lt.lines_read, 'line')} read)"
    parts = []
    if lt.instructions:
        parts.append(_count(len(lt.instructions), "distinct instruction"))
    if lt.redacted.count:
        parts.append(f"{lt.redacted.count} with the bytes redacted")
    if lt.unreadable.count:
        parts.append(f"{lt.unreadable.count} unreadable")
    if lt.more.count:
        parts.append(f"{lt.more.count} of further instructions not decoded")
    return f"{_count(n, 'InstEmul exit')} in the log: {', '.join(parts)}"


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


DECODE_SCHEMA = "ovmftool.decode/1"


def _routine_dict(r: RoutineMatch) -> dict:
    d = asdict(r)
    d["explained"] = r.explained
    return d


def _shorter_dict(s: Shorter) -> dict:
    return {"count": s.count, "by_length": {str(k): v for k, v in sorted(s.by_length.items())}}


def explanation(t: Triage) -> str:
    """What the faulting instruction does and why propolis stops on it (the text under the listing)."""
    first, bits = t.faulting, t.bits
    if first is None:
        return (
            f"The bytes do not decode as a {bits}-bit x86 instruction; try --bits 16 or 32 (a guest still in "
            "real or protected mode) or check the input."
        )
    sio = string_io(first.mnemonic)
    if sio is None:
        return (
            f"The faulting instruction is {first.mnemonic.upper()} {first.operands}. It is not string port "
            "I/O; propolis hands an InstEmul exit to its instruction emulator, which handles only what it "
            "knows; this one it could not."
        )
    unit = {8: "byte", 16: "word", 32: "doubleword"}[sio.width]
    rep = {"rep": "REP-prefixed ", "repne": "REPNE-prefixed ", None: ""}[sio.rep]
    if sio.direction == "out":
        act = f"reads a {unit} from memory at [RSI] and writes it to the I/O port in DX, advancing RSI" + (
            ", repeating RCX times" if sio.rep else ""
        )
    else:
        act = f"reads a {unit} from the I/O port in DX and stores it to memory at [RDI], advancing RDI" + (
            ", repeating RCX times" if sio.rep else ""
        )
    return (
        f"The faulting instruction is {rep}{first.mnemonic.split()[-1].upper()}: it {act}. On AMD hosts with "
        "DecodeAssist the CPU decodes string I/O itself and bhyve gets a structured INOUT exit that it splits "
        "into single port accesses. Without DecodeAssist (nested virtualization, e.g. bhyve under KVM) the "
        "CPU cannot describe the operation, bhyve falls back to an InstEmul exit with the raw bytes, and "
        "propolis, which does not emulate string I/O, panics with 'Unhandled VM exit: InstEmul'. In OVMF "
        "these instructions come from the FIFO routines of BaseIoLibIntrinsic (IoFifoSev.nasm / IoFifo.nasm)."
    )


def decode_json(t: Triage) -> dict:
    """The `decode --format json` document."""
    has_image = t.image_path is not None
    return {
        **header(DECODE_SCHEMA),
        "bytes": t.data.hex(),
        "bits": t.bits,
        "instruction": t.instruction,
        "verdict": verdict(t),
        "instructions": [asdict(i) for i in t.instructions],
        "explanation": explanation(t),
        "signature_matches": [_routine_dict(r) for r in t.routines],
        "shorter_signature_matches": _shorter_dict(t.shorter_routines),
        "image": (
            {"path": t.image_path, "sha256": t.image_sha256, "standalone": t.image_standalone} if has_image else None
        ),
        "matches": [asdict(m) for m in t.matches] if has_image else None,
        "shorter_matches": _shorter_dict(t.shorter_matches) if has_image else None,
    }


def _shorter_text(s: Shorter, what: str) -> str:
    if not s.count:
        return ""
    many = "es" if s.count != 1 else ""
    if len(s.by_length) == 1:
        (n,) = s.by_length
        return f"and {s.count} shorter {what}match{many} of only the first {n} byte{'s' * (n != 1)}"
    parts = ", ".join(f"{c} of the first {n} bytes" for n, c in sorted(s.by_length.items(), reverse=True))
    return f"and {s.count} shorter {what}match{many}: {parts}"


def _routine_detail(r: RoutineMatch, t: Triage) -> str:
    total = len(t.data)
    where = f"  {r.routine}+0x{r.offset:X}" + (f" (its {t.instruction})" if r.at_site and t.instruction else "")
    built = f"; signature from EDK II {', '.join(r.trees)}"
    if not r.complete:
        return f"{where}: the first {r.matched} of {total} bytes agree, then differ{built}"
    if not r.followed_by:
        if r.matched == total:
            return f"{where}: all {total} bytes match{built}"
        return (
            f"{where}: the routine's last {_n(r.matched)} match; the {total - r.matched} after them lie past "
            f"its end, in code no built-in signature covers{built}"
        )
    nxt = ", then ".join(f"{_n(f.matched)} of {' or '.join(f.routines)}" for f in r.followed_by)
    left = total - r.explained
    return (
        f"{where}: the routine's last {_n(r.matched)} match, then {nxt} (the next routine of {r.source}): "
        f"{r.explained} of {total} bytes" + (f", {left} not covered" if left else "") + built
    )


def _undecoded(t: Triage) -> tuple[int, bytes]:
    """(offset, bytes) of the stream after its last decoded instruction (propolis prints 15
    bytes from RIP, so the last instruction is often cut short)."""
    end = 0
    if t.instructions:
        last = t.instructions[-1]
        end = last.offset + len(bytes.fromhex(last.bytes))
    return end, t.data[end:]


def _truncated(tail: bytes, bits: int) -> bool:
    """Whether `tail` is the start of an instruction (it decodes once bytes follow it)."""

    for pad in (b"\0" * 15, b"\xff" * 15):
        first = next(iter(cs(bits).disasm_lite(tail + pad, 0)), None)
        if first is not None and first[1] > len(tail):
            return True
    return False


def _n(k: int) -> str:
    return f"{k} byte{'s' * (k != 1)}"


def decode_text(t: Triage) -> str:
    """Verdict first, then how each listed routine matches, the decoded stream, the
    explanation, and the matches in the image."""
    total = len(t.data)
    lines = [verdict(t)]
    for r in t.routines:
        lines.append(_routine_detail(r, t))
    s = _shorter_text(t.shorter_routines, "signature ")
    if s:
        lines.append(f"  {s}")
    lines.append("")
    lines.append(f"bytes ({total}): {t.data.hex(' ')}")
    for i, ins in enumerate(t.instructions):
        mark = "=>" if i == 0 else "  "
        lines.append(f"{mark} +{ins.offset:<3} {ins.bytes:<20} {ins.mnemonic} {ins.operands}".rstrip())
    tail_at, tail = _undecoded(t)
    if tail:
        why = "a truncated instruction" if _truncated(tail, t.bits) else "not a valid instruction"
        one = len(tail) == 1
        lines.append(
            f"{'=>' if not t.instructions else '  '} +{tail_at:<3} {tail.hex():<20} ({len(tail)} "
            f"byte{'' if one else 's'} that do{'es' if one else ''} not decode: {why})"
        )
    lines.append("")
    lines.append(explanation(t))
    if t.image_path is not None:
        lines.append("")
        lines += _image_lines(t)
    return "\n".join(lines) + "\n"


def _image_lines(t: Triage) -> list[str]:
    """Where the stream sits in the image (`--image`), longest matches first."""
    total = len(t.data)
    lines = []
    if not t.matches:
        only = f" more than the faulting instruction's {t.first_len} bytes" if t.shorter_matches.count else ""
        lines.append(f"no code in {t.image_path} matches these bytes{only}")
    for m in t.matches:
        if m.fd_offset is None:
            where = "compressed"
        else:
            where = f"{'file' if t.image_standalone else 'fd'} 0x{m.fd_offset:X}"
        fn = f" in {m.function} [{m.function_source}]" if m.function else " in ?"
        if m.signature:
            fn += f" {m.signature.library} {m.signature.source}"
        vol = f", {m.volume}" if m.volume else ""
        lines.append(
            f"match {m.matched}/{total} bytes: {m.module} {m.arch} rva 0x{m.rva:X} ({where}{vol}){fn}"
            + ("" if m.is_site else " (not at a scanned site)")
        )
    s = _shorter_text(t.shorter_matches, "")
    if s:
        lines.append(s)
    return lines


# --- a whole log (`decode --log`), schema ovmftool.decode-log/1 ----------------------------------

DECODE_LOG_SCHEMA = "ovmftool.decode-log/1"


def _group_dict(g: Group) -> dict:
    return {
        "count": g.count,
        "lines": list(g.lines),
        "first_time": g.first_time,
        "last_time": g.last_time,
        "untimed": g.untimed,
        "vms": sorted(g.vms),
        "vcpus": sorted(g.vcpus),
        "hosts": sorted(g.hosts),
        "rips": sorted(g.rips),
    }


def decode_log_json(lt: LogTriage) -> dict:
    """The `decode --log FILE --format json` document."""
    has_image = lt.image_path is not None
    instructions = []
    for g in lt.instructions:
        d = _group_dict(g)
        d["bytes"] = g.data.hex()
        d["verdict"] = verdict(g.triage)
        d["decode"] = decode_json(g.triage)
        instructions.append(d)
    red = _group_dict(lt.redacted)
    red["how_to_get_bytes"] = HOW_TO_UNREDACT if lt.redacted.count else None
    unr = _group_dict(lt.unreadable)
    unr["reasons"] = dict(sorted(lt.unreadable.reasons.items()))
    return {
        **header(DECODE_LOG_SCHEMA),
        "log": {"path": lt.source, "compression": lt.compression, "lines_read": lt.lines_read},
        "bits": lt.bits,
        "verdict": log_verdict(lt),
        "exits": lt.exits,
        "image": (
            {"path": lt.image_path, "sha256": lt.image_sha256, "standalone": lt.image_standalone} if has_image else None
        ),
        "instructions": instructions,
        "redacted": red,
        "unreadable": unr,
        "more": _group_dict(lt.more),
    }


def _where(g: Group) -> str:
    """`lines 8, 13; first ..., last ...; vCPU 0; vm_id=...; host sled-1`"""
    more = f" (and {g.count - len(g.lines)} more)" if g.count > len(g.lines) else ""
    parts = [f"line{'s' * (len(g.lines) != 1)} {', '.join(map(str, g.lines))}{more}"]
    if g.first_time is not None:
        when = g.first_time if g.first_time == g.last_time else f"first {g.first_time}, last {g.last_time}"
        if g.untimed:
            when += f" ({g.untimed} without a time)"
        parts.append(when)
    else:
        parts.append("no time on its lines")
    if g.vcpus:
        parts.append(f"vCPU{'s' * (len(g.vcpus) != 1)} {', '.join(map(str, sorted(g.vcpus)))}")
    if g.rips:
        parts.append(f"rip {', '.join('0x' + r for r in sorted(g.rips))}")
    if g.vms:
        parts.append(", ".join(sorted(g.vms)))
    else:
        parts.append("VM not named on its lines")
    if g.hosts:
        parts.append(f"host{'s' * (len(g.hosts) != 1)} {', '.join(sorted(g.hosts))}")
    return "; ".join(parts)


def _exits(n: int) -> str:
    return f"{n} exit{'s' * (n != 1)}"


def decode_log_text(lt: LogTriage) -> str:
    """The summary first, then per distinct instruction its count and verdict, where and when
    the log reported it, its bytes and signature matches (and image matches); then the exits
    whose bytes are redacted or unreadable."""
    lines = [log_verdict(lt)]
    for g in lt.instructions:
        lines.append("")
        t = g.triage
        lines.append(f"{_exits(g.count)}: {verdict(t)}")
        lines.append(f"  {_where(g)}")
        lines.append(f"  bytes ({len(t.data)}): {t.data.hex(' ')}")
        for r in t.routines:
            lines.append(f"  {_routine_detail(r, t).strip()}")
        if t.image_path is not None:
            lines += [f"  {x}" for x in _image_lines(t)]
        lines.append(f"  (ovmftool decode {t.data.hex()} for the listing and explanation)")
    if lt.redacted.count:
        lines.append("")
        lines.append(f"{_exits(lt.redacted.count)} with the bytes redacted: the instruction is unknown")
        lines.append(f"  {_where(lt.redacted)}")
        lines.append(f"  {HOW_TO_UNREDACT}")
    if lt.unreadable.count:
        lines.append("")
        lines.append(
            f"{_exits(lt.unreadable.count)} whose inst_data could not be read: "
            + "; ".join(f"{why} ({n})" for why, n in sorted(lt.unreadable.reasons.items()))
        )
        lines.append(f"  {_where(lt.unreadable)}")
    if lt.more.count:
        lines.append("")
        lines.append(
            f"{_exits(lt.more.count)} of further distinct instructions: not decoded (only the first "
            f"{MAX_DISTINCT} distinct instructions of a log are)"
        )
        lines.append(f"  {_where(lt.more)}")
    lines.append("")
    comp = f", {lt.compression}" if lt.compression else ""
    lines.append(
        f"log: {lt.source} ({lt.lines_read} line{'s' * (lt.lines_read != 1)} read{comp})"
        + (f"; image: {lt.image_path}" if lt.image_path else "")
    )
    return "\n".join(printable(x) for x in lines) + "\n"


def render(t: Triage | LogTriage, fmt: str) -> str:
    """`decode` (a Triage) or `decode --log` (a LogTriage) as `fmt` ("text" or "json")."""
    if isinstance(t, LogTriage):
        return to_json(decode_log_json(t)) if fmt == "json" else decode_log_text(t)
    return to_json(decode_json(t)) if fmt == "json" else decode_text(t)
