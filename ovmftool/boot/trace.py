"""Reading what QEMU recorded of a boot: the translation log (`-d in_asm`) or the TCG plugin's code
dump (`code.bin`), `info registers`, and the console logs."""

from __future__ import annotations

import re
from pathlib import Path

from ovmftool.boot import plugin
from ovmftool.boot.records import Executed

INSN_LINE = re.compile(r"^0x([0-9a-f]+):\s+((?:[0-9a-f]{2} )+)\s*(\S.*?)\s*$")

STRING_IO = re.compile(r"\b(rep[a-z]* )?(ins|outs)[bwl]\b")

_ANSI = re.compile(r"\x1b\[[0-9;?=>]*[A-Za-z]|\x1b[()][A-Za-z0-9]|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

_RIP = re.compile(r"\b([RE])IP=([0-9a-f]+)")

_CS_BASE = re.compile(r"^CS =[0-9a-f]{4} ([0-9a-f]+)", re.M)

_HLT = re.compile(r"\bHLT=([01])")

_SETS_DX_CX = re.compile(r"%[er]?[dc]x\s*$|%[dc][lh]\s*$|xchg.*%[er]?[dc]x|\b(call|pop)")


def executed_string_io(trace: Path) -> list[Executed]:
    """String I/O instructions in the translation log, in order of first translation, with the
    blocks that contain them."""
    seen: dict[int, Executed] = {}
    block_start, dirty = None, False
    with open(trace, errors="replace") as fh:
        for line in fh:
            if line.startswith("IN:"):
                block_start, dirty = None, False
                continue
            m = INSN_LINE.match(line)
            if not m:
                continue
            a = int(m.group(1), 16)
            if block_start is None:
                block_start = a
            text = m.group(3)
            if not STRING_IO.search(text):
                dirty |= bool(_SETS_DX_CX.search(text))
                continue
            if a in seen:
                seen[a].translations += 1
            else:
                seen[a] = Executed(
                    a,
                    m.group(2).replace(" ", ""),
                    text.split()[0] if not text.startswith("rep") else " ".join(text.split()[:2]),
                    len(seen),
                    1,
                )
            if (block_start, dirty) not in seen[a].blocks:
                seen[a].blocks.append((block_start, dirty))
            dirty |= True  # a second string I/O in the same block: its entry state is not the block's
    return list(seen.values())


def translated_code(trace: Path) -> dict[int, bytes]:
    """Every instruction QEMU translated: address -> bytes (the latest translation at each)."""
    if trace.suffix == ".bin":  # the plugin's code dump
        return {a: b for _, insns in plugin.iter_blocks(trace) for a, b in insns}
    out: dict[int, bytes] = {}
    with open(trace, errors="replace") as fh:
        for line in fh:
            if line.startswith("0x"):
                m = INSN_LINE.match(line)
                if m:
                    out[int(m.group(1), 16)] = bytes.fromhex(m.group(2).replace(" ", ""))
    return out


def code_log(work: Path) -> Path:
    """The record of translated code of a boot in `work`: the plugin's dump, else QEMU's log."""
    return work / "code.bin" if (work / "code.bin").is_file() else work / "trace.log"


def cpu_address(regs: str) -> tuple[int, bool] | None:
    """(linear address of the next instruction, halted) from `info registers`: CS base + RIP/EIP."""
    m, c = _RIP.search(regs), _CS_BASE.search(regs)
    if m is None:
        return None
    base = int(c.group(1), 16) if c else 0
    mask = (1 << 64) - 1 if m.group(1) == "R" else 0xFFFFFFFF
    h = _HLT.search(regs)
    return (base + int(m.group(2), 16)) & mask, bool(h and h.group(1) == "1")


def last_block(trace: Path, tail: int = 1 << 18) -> list[tuple[int, bytes]]:
    """The instructions of the last block QEMU translated (the last new code the guest ran)."""
    if trace.suffix == ".bin":
        return plugin.last_block(trace)
    try:
        with open(trace, "rb") as fh:
            fh.seek(max(0, trace.stat().st_size - tail))
            text = fh.read().decode(errors="replace")
    except OSError:
        return []
    i = text.rfind("\nIN:")
    out = []
    for line in text[i + 1 if i >= 0 else 0 :].splitlines()[1:]:
        m = INSN_LINE.match(line)
        if m:
            out.append((int(m.group(1), 16), bytes.fromhex(m.group(2).replace(" ", ""))))
        elif out and not line.strip():
            break
    return out


def code_near(trace: Path, address: int, span: int = 0x400) -> dict[int, bytes]:
    """Instructions QEMU translated within `span` bytes of `address` (the latest at each address)."""
    if trace.suffix == ".bin":
        return {a: b for _, insns in plugin.iter_blocks(trace) for a, b in insns if abs(a - address) <= span}
    out: dict[int, bytes] = {}
    try:
        fh = open(trace, errors="replace")
    except OSError:
        return out
    with fh:
        for line in fh:
            if line.startswith("0x"):
                m = INSN_LINE.match(line)
                if m and abs(int(m.group(1), 16) - address) <= span:
                    out[int(m.group(1), 16)] = bytes.fromhex(m.group(2).replace(" ", ""))
    return out


def last_line(path: Path, tail: int = 8192) -> str | None:
    """The last non-empty line of a console log, without terminal escapes, at most 200 characters."""
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, path.stat().st_size - tail))
            text = fh.read().decode(errors="replace")
    except OSError:
        return None
    lines = [x.strip() for x in re.split(r"[\r\n]+", _ANSI.sub(" ", text)) if x.strip()]
    return lines[-1][:200] if lines else None
