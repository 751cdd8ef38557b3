"""SARIF 2.1.0 output of scan results (`scan --format sarif`): one run for every input, in the
order given (GitHub takes at most 20 runs, and one per tool and category, in an upload).

Made for GitHub code scanning (docs/ci.md). Each image is an artifact; each scanned image also a
listing artifact embedded in the log (`<image>.sites.txt`, one line per site), because code
scanning shows a location only with a line and an image has none (a line and a byte range in
one region must name the same bytes). A result's primary location is its listing line; its
related location is the instruction in the image (URI relative to `%SRCROOT%`: the working
directory, or `--sarif-root`; the byte region of the instruction, or of the compressed section
holding it; the address chain module > function > instruction). Fingerprints hash what
survives a rebuild (scan.identity), not addresses or lines. The run records the verdict in
`invocations[0]` (exit code 0/1/2, the worst image's), each image's in its artifact, and each
image that could not be scanned as an error notification located at it. The run has no
`automationDetails`: the upload's category applies.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

from ovmftool import __version__
from ovmftool.report.scan_notes import scan_notes
from ovmftool.scan.identity import fingerprint, site_keys
from ovmftool.scan.scanner import Finding, ScanFailure, ScanResult, ScanSkipped, function_label

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
    "(ovmftool patch IMAGE -o OUT). Re-run ovmftool scan: exit code 0 means checked and clean."
)
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
        "fullDescription": {
            "text": (
                "OUTSB/OUTSW/OUTSD write a buffer to an I/O port, one element per repetition. A VMM must "
                "decode the instruction to emulate it; bhyve without AMD DecodeAssist (any nested setup) "
                "hands propolis the raw bytes and propolis panics with 'Unhandled VM exit: InstEmul'."
            )
        },
        "help": {"text": _HELP_TEXT, "markdown": _HELP_MARKDOWN},
        "helpUri": INFO_URI,
        "defaultConfiguration": {"level": "error"},
        "properties": {
            "tags": ["firmware", "virtualization", "port-io"],
            "precision": "very-high",
            "problem.severity": "error",
        },
    },
    {
        "id": "OVMF-STRING-IO-IN",
        "name": "StringPortInput",
        "shortDescription": {"text": "String port input (INS, usually REP INSB/W/D)"},
        "fullDescription": {
            "text": (
                "INSB/INSW/INSD read a buffer from an I/O port (OVMF reads fw_cfg this way). Like OUTS, the VMM "
                "must decode it; without DecodeAssist propolis cannot and panics."
            )
        },
        "help": {"text": _HELP_TEXT, "markdown": _HELP_MARKDOWN},
        "helpUri": INFO_URI,
        "defaultConfiguration": {"level": "error"},
        "properties": {
            "tags": ["firmware", "virtualization", "port-io"],
            "precision": "very-high",
            "problem.severity": "error",
        },
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
        return {"uri": quote(os.fsencode(Path(rel).as_posix())), "uriBaseId": SRCROOT}
    return {"uri": Path(real).as_uri()}


class _Places:
    """The run's address and logical-location tables. Addresses belong to one image (`image`,
    the artifact index of the image being added): module > function > instruction. Logical
    locations name code, module > function, and are shared by the images that hold it."""

    def __init__(self) -> None:
        self.addresses: list[dict] = []
        self.logical: list[dict] = []
        self.image = 0
        self._addr: dict[tuple, int] = {}
        self._logi: dict[tuple, int] = {}

    @staticmethod
    def _names(f: Finding) -> tuple[str, str | None]:
        fq = f"{f.volume}/{f.module}" if f.volume else f.module
        name = None if f.function_rva is None else (f.function or function_label(f.function_rva))
        return fq, name

    def _address(self, key: tuple, entry: dict) -> int:
        key = (self.image, *key)
        if key not in self._addr:
            self._addr[key] = len(self.addresses)
            self.addresses.append({"index": len(self.addresses), **entry})
        return self._addr[key]

    def _logical(self, key: tuple, entry: dict) -> int:
        if key not in self._logi:
            self._logi[key] = len(self.logical)
            self.logical.append({"index": len(self.logical), **entry})
        return self._logi[key]

    def instruction(self, f: Finding) -> dict:
        """The instruction's address entry (added to the table), with its parents."""
        fq, name = self._names(f)
        mod = (f.guid, f.arch, f.volume, f.module)
        parent = self._address(
            mod,
            {
                "kind": "module",
                "name": f.module,
                "fullyQualifiedName": fq,
                "properties": {"guid": f.guid, "arch": f.arch, "artifactIndex": self.image},
            },
        )
        base = 0
        if name is not None:
            parent = self._address(
                (*mod, f.function_rva),
                {
                    "kind": "function",
                    "name": name,
                    "fullyQualifiedName": f"{fq}!{name}",
                    "relativeAddress": f.function_rva,
                    "offsetFromParent": f.function_rva,
                    "parentIndex": parent,
                },
            )
            base = f.function_rva
        i = self._address(
            (*mod, "insn", f.rva),
            {
                "kind": "instruction",
                "name": f.mnemonic,
                "relativeAddress": f.rva,
                "offsetFromParent": f.rva - base,
                "length": len(f.bytes) // 2,
                "parentIndex": parent,
            },
        )
        return dict(self.addresses[i])

    def logical_of(self, f: Finding) -> list[dict]:
        """The logical locations module > function of a site (added to the table)."""
        fq, name = self._names(f)
        mod = (f.guid, f.arch, f.volume, f.module)
        m = self._logical(mod, {"kind": "module", "name": f.module, "fullyQualifiedName": fq})
        out = [dict(self.logical[m])]
        if name is not None:
            fn = self._logical(
                (*mod, f.function_rva, name),
                {"kind": "function", "name": name, "fullyQualifiedName": f"{fq}!{name}", "parentIndex": m},
            )
            out.append({k: v for k, v in self.logical[fn].items() if k != "parentIndex"})
        return out


