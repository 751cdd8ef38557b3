"""Patch strategies that remove string port I/O from the firmware a tree and DSC build.

- `unroll`: rewrite BaseIoLibIntrinsic's FIFO NASM (IoFifoSev.nasm: drop the REP path so every
  routine takes its IN/OUT loop; IoFifo.nasm: replace each REP INS/OUTS by the same loop). The
  library instances, SEV and TDX handling stay as they are. Works on any tree that has these files.
- `dsc-inf`: switch the DSC's IoLib to the non-Sev instance and, where that instance still builds
  IoFifo.nasm (trees before edk2-stable202402), make it build C FIFO loops instead; add the library
  classes the Sev instance used to pull in for other modules (e.g. CcProbeLib in 2025.02). This
  drops the Sev instance's SEV and TDX handling.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ovmftool.edk2.dsc import Dsc
from ovmftool.edk2.inf import read_inf
from ovmftool.errors import OvmfToolError

IOLIB_DIR = "MdePkg/Library/BaseIoLibIntrinsic"
SEV_INF = f"{IOLIB_DIR}/BaseIoLibIntrinsicSev.inf"
PLAIN_INF = f"{IOLIB_DIR}/BaseIoLibIntrinsic.inf"
TDX_SOURCE = f"{IOLIB_DIR}/IoLibInternalTdx.c"  # edk2-stable202205 on: the Sev instance handles TDX too
ARCH_DIR = {"X64": "X64", "IA32": "Ia32"}
_REP_IO = re.compile(r"^\s*rep\s+(ins|outs)[bwd]\b", re.I | re.M)
_ANY_IO = re.compile(r"\b(rep\s+)?(ins|outs)[bwd]\b", re.I)


@dataclass
class FileEdit:
    """New content for one file of the tree (old None: the file is created)."""

    path: str
    old: bytes | None
    new: bytes


@dataclass
class PatchSpec:
    """One patch of the series."""

    subject: str
    body: str
    edits: list[FileEdit]


@dataclass
class TreeFacts:
    """What the tree's IoLib instances compile, per arch."""

    fifo: dict[str, dict[str, str]] = field(default_factory=dict)  # inf -> arch -> sev-nasm|rep-nasm|c-loop|none
    dropped_classes: dict[str, str] = field(default_factory=dict)  # class -> "common" or the arch (Sev INF only)
    other_sources: list[str] = field(default_factory=list)  # other files with INS/OUTS, "path:line: text"


def fifo_kind(ws: Path, inf_path: str, arch: str) -> str:
    """What an IoLib instance builds for the FIFO routines of `arch`."""
    p = ws / inf_path
    if not p.is_file():
        return "none"
    srcs = [s.replace("\\", "/") for s in read_inf(p).sources(arch)]
    names = {s.rsplit("/", 1)[-1] for s in srcs}
    if "IoFifoSev.nasm" in names:
        return "sev-nasm"
    if "IoFifo.nasm" in names:
        return "rep-nasm"
    if "IoLibFifo.c" in names:
        return "c-loop"
    return "none"


def tree_facts(ws: Path, dsc: Dsc, arches: list[str]) -> TreeFacts:
    """Facts the strategies depend on."""
    facts = TreeFacts()
    insts = {m.instance for m in dsc.instances("IoLib")} | {SEV_INF, PLAIN_INF}
    for inst in sorted(insts):
        facts.fifo[inst] = {a: fifo_kind(ws, inst, a) for a in arches}
    if (ws / SEV_INF).is_file() and (ws / PLAIN_INF).is_file():
        sev, plain = read_inf(ws / SEV_INF), read_inf(ws / PLAIN_INF)
        common = set(sev.library_classes("common"))
        for a in arches:
            for c in sev.library_classes(a):
                if c not in plain.library_classes(a):
                    facts.dropped_classes[c] = (
                        "common" if c in common else (a if facts.dropped_classes.get(c, a) == a else "common")
                    )
    facts.other_sources = _other_string_io(ws, dsc)
    return facts


