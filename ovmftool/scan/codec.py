"""The result cache's JSON codec (`scan.cache` stores, this reads and writes): a module's
analysis, a whole image's result. What it reads back is checked field by field, and each site
against the module's bytes: a cache entry is never trusted to be of its input."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

from ovmftool.scan.disasm import string_io
from ovmftool.scan.records import (
    Caller,
    FdRegion,
    Finding,
    ModuleAnalysis,
    ModuleSummary,
    ScanResult,
    SiteFacts,
    SiteSignature,
)

_SITE_FIELDS = frozenset(SiteFacts.__dataclass_fields__)


def _nat(v: Any) -> bool:
    return type(v) is int and v >= 0


def _opt(v: Any, t: type) -> bool:
    return v is None or isinstance(v, t)


def _signature_ok(sig: Any) -> bool:
    if sig is None:
        return True
    return (
        isinstance(sig, dict)
        and set(sig) == {"routine", "library", "source", "aliases", "trees", "rva", "size"}
        and all(isinstance(sig[k], str) for k in ("routine", "library", "source"))
        and _nat(sig["rva"])
        and _nat(sig["size"])
        and all(isinstance(sig[k], list) and all(isinstance(x, str) for x in sig[k]) for k in ("aliases", "trees"))
    )


def _signature(sig: dict[str, Any] | None) -> SiteSignature | None:
    return None if sig is None else SiteSignature(**sig)


def analysis_payload(a: ModuleAnalysis) -> dict[str, Any]:
    """A module's analysis as JSON data for the cache (`analysis_from_payload` reads it back)."""
    return {
        "code_bytes": a.code_bytes,
        "functions": a.functions,
        "sites": [
            {**asdict(s), "callers": [[c.function, c.function_rva, c.call_rva, c.kind] for c in s.callers]}
            for s in a.sites
        ],
    }


def analysis_from_payload(doc: Any, mem: bytes) -> ModuleAnalysis | None:
    """The analysis a cache entry holds, or None unless it has the right shape and each site's
    bytes are `mem`'s at its RVA (a string I/O instruction, in increasing RVA order)."""
    try:
        if (
            set(doc) != {"code_bytes", "functions", "sites"}
            or not all(_nat(doc[k]) for k in ("code_bytes", "functions"))
            or not isinstance(doc["sites"], list)
        ):
            return None
        sites, last = [], -1
        for d in doc["sites"]:
            if set(d) != _SITE_FIELDS:
                return None
            rva, size, mn, raw = d["rva"], d["size"], d["mnemonic"], d["bytes"]
            if not (
                _nat(rva)
                and rva > last
                and _nat(size)
                and 1 <= size <= 15
                and isinstance(mn, str)
                and string_io(mn) is not None
                and isinstance(raw, str)
                and rva + size <= len(mem)
                and mem[rva : rva + size].hex() == raw
            ):
                return None
            last = rva
            if not (
                _opt(d["function"], str)
                and (d["function_rva"] is None or _nat(d["function_rva"]))
                and d["function_source"] in (None, "signature", "analysis")
                and isinstance(d["reachable"], bool)
                and _signature_ok(d["signature"])
                and isinstance(d["callers"], list)
            ):
                return None
            callers = []
            for c in d["callers"]:
                if not (
                    isinstance(c, list)
                    and len(c) == 4
                    and isinstance(c[0], str)
                    and _nat(c[1])
                    and _nat(c[2])
                    and c[3] in ("call", "jmp")
                ):
                    return None
                callers.append(Caller(*c))
            sites.append(SiteFacts(**{**d, "callers": callers, "signature": _signature(d["signature"])}))
        return ModuleAnalysis(doc["code_bytes"], doc["functions"], sites)
    except (TypeError, AttributeError, KeyError, ValueError):
        return None


def result_payload(res: ScanResult) -> dict[str, Any]:
    """A checked `ScanResult` as JSON data, without its path."""
    return {
        "sha256": res.sha256,
        "size": res.size,
        "modules": [asdict(m) for m in res.modules],
        "findings": [asdict(f) for f in res.findings],
        "notes": list(res.notes),
        "standalone": res.standalone,
        "era": res.era,
    }


