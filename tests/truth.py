"""Ground truth for scan tests, independent of the scanner: the FIFO routines named in a build's
`.debug` ELF symbol tables, disassembled linearly from the symbol to the routine's one `ret`
(NASM routines hold no data; IA32 objects put strings right after them)."""

from __future__ import annotations

import re
from pathlib import Path

import capstone
from elftools.elf.elffile import ELFFile

FIFO = re.compile(r"^(Sev)?Io(Read|Write)Fifo(8|16|32)$")
STRING_IO = {"insb", "insw", "insd", "outsb", "outsw", "outsd"}


def debug_file(build: Path, arch: str, name: str, guid: str) -> Path | None:
    for p in (build / arch).glob(f"{name}_*.debug"):
        if p.stem.lower().endswith(guid):
            return p
    p = build / arch / f"{name}.debug"
    return p if p.is_file() else None


def fifo_sites(debug: Path, bits: int) -> dict[int, tuple[str, str]]:
    """rva -> (routine, mnemonic) of every string I/O instruction inside a FIFO routine."""
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64 if bits == 64 else capstone.CS_MODE_32)
    out = {}
    with open(debug, "rb") as fh:
        elf = ELFFile(fh)
        secs = list(elf.iter_sections())
        ti = next(i for i, s in enumerate(secs) if s.name == ".text")
        text = secs[ti]
        data, base = text.data(), text["sh_addr"]
        syms = [s for s in elf.get_section_by_name(".symtab").iter_symbols() if s["st_shndx"] == ti]
        addrs = sorted({s["st_value"] for s in syms if s.name and not s.name.startswith("@")} | {base + len(data)})
        for s in syms:
            if FIFO.match(s.name):
                a = s["st_value"]
                end = next(x for x in addrs if x > a)
                for i in md.disasm(data[a - base : end - base], a):
                    if i.mnemonic.split()[-1] in STRING_IO:
                        out[i.address] = (s.name, i.mnemonic)
                    if i.mnemonic == "ret":  # each FIFO routine has one ret, at its end
                        break
    return out


def _text_symbols(debug: Path):
    """The `.symtab` symbols defined in `.text` of a build's `.debug` ELF file."""
    with open(debug, "rb") as fh:
        elf = ELFFile(fh)
        ti = next(i for i, s in enumerate(elf.iter_sections()) if s.name == ".text")
        return [s for s in elf.get_section_by_name(".symtab").iter_symbols() if s["st_shndx"] == ti and s.name]


def symbol_names(debug: Path) -> dict[int, str]:
    """address -> every code symbol name there (FUNC preferred)."""
    out: dict[int, str] = {}
    for s in _text_symbols(debug):
        if not s.name.startswith("@"):
            out.setdefault(s["st_value"], s.name)
    return out


def function_containing(debug: Path):
    """A function mapping an address to (start, name) of the `.debug` symbol table's function
    that holds it: the nearest code symbol at or before it that is a function (STT_FUNC) or a
    global label (NASM routines are global NOTYPE labels); NASM's local labels (`@...`,
    `Name.0`) and compiler temporaries are left out. (None, None) before the first."""
    import bisect

    pairs: dict[int, str] = {}
    for s in _text_symbols(debug):
        if s.name.startswith(("@", ".", "$")):
            continue
        kind, bind = s["st_info"]["type"], s["st_info"]["bind"]
        if kind == "STT_FUNC" or (kind == "STT_NOTYPE" and bind == "STB_GLOBAL"):
            if s["st_value"] not in pairs or kind == "STT_FUNC":
                pairs[s["st_value"]] = s.name
    addrs = sorted(pairs)

    def at(rva: int) -> tuple[int | None, str | None]:
        i = bisect.bisect_right(addrs, rva) - 1
        return (addrs[i], pairs[addrs[i]]) if i >= 0 else (None, None)

    return at
