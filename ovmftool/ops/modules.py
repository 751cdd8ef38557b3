"""The module view: every PE32/TE image in the flash with the facts about it people ask for.

A standalone PE32/TE file (`model.binary.BinaryFile`) is one module with no FFS file: its name
comes from the file name when `extract` wrote it (NAME_GUID.efi), else from the debug path, else
from the file name; its GUID from NAME_GUID.efi, else the null GUID; its file type is the format
("PE32" or "TE") and its volume is empty.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from ovmftool.model import structs as S
from ovmftool.model.binary import BinaryFile
from ovmftool.model.blob import CodeBlob
from ovmftool.model.ffs import FfsFile
from ovmftool.model.fixups import enclosing, volume_path
from ovmftool.model.node import Node, walk
from ovmftool.model.pe import PeImage
from ovmftool.model.section import Section

_INF_RE = re.compile(r"/Build/[^/]+/[^/]+/[^/]+/(?P<inf>.+?)/(?:DEBUG|OUTPUT)/(?P<base>[^/]+)\.(?:dll|pdb|efi)$")


@dataclass
class Module:
    """One executable image in the flash and the FFS file that holds it; or a standalone
    binary (`file` and `section` None, `binary` its root)."""

    file: FfsFile | None
    section: Section | None
    image: PeImage
    binary: BinaryFile | None = None

    @property
    def name(self) -> str:
        """UI name, or the debug path's base name, or the file GUID. Standalone: NAME of
        NAME_GUID.efi, or the debug path's base name, or the file name."""
        if self.binary is not None:
            inf = self.build_info
            return self.binary.file_name or (inf[1] if inf else None) or self.binary.stem or self.binary.guid
        if self.file.ui_name:
            return self.file.ui_name
        inf = self.build_info
        return inf[1] if inf else self.file.guid

    @property
    def guid(self) -> str:
        return self.binary.guid if self.binary is not None else self.file.guid

    @property
    def file_type(self) -> str:
        """The FFS file type (DRIVER, PEIM, ...); standalone: "PE32" or "TE"."""
        if self.binary is not None:
            return "TE" if self.image.format == "TE" else "PE32"
        return self.file.type_name

    @property
    def arch(self) -> str:
        return self.image.machine

    @property
    def volume(self) -> str:
        """Volume path, e.g. FVMAIN_COMPACT/LZMA/DXEFV."""
        return volume_path(self.image)

    @property
    def fd_offset(self) -> int | None:
        """Absolute offset of the image's first byte in the flash, None inside compressed data."""
        return self.image.abs_offset

    @property
    def container_offset(self) -> int:
        """Offset of the image's first byte in its space (the flash or decoded data)."""
        return self.image.offset

    @property
    def build_info(self) -> tuple[str, str] | None:
        """(INF directory relative to the workspace, module base name) from the debug path."""
        p = self.image.debug_path
        if not p:
            return None
        m = _INF_RE.search(p.replace("\\", "/"))
        return (m.group("inf"), m.group("base")) if m else None

    @property
    def phase(self) -> str:
        """PEI, DXE, SEC or MM from the file type (standalone: PEI for TE, else DXE, a guess)."""
        if self.binary is not None:
            return "PEI" if self.image.format == "TE" else "DXE"
        t = self.file.type
        if t == S.FV_FILETYPE_SECURITY_CORE:
            return "SEC"
        if t in (S.FV_FILETYPE_PEI_CORE, S.FV_FILETYPE_PEIM):
            return "PEI"
        if t in (
            S.FV_FILETYPE_MM,
            S.FV_FILETYPE_MM_CORE,
            S.FV_FILETYPE_MM_STANDALONE,
            S.FV_FILETYPE_MM_CORE_STANDALONE,
        ):
            return "MM"
        return "DXE"

    def as_dict(self) -> dict:
        """JSON-safe description (used by info --format json and extract's manifest)."""
        img = self.image
        bi = self.build_info
        return {
            "name": self.name,
            "guid": self.guid,
            "file_type": self.file_type,
            "arch": self.arch,
            "format": img.format,
            "volume": self.volume,
            "fd_offset": self.fd_offset,
            "container_offset": self.container_offset,
            "size": img.size,
            "image_base": img.image_base,
            "entry_rva": img.entry_rva,
            "size_of_image": img.size_of_image,
            "sections": [
                {
                    "name": s.name,
                    "rva": s.rva,
                    "virtual_size": s.virtual_size,
                    "raw_size": s.raw_size,
                    "executable": s.executable,
                }
                for s in img.sections
            ],
            "relocations": len(img.relocations),
            "debug_path": img.debug_path,
            "inf": bi[0] if bi else None,
        }


def iter_modules(root: Node) -> Iterator[Module]:
    """Every PE32/TE image under `root`, in flash order (a standalone binary: its one image)."""
    if isinstance(root, BinaryFile):
        if root.children and isinstance(root.children[0], PeImage):
            yield Module(None, None, root.children[0], root)
        return
    for n in walk(root):
        if isinstance(n, PeImage):
            f = enclosing(n, FfsFile)
            if isinstance(f, FfsFile) and isinstance(n.parent, Section):
                yield Module(f, n.parent, n)


def iter_code_blobs(root: Node) -> Iterator[CodeBlob]:
    """Raw code blobs (the reset vector)."""
    for n in walk(root):
        if isinstance(n, CodeBlob):
            yield n
