"""The result cache's JSON codec (`scan.cache` stores, this reads and writes): a module's
analysis, a whole image's result. What it reads back is checked field by field, and each site
against the module's bytes: a cache entry is never trusted to be of its input."""

from __future__ import annotations

import dataclasses
import types
import typing
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


def _nat(v: Any) -> bool:
    return type(v) is int and v >= 0


def _signature_ok(sig: Any) -> bool:
    if sig is None:
        return True
    return _typed(sig, _SIGNATURE_FIELDS) and all(
        isinstance(sig[k], list) and all(isinstance(x, str) for x in sig[k])
        for k, kind in _SIGNATURE_FIELDS.items()
        if kind is None  # aliases, trees
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
            if not _typed(d, _SITE_FIELDS):
                return None
            rva, size, mn, raw = d["rva"], d["size"], d["mnemonic"], d["bytes"]
            if not (
                rva > last
                and 1 <= size <= 15
                and string_io(mn) is not None
                and rva + size <= len(mem)
                and mem[rva : rva + size].hex() == raw
            ):
                return None
            last = rva
            if (
                d["function_source"] == "symbols"  # the cache holds analyses made without symbols
                or not _signature_ok(d["signature"])
                or not isinstance(d["callers"], list)
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
        "code_blobs": res.code_blobs,
        "standalone": res.standalone,
        "era": res.era,
    }


# A field as the codec checks it: its type ("s" a string, "i" a natural number, "b" a boolean, or
# the tuple of strings a Literal allows), whether None is allowed, or None for a nested record or
# list (checked on its own). Made from the records' own annotations: one declaration of each field.
Kind = tuple[str | tuple[str, ...], bool] | None


def field_kinds(cls: type) -> dict[str, Kind]:
    """The kinds of the record `cls`'s fields (`Kind`), in declaration order."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Kind] = {}
    for f in dataclasses.fields(cls):
        t, optional = hints[f.name], False
        if typing.get_origin(t) in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(t) if a is not type(None)]
            optional = len(args) < len(typing.get_args(t))
            t = args[0] if len(args) == 1 else t
        if typing.get_origin(t) is typing.Literal:
            out[f.name] = (tuple(typing.get_args(t)), optional)
        elif t in (str, int, bool):
            out[f.name] = ({str: "s", int: "i", bool: "b"}[t], optional)
        else:
            out[f.name] = None
    return out


_SITE_FIELDS = field_kinds(SiteFacts)
_SIGNATURE_FIELDS = field_kinds(SiteSignature)
_MODULE_FIELDS = field_kinds(ModuleSummary)
_FINDING_FIELDS = field_kinds(Finding)
_CALLER_FIELDS = field_kinds(Caller)
_REGION_FIELDS = field_kinds(FdRegion)


def _typed(d: Any, fields: Mapping[str, Kind]) -> bool:
    if not isinstance(d, dict) or set(d) != set(fields):
        return False
    for k, kind in fields.items():
        v = d[k]
        if kind is None:
            continue
        t, optional = kind
        if v is None and optional:
            continue
        if isinstance(t, tuple):
            ok = isinstance(v, str) and v in t
        else:
            ok = {"s": isinstance(v, str), "i": type(v) is int and v >= 0, "b": isinstance(v, bool)}[t]
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
            or set(doc) != {"sha256", "size", "modules", "findings", "code_blobs", "standalone", "era"}
            or doc["sha256"] != sha256
            or doc["size"] != size
            or not isinstance(doc["standalone"], bool)
            or not (doc["era"] is None or isinstance(doc["era"], str))
            or type(doc["code_blobs"]) is not int
            or doc["code_blobs"] < 0
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
        return ScanResult(
            path,
            sha256,
            size,
            modules,
            findings,
            code_blobs=doc["code_blobs"],
            standalone=doc["standalone"],
            era=doc["era"],
        )
    except (TypeError, ValueError, KeyError, AttributeError):
        return None
