"""Types of the native walk (`_walk.c`, a C extension): its functions as the scan calls them.

The capstone arguments (`handle`, `cs_malloc`, `cs_disasm_iter`, `cs_free`) are addresses
(`disasm._native_handle`); `kinds` is one kind byte per x86 instruction id (`disasm.native_decoder`)."""

from collections.abc import Sequence
from typing import Any, TypeAlias

from typing_extensions import Buffer

# (sizes, functions, calls, tails, sites, code_bytes): sizes the instruction size per rva (bytes),
# functions [rva], calls and tails [(function, instruction rva, target)], sites [(rva, size,
# mnemonic, function)]; lean and no site: (None, number of functions, None, None, [], code_bytes)
DiscoverResult: TypeAlias = tuple[Any, Any, Any, Any, list[tuple[int, int, str, int]], int]

def disasm_lite(
    code: Buffer, handle: int, cs_malloc: int, cs_disasm_iter: int, cs_free: int, /
) -> list[tuple[int, int, str, str]]: ...
def pointer_roots(
    mem: Buffer, rvas: Buffer, types: Buffer, image_base: int, dir64: int, highlow: int, /
) -> list[int]: ...
def find_anchors(
    mem: Buffer, ranges: Sequence[tuple[int, int]], anchors: Sequence[bytes], limit: int, /
) -> list[list[list[int]]] | None: ...
def check_fast(
    mem: Buffer, bits: int, handle: int, cs_malloc: int, cs_disasm_iter: int, cs_free: int, kinds: Buffer, /
) -> tuple[int, list[tuple[int, int, int, int, int, int, int]]]: ...
def discover(
    mem: Buffer,
    bits: int,
    ranges: Sequence[tuple[int, int]],
    strong: Sequence[tuple[int, str]],
    weak: Sequence[int],
    handle: int,
    cs_malloc: int,
    cs_disasm_iter: int,
    cs_free: int,
    kinds: Buffer,
    lean: bool = ...,
    /,
) -> DiscoverResult: ...
