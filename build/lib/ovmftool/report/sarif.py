"""SARIF 2.1.0 output of scan results (`scan --format sarif`), one run per image."""

from __future__ import annotations

import os
from pathlib import Path

from ovmftool import __version__
from ovmftool.report.identity import fingerprint, site_keys
from ovmftool.scan.scanner import Finding, ScanResult

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
INFO_URI = "https://github.com/oxidecomputer/propolis/issues/1168"

RULES = [
    {
        "id": "OVMF-STRING-IO-OUT",
        "name": "StringPortOutput",
        "shortDescription": {"text": "String port output (OUTS, usually REP OUTSB/W/D)"},
        "fullDescription": {"text": (
            "OUTSB/OUTSW/OUTSD write a buffer to an I/O port, one element per repetition. A VMM must "
            "decode the instruction to emulate it; bhyve without AMD DecodeAssist (any nested setup) "
            "hands propolis the raw bytes and propolis panics with 'Unhandled VM exit: InstEmul'.")},
        "help": {"text": "Build the firmware with FIFO routines that use IN/OUT loops (ovmftool plan), or "
                         "rewrite the routine in the image (ovmftool patch)."},
        "defaultConfiguration": {"level": "error"},
        "properties": {"tags": ["firmware", "virtualization", "port-io"]},
    },
    {
        "id": "OVMF-STRING-IO-IN",
        "name": "StringPortInput",
        "shortDescription": {"text": "String port input (INS, usually REP INSB/W/D)"},
        "fullDescription": {"text": (
            "INSB/INSW/INSD read a buffer from an I/O port (OVMF reads fw_cfg this way). Like OUTS, the VMM "
            "must decode it; without DecodeAssist propolis cannot and panics.")},
        "help": {"text": "Build the firmware with FIFO routines that use IN/OUT loops (ovmftool plan), or "
                         "rewrite the routine in the image (ovmftool patch)."},
        "defaultConfiguration": {"level": "error"},
        "properties": {"tags": ["firmware", "virtualization", "port-io"]},
    },
]
_RULE_INDEX = {"out": 0, "in": 1}


def _result(f: Finding, key: str, uri: str) -> dict:
    fn = f.function or "?"
    loc: dict = {
        "logicalLocations": [
            {"name": f.module, "kind": "module", "fullyQualifiedName": f"{f.volume}/{f.module}" if f.volume
             else f.module},
            {"name": fn, "kind": "function", "fullyQualifiedName": f"{f.module}!{fn}"},
        ],
    }
    if f.fd_offset is not None:
        loc["physicalLocation"] = {
            "artifactLocation": {"uri": uri, "index": 0},
            "region": {"byteOffset": f.fd_offset, "byteLength": len(f.bytes) // 2},
        }
    rep = "REP " if f.rep == "rep" else ("REPNE " if f.rep == "repne" else "")
    what = f"{rep}{f.mnemonic.split()[-1].upper()}"
    where = f"{f.module}!{fn}" + (f" ({f.function_source})" if f.function_source else "")
    run = "reachable from the module entry point" if f.reachable else "not reachable from the entry point by direct calls"
    return {
        "ruleId": RULES[_RULE_INDEX[f.direction]]["id"],
        "ruleIndex": _RULE_INDEX[f.direction],
        "level": "error",
        "message": {"text": f"{what} at RVA 0x{f.rva:X} in {where}, {f.volume or 'flash'}; {run}."},
        "locations": [loc],
        "partialFingerprints": {"ovmftoolSite/v1": fingerprint(key)},
        "properties": {
            "module": f.module, "guid": f.guid, "arch": f.arch, "fileType": f.file_type, "volume": f.volume,
            "fdOffset": f.fd_offset, "containerOffset": f.container_offset, "rva": f.rva, "bytes": f.bytes,
            "mnemonic": f.mnemonic, "width": f.width, "rep": f.rep, "function": f.function,
            "functionSource": f.function_source, "reachable": f.reachable, "siteKey": key,
            "compressed": f.fd_offset is None,
        },
    }


def sarif_log(results: list[ScanResult]) -> dict:
    """A SARIF log with one run per scanned image."""
    runs = []
    for r in results:
        uri = Path(os.path.abspath(r.path)).as_uri() if r.path else "image"
        keys = site_keys(r.findings)
        runs.append({
            "tool": {"driver": {"name": "ovmftool", "version": __version__, "semanticVersion": __version__,
                                "informationUri": INFO_URI, "rules": RULES}},
            "artifacts": [{"location": {"uri": uri}, "length": r.size, "hashes": {"sha-256": r.sha256},
                           "roles": ["analysisTarget"]}],
            "results": [_result(f, k, uri) for f, k in zip(r.findings, keys)],
            "properties": {"notes": r.notes, "modulesScanned": len(r.modules)},
        })
    return {"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": runs}
