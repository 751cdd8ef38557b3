"""Bytes of a flash image between its volumes, in no volume."""

from __future__ import annotations

from dataclasses import dataclass

from ovmftool.model import structs as S
from ovmftool.model.node import Node


@dataclass(eq=False, repr=False)
class Gap(Node):
    """Bytes between volumes that belong to no volume."""

    erased: bool = True
    elf_machine: str | None = None  # an ELF header at the image's start: its machine (IA32, X64, ...)

    kind = "gap"


def elf_machine(data: bytes, off: int = 0) -> str | None:
    """The machine of the ELF header at `data[off:]` (`structs.ELF_MACHINES`, else its number),
    or None when there is none."""
    if data[off : off + 4] != S.ELF_MAGIC or len(data) < off + S.ELF_IDENT_SIZE + S.ELF_TYPE_MACHINE.size:
        return None
    _etype, machine = S.ELF_TYPE_MACHINE.unpack_from(data, off + S.ELF_IDENT_SIZE)
    return S.ELF_MACHINES.get(machine, f"ELF machine {machine}")


def parse_gap(root: Node, start: int, end: int) -> Gap:
    """The gap `root.space[start:end]`: erased when all 0xFF or all 0x00; at the image's start an
    ELF header (the PVH boot header CloudHv and OvmfXen put before the volume: no code, loaders
    read it); else damage."""
    chunk = root.space.data[start:end]
    g = Gap(root.space, start, end - start, root)
    g.erased = chunk.count(0xFF) == len(chunk) or chunk.count(0) == len(chunk)
    if not g.erased and start == 0:
        g.elf_machine = elf_machine(chunk)
    if not g.erased and g.elf_machine is None:
        g.damage(f"0x{end - start:X} bytes outside any volume are not erased")
    return g
