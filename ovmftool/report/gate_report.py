"""Rendering of the CI gate: the baseline file (schema ovmftool.baseline/1, docs/schema/baseline-1.json),
`check`'s lines, and `diff` as text or JSON (schema ovmftool.diff/1, docs/schema/diff-1.json)."""

from __future__ import annotations

from ovmftool.gate.baseline import BASELINE_SCHEMA, CheckResult
from ovmftool.gate.diff import DiffResult
from ovmftool.report.document import header, image_ref, to_json
from ovmftool.scan.identity import site_keys
from ovmftool.scan.scanner import Finding, ScanResult

DIFF_SCHEMA = "ovmftool.diff/1"


def baseline_doc(r: ScanResult) -> dict:
    """The baseline document of one scan (read back by `gate.baseline.load_baseline`)."""
    keys = site_keys(r.findings)
    return {
        **header(BASELINE_SCHEMA, image=image_ref(r, size=False)),
        "sites": [
            {"key": k, "module": f.module, "guid": f.guid, "arch": f.arch, "function": f.function,
             "mnemonic": f.mnemonic, "bytes": f.bytes, "rva": f.rva}
            for f, k in zip(r.findings, keys)
        ],
    }


def baseline_line(r: ScanResult, image: str, output: str) -> str:
    """`baseline`'s stderr line: how many sites were recorded where."""
    return f"baseline: {len(r.findings)} sites of {image} recorded in {output}"


def check_lines(out: CheckResult) -> list[tuple[str, bool]]:
    """`check`'s lines in order, each with whether it goes to stderr: new and waived sites, the
    waiver warnings (stderr), then the count line."""
    lines = [(f"NEW  {f.module} {f.guid} {f.arch} rva 0x{f.rva:X} {f.mnemonic} {f.bytes} "
              f"in {f.function or '?'} [{f.function_source}] ({f.volume})", False) for f in out.new]
    lines += [(f"waived  {f.module} rva 0x{f.rva:X} {f.mnemonic} in {f.function or '?'}: {w.reason}", False)
              for f, w in out.waived]
    lines += [(f"warning: waiver {w.describe()} expired on {w.expires}", True) for w in out.expired]
    lines += [(f"warning: waiver {w.describe()} matched no site", True) for w in out.unused]
    lines.append((f"check: {len(out.new)} new, {len(out.waived)} waived, {out.known} in baseline, "
                  f"{out.gone} baseline sites gone", False))
    return lines


def _row(f: Finding) -> dict:
    return {"module": f.module, "guid": f.guid, "arch": f.arch, "function": f.function,
            "mnemonic": f.mnemonic, "bytes": f.bytes, "rva": f.rva, "volume": f.volume}


def diff_json(old: ScanResult, new: ScanResult, d: DiffResult) -> dict:
    """The `diff --format json` document."""
    return {**header(DIFF_SCHEMA), "old": image_ref(old, size=False), "new": image_ref(new, size=False),
            "added": [_row(f) for f in d.added], "removed": [_row(f) for f in d.removed],
            "unchanged": len(d.unchanged), "modules_added": d.modules_added, "modules_removed": d.modules_removed}


def diff_text(d: DiffResult) -> str:
    """Added (+) and removed (-) sites, then modules, then the count line."""
    lines = [f"{tag} {f.module} {f.arch} {f.function or '?'} {f.mnemonic} {f.bytes} (rva 0x{f.rva:X})"
             for tag, fs in (("+", d.added), ("-", d.removed)) for f in fs]
    lines += [f"+ module {m}" for m in d.modules_added] + [f"- module {m}" for m in d.modules_removed]
    lines.append(f"diff: {len(d.added)} added, {len(d.removed)} removed, {len(d.unchanged)} unchanged; "
                 f"modules {len(d.modules_added)} added, {len(d.modules_removed)} removed")
    return "".join(x + "\n" for x in lines)


def render_diff(old: ScanResult, new: ScanResult, d: DiffResult, fmt: str) -> str:
    return to_json(diff_json(old, new, d)) if fmt == "json" else diff_text(d)