def _other_string_io(ws: Path, dsc: Dsc) -> list[str]:
    """INS/OUTS in sources of the DSC's modules and libraries other than the FIFO NASM files."""
    dirs = {str(Path(m.instance).parent) for m in dsc.mappings} | {str(Path(c).parent) for _a, c in dsc.components}
    hits = []
    for d in sorted(dirs):
        base = ws / d
        if not base.is_dir():
            continue
        for f in sorted(base.rglob("*")):
            if f.suffix.lower() not in (".nasm", ".asm", ".s", ".c", ".h") or not f.is_file():
                continue
            rel = str(f.relative_to(ws))
            if rel.startswith(IOLIB_DIR + "/") and f.name in ("IoFifoSev.nasm", "IoFifo.nasm"):
                continue
            try:
                text = f.read_text(errors="replace")
            except OSError:
                continue
            if "__inbytestring" in text or "__outbytestring" in text or _ANY_IO.search(text):
                for no, line in enumerate(text.splitlines(), 1):
                    code = line.split(";", 1)[0] if f.suffix.lower() in (".nasm", ".asm") else line.split("//", 1)[0]
                    if (
                        re.search(r"__(in|out)(byte|word|dword)string", code)
                        or (f.suffix.lower() in (".nasm", ".asm", ".s") and _ANY_IO.search(code))
                        or (
                            f.suffix.lower() in (".c", ".h")
                            and re.search(r"\"[^\"]*\b(rep\s*;?\s*)?(ins|outs)[bwl]\b", code)
                        )
                    ):
                        hits.append(f"{rel}:{no}: {line.strip()}")
    return hits


# --- unroll ----------------------------------------------------------------------------------

_LOOP = {
    # (arch, mnemonic) -> loop body lines
    ("X64", "insb"): ["in      al, dx", "mov     byte [rdi], al", "inc     rdi"],
    ("X64", "insw"): ["in      ax, dx", "mov     word [rdi], ax", "add     rdi, 2"],
    ("X64", "insd"): ["in      eax, dx", "mov     dword [rdi], eax", "add     rdi, 4"],
    ("X64", "outsb"): ["mov     al, byte [rsi]", "out     dx, al", "inc     rsi"],
    ("X64", "outsw"): ["mov     ax, word [rsi]", "out     dx, ax", "add     rsi, 2"],
    ("X64", "outsd"): ["mov     eax, dword [rsi]", "out     dx, eax", "add     rsi, 4"],
    ("IA32", "insb"): ["in      al, dx", "mov     byte [edi], al", "inc     edi"],
    ("IA32", "insw"): ["in      ax, dx", "mov     word [edi], ax", "add     edi, 2"],
    ("IA32", "insd"): ["in      eax, dx", "mov     dword [edi], eax", "add     edi, 4"],
    ("IA32", "outsb"): ["mov     al, byte [esi]", "out     dx, al", "inc     esi"],
    ("IA32", "outsw"): ["mov     ax, word [esi]", "out     dx, ax", "add     esi, 2"],
    ("IA32", "outsd"): ["mov     eax, dword [esi]", "out     dx, eax", "add     esi, 4"],
}
_NOTE = (
    "; String I/O is always unrolled into IN/OUT loops: a VMM without instruction decode assists\n"
    "; (e.g. bhyve/propolis under nested virtualization) cannot emulate REP INS/OUTS."
)


def _nl(text: str) -> str:
    return "\r\n" if "\r\n" in text else "\n"


