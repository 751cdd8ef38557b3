"""The notes a scan report carries beside its sites (text, JSON `notes`, SARIF, JUnit), made from
the facts `ScanResult` holds."""

from __future__ import annotations

from collections.abc import Iterable

from ovmftool.scan import signatures as sigs
from ovmftool.scan.records import ScanResult


def scan_notes(r: ScanResult) -> list[str]:
    """What the report says beside the sites: the era's routine names, the code blobs checked, an
    input scanned once for another of the same contents."""
    notes = [n] if (n := _era_note(r)) else []
    if r.code_blobs:
        notes.append(
            f"{r.code_blobs} raw code blob(s) (reset vector) checked by recursive descent from the 16-bit entry"
        )
    if r.same_as is not None:
        notes.append(f"same contents as {r.same_as}: scanned once")
    return notes


def _era_note(r: ScanResult) -> str | None:
    """What the image says about routine names that differ between EDK II eras, when findings
    carry such a name: which names the report uses, and why."""
    named = [
        f.signature for f in r.findings if f.function_source == "signature" and f.signature and f.signature.aliases
    ]
    if not named:
        return None

    def few(names: Iterable[str]) -> str:
        names = sorted(set(names))
        return ", ".join(names[:2]) + (", ..." if len(names) > 2 else "")

    used, other = few(s.routine for s in named), few(a for s in named for a in s.aliases)
    if r.era == sigs.PRE_TDX:
        return (
            f"routines named as in EDK II trees without TDX support ({used}; {other} in later trees, the same "
            "code): no module of the image holds the TDCALL instruction, its X64 DXE core neither"
        )
    if r.era is None:
        return (
            f"routines named as in EDK II trees with TDX support ({used}; {other} in older trees such as "
            "edk2-stable202105, the same code): the input does not tell which (no TDCALL instruction, no X64 "
            "DXE core)"
        )
    return None