_STR, _INT, _OPT_STR, _OPT_INT, _BOOL = "s", "i", "s?", "i?", "b"
_MODULE_FIELDS = {
    "name": _STR,
    "guid": _STR,
    "file_type": _STR,
    "arch": _STR,
    "volume": _STR,
    "fd_offset": _OPT_INT,
    "code_bytes": _INT,
    "functions": _INT,
    "sites": _INT,
    "symbols": _OPT_STR,
    "code_end": _OPT_INT,
}
_FINDING_FIELDS = {
    "module": _STR,
    "guid": _STR,
    "file_type": _STR,
    "arch": _STR,
    "volume": _STR,
    "fd_offset": _OPT_INT,
    "container_offset": _INT,
    "rva": _INT,
    "pe_section": _OPT_STR,
    "bytes": _STR,
    "mnemonic": _STR,
    "width": _INT,
    "direction": _STR,
    "rep": _OPT_STR,
    "function": _OPT_STR,
    "function_rva": _OPT_INT,
    "function_source": _OPT_STR,
    "signature": None,
    "callers": None,
    "reachable": _BOOL,
    "fd_region": None,
}
_CALLER_FIELDS = {"function": _STR, "function_rva": _INT, "call_rva": _INT, "kind": _STR}
_REGION_FIELDS = {"offset": _INT, "length": _INT, "holder": _STR}


def _typed(d: Any, fields: Mapping[str, str | None]) -> bool:
    if not isinstance(d, dict) or set(d) != set(fields):
        return False
    for k, t in fields.items():
        v = d[k]
        if t is None:
            continue
        if v is None and t.endswith("?"):
            continue
        ok = {"s": isinstance(v, str), "i": type(v) is int and v >= 0, "b": isinstance(v, bool)}[t[0]]
        if not ok:
            return False
    return True


def result_from_payload(doc: Any, path: str, sha256: str, size: int) -> ScanResult | None:
    """The `ScanResult` a whole-image entry holds, under `path`, or None unless it is of that
    file (sha256, size) and of the right shape: typed fields, sites a string I/O instruction
    each, every module with code found and no symbols (the cache never serves --symbols)."""
    try:
        if (
            not isinstance(doc, dict)
            or set(doc) != {"sha256", "size", "modules", "findings", "notes", "standalone", "era"}
            or doc["sha256"] != sha256
            or doc["size"] != size
            or not isinstance(doc["standalone"], bool)
            or not (doc["era"] is None or isinstance(doc["era"], str))
            or not isinstance(doc["notes"], list)
            or not all(isinstance(n, str) for n in doc["notes"])
            or not isinstance(doc["modules"], list)
            or not isinstance(doc["findings"], list)
        ):
            return None
        modules = []
        for m in doc["modules"]:
            if (
                not _typed(m, _MODULE_FIELDS)
                or m["code_bytes"] == 0
                or m["symbols"] is not None
                or m["code_end"] is not None
            ):
                return None
            modules.append(ModuleSummary(**m))
        findings = []
        for f in doc["findings"]:
            if (
                not _typed(f, _FINDING_FIELDS)
                or string_io(f["mnemonic"]) is None
                or not _signature_ok(f["signature"])
                or not isinstance(f["callers"], list)
                or not all(_typed(c, _CALLER_FIELDS) for c in f["callers"])
                or not (f["fd_region"] is None or _typed(f["fd_region"], _REGION_FIELDS))
            ):
                return None
            findings.append(
                Finding(
                    **{
                        **f,
                        "callers": [Caller(**c) for c in f["callers"]],
                        "signature": _signature(f["signature"]),
                        "fd_region": FdRegion(**f["fd_region"]) if f["fd_region"] is not None else None,
                    }
                )
            )
        if sum(m.sites for m in modules) > len(findings):
            return None
        return ScanResult(path, sha256, size, modules, findings, list(doc["notes"]), doc["standalone"], doc["era"])
    except (TypeError, ValueError, KeyError, AttributeError):
        return None