def unroll_sev_nasm(text: str) -> str:
    """IoFifoSev.nasm: remove each routine's REP path so it always runs its IN/OUT loop."""
    nl = _nl(text)
    t = text.replace("\r\n", "\n")
    pat = re.compile(
        r"(?P<indent>[ \t]*); Check if we need to unroll String I/O\n"
        r"[ \t]*call[ \t]+ASM_PFX\(SevNoRepIo\)\n[ \t]*test[ \t]+eax,[ \t]*eax\n[ \t]*jnz[ \t]+(?P<norep>@\w+)\n\n?"
        r"[ \t]*cld\n[ \t]*rep[ \t]+(?:ins|outs)[bwd]\n[ \t]*jmp[ \t]+@\w+\n\n?"
        r"(?P=norep):\n"
    )
    t, n = pat.subn(
        lambda m: "\n".join(m.group("indent") + x for x in _NOTE.split("\n")) + "\n" + m.group("norep") + ":\n", t
    )
    if n == 0 or _REP_IO.search(t):
        raise OvmfToolError("IoFifoSev.nasm does not have the REP/loop layout the unroll strategy knows")
    return t.replace("\n", nl)


def unroll_rep_nasm(text: str, arch: str) -> str:
    """IoFifo.nasm: replace each REP INS/OUTS by an equivalent IN/OUT loop."""
    nl = _nl(text)
    t = text.replace("\r\n", "\n")
    jcxz = "jrcxz" if arch == "X64" else "jecxz"

    def repl(m: re.Match) -> str:
        mnem = m.group(1).lower()
        body = _LOOP[(arch, mnem)]
        lines = [_NOTE, f"    {jcxz}   .done", ".loop:"] + [f"    {b}" for b in body] + ["    loop    .loop", ".done:"]
        return "\n".join(lines)

    t, n = re.subn(r"^[ \t]*rep[ \t]+((?:ins|outs)[bwd])[ \t]*$", repl, t, flags=re.M | re.I)
    if n == 0 or _REP_IO.search(t):
        raise OvmfToolError("IoFifo.nasm does not have the REP layout the unroll strategy knows")
    return t.replace("\n", nl)


# --- dsc-inf ---------------------------------------------------------------------------------

C_LOOPS = """/** @file
  IoFifo read/write routines as C loops over single port accesses.

  Added by ovmftool: REP INS/OUTS (X64/IoFifo.nasm, Ia32/IoFifo.nasm) cannot be emulated by a
  VMM without instruction decode assists; one IN/OUT per element can.

  SPDX-License-Identifier: BSD-2-Clause-Patent

**/

#include "BaseIoLibIntrinsicInternal.h"

#define FIFO_READ(Bits)                                                   \\
  VOID                                                                    \\
  EFIAPI                                                                  \\
  IoReadFifo##Bits (                                                      \\
    IN  UINTN  Port,                                                      \\
    IN  UINTN  Count,                                                     \\
    OUT VOID   *Buffer                                                    \\
    )                                                                     \\
  {                                                                       \\
    UINT##Bits  *Data;                                                    \\
                                                                          \\
    for (Data = (UINT##Bits *)Buffer; Count > 0; Count--) {               \\
      *Data++ = IoRead##Bits (Port);                                      \\
    }                                                                     \\
  }

#define FIFO_WRITE(Bits)                                                  \\
  VOID                                                                    \\
  EFIAPI                                                                  \\
  IoWriteFifo##Bits (                                                     \\
    IN  UINTN  Port,                                                      \\
    IN  UINTN  Count,                                                     \\
    IN  VOID   *Buffer                                                    \\
    )                                                                     \\
  {                                                                       \\
    UINT##Bits  *Data;                                                    \\
                                                                          \\
    for (Data = (UINT##Bits *)Buffer; Count > 0; Count--) {               \\
      IoWrite##Bits (Port, *Data++);                                      \\
    }                                                                     \\
  }

FIFO_READ (8)
FIFO_READ (16)
FIFO_READ (32)
FIFO_WRITE (8)
FIFO_WRITE (16)
FIFO_WRITE (32)
""".replace("\n", "\r\n")


