"""`diff`: sites added, removed and unchanged between two images, matched by stable identity
(module, function, instruction) so that a rebuild that only moves code shows no change."""

from __future__ import annotations

from dataclasses import dataclass, field

from ovmftool.report.identity import site_keys
from ovmftool.scan.scanner import Finding, ScanResult


@dataclass
class DiffResult:
    """The difference between two scans."""

    added: list[Finding] = field(default_factory=list)
    removed: list[Finding] = field(default_factory=list)
    unchanged: list[tuple[Finding, Finding]] = field(default_factory=list)
    modules_added: list[str] = field(default_factory=list)
    modules_removed: list[str] = field(default_factory=list)


def diff(old: ScanResult, new: ScanResult) -> DiffResult:
    """Match the findings of two scans."""
    ok = dict(zip(site_keys(old.findings), old.findings))
    nk = dict(zip(site_keys(new.findings), new.findings))
    out = DiffResult()
    out.added = [f for k, f in nk.items() if k not in ok]
    out.removed = [f for k, f in ok.items() if k not in nk]
    out.unchanged = [(ok[k], f) for k, f in nk.items() if k in ok]
    om = {(m.guid, m.arch): m.name for m in old.modules}
    nm = {(m.guid, m.arch): m.name for m in new.modules}
    out.modules_added = sorted(f"{nm[k]} {k[0]} {k[1]}" for k in nm.keys() - om.keys())
    out.modules_removed = sorted(f"{om[k]} {k[0]} {k[1]}" for k in om.keys() - nm.keys())
    return out


DIFF_SCHEMA = "ovmftool.diff/1"


def _row(f: Finding) -> dict:
    return {"module": f.module, "guid": f.guid, "arch": f.arch, "function": f.function,
            "mnemonic": f.mnemonic, "bytes": f.bytes, "rva": f.rva, "volume": f.volume}


def diff_json(old: ScanResult, new: ScanResult, d: DiffResult) -> dict:
    """The `diff --format json` document (docs/schema/diff-1.json)."""
    from ovmftool import __version__

    return {"schema_version": DIFF_SCHEMA, "tool": {"name": "ovmftool", "version": __version__},
            "old": {"path": old.path, "sha256": old.sha256}, "new": {"path": new.path, "sha256": new.sha256},
            "added": [_row(f) for f in d.added], "removed": [_row(f) for f in d.removed],
            "unchanged": len(d.unchanged), "modules_added": d.modules_added, "modules_removed": d.modules_removed}