_NAMED_BY = {"symbols": "the build's symbols", "signature": "a built-in signature", "analysis": "its address"}


def listing_line(f: Finding) -> str:
    """One site as a line of the run's listing artifact: module!function+offset, RVA, where it
    is in the file, bytes and instruction."""
    fn = f.function or (function_label(f.function_rva) if f.function_rva is not None else "?")
    off = f"+0x{f.rva - f.function_rva:x}" if f.function_rva is not None else ""
    where = f"fd 0x{f.fd_offset:X}" if f.fd_offset is not None else f"compressed in {f.volume}"
    return f"{f.module}!{fn}{off}  rva 0x{f.rva:X}  {where}  {f.bytes}  {f.mnemonic}"


def _result(f: Finding, key: str, image: dict, listing: dict, line: int, text: str, places: _Places) -> dict:
    fn = f.function or "?"
    # The primary location is a line of the listing (GitHub shows a location only with a line);
    # the instruction's bytes in the image follow as the related location.
    primary = {
        "physicalLocation": {
            "artifactLocation": listing,
            "region": {"startLine": line, "startColumn": 1, "endColumn": len(text) + 1, "snippet": {"text": text}},
        },
        "logicalLocations": places.logical_of(f),
    }
    in_image: dict = {"artifactLocation": image, "address": places.instruction(f)}
    if f.fd_region is not None:
        region: dict = {"byteOffset": f.fd_region.offset, "byteLength": f.fd_region.length}
        if f.fd_region.holder != "instruction":
            region["message"] = {
                "text": (
                    f"the {f.fd_region.holder} that holds the instruction compressed: decoded, it is at RVA "
                    f"0x{f.rva:X} of {f.module} in {f.volume}"
                )
            }
        in_image["region"] = region
    related = {
        "id": 1,
        "physicalLocation": in_image,
        "message": {"text": f"the instruction in {image['uri'].rsplit('/', 1)[-1]}"},
    }
    rep = "REP " if f.rep == "rep" else ("REPNE " if f.rep == "repne" else "")
    what = f"{rep}{f.mnemonic.split()[-1].upper()}"
    where = f"{f.module}!{fn}" + (f" (named by {_NAMED_BY[f.function_source]})" if f.function_source else "")
    run = (
        "reachable from the module entry point" if f.reachable else "not reachable from the entry point by direct calls"
    )
    fp = fingerprint(key)
    return {
        "ruleId": RULES[_RULE_INDEX[f.direction]]["id"],
        "ruleIndex": _RULE_INDEX[f.direction],
        "level": "error",
        "message": {
            "text": f"{what} at RVA 0x{f.rva:X} in {where}, {f.volume or 'flash'}; {run} ([bytes in the image](1))."
        },
        "locations": [primary],
        "relatedLocations": [related],
        # GitHub code scanning reads only primaryLocationLineHash: it carries the same
        # rebuild-stable site hash as ovmftoolSite/v1 (a listing line moves with every new site).
        "partialFingerprints": {"ovmftoolSite/v1": fp, "primaryLocationLineHash": fp},
        "properties": {
            "image": image["uri"],
            "module": f.module,
            "guid": f.guid,
            "arch": f.arch,
            "fileType": f.file_type,
            "volume": f.volume,
            "fdOffset": f.fd_offset,
            "containerOffset": f.container_offset,
            "rva": f.rva,
            "bytes": f.bytes,
            "mnemonic": f.mnemonic,
            "width": f.width,
            "rep": f.rep,
            "function": f.function,
            "functionSource": f.function_source,
            "reachable": f.reachable,
            "siteKey": key,
            "compressed": f.fd_offset is None,
        },
    }


