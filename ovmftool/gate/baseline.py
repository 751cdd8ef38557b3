"""Baselines and waivers: accept today's sites, fail CI only on new ones.

Baseline file: the image it was taken from and one entry per site with its stable key (see
scan.identity); schema ovmftool.baseline/1 (docs/schema/baseline-1.json) for one image,
ovmftool.baseline/2 (docs/schema/baseline-2.json) for several, each under its path and sha256.
`check` gives each image the entry recorded under its path, else the one of its contents, else
(one image checked against a one-image baseline) that one; an image with none has every site
new. Waivers file (schema
ovmftool.waivers/1, docs/schema/waivers-1.json):

    {"schema_version": "ovmftool.waivers/1",
     "waivers": [{"module": "PlatformPei" | "<guid>", "function": "IoReadFifo8" (glob, optional),
                  "instruction": "rep insb" | "f36c" (optional), "reason": "...",
                  "expires": "2027-06-30" (optional)}]}

Both loaders check a file against what its schema says (the schemas are not installed with the
package, so the checks are written out here; tests hold the two in agreement) and name the file
and the field in a one-line error.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any

from ovmftool.errors import OvmfToolError
from ovmftool.scan.cache import default_cache
from ovmftool.scan.identity import site_keys
from ovmftool.scan.scanner import Finding, ScanFailure, ScanResult, default_jobs, scan_paths

BASELINE_SCHEMA = "ovmftool.baseline/1"
BASELINE_SCHEMA_MULTI = "ovmftool.baseline/2"
WAIVERS_SCHEMA = "ovmftool.waivers/1"


def _load_json(path: str, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
    except OSError as e:
        raise OvmfToolError(f"cannot read {what} {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise OvmfToolError(f"{what} {path} is not JSON: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise OvmfToolError(f"{what} {path} is not JSON: {e.msg} at line {e.lineno}") from None
    except RecursionError:
        raise OvmfToolError(f"{what} {path} is not JSON this tool reads: nested too deeply") from None
    except ValueError:  # Python refuses to convert an integer of over 4,300 digits
        raise OvmfToolError(f"{what} {path} is not JSON this tool reads: a number of thousands of digits") from None
    if not isinstance(doc, dict):
        raise OvmfToolError(f"{what} {path} is not a JSON object")
    return doc


_GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_HEX = re.compile(r"^(?:[0-9a-f]{2})+$")
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")
_TEXT = re.compile(r"\S")


class _Fields:
    """Checks of one JSON document, each failing with `WHAT FILE: FIELD: problem`."""

    _TYPES = {"string": str, "object": dict, "array": list}

    def __init__(self, what: str, path: str) -> None:
        self.what, self.path = what, path

    def fail(self, field: str, problem: str) -> OvmfToolError:
        return OvmfToolError(f"{self.what} {self.path}: {field}: {problem}")

    def get(
        self,
        obj: dict,
        key: str,
        where: str,
        kind: str,
        required: bool = True,
        null: bool = False,
        pattern: re.Pattern | None = None,
        minimum: int | None = None,
    ) -> Any:
        name = f"{where}.{key}" if where else key
        if key not in obj:
            if required:
                raise self.fail(name, "missing")
            return None
        v = obj[key]
        if v is None and null:
            return None
        if kind == "integer":
            ok = isinstance(v, int) and not isinstance(v, bool)
        else:
            ok = isinstance(v, self._TYPES[kind])
        if not ok:
            raise self.fail(
                name,
                f"{json.dumps(v)[:60]} is not {'an' if kind[0] in 'aeiou' else 'a'} {kind}"
                + (" or null" if null else ""),
            )
        if pattern is not None and not pattern.search(v):
            raise self.fail(name, f"{json.dumps(v)[:60]} does not match {pattern.pattern}")
        if minimum is not None and v < minimum:
            raise self.fail(name, f"{v} is below {minimum}")
        return v

    def only(self, obj: dict, keys: set[str], where: str) -> None:
        extra = sorted(set(obj) - keys)
        if extra:
            raise self.fail(where, f"unknown field {extra[0]!r} (allowed: {', '.join(sorted(keys))})")


@dataclass(frozen=True)
class BaselineImage:
    """One image's entry in a baseline file: where it was, its contents, its site keys."""

    path: str
    sha256: str
    keys: frozenset[str]


def _image_entry(c: _Fields, doc: dict, where: str) -> BaselineImage:
    pre = f"{where}." if where else ""
    image = c.get(doc, "image", where, "object")
    path = c.get(image, "path", f"{pre}image", "string")
    sha = c.get(image, "sha256", f"{pre}image", "string", pattern=_SHA256)
    keys = set()
    for i, s in enumerate(c.get(doc, "sites", where, "array")):
        at = f"{pre}sites[{i}]"
        if not isinstance(s, dict):
            raise c.fail(at, "is not an object")
        keys.add(c.get(s, "key", at, "string", pattern=_TEXT))
        for k in ("module", "arch", "mnemonic"):
            c.get(s, k, at, "string")
        c.get(s, "guid", at, "string", pattern=_GUID)
        c.get(s, "function", at, "string", null=True)
        c.get(s, "bytes", at, "string", pattern=_HEX)
        c.get(s, "rva", at, "integer", minimum=0)
    return BaselineImage(path, sha, frozenset(keys))


