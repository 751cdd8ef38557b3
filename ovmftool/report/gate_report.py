"""Rendering of the CI gate: the baseline file (schema ovmftool.baseline/1, docs/schema/baseline-1.json),
`check`'s lines, and `diff` as text or JSON (schema ovmftool.diff/1, docs/schema/diff-1.json)."""

from __future__ import annotations

from ovmftool.errors import one_line, printable
from ovmftool.gate.baseline import BASELINE_SCHEMA, BASELINE_SCHEMA_MULTI, CheckResult, ImageCheck
from ovmftool.gate.diff import DiffResult
from ovmftool.report.document import header, image_ref, to_json
from ovmftool.scan.identity import site_keys
from ovmftool.scan.scanner import Finding, ScanFailure, ScanResult

DIFF_SCHEMA = "ovmftool.diff/1"


def _sites(r: ScanResult) -> list[dict]:
    return [
        {
            "key": k,
            "module": f.module,
            "guid": f.guid,
            "arch": f.arch,
            "function": f.function,
            "mnemonic": f.mnemonic,
            "bytes": f.bytes,
            "rva": f.rva,
        }
        for f, k in zip(r.findings, site_keys(r.findings))
    ]


def baseline_doc(r: ScanResult | list[ScanResult]) -> dict:
    """The baseline document of one scan (schema ovmftool.baseline/1), or of several (ovmftool.baseline/2,
    each image under its path and sha256); read back by `gate.baseline.load_baseline_images`."""
    if isinstance(r, ScanResult):
        return {**header(BASELINE_SCHEMA, image=image_ref(r, size=False)), "sites": _sites(r)}
    return {
        **header(BASELINE_SCHEMA_MULTI),
        "images": [{"image": image_ref(x, size=False), "sites": _sites(x)} for x in r],
    }


def baseline_line(results: list[ScanResult], output: str) -> str:
    """`baseline`'s stderr line: how many sites of which images were recorded where."""
    n = sum(len(r.findings) for r in results)
    what = printable(results[0].path) if len(results) == 1 else f"{len(results)} images"
    return f"baseline: {n} sites of {what} recorded in {printable(output)}"


def _check_lines(out: CheckResult, warnings: bool) -> list[tuple[str, bool]]:
    lines = [
        (
            f"NEW  {f.module} {f.guid} {f.arch} rva 0x{f.rva:X} {f.mnemonic} {f.bytes} "
            f"in {f.function or '?'} [{f.function_source}] ({f.volume})",
            False,
        )
        for f in out.new
    ]
    lines += [
        (f"waived  {f.module} rva 0x{f.rva:X} {f.mnemonic} in {f.function or '?'}: {one_line(w.reason)}", False)
        for f, w in out.waived
    ]
    if warnings:
        lines += _waiver_warnings(out)
    lines.append(
        (
            f"check: {len(out.new)} new, {len(out.waived)} waived, {out.known} in baseline, "
            f"{out.gone} baseline sites gone",
            False,
        )
    )
    return lines


def _waiver_warnings(out: CheckResult) -> list[tuple[str, bool]]:
    return [(f"warning: waiver {one_line(w.describe())} expired on {w.expires}", True) for w in out.expired] + [
        (f"warning: waiver {one_line(w.describe())} matched no new site (a site the baseline accepts is not new)", True)
        for w in out.unused
    ]


def check_lines(out: CheckResult) -> list[tuple[str, bool]]:
    """`check`'s lines for one image in order, each with whether it goes to stderr: new and waived
    sites, the waiver warnings (stderr), then the count line."""
    return _check_lines(out, True)


def check_report(checks: list[ImageCheck | ScanFailure]) -> list[tuple[str, bool]]:
    """`check`'s lines: one image as `check_lines`; several, a block per image headed by its
    path (an error line in the place of one that could not be scanned), the waiver warnings once,
    and a total line."""
    done = [c for c in checks if isinstance(c, ImageCheck)]
    if len(checks) == 1 and done:
        c = done[0]
        return ([(_NO_ENTRY.format(printable(c.path)), True)] if c.unmatched else []) + check_lines(c.result)
    lines: list[tuple[str, bool]] = []
    for c in checks:
        if not isinstance(c, ImageCheck):  # skipped: stdout; could not be scanned: the error line
            skipped = c.exit_code == 0
            msg = one_line(c.message)
            lines.append((f"skipped: {msg}", False) if skipped else (f"ovmftool: error: {msg}", True))
            continue
        lines.append((f"{printable(c.path)}:", False))
        if c.unmatched:
            lines.append(("  " + _NO_ENTRY.format(printable(c.path)), False))
        lines += [("  " + t, e) for t, e in _check_lines(c.result, False)]
    if done:
        lines += _waiver_warnings(done[0].result)
    new = sum(len(c.result.new) for c in done)
    failed = sum(1 for c in checks if not isinstance(c, ImageCheck) and c.exit_code)
    lines.append(
        (
            f"check: {new} new in {sum(1 for c in done if c.result.new)} of {len(done) + failed} images; "
            f"{failed} error{'s' * (failed != 1)}",
            False,
        )
    )
    return lines


_NO_ENTRY = "{}: no baseline entry for this image (by path or contents): every site is new"


def check_exit(checks: list[ImageCheck | ScanFailure]) -> int:
    """2 when an input could not be scanned, else 1 when an image has new sites, else 0."""
    if any(not isinstance(c, ImageCheck) and c.exit_code for c in checks):
        return 2
    return 1 if any(c.result.new for c in checks if isinstance(c, ImageCheck)) else 0


def _row(f: Finding) -> dict:
    return {
        "module": f.module,
        "guid": f.guid,
        "arch": f.arch,
        "function": f.function,
        "mnemonic": f.mnemonic,
        "bytes": f.bytes,
        "rva": f.rva,
        "volume": f.volume,
    }


def diff_json(old: ScanResult, new: ScanResult, d: DiffResult) -> dict:
    """The `diff --format json` document."""
    return {
        **header(DIFF_SCHEMA),
        "old": image_ref(old, size=False),
        "new": image_ref(new, size=False),
        "added": [_row(f) for f in d.added],
        "removed": [_row(f) for f in d.removed],
        "unchanged": len(d.unchanged),
        "modules_added": d.modules_added,
        "modules_removed": d.modules_removed,
    }


def diff_text(d: DiffResult) -> str:
    """Added (+) and removed (-) sites, then modules, then the count line."""
    lines = [
        f"{tag} {f.module} {f.arch} {f.function or '?'} {f.mnemonic} {f.bytes} (rva 0x{f.rva:X})"
        for tag, fs in (("+", d.added), ("-", d.removed))
        for f in fs
    ]
    lines += [f"+ module {m}" for m in d.modules_added] + [f"- module {m}" for m in d.modules_removed]
    lines.append(
        f"diff: {len(d.added)} added, {len(d.removed)} removed, {len(d.unchanged)} unchanged; "
        f"modules {len(d.modules_added)} added, {len(d.modules_removed)} removed"
    )
    return "".join(x + "\n" for x in lines)


def render_diff(old: ScanResult, new: ScanResult, d: DiffResult, fmt: str) -> str:
    return to_json(diff_json(old, new, d)) if fmt == "json" else diff_text(d)
