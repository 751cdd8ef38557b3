"""Pass 2 of the parse: facts that need the whole tree.

- each FFS file gets its UI name and version from the sections beneath it;
- each volume gets a name (FDF name, FvName GUID, or place) and a path from the root through
  enclosing volumes and decoding encapsulations, e.g. `FVMAIN_COMPACT/LZMA/DXEFV`;
- the reset vector's blob gets its load address when it ends the flash (mapped below 4 GiB).
"""

from __future__ import annotations

from collections.abc import Iterator

from ovmftool.model import structs as S
from ovmftool.model.blob import CodeBlob
from ovmftool.model.ffs import FfsFile
from ovmftool.model.node import Node, walk
from ovmftool.model.section import Section
from ovmftool.model.volume import Volume

FOUR_GIB = 1 << 32


def resolve(root: Node) -> None:
    """Fill in derived fields throughout the tree under `root`."""
    for n in walk(root):
        if isinstance(n, Volume):
            if not n.name:
                n.name = f"FV_{n.name_guid}" if n.name_guid else f"FV@{n.place}"
        elif isinstance(n, FfsFile):
            for s in _own_sections(n):
                if s.type == S.EFI_SECTION_USER_INTERFACE and n.ui_name is None:
                    n.ui_name = s.text
                elif s.type == S.EFI_SECTION_VERSION and n.version is None:
                    n.version = s.text
        elif isinstance(n, CodeBlob):
            a = n.abs_offset
            if a is not None and a + n.size == root.size:
                n.load_address = FOUR_GIB - n.size


def volume_path(node: Node) -> str:
    """Path of enclosing volumes and decoding encapsulations, outermost first."""
    parts: list[str] = []
    for n in [node, *node.ancestors()]:
        if isinstance(n, Volume):
            parts.append(n.name)
        elif isinstance(n, Section) and n.decoded is not None and n is not node:
            parts.append(n.compression or "decoded")
    return "/".join(reversed(parts))


def enclosing(node: Node, cls: type) -> Node | None:
    """The nearest ancestor (or the node itself) of class `cls`."""
    for n in [node, *node.ancestors()]:
        if isinstance(n, cls):
            return n
    return None


def _own_sections(f: FfsFile) -> Iterator[Section]:
    """Sections of a file, through encapsulations but not into nested volumes."""
    stack = list(reversed(f.children))
    while stack:
        n = stack.pop()
        if isinstance(n, Section):
            yield n
            stack.extend(reversed([c for c in n.children if isinstance(c, Section)]))