def load_baseline_images(path: str) -> list[BaselineImage]:
    """The images a baseline file records (checked against docs/schema/baseline-1.json or
    baseline-2.json, by its schema_version)."""
    doc = _load_json(path, "baseline")
    c = _Fields("baseline", path)
    version = c.get(doc, "schema_version", "", "string")
    if version not in (BASELINE_SCHEMA, BASELINE_SCHEMA_MULTI):
        raise c.fail("schema_version", f"{version!r} is not {BASELINE_SCHEMA!r} or {BASELINE_SCHEMA_MULTI!r}")
    tool = c.get(doc, "tool", "", "object")
    c.get(tool, "name", "tool", "string")
    c.get(tool, "version", "tool", "string")
    if version == BASELINE_SCHEMA:
        return [_image_entry(c, doc, "")]
    out = []
    for i, entry in enumerate(c.get(doc, "images", "", "array")):
        if not isinstance(entry, dict):
            raise c.fail(f"images[{i}]", "is not an object")
        out.append(_image_entry(c, entry, f"images[{i}]"))
        if any(os.path.normpath(e.path) == os.path.normpath(out[-1].path) for e in out[:-1]):
            raise c.fail(f"images[{i}].image.path", f"{out[-1].path!r} is recorded twice")
    return out


def load_baseline(path: str) -> set[str]:
    """The site keys a baseline file records, of all its images."""
    return {k for e in load_baseline_images(path) for k in e.keys}


def baseline_for(entries: list[BaselineImage], r: ScanResult, alone: bool) -> BaselineImage | None:
    """The entry that applies to the image of `r`: recorded under its path (as written, or naming
    the same file from this directory: `build/x.fd` and `/abs/build/x.fd`), else under its
    contents, else, when `alone` (the only image checked) and the file records one image, that
    one (an image moved or renamed since). None: no entry applies."""
    norm, real = os.path.normpath(r.path), os.path.realpath(r.path)
    for pick in (
        lambda e: os.path.normpath(e.path) == norm,
        lambda e: "\0" not in e.path and os.path.realpath(e.path) == real,  # NUL: no file's name
        lambda e: e.sha256 == r.sha256,
    ):
        hit = [e for e in entries if pick(e)]
        if hit:
            return hit[0]
    return entries[0] if alone and len(entries) == 1 else None


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
        parts = (
            [self.module]
            + ([self.function] if self.function else [])
            + ([self.instruction] if self.instruction else [])
        )
        return "/".join(parts)


_WAIVER_FIELDS = {"module", "function", "instruction", "reason", "expires"}


def load_waivers(path: str) -> list[Waiver]:
    """Parse and check a waivers file (against docs/schema/waivers-1.json).

    A waiver's fields are closed: a misspelt `expires` would otherwise make a waiver that never
    expires."""
    doc = _load_json(path, "waivers")
    c = _Fields("waivers", path)
    if c.get(doc, "schema_version", "", "string") != WAIVERS_SCHEMA:
        raise c.fail("schema_version", f"{doc['schema_version']!r} is not {WAIVERS_SCHEMA!r}")
    out = []
    for i, w in enumerate(c.get(doc, "waivers", "", "array")):
        where = f"waivers[{i}]"
        if not isinstance(w, dict):
            raise c.fail(where, "is not an object")
        c.only(w, _WAIVER_FIELDS, where)
        module = c.get(w, "module", where, "string", pattern=_TEXT)
        reason = c.get(w, "reason", where, "string", pattern=_TEXT)
        function = c.get(w, "function", where, "string", required=False, null=True)
        instruction = c.get(w, "instruction", where, "string", required=False, null=True)
        expires = c.get(w, "expires", where, "string", required=False, null=True, pattern=_DATE)
        exp = None
        if expires is not None:
            try:
                exp = dt.date.fromisoformat(expires)
            except ValueError:
                raise c.fail(f"{where}.expires", f"{expires!r} is not a date (YYYY-MM-DD)") from None
        out.append(Waiver(module, reason, function, instruction, exp))
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


@dataclass
class ImageCheck:
    """`check` of one image: the comparison, and the baseline entry it used (None: none applied)."""

    path: str
    result: CheckResult
    baseline: BaselineImage | None
    unmatched: bool = False  # a baseline file was given, and no entry of it applies to this image


def check_images(
    inputs,
    baseline_file: str | None = None,
    waivers_file: str | None = None,
    symbols_dir: str | None = None,
    today: dt.date | None = None,
) -> list[ImageCheck | ScanFailure]:
    """`ovmftool check`: the baseline and waivers read (their errors come before any scan), the
    inputs (files, directories, patterns) scanned with the verdict rules of `scan`, and each
    image compared with its baseline entry; inputs that could not be scanned keep their place.
    A waiver counts as used when it matched in any image."""
    entries = load_baseline_images(baseline_file) if baseline_file else []
    waivers = load_waivers(waivers_file) if waivers_file else []
    inputs = list(inputs)
    outcomes = scan_paths(inputs, symbols_dir, default_jobs(len(inputs)), default_cache())
    alone = sum(isinstance(o, ScanResult) for o in outcomes) == 1
    out: list[ImageCheck | ScanFailure] = []
    for o in outcomes:
        if not isinstance(o, ScanResult):
            out.append(o)
            continue
        entry = baseline_for(entries, o, alone)
        result = check(o, entry.keys if entry else set(), waivers, today)
        out.append(ImageCheck(o.path, result, entry, unmatched=bool(baseline_file) and entry is None))
    live = [w for w in waivers if w.expires is None or w.expires >= (today or dt.date.today())]
    for c in out:
        if isinstance(c, ImageCheck):
            c.result.unused = [w for w in live if w.used == 0]
    return out
