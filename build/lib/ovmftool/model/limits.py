"""Caps that keep hostile images from exhausting memory or time."""

from __future__ import annotations

from dataclasses import dataclass, field

from ovmftool.errors import LimitExceeded


@dataclass
class Limits:
    """Resource caps for one parse. The running totals live in the same object."""

    max_expanded_total: int = 256 << 20  # all decompressed bytes of one image together
    max_expanded_one: int = 128 << 20  # one decompressed section
    max_depth: int = 12  # nesting of volumes/encapsulations
    max_nodes: int = 200_000
    expanded: int = field(default=0, init=False)
    nodes: int = field(default=0, init=False)

    def charge_expansion(self, size: int, where: str) -> None:
        """Account for `size` decompressed bytes, or raise before they are produced."""
        if size > self.max_expanded_one:
            raise LimitExceeded(
                f"decompressed size {size} exceeds the per-section cap {self.max_expanded_one}", where
            )
        if self.expanded + size > self.max_expanded_total:
            raise LimitExceeded(
                f"decompressed data would exceed the cap of {self.max_expanded_total} bytes", where
            )
        self.expanded += size

    def charge_node(self, where: str) -> None:
        """Count one parsed node."""
        self.nodes += 1
        if self.nodes > self.max_nodes:
            raise LimitExceeded(f"more than {self.max_nodes} nodes", where)

    def check_depth(self, depth: int, where: str) -> None:
        """Refuse nesting deeper than the cap."""
        if depth > self.max_depth:
            raise LimitExceeded(f"nesting deeper than {self.max_depth} levels", where)
