"""Regenerate ovmftool/scan/signatures.json from EDK II trees: assemble the FIFO NASM sources of
BaseIoLibIntrinsic with nasm (as the EDK II build does) and record each routine's bytes.

    python tools/gen_signatures.py TREE_LABEL=EDK2_TREE [...] > ovmftool/scan/signatures.json

Each routine's bytes are exact for the tree they came from; the scanner matches them with jump
and call displacements wildcarded, so layouts that differ only in distances still match.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from elftools.elf.elffile import ELFFile

SOURCES = [
    ("BaseIoLibIntrinsicSev", "X64/IoFifoSev.nasm", "X64", "elf64"),
    ("BaseIoLibIntrinsicSev", "Ia32/IoFifoSev.nasm", "IA32", "elf32"),
    ("BaseIoLibIntrinsic", "X64/IoFifo.nasm", "X64", "elf64"),
    ("BaseIoLibIntrinsic", "Ia32/IoFifo.nasm", "IA32", "elf32"),
]


def assemble(tree: str, rel: str, fmt: str) -> dict[str, bytes]:
    """Routine name -> bytes, for every global symbol of the assembled file."""
    lib = os.path.join(tree, "MdePkg/Library/BaseIoLibIntrinsic")
    src = os.path.join(lib, rel)
    if not os.path.isfile(src):
        return {}
    with tempfile.TemporaryDirectory() as d:
        wrap = os.path.join(d, "w.nasm")
        with open(wrap, "w") as fh:
            fh.write("%define ASM_PFX(x) x\n")
            fh.write(f'%include "{src}"\n')
        obj = os.path.join(d, "w.o")
        subprocess.run(
            [
                "nasm",
                "-f",
                fmt,
                "-I",
                os.path.join(tree, "MdePkg/Include/"),
                "-I",
                os.path.dirname(src) + "/",
                "-o",
                obj,
                wrap,
            ],
            check=True,
        )
        with open(obj, "rb") as fh:
            elf = ELFFile(fh)
            tidx = next(i for i, sec in enumerate(elf.iter_sections()) if sec.name == ".text")
            data = elf.get_section(tidx).data()
            syms = sorted(
                (s["st_value"], s.name)
                for s in elf.get_section_by_name(".symtab").iter_symbols()
                if s["st_info"]["bind"] == "STB_GLOBAL" and s["st_shndx"] == tidx
            )
    out = {}
    for i, (addr, name) in enumerate(syms):
        end = syms[i + 1][0] if i + 1 < len(syms) else len(data)
        out[name] = data[addr:end]
    return out


def main(args: list[str]) -> None:
    routines: dict[tuple, dict] = {}
    for arg in args:
        label, tree = arg.split("=", 1)
        for lib, rel, arch, fmt in SOURCES:
            for name, code in assemble(tree, rel, fmt).items():
                key = (arch, lib, rel, name, code.hex())
                r = routines.setdefault(
                    key,
                    {"arch": arch, "library": lib, "source": rel, "routine": name, "bytes": code.hex(), "trees": []},
                )
                r["trees"].append(label)
    doc = {
        "schema_version": "ovmftool.signatures/1",
        "generated_by": "tools/gen_signatures.py",
        "routines": sorted(routines.values(), key=lambda r: (r["arch"], r["source"], r["routine"], r["bytes"])),
    }
    json.dump(doc, sys.stdout, indent=1, sort_keys=True)
    print()


if __name__ == "__main__":
    main(sys.argv[1:])
