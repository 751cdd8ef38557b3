"""The common interface of every object in the image model.

Every node lives in a `Space`: a byte buffer that is either the image file itself (its bytes have
absolute file offsets) or the output of a decompression (they do not). A node knows its offset
within its space, its size, its parent, and so its absolute offset when it has one.
The model knows no operation and no rendering: rendering, extraction, module listing and
scanning live elsewhere (`ovmftool.ops`, `ovmftool.scan`, `ovmftool.report`) and walk the tree
through `children`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass(eq=False, repr=False)
class Space:
    """A byte buffer nodes live in.

    `abs_base` is the file offset of byte 0 of `data` when `data` is a slice of the image file,
    and None when the bytes were produced by decompression. `origin` is the node whose
    decoding produced the space (None for the file itself).
    """

    data: bytes
    abs_base: int | None
    label: str
    origin: Node | None = None

    def abs(self, offset: int) -> int | None:
        """The absolute file offset of `offset` in this space, or None inside decoded data."""
        return None if self.abs_base is None else self.abs_base + offset

    def place(self, offset: int, digits: int = 0) -> str:
        """Where `offset` is, for people: the file offset in hex (zero-padded to `digits`), or
        inside decoded data the space's label and the offset in it (`FVMAIN_COMPACT/LZMA+0x1F0`).
        Every message and report that names a place in an image spells it this way."""
        a = self.abs(offset)
        return f"0x{a:0{digits}X}" if a is not None else f"{self.label}+0x{offset:X}"

    def __repr__(self) -> str:  # compact: a space holds megabytes
        return f"Space({self.label!r}, {len(self.data)} bytes, abs_base={self.abs_base})"


@dataclass
class Problem:
    """Damage found while parsing: what is wrong and where."""

    message: str
    node: Node
    offset: int  # within the node's space

    @property
    def where(self) -> str:
        """Human-readable location: absolute offset, or space label and offset."""
        return self.node.space.place(self.offset)

    def __str__(self) -> str:
        return f"{self.message} at {self.where}"


@dataclass(eq=False, repr=False)
class Node:
    """Base of every model object (volume, file, section, image, blob)."""

    space: Space
    offset: int
    size: int
    parent: Node | None
    children: list[Node] = field(default_factory=list, init=False)
    problems: list[Problem] = field(default_factory=list, init=False)

    kind = "node"

    def __repr__(self) -> str:  # compact: no bytes, no tree (parents and children link everything)
        return (
            f"<{type(self).__name__} {self.kind} at {self.space.label}+0x{self.offset:X} size 0x{self.size:X}"
            f"{'' if self.abs_offset is None else f' (file 0x{self.abs_offset:X})'}>"
        )

    @property
    def abs_offset(self) -> int | None:
        """Absolute offset in the image file, or None inside decompressed data."""
        return self.space.abs(self.offset)

    @property
    def place(self) -> str:
        """Where the node starts, as `Space.place` spells it."""
        return self.space.place(self.offset)

    @property
    def end(self) -> int:
        """Offset just past the node within its space."""
        return self.offset + self.size

    @property
    def data(self) -> bytes:
        """The node's bytes, header included."""
        return self.space.data[self.offset : self.offset + self.size]

    @property
    def container_offset(self) -> int:
        """Offset relative to the start of the parent node (or of the space at the top)."""
        if self.parent is not None and self.parent.space is self.space:
            return self.offset - self.parent.offset
        return self.offset

    @property
    def depth(self) -> int:
        """Number of ancestors."""
        n, p = 0, self.parent
        while p is not None:
            n, p = n + 1, p.parent
        return n

    def ancestors(self) -> Iterator[Node]:
        """Parent, grandparent, ... up to the root."""
        p = self.parent
        while p is not None:
            yield p
            p = p.parent

    def damage(self, message: str, offset: int | None = None) -> Problem:
        """Record a problem found in this node."""
        pr = Problem(message, self, self.offset if offset is None else offset)
        self.problems.append(pr)
        return pr


def walk(node: Node) -> Iterator[Node]:
    """Pre-order traversal of `node` and its descendants, in on-flash order."""
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        stack.extend(reversed(n.children))


def all_problems(node: Node) -> list[Problem]:
    """Every problem recorded anywhere under `node`, in tree order."""
    return [p for n in walk(node) for p in n.problems]
