"""Baselines and waivers: accept today's sites, fail CI only on new ones.

Baseline file (schema ovmftool.baseline/1): the image it was taken from and one entry per site
with its stable key (see report.identity). Waivers file (schema ovmftool.waivers/1):

    {"schema_version": "ovmftool.waivers/1",
     "waivers": [{"module": "PlatformPei" | "<guid>", "function": "IoReadFifo8" (glob, optional),
                  "instruction": "rep insb" | "f36c" (optional), "reason": "...",
                  "expires": "2027-06-30" (optional)}]}
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import json
from dataclasses import dataclass, field

from ovmftool import __version__
from ovmftool.errors import OvmfToolError
from ovmftool.report.identity import site_keys
from ovmftool.scan.scanner import Finding, ScanResult

BASELINE_SCHEMA = "ovmftool.baseline/1"
WAIVERS_SCHEMA = "ovmftool.waivers/1"


def make_baseline(r: ScanResult) -> dict:
    """The baseline document of one scan."""
    keys = site_keys(r.findings)
    return {
        "schema_version": BASELINE_SCHEMA,
        "tool": {"name": "ovmftool", "version": __version__},
        "image": {"path": r.path, "sha256": r.sha256},
        "sites": [
            {"key": k, "module": f.module, "guid": f.guid, "arch": f.arch, "function": f.function,
             "mnemonic": f.mnemonic, "bytes": f.bytes, "rva": f.rva}
            for f, k in zip(r.findings, keys)
        ],
    }


def _load_json(path: str, what: str) -> dict:
    try:
        with open(path) as fh:
            doc = json.load(fh)
    except OSError as e:
        raise OvmfToolError(f"cannot read {what} {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise OvmfToolError(f"{what} {path} is not JSON: {e.msg} at line {e.lineno}") from None
    if not isinstance(doc, dict):
        raise OvmfToolError(f"{what} {path} is not a JSON object")
    return doc


def load_baseline(path: str) -> set[str]:
    """The site keys recorded in a baseline file."""
    doc = _load_json(path, "baseline")
    if doc.get("schema_version") != BASELINE_SCHEMA:
        raise OvmfToolError(f"baseline {path}: schema_version is not {BASELINE_SCHEMA}")
    try:
        return {s["key"] for s in doc["sites"]}
    except (KeyError, TypeError):
        raise OvmfToolError(f"baseline {path}: every site needs a key") from None


@dataclass
class Waiver:
    """One accepted exception."""

    module: str
    reason: str
    function: str | None = None
    instruction: str | None = None
    expires: dt.date | None = None
    used: int = 0

    def matches(self, f: Finding) -> bool:
        if self.module.lower() not in (f.module.lower(), f.guid):
            return False
        if self.function is not None and not fnmatch.fnmatchcase(f.function or "", self.function):
            return False
        if self.instruction is not None and self.instruction.lower() not in (f.mnemonic, f.bytes):
            return False
        return True

    def describe(self) -> str:
        parts = [self.module] + ([self.function] if self.function else []) + (
            [self.instruction] if self.instruction else [])
        return "/".join(parts)


def load_waivers(path: str) -> list[Waiver]:
    """Parse and check a waivers file."""
    doc = _load_json(path, "waivers")
    if doc.get("schema_version") != WAIVERS_SCHEMA:
        raise OvmfToolError(f"waivers {path}: schema_version is not {WAIVERS_SCHEMA}")
    out = []
    for i, w in enumerate(doc.get("waivers", [])):
        if not isinstance(w, dict) or not w.get("module") or not w.get("reason"):
            raise OvmfToolError(f"waivers {path}: waiver {i} needs a module and a reason")
        exp = None
        if w.get("expires"):
            try:
                exp = dt.date.fromisoformat(w["expires"])
            except (TypeError, ValueError):
                raise OvmfToolError(f"waivers {path}: waiver {i} expires {w['expires']!r} is not YYYY-MM-DD") from None
        out.append(Waiver(str(w["module"]), str(w["reason"]), w.get("function"), w.get("instruction"), exp))
    return out


@dataclass
class CheckResult:
    """What `check` found."""

    new: list[Finding] = field(default_factory=list)
    waived: list[tuple[Finding, Waiver]] = field(default_factory=list)
    known: int = 0
    gone: int = 0
    expired: list[Waiver] = field(default_factory=list)
    unused: list[Waiver] = field(default_factory=list)


def check(r: ScanResult, baseline: set[str], waivers: list[Waiver], today: dt.date | None = None) -> CheckResult:
    """Compare a scan against a baseline and waivers."""
    today = today or dt.date.today()
    live = [w for w in waivers if w.expires is None or w.expires >= today]
    out = CheckResult(expired=[w for w in waivers if w.expires is not None and w.expires < today])
    keys = site_keys(r.findings)
    for f, k in zip(r.findings, keys):
        if k in baseline:
            out.known += 1
            continue
        w = next((w for w in live if w.matches(f)), None)
        if w is not None:
            w.used += 1
            out.waived.append((f, w))
        else:
            out.new.append(f)
    out.gone = len(baseline - set(keys))
    out.unused = [w for w in live if w.used == 0]
    return out
