"""SARIF 2.1.0 output of scan results (`scan --format sarif`), one run per input, in the order given.

Made for GitHub code scanning (docs/ci.md): every result has a physical location — the image
file, as a URI relative to the source root (`%SRCROOT%`: the working directory, or
`--sarif-root`), and the byte region of the instruction, or of the compressed section holding
it — plus the address chain module > function > instruction (`run.addresses`) and the logical
locations module > function. Fingerprints hash what survives a rebuild (scan.identity), not
addresses. Each run records its verdict in `invocations[0]` (exit code 0/1/2); an input that
could not be scanned is a run with no results, `executionSuccessful: false` and the message as
a tool execution notification. With several inputs each run has its own category
(`automationDetails.id`), since code scanning refuses a file holding two runs of one tool and
category.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

from ovmftool import __version__
from ovmftool.scan.identity import fingerprint, site_keys
from ovmftool.scan.scanner import Finding, ScanFailure, ScanResult, ScanSkipped

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
INFO_URI = "https://github.com/oxidecomputer/propolis/issues/1168"
SRCROOT = "%SRCROOT%"

_HELP_TEXT = (
    "String port I/O (INS/OUTS, usually with REP) in firmware code stops a propolis guest on hosts without "
    "AMD DecodeAssist (any nested-virtualization setup): the VMM gets the raw instruction bytes and exits "
    "with 'Unhandled VM exit: InstEmul'. In OVMF these instructions are the FIFO routines of "
    "BaseIoLibIntrinsic(Sev) (IoReadFifo8... and IoWriteFifo8...), used for fw_cfg reads and DEBUG output. "
    "Fix the source with a patch series for your EDK II tree (ovmftool plan --edk2 TREE --dsc DSC -o DIR; "
    "verified series for Debian's trees are in edk2-patches/), or rewrite the routines in the built image "
    "(ovmftool patch IMAGE -o OUT). Re-run ovmftool scan: exit code 0 means checked and clean.")
_HELP_MARKDOWN = """\
String port I/O (`INS`/`OUTS`, usually with `REP`) in firmware code stops a
[propolis](https://github.com/oxidecomputer/propolis) guest on hosts without AMD DecodeAssist (any
nested-virtualization setup): the VMM gets the raw instruction bytes and exits with
`Unhandled VM exit: InstEmul`. In OVMF these instructions are the FIFO routines of
`BaseIoLibIntrinsic(Sev)` (`IoReadFifo8`... and `IoWriteFifo8`...), used for fw_cfg reads and
`DEBUG` output.

**Fix**