def switch_dsc(ws: Path, dsc: Dsc) -> list[FileEdit]:
    """Point every IoLib mapping at the Sev instance to the plain instance."""
    edits = []
    for rel in dict.fromkeys(m.file for m in dsc.instances("IoLib") if m.instance == SEV_INF):
        old = (ws / rel).read_bytes()
        new = re.sub(
            rb"(IoLib\s*\|\s*)MdePkg/Library/BaseIoLibIntrinsic/BaseIoLibIntrinsicSev\.inf",
            rb"\1MdePkg/Library/BaseIoLibIntrinsic/BaseIoLibIntrinsic.inf",
            old,
        )
        if new != old:
            edits.append(FileEdit(rel, old, new))
    return edits


def c_loop_inf(ws: Path) -> list[FileEdit]:
    """Make BaseIoLibIntrinsic.inf build C FIFO loops instead of IoFifo.nasm."""
    old = (ws / PLAIN_INF).read_bytes()
    new = re.sub(rb"(?m)^([ \t]*)(?:Ia32|X64)/IoFifo\.nasm[ \t]*(\r?)$", rb"\1IoLibFifoLoop.c\2", old)
    if new == old:
        return []
    return [FileEdit(PLAIN_INF, old, new), FileEdit(f"{IOLIB_DIR}/IoLibFifoLoop.c", None, C_LOOPS.encode())]


def add_dropped_classes(ws: Path, dsc: Dsc, classes: dict[str, str]) -> list[FileEdit]:
    """INFs of the DSC whose sources call a dropped class's functions without listing the class:
    the class is added in the same arch scope the Sev instance had it."""
    edits: dict[str, FileEdit] = {}
    for cls, scope in classes.items():
        funcs = _class_functions(ws, cls)
        if not funcs:
            continue
        call = re.compile(r"\b(" + "|".join(map(re.escape, funcs)) + r")\s*\(")
        infs = sorted({m.instance for m in dsc.mappings} | {c for _a, c in dsc.components})
        for rel in infs:
            p = ws / rel
            if not p.is_file() or rel in (SEV_INF, PLAIN_INF):
                continue
            inf = read_inf(p)
            listed = {c for a in ("IA32", "X64") for c in inf.library_classes(a)}
            if cls in listed or inf.defines.get("LIBRARY_CLASS", "").split("|")[0].strip() == cls:
                continue
            srcs = [p.parent / s for a in ("IA32", "X64") for s in inf.sources(a)]
            if any(s.suffix == ".c" and s.is_file() and call.search(s.read_text(errors="replace")) for s in srcs):
                prev = edits.get(rel)
                old = prev.old if prev else p.read_bytes()
                cur = prev.new if prev else old
                edits[rel] = FileEdit(rel, old, _add_class(cur, cls, scope))
    return list(edits.values())


def _add_class(text: bytes, cls: str, scope: str) -> bytes:
    nl = b"\r\n" if b"\r\n" in text else b"\n"
    head = b"[LibraryClasses]" if scope == "common" else b"[LibraryClasses." + scope.encode() + b"]"
    m = re.search(rb"(?mi)^" + re.escape(head) + rb"[ \t]*\r?\n", text)
    if m:
        return text[: m.end()] + b"  " + cls.encode() + nl + text[m.end() :]
    return text.rstrip(b"\r\n") + nl + nl + head + nl + b"  " + cls.encode() + nl


def _class_functions(ws: Path, cls: str) -> list[str]:
    for dec in sorted(ws.glob("*Pkg/*.dec")):
        text = dec.read_text(errors="replace")
        m = re.search(rf"(?m)^\s*{re.escape(cls)}\s*\|\s*(\S+\.h)", text)
        if m:
            hdr = dec.parent / m.group(1)
            if hdr.is_file():
                return sorted(set(re.findall(r"(?m)^([A-Z][A-Za-z0-9_]*)\s*\(\s*$", hdr.read_text(errors="replace"))))
    return []