def _tool() -> dict:
    return {
        "driver": {
            "name": "ovmftool",
            "version": __version__,
            "semanticVersion": __version__,
            "informationUri": INFO_URI,
            "rules": RULES,
        }
    }


LISTING_SUFFIX = ".sites.txt"


def _utf8(text: str) -> str:
    """`text` with the bytes of a file name that are not UTF-8 (which Python keeps as lone
    surrogates) shown as U+FFFD: for SARIF's texts (a strict JSON reader refuses a lone surrogate)."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _listing_header(o: ScanResult) -> str:
    """The listing's first line (UTF-8 text: a file name's bytes that are not UTF-8 are shown as
    U+FFFD; the artifact's URI keeps them, percent-encoded)."""
    return _utf8(f"# ovmftool {__version__}: string I/O sites of {o.path} (sha256 {o.sha256}), one a line")


def run_log(outcomes: list[ScanResult | ScanFailure], root: str) -> dict:
    """One run for every input (GitHub takes at most 20 runs per upload, and one category per
    run): each image is an analysis target, each scanned image also a listing artifact whose
    lines are its sites; an image that could not be scanned is an error notification."""
    run: dict = {"tool": _tool()}
    artifacts: list[dict] = []
    notes: list[dict] = []
    results: list[dict] = []
    places = _Places()
    relative = False
    seen: set[str] = set()
    for o in outcomes:
        loc = artifact_location(o.path, root) if o.path else {"uri": "image"}
        if loc["uri"] in seen:  # a file named twice: one artifact, its results once
            continue
        seen.add(loc["uri"])
        relative |= loc.get("uriBaseId") == SRCROOT
        image = {**loc, "index": len(artifacts)}
        entry: dict = {
            "location": loc,
            "roles": ["analysisTarget"],
            "properties": {"exitCode": o.exit_code, "exitCodeDescription": _EXIT_MEANING[o.exit_code]},
        }
        artifacts.append(entry)
        if isinstance(o, ScanFailure):
            notes.append(
                {
                    "level": "error",
                    "message": {"text": o.message},
                    "locations": [{"physicalLocation": {"artifactLocation": image}}],
                }
            )
            continue
        entry.update(length=o.size, hashes={"sha-256": o.sha256})
        entry["properties"].update(sites=len(o.findings), modulesScanned=len(o.modules), notes=scan_notes(o))
        lines = [_listing_header(o)] + [listing_line(f) for f in o.findings]
        text = "".join(x + "\n" for x in lines)
        listing = {**loc, "uri": loc["uri"] + LISTING_SUFFIX, "index": len(artifacts)}
        artifacts.append(
            {
                "location": {k: v for k, v in listing.items() if k != "index"},
                "roles": ["resultFile"],
                "mimeType": "text/plain",
                "encoding": "utf-8",
                "contents": {"text": text},
                "length": len(text.encode()),
                "description": {"text": _utf8(f"the string I/O sites of {o.path}, one a line")},
                "properties": {"listingOf": image["index"]},
            }
        )
        places.image = image["index"]
        for n, (f, k) in enumerate(zip(o.findings, site_keys(o.findings))):
            results.append(_result(f, k, image, listing, n + 2, lines[n + 1], places))
    code = max((o.exit_code for o in outcomes), default=0)
    inv: dict = {"executionSuccessful": not notes, "exitCode": code, "exitCodeDescription": _EXIT_MEANING[code]}
    if notes:
        inv["toolExecutionNotifications"] = notes
    run["invocations"] = [inv]
    if relative:
        run["originalUriBaseIds"] = {
            SRCROOT: {
                "uri": _dir_uri(root),
                "description": {"text": "the source root (--sarif-root, default the working directory)"},
            }
        }
    run["artifacts"] = artifacts
    run["columnKind"] = "unicodeCodePoints"
    run["results"] = results
    if places.addresses:
        run["addresses"] = places.addresses
        run["logicalLocations"] = places.logical
    return run


def sarif_log(outcomes: list[ScanResult | ScanFailure], root: str | None = None) -> dict:
    """A SARIF log with one run for all inputs (an input skipped as holding nothing to check is
    left out). `root`: the directory URIs are relative to (default: the working directory)."""
    root = os.path.realpath(root if root is not None else os.getcwd())
    checked = [o for o in outcomes if not isinstance(o, ScanSkipped)]  # nothing checked, nothing to say
    return {"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": [run_log(checked, root)]}
