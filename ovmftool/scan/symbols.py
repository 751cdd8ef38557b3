"""Function names from an EDK II build: the `.debug` ELF files (pyelftools) or GNU ld `.map` files.

In GCC builds GenFw keeps ELF section addresses as PE RVAs (`.text` at the same address in both),
so an ELF symbol's value is the RVA of the code in the `.efi`. The `.text` addresses are compared
and any difference applied, so a layout change cannot silently misname code.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

from ovmftool.errors import OvmfToolError

# pyelftools is imported where it is used (36 ms): only scans with --symbols read ELF files.

if TYPE_CHECKING:
    from elftools.elf.sections import SymbolTableSection

_MAP_LINE = re.compile(r"^\s+0x([0-9a-fA-F]+)\s+([A-Za-z_][A-Za-z0-9_]*)\s*$")


@dataclass
class SymbolTable:
    """Sorted (rva, name) pairs of code symbols for one module."""

    source: str
    addrs: list[int]
    names: list[str]
    code_end: int | None = None  # RVA where the linker's .text output section ends (code and constants)

    def function_at(self, rva: int) -> tuple[int, str] | None:
        """The nearest symbol at or before `rva`."""
        i = bisect.bisect_right(self.addrs, rva) - 1
        return (self.addrs[i], self.names[i]) if i >= 0 else None

    def name_of(self, rva: int) -> str | None:
        """Name of the symbol exactly at `rva`."""
        i = bisect.bisect_left(self.addrs, rva)
        return self.names[i] if i < len(self.addrs) and self.addrs[i] == rva else None


class BuildSymbols:
    """Index of a build directory's per-module symbol files."""

    def __init__(self, build_dir: str) -> None:
        root = Path(build_dir)
        if not root.is_dir():
            raise OvmfToolError(f"--symbols: {build_dir} is not a directory")
        self.files: dict[str, list[Path]] = {}
        for p in list(root.glob("*/*.debug")) + list(root.glob("*.debug")) + list(root.glob("*/*.map")):
            self.files.setdefault(p.stem.lower(), []).append(p)
        if not self.files:
            raise OvmfToolError(f"--symbols: no .debug or .map files under {build_dir} (expected <ARCH>/*.debug)")
        self._cache: dict[tuple[str, str, str], SymbolTable | None] = {}

    def lookup(
        self, name: str, guid: str, arch: str, text_rva: int | None, entry_rva: int | None = None
    ) -> SymbolTable | None:
        """Symbols of the module with that UI name and GUID (NAME_GUID.debug wins over NAME.debug).

        A file whose `_ModuleEntryPoint` is not at the module's entry point belongs to another
        build of the module and is not used."""
        key = (name, guid, arch)
        if key in self._cache:
            return self._cache[key]
        cands = self.files.get(f"{name}_{guid}".lower(), []) + self.files.get(name.lower(), [])
        cands = [c for c in cands if c.parent.name.upper() == arch] or cands
        table = None
        for c in sorted(cands, key=lambda p: (p.suffix != ".debug", str(p))):
            table = _read_elf(c, text_rva) if c.suffix == ".debug" else _read_map(c)
            if table is not None and entry_rva is not None and "_ModuleEntryPoint" in table.names:
                if table.addrs[table.names.index("_ModuleEntryPoint")] != entry_rva:
                    table = None
            if table is not None:
                break
        self._cache[key] = table
        return table


def _read_elf(path: Path, text_rva: int | None) -> SymbolTable | None:
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        with open(path, "rb") as fh:
            elf = ELFFile(fh)
            secs = list(elf.iter_sections())
            execs = {i for i, s in enumerate(secs) if s["sh_flags"] & 0x4}  # SHF_EXECINSTR
            text = next((s for s in secs if s.name == ".text"), None)
            shift = 0
            if text is not None and text_rva is not None:
                shift = text_rva - text["sh_addr"]
            code_end = text["sh_addr"] + text["sh_size"] + shift if text is not None else None
            symtab = elf.get_section_by_name(".symtab")
            if symtab is None:
                return None
            pairs = {}
            for s in cast("SymbolTableSection", symtab).iter_symbols():  # pyelftools makes .symtab one
                if s["st_shndx"] not in execs or not s.name:
                    continue
                if s["st_info"]["type"] not in ("STT_FUNC", "STT_NOTYPE"):
                    continue
                if s.name.startswith(("@", ".", "$")):
                    continue  # NASM local labels and compiler temporaries
                a = s["st_value"] + shift
                # prefer FUNC/global names over NOTYPE aliases at one address
                if a not in pairs or s["st_info"]["type"] == "STT_FUNC":
                    pairs[a] = s.name
    except (OSError, ELFError):
        return None
    items = sorted(pairs.items())
    return SymbolTable(str(path), [a for a, _ in items], [n for _, n in items], code_end)


def _read_map(path: Path) -> SymbolTable | None:
    """Global code symbols of the `.text` output section of a GNU ld map file (symbols of
    constants that EDK II's linker script merges into `.text` are left out)."""
    pairs: dict[int, str] = {}
    code_end = None
    in_map = False
    section = None
    input_section = ""
    try:
        with open(path, errors="replace") as fh:
            for line in fh:
                if not in_map:
                    in_map = line.startswith("Linker script and memory map")
                    continue
                if line[:1] == ".":  # an output section starts: ".text  0x240  0x5356"
                    parts = line.split()
                    section = parts[0]
                    if section == ".text" and len(parts) >= 3 and code_end is None:
                        try:
                            code_end = int(parts[1], 16) + int(parts[2], 16)
                        except ValueError:
                            pass
                    continue
                if line.startswith(" .") or line.startswith(" *("):
                    # an input section: ".text.Foo", ".rodata.str1.1" (constants merged into .text)
                    input_section = line.split()[0]
                    continue
                if section == ".text" and input_section.startswith(".text"):
                    m = _MAP_LINE.match(line)
                    if m:
                        pairs.setdefault(int(m.group(1), 16), m.group(2))
    except OSError:
        return None
    if not pairs:
        return None
    items = sorted(pairs.items())
    return SymbolTable(str(path), [a for a, _ in items], [n for _, n in items], code_end)
