"""Stable identities of findings across rebuilds.

A rebuild moves code, so RVAs and offsets change; what stays is the module (GUID and arch), the
function when it has a real name (symbols or signature; `sub_<rva>` names move with the code),
the instruction (mnemonic and bytes), and its rank among identical instructions there.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Iterable

from ovmftool.scan.scanner import Finding


def stable_function(f: Finding) -> str:
    """The function name if it survives a rebuild, else "?"."""
    return f.function if f.function and f.function_source in ("symbols", "signature") else "?"


def site_keys(findings: Iterable[Finding]) -> list[str]:
    """One key per finding, in the given order: guid/arch/function/mnemonic/bytes#rank."""
    findings = list(findings)
    seen: Counter = Counter()
    out = []
    for f in sorted(findings, key=lambda f: (f.guid, f.arch, f.volume, f.rva)):
        base = f"{f.guid}/{f.arch}/{stable_function(f)}/{f.mnemonic}/{f.bytes}"
        out.append((id(f), f"{base}#{seen[base]}"))
        seen[base] += 1
    by_id = dict(out)
    return [by_id[id(f)] for f in findings]


def fingerprint(key: str) -> str:
    """A short hash of a site key (SARIF partialFingerprints)."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]
