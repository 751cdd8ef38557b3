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


TDCALL = bytes.fromhex("660f01cc")  # Intel TDX's TDCALL: BaseLib's TdCall.nasm/TdVmcall.nasm (2022.08+)
TRUTH_SCHEMA = "ovmftool.corpus-truth/1"


def _tdcall_sites(debug: Path) -> list[int]:
    """Addresses of TDCALL's bytes in the `.text` of a `.debug` ELF file."""
    with open(debug, "rb") as fh:
        text = ELFFile(fh).get_section_by_name(".text")
        data, base = text.data(), text["sh_addr"]
    out, p = [], data.find(TDCALL)
    while p >= 0:
        out.append(base + p)
        p = data.find(TDCALL, p + 1)
    return out


def build_truth(build: Path) -> dict:
    """The ground truth of a build's OVMF_CODE.fd from its `.debug` files, as corpus/builds/*/truth.json
    keeps it: for every module that has one, its FIFO routines' string I/O instructions (routine,
    mnemonic, the function the symbol table says holds it) and where TDCALL's bytes are (with the
    function holding them). Modules are enumerated by ovmftool's model; everything else comes from
    the ELF files and capstone."""
    from ovmftool.model.parser import read_image
    from ovmftool.ops.modules import iter_modules

    root = read_image(str(build / "FV" / "OVMF_CODE.fd"))
    modules = []
    count = 0
    for m in iter_modules(root):
        count += 1
        dbg = debug_file(build, m.arch, m.name, m.guid)
        if dbg is None:
            raise AssertionError(f"{m.name} {m.guid}: no .debug file in {build}")
        fn = function_containing(dbg)
        sites = [
            {"rva": rva, "routine": r, "mnemonic": mn, "function": fn(rva)[1]}
            for rva, (r, mn) in sorted(fifo_sites(dbg, m.image.bits).items())
        ]
        tdcall = [{"rva": rva, "function_rva": fn(rva)[0], "function": fn(rva)[1]} for rva in _tdcall_sites(dbg)]
        if sites or tdcall:
            modules.append(
                {"volume": m.volume, "guid": m.guid, "arch": m.arch, "name": m.name, "sites": sites, "tdcall": tdcall}
            )
    modules.sort(key=lambda e: (e["volume"], e["guid"], e["arch"]))
    return {
        "schema_version": TRUTH_SCHEMA,
        "modules_in_image": count,
        "sites": sum(len(e["sites"]) for e in modules),
        "modules_with_sites": sum(1 for e in modules if e["sites"]),
        "modules": modules,
    }
