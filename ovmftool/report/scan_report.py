"""Render scan results: text grouped by module with a summary, or JSON (schema ovmftool.scan/1).

Several inputs keep their order and their place in every format: an input that could not be
scanned (`ScanFailure`) has an error entry where its report would be.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from ovmftool.errors import one_line, printable
from ovmftool.report.document import header, image_ref, to_json
from ovmftool.report.scan_notes import scan_notes
from ovmftool.scan.advice import NextSteps, next_steps
from ovmftool.scan.scanner import ScanFailure, ScanResult, ScanSkipped

SCAN_SCHEMA = "ovmftool.scan/1"


def scan_json(r: ScanResult) -> dict:
    """The JSON document of one image's scan."""
    return {
        **header(SCAN_SCHEMA, image=image_ref(r)),
        "modules": [m.as_dict() for m in r.modules],
        "findings": [f.as_dict() for f in r.findings],
        "summary": summary(r),
        "notes": scan_notes(r),
    }


def scan_error_json(f: ScanFailure) -> dict:
    """The JSON entry of an input that could not be scanned, or was skipped."""
    return {
        **header(SCAN_SCHEMA, image={"path": f.path}),
        "skipped" if isinstance(f, ScanSkipped) else "error": f.message,
    }


def scan_json_doc(outcomes: list[ScanResult | ScanFailure]):
    """One input: its object; several: the list of them, in the order given."""
    docs = [scan_json(o) if isinstance(o, ScanResult) else scan_error_json(o) for o in outcomes]
    return docs[0] if len(docs) == 1 else docs


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
    lines = [f"{printable(r.path)}  sha256 {r.sha256}"]
    by_mod: dict[tuple, list] = {}
    for f in r.findings:
        by_mod.setdefault((f.volume, f.module, f.guid, f.arch, f.file_type), []).append(f)
    for (vol, mod, guid, arch, ftype), fs in by_mod.items():
        lines.append(f"  {mod}  {guid}  {ftype} {arch}  {vol or '-'}  {len(fs)} site{'s' * (len(fs) != 1)}")
        for f in fs:
            where = f"fd 0x{f.fd_offset:X}" if f.fd_offset is not None else "compressed"
            fn = f"{f.function} [{f.function_source}]" if f.function else "?"
            if f.signature:
                fn += f" {f.signature.library} {f.signature.source}"
            run = (
                "reachable from the entry point"
                if f.reachable
                else "not reachable from the entry point by direct calls"
            )
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
    for n in scan_notes(r):
        lines.append(f"note: {n}")
    steps = next_steps(r)
    if steps is not None:
        lines += next_steps_lines(steps)
    return "\n".join(lines) + "\n"


def _shown(p: Path) -> str:
    rel = os.path.relpath(p)
    return rel if not rel.startswith("..") else str(p)


def next_steps_lines(s: NextSteps) -> list[str]:
    """What to do about the sites: the patch command, then the source fix."""
    pad = " " * 21

    import textwrap  # text output only: json and sarif do not pay for its import

    def wrap(text: str) -> list[str]:
        return textwrap.wrap(text, width=100, initial_indent=pad, subsequent_indent=pad, break_on_hyphens=False)

    lines = [
        "next steps:",
        f"  patch this image:  {s.patch_command}",
        *wrap("(rewrites each site into equivalent IN/OUT loop code, each checked by emulation; docs/patch.md)"),
    ]
    if s.matching is not None:
        lines.append(f"  fix the source:    {_shown(s.matching.path)}")
        lines += wrap(
            f"(the matching series: {s.reason}; made for {s.matching.dsc}; for another DSC or tree: {s.plan_command})"
        )
    else:
        lines.append(f"  fix the source:    {s.plan_command}")
        if s.reason:
            lines += wrap(f"(no series named: {s.reason})")
    return lines


def scan_text_all(outcomes: list[ScanResult | ScanFailure]) -> str:
    """Each input's section in the order given (an error line for one that failed); with several
    inputs, a total line at the end. A single input that failed prints nothing here: its one
    error line goes to stderr."""
    if len(outcomes) == 1:
        o = outcomes[0]
        return scan_text(o) if isinstance(o, ScanResult) else ""
    parts = [
        scan_text(o)
        if isinstance(o, ScanResult)
        else f"{printable(o.path)}\n  {'skipped' if isinstance(o, ScanSkipped) else 'error'}: {one_line(o.message)}\n"
        for o in outcomes
    ]
    done = [o for o in outcomes if isinstance(o, ScanResult)]
    skipped = sum(1 for o in outcomes if isinstance(o, ScanSkipped))
    sites = sum(len(r.findings) for r in done)
    errors = len(outcomes) - len(done) - skipped
    parts.append(
        f"total: {sites} site{'s' * (sites != 1)} in {sum(1 for r in done if r.findings)} of "
        f"{len(outcomes) - skipped} images; {errors} error{'s' * (errors != 1)}"
        + (f"; {skipped} file{'s' * (skipped != 1)} skipped (nothing to check)" if skipped else "")
        + "\n"
    )
    return "".join(parts)


def error_lines(outcomes: list[ScanResult | ScanFailure]) -> list[str]:
    """The error line of each input that failed, in input order (stderr)."""
    return [f"ovmftool: error: {one_line(o.message)}" for o in outcomes if o.exit_code == 2]


def render(outcomes: list[ScanResult | ScanFailure], fmt: str, sarif_root: str | None = None) -> str:
    """The document of `scan --format FMT` over all inputs."""
    if fmt == "json":
        return to_json(scan_json_doc(outcomes))
    if fmt == "sarif":
        from ovmftool.report.sarif import sarif_log

        return to_json(sarif_log(outcomes, sarif_root))
    if fmt == "junit":
        from ovmftool.report.junit import junit_xml

        return junit_xml(outcomes)
    return scan_text_all(outcomes)
