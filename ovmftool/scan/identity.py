"""Stable identities of findings across rebuilds.

A rebuild moves code, so RVAs and offsets change; what stays is the module (GUID and arch), the
function when it has a real name (symbols or signature; `sub_<rva>` names move with the code),
the instruction (mnemonic and bytes, legacy prefixes in one order: `canonical_bytes`), and its
rank among identical instructions there.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable

from ovmftool.scan.scanner import Finding


def stable_function(f: Finding) -> str:
    """The function name if it survives a rebuild, else "?"."""
    return f.function if f.function and f.function_source in ("symbols", "signature") else "?"


_REP = ("f2", "f3")
_LEGACY = frozenset({"26", "2e", "36", "3e", "64", "65", "66", "67", "f0", "f2", "f3"})


def canonical_bytes(hexbytes: str) -> str:
    """The instruction's bytes (hex) with its legacy prefixes in one order, REP first (NASM 2's
    order), the others as they stand: NASM 3 writes `rep insw` as 66 F3 6D, NASM 2 as F3 66 6D,
    and a rebuild with another assembler is the same site."""
    pre = []
    i = 0
    while i + 2 < len(hexbytes) and hexbytes[i : i + 2].lower() in _LEGACY:
        pre.append(hexbytes[i : i + 2])
        i += 2
    if len(pre) < 2:
        return hexbytes
    return "".join(sorted(pre, key=lambda b: b.lower() not in _REP)) + hexbytes[i:]


def site_keys(findings: Iterable[Finding]) -> list[str]:
    """One key per finding, in the given order: guid/arch/function/mnemonic/bytes#rank."""
    findings = list(findings)
    seen: Counter[str] = Counter()
    out = []
    for f in sorted(findings, key=lambda f: (f.guid, f.arch, f.volume, f.rva)):
        base = f"{f.guid}/{f.arch}/{stable_function(f)}/{f.mnemonic}/{canonical_bytes(f.bytes)}"
        out.append((id(f), f"{base}#{seen[base]}"))
        seen[base] += 1
    by_id = dict(out)
    return [by_id[id(f)] for f in findings]


def fingerprint(key: str) -> str:
    """A short hash of a site key (SARIF partialFingerprints)."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]
