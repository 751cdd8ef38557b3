"""Raw code that is not a PE/TE image: OVMF's ResetVector (a RAW FFS file of flat NASM output)."""

from __future__ import annotations

from dataclasses import dataclass

from ovmftool.model.node import Node, Space


@dataclass(eq=False, repr=False)
class CodeBlob(Node):
    """Flat code with the mode the CPU runs its entry in.

    The reset vector's entry is its last 16 bytes (mapped at 0xFFFFFFF0), entered in 16-bit real
    mode; the blob then switches to 32-bit and on X64 to 64-bit code. `entry_offset` is relative
    to the blob, `load_address` is where the blob is mapped when it ends at 4 GiB.
    """

    role: str = ""
    mode: int = 16
    entry_offset: int = 0
    load_address: int | None = None

    kind = "code"

    @classmethod
    def reset_vector(cls, space: Space, off: int, size: int, parent: Node) -> CodeBlob:
        """The ResetVector file's body: entered at its last 16 bytes in real mode."""
        blob = cls(space, off, size, parent)
        blob.role, blob.mode = "reset-vector", 16
        blob.entry_offset = max(size - 16, 0)
        return blob
