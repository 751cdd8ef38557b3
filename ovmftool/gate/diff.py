"""`diff`: sites added, removed and unchanged between two images, matched by stable identity
(module, function, instruction) so that a rebuild that only moves code shows no change."""

from __future__ import annotations

from dataclasses import dataclass, field

from ovmftool.scan.identity import site_keys
from ovmftool.scan.scanner import Finding, ScanResult, default_jobs, open_symbols, scan_checked


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


def diff_images(
    old: str,
    new: str,
    symbols_old: str | None = None,
    symbols_new: str | None = None,
) -> tuple[ScanResult, ScanResult, DiffResult]:
    """`ovmftool diff`: both build directories opened (checked before any scan), both images
    scanned with the verdict rules of `scan`, their findings matched."""
    sym_a, sym_b = open_symbols(symbols_old, "--symbols-old"), open_symbols(symbols_new, "--symbols-new")
    a, b = scan_checked(old, sym_a, default_jobs()), scan_checked(new, sym_b, default_jobs())
    return a, b, diff(a, b)
