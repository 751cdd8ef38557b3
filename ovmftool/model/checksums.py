"""The PI specification's checksums, read by the parser and written by whoever builds or rebuilds
a header (`ops.assemble`, `boot.varstore`): one definition of each.

- A firmware volume header: its 16-bit little-endian words sum to 0.
- An FFS file header: its bytes sum to 0, not counting `State` and `IntegrityCheck.File`.
- An FFS file's data, when `FFS_ATTRIB_CHECKSUM` is set: its bytes plus `IntegrityCheck.File` sum to 0.
"""

from __future__ import annotations


def sum16(data: bytes) -> int:
    """The 16-bit sum of `data`'s little-endian words (a trailing odd byte is not counted)."""
    n = len(data) // 2
    return sum(memoryview(data[: n * 2]).cast("H")) & 0xFFFF


def fv_header_checksum(header: bytes) -> int:
    """The checksum field that makes `header` (written with a checksum of 0) sum to 0."""
    return -sum16(header) & 0xFFFF


def ffs_header_sum(header: bytes, state: int, file_checksum: int) -> int:
    """The 8-bit sum of an FFS file header without its `State` and file checksum bytes: 0 when the
    header checksum is right (with that checksum byte in `header`)."""
    return (sum(header) - state - file_checksum) & 0xFF


def ffs_data_checksum(body: bytes) -> int:
    """The file checksum byte that makes `body` and it sum to 0."""
    return -sum(body) & 0xFF
