"""Bytes of a flash image between its volumes, in no volume."""

from __future__ import annotations

from dataclasses import dataclass

from ovmftool.model.node import Node


@dataclass(eq=False, repr=False)
class Gap(Node):
    """Bytes between volumes that belong to no volume."""

    erased: bool = True

    kind = "gap"


def parse_gap(root: Node, start: int, end: int) -> Gap:
    """The gap `root.space[start:end]`: erased when all 0xFF or all 0x00, else damage."""
    chunk = root.space.data[start:end]
    g = Gap(root.space, start, end - start, root)
    g.erased = chunk.count(0xFF) == len(chunk) or chunk.count(0) == len(chunk)
    if not g.erased:
        g.damage(f"0x{end - start:X} bytes outside any volume are not erased")
    return g
