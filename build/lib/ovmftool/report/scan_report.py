"""Render scan results: text grouped by module with a summary, or JSON (schema ovmftool.scan/1)."""

from __future__ import annotations

from collections import Counter

from ovmftool import __version__
from ovmftool.scan.scanner import ScanResult

SCAN_SCHEMA = "ovmftool.scan/1"


def scan_json(r: ScanResult) -> dict:
    """The JSON document of one image's scan."""
    return {
        "schema_version": SCAN_SCHEMA,
        "tool": {"name": "ovmftool", "version": __version__},
        "image": {"path": r.path, "sha256": r.sha256, "size": r.size},
        "modules": [m.as_dict() for m in r.modules],
        "findings": [f.as_dict() for f in r.findings],
        "summary": summary(r),
        "notes": r.notes,
    }


def summary(r: ScanResult) -> dict:
    """Counts: sites, modules with sites, per mnemonic, per function source, reachable."""
    return {
        "sites": len(r.findings),
        "modules_with_sites": len({(f.guid, f.module, f.volume) for f in r.findings}),
        "modules_scanned": len(r.modules),
        "by_mnemonic": dict(sorted(Counter(f.mnemonic for f in r.findings).items())),
        "by_function_source": dict(sorted(Counter(str(f.function_source) for f in r.findings).items())),
        "reachable": sum(1 for f in r.findings if f.reachable),
    }


def scan_text(r: ScanResult) -> str:
    """Findings grouped by module, then a summary."""
    lines = [f"{r.path}  sha256 {r.sha256}"]
    by_mod: dict[tuple, list] = {}
    for f in r.findings:
        by_mod.setdefault((f.volume, f.module, f.guid, f.arch, f.file_type), []).append(f)
    for (vol, mod, guid, arch, ftype), fs in by_mod.items():
        lines.append(f"  {mod}  {guid}  {ftype} {arch}  {vol or '-'}  {len(fs)} site{'s' * (len(fs) != 1)}")
        for f in fs:
            where = f"fd 0x{f.fd_offset:X}" if f.fd_offset is not None else "compressed"
            fn = f"{f.function} [{f.function_source}]" if f.function else "?"
            if f.signature:
                fn += f" {f.signature['library']} {f.signature['source']}"
            run = "reachable from the entry point" if f.reachable else "not reachable from the entry point by direct calls"
            callers = ", ".join(c.function for c in f.callers[:4]) + (" ..." if len(f.callers) > 4 else "")
            lines.append(f"    rva 0x{f.rva:06X}  {f.mnemonic:<10} {f.bytes:<8} {where:<12} {fn}")
            lines.append(f"      {run}" + (f"; called from {callers}" if callers else ""))
    s = summary(r)
    lines.append(
        f"summary: {s['sites']} site{'s' * (s['sites'] != 1)} in {s['modules_with_sites']} of "
        f"{s['modules_scanned']} modules"
        + ("" if not s["sites"] else ": " + ", ".join(f"{k} {v}" for k, v in s["by_mnemonic"].items()))
    )
    if s["sites"]:
        lines.append(f"         {s['reachable']} in functions reachable by direct calls from a module entry point")
    for n in r.notes:
        lines.append(f"note: {n}")
    return "\n".join(lines) + "\n"
