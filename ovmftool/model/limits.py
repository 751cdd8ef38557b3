"""Caps that keep hostile images from exhausting memory or time."""

from __future__ import annotations

from dataclasses import dataclass, field

from ovmftool.errors import DecodeError, LimitExceeded


@dataclass
class Limits:
    """Resource caps for one parse. The running totals live in the same object."""

    max_expanded_total: int = 256 << 20  # all decompressed bytes of one image together
    max_expanded_one: int = 128 << 20  # one decompressed section
    max_depth: int = 12  # nesting of volumes/encapsulations
    max_nodes: int = 100_000  # OVMF images have ~2,000; at 200,000 `info --format json` took 7 s
    # PE/TE images: the memory one image may be loaded into, relative to its file bytes (EDK II's
    # GenFw writes every section, .bss included, so real images need 1x), and all images together
    image_memory_ratio: int = 16
    image_memory_floor: int = 1 << 20
    max_image_memory_total: int = 256 << 20
    # base relocation tables of all images together (2 bytes an entry: 4 Mi entries; OVMF has 0.3 Mi)
    max_relocation_bytes_total: int = 8 << 20
    expanded: int = field(default=0, init=False)
    nodes: int = field(default=0, init=False)
    image_memory: int = field(default=0, init=False)
    relocation_bytes: int = field(default=0, init=False)

    def charge_expansion(self, size: int, where: str) -> None:
        """Account for `size` decompressed bytes, or raise before they are produced: one section
        declaring more than `max_expanded_one` is damaged (DecodeError), all sections together
        past `max_expanded_total` stop the parse (LimitExceeded)."""
        if size > self.max_expanded_one:
            raise DecodeError(
                f"declared decompressed size {size} exceeds the per-section limit {self.max_expanded_one}", where
            )
        self._charge("expanded", size, self.max_expanded_total, "decompressed data", where)

    def image_memory_cap(self, raw_size: int) -> int:
        """The most memory an image of `raw_size` file bytes is given (larger is damage)."""
        return min(max(raw_size * self.image_memory_ratio, self.image_memory_floor), self.max_expanded_one)

    def charge_image(self, memory: int, relocation_bytes: int, where: str) -> None:
        """Account for one PE/TE image's memory and relocation table, or raise: thousands of
        small images each declaring a large SizeOfImage are a bomb like a decompression bomb."""
        self._charge("image_memory", memory, self.max_image_memory_total, "the images' memory", where)
        self._charge(
            "relocation_bytes", relocation_bytes, self.max_relocation_bytes_total, "base relocation tables", where
        )

    def _charge(self, total: str, amount: int, cap: int, what: str, where: str) -> None:
        """Add `amount` to the running total `total`, or raise if that would pass `cap`."""
        if getattr(self, total) + amount > cap:
            raise LimitExceeded(f"{what} would exceed the cap of {cap} bytes", where)
        setattr(self, total, getattr(self, total) + amount)

    def charge_node(self, where: str) -> None:
        """Count one parsed node."""
        self.nodes += 1
        if self.nodes > self.max_nodes:
            raise LimitExceeded(f"more than {self.max_nodes} nodes", where)

    def check_depth(self, depth: int, where: str) -> None:
        """Refuse nesting deeper than the cap."""
        if depth > self.max_depth:
            raise LimitExceeded(f"nesting deeper than {self.max_depth} levels", where)