- the source: `ovmftool plan --edk2 TREE --dsc DSC -o DIR` writes a verified patch series for your
  EDK II tree (series for Debian's trees are in `edk2-patches/`);
- the built image: `ovmftool patch IMAGE -o OUT` rewrites each routine into equivalent `IN`/`OUT`
  loop code, each rewrite checked by emulation.

Re-run `ovmftool scan`: exit code 0 means checked and clean.
"""

RULES = [
    {
        "id": "OVMF-STRING-IO-OUT",
        "name": "StringPortOutput",
        "shortDescription": {"text": "String port output (OUTS, usually REP OUTSB/W/D)"},
        "fullDescription": {"text": (
            "OUTSB/OUTSW/OUTSD write a buffer to an I/O port, one element per repetition. A VMM must "
            "decode the instruction to emulate it; bhyve without AMD DecodeAssist (any nested setup) "
            "hands propolis the raw bytes and propolis panics with 'Unhandled VM exit: InstEmul'.")},
        "help": {"text": _HELP_TEXT, "markdown": _HELP_MARKDOWN},
        "helpUri": INFO_URI,
        "defaultConfiguration": {"level": "error"},
        "properties": {"tags": ["firmware", "virtualization", "port-io"], "precision": "very-high",
                       "problem.severity": "error"},
    },
    {
        "id": "OVMF-STRING-IO-IN",
        "name": "StringPortInput",
        "shortDescription": {"text": "String port input (INS, usually REP INSB/W/D)"},
        "fullDescription": {"text": (
            "INSB/INSW/INSD read a buffer from an I/O port (OVMF reads fw_cfg this way). Like OUTS, the VMM "
            "must decode it; without DecodeAssist propolis cannot and panics.")},
        "help": {"text": _HELP_TEXT, "markdown": _HELP_MARKDOWN},
        "helpUri": INFO_URI,
        "defaultConfiguration": {"level": "error"},
        "properties": {"tags": ["firmware", "virtualization", "port-io"], "precision": "very-high",
                       "problem.severity": "error"},
    },
]
_RULE_INDEX = {"out": 0, "in": 1}
_EXIT_MEANING = {0: "no string I/O site", 1: "string I/O sites found", 2: "error: the input could not be scanned"}


def _dir_uri(path: str) -> str:
    uri = Path(path).as_uri()
    return uri if uri.endswith("/") else uri + "/"


def artifact_location(path: str, root: str) -> dict:
    """The input as an artifact location: relative to `root` (uriBaseId %SRCROOT%) when it lies
    under it, else an absolute file URI (a base id may only go with a relative reference).
    Symbolic links are resolved: code scanning cannot show results in a symlinked file."""
    real = os.path.realpath(path)
    rel = os.path.relpath(real, root)
    if rel != ".." and not rel.startswith(".." + os.sep) and not os.path.isabs(rel):
        return {"uri": quote(Path(rel).as_posix()), "uriBaseId": SRCROOT}
    return {"uri": Path(real).as_uri()}


class _Places:
    """The run's address and logical-location tables, one entry per module and function."""

    def __init__(self) -> None:
        self.addresses: list[dict] = []
        self.logical: list[dict] = []
        self._mod: dict[tuple, tuple[int, int]] = {}
        self._fn: dict[tuple, tuple[int, int]] = {}

    def module(self, f: Finding) -> tuple[int, int]:
        key = (f.guid, f.arch, f.volume, f.module)
        if key not in self._mod:
            fq = f"{f.volume}/{f.module}" if f.volume else f.module
            a, lg = len(self.addresses), len(self.logical)
            self.addresses.append({"index": a, "kind": "module", "name": f.module, "fullyQualifiedName": fq,
                                   "properties": {"guid": f.guid, "arch": f.arch}})
            self.logical.append({"index": lg, "kind": "module", "name": f.module, "fullyQualifiedName": fq})
            self._mod[key] = (a, lg)
        return self._mod[key]

    def function(self, f: Finding) -> tuple[int, int] | None:
        if f.function_rva is None:
            return None
        key = (f.guid, f.arch, f.volume, f.module, f.function_rva)
        if key not in self._fn:
            ma, ml = self.module(f)
            name = f.function or f"sub_{f.function_rva:x}"
            a, lg = len(self.addresses), len(self.logical)
            self.addresses.append({"index": a, "kind": "function", "name": name,
                                   "fullyQualifiedName": f"{f.module}!{name}", "relativeAddress": f.function_rva,
                                   "offsetFromParent": f.function_rva, "parentIndex": ma})
            self.logical.append({"index": lg, "kind": "function", "name": name,
                                 "fullyQualifiedName": f"{f.module}!{name}", "parentIndex": ml})
            self._fn[key] = (a, lg)
        return self._fn[key]

    def instruction(self, f: Finding) -> dict:
        ma, _ = self.module(f)
        fn = self.function(f)
        parent, base = (fn[0], f.function_rva) if fn is not None else (ma, 0)
        a = {"index": len(self.addresses), "kind": "instruction", "name": f.mnemonic, "relativeAddress": f.rva,
             "offsetFromParent": f.rva - base, "length": len(f.bytes) // 2, "parentIndex": parent}
        self.addresses.append(a)
        return dict(a)

    def logical_of(self, f: Finding) -> list[dict]:
        _, ml = self.module(f)
        out = [dict(self.logical[ml])]
        fn = self.function(f)
        if fn is not None:
            out.append(dict(self.logical[fn[1]]))
        for x in out:
            x.pop("parentIndex", None)
        return out


def _result(f: Finding, key: str, artifact: dict, places: _Places) -> dict:
    fn = f.function or "?"
    physical: dict = {"artifactLocation": {**artifact, "index": 0}, "address": places.instruction(f)}
    if f.fd_region is not None:
        region: dict = {"byteOffset": f.fd_region["offset"], "byteLength": f.fd_region["length"]}
        if f.fd_region["holder"] != "instruction":
            region["message"] = {"text": (
                f"the {f.fd_region['holder']} that holds the instruction compressed: decoded, it is at RVA "
                f"0x{f.rva:X} of {f.module} in {f.volume}")}
        physical["region"] = region
    loc = {"physicalLocation": physical, "logicalLocations": places.logical_of(f)}
    rep = "REP " if f.rep == "rep" else ("REPNE " if f.rep == "repne" else "")
    what = f"{rep}{f.mnemonic.split()[-1].upper()}"
    where = f"{f.module}!{fn}" + (f" ({f.function_source})" if f.function_source else "")
    run = "reachable from the module entry point" if f.reachable else "not reachable from the entry point by direct calls"
    fp = fingerprint(key)
    return {
        "ruleId": RULES[_RULE_INDEX[f.direction]]["id"],
        "ruleIndex": _RULE_INDEX[f.direction],
        "level": "error",
        "message": {"text": f"{what} at RVA 0x{f.rva:X} in {where}, {f.volume or 'flash'}; {run}."},
        "locations": [loc],
        # GitHub code scanning reads only primaryLocationLineHash; an image has no lines, so it
        # carries the same rebuild-stable site hash as ovmftoolSite/v1.
        "partialFingerprints": {"ovmftoolSite/v1": fp, "primaryLocationLineHash": fp},
        "properties": {
            "module": f.module, "guid": f.guid, "arch": f.arch, "fileType": f.file_type, "volume": f.volume,
            "fdOffset": f.fd_offset, "containerOffset": f.container_offset, "rva": f.rva, "bytes": f.bytes,
            "mnemonic": f.mnemonic, "width": f.width, "rep": f.rep, "function": f.function,
            "functionSource": f.function_source, "reachable": f.reachable, "siteKey": key,
            "compressed": f.fd_offset is None,
        },
    }


def _tool() -> dict:
    return {"driver": {"name": "ovmftool", "version": __version__, "semanticVersion": __version__,
                       "informationUri": INFO_URI, "rules": RULES}}


def _run(o: ScanResult | ScanFailure, root: str) -> dict:
    artifact = artifact_location(o.path, root) if o.path else {"uri": "image"}
    inv: dict = {"executionSuccessful": isinstance(o, ScanResult), "exitCode": o.exit_code,
                 "exitCodeDescription": _EXIT_MEANING[o.exit_code]}
    run: dict = {"tool": _tool(), "invocations": [inv]}
    if artifact.get("uriBaseId") == SRCROOT:
        run["originalUriBaseIds"] = {SRCROOT: {"uri": _dir_uri(root),
                                               "description": {"text": "the source root (--sarif-root, "
                                                                       "default the working directory)"}}}
    if isinstance(o, ScanFailure):
        inv["toolExecutionNotifications"] = [{"level": "error", "message": {"text": o.message},
                                              "locations": [{"physicalLocation": {"artifactLocation": artifact}}]}]
        run["artifacts"] = [{"location": artifact, "roles": ["analysisTarget"]}]
        run["results"] = []
        return run
    places = _Places()
    keys = site_keys(o.findings)
    run["artifacts"] = [{"location": artifact, "length": o.size, "hashes": {"sha-256": o.sha256},
                         "roles": ["analysisTarget"]}]
    run["results"] = [_result(f, k, artifact, places) for f, k in zip(o.findings, keys)]
    run["addresses"] = places.addresses
    run["logicalLocations"] = places.logical
    run["properties"] = {"notes": o.notes, "modulesScanned": len(o.modules)}
    return run


def sarif_log(outcomes: list[ScanResult | ScanFailure], root: str | None = None) -> dict:
    """A SARIF log with one run per input. `root`: the directory URIs are relative to (default:
    the working directory)."""
    root = os.path.realpath(root if root is not None else os.getcwd())
    runs = [_run(o, root) for o in outcomes if not isinstance(o, ScanSkipped)]  # nothing checked, nothing to say
    if len(runs) > 1:
        seen: dict[str, int] = {}
        for run in runs:
            cat = f"ovmftool/{run['artifacts'][0]['location']['uri']}"
            seen[cat] = seen.get(cat, 0) + 1
            run["automationDetails"] = {"id": f"{cat}{'' if seen[cat] == 1 else f'#{seen[cat]}'}/"}
    return {"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": runs}
