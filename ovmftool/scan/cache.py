"""The scan's result cache: content-addressed, on disk, shared by concurrent runs.

Two kinds of entries, both keyed by content and by everything else that decides the result:

- a **module** entry: what one PE32/TE module's code holds (`scanner.ModuleAnalysis`: code bytes and
  functions found, every string I/O site with its attribution, callers and reachability), keyed by
  the sha256 of the module's bytes and its memory size, its machine and the image's EDK II tree
  era (which names routines), so a module shared by many images is analysed once;
- an **image** entry: a whole image's checked scan result (`scanner.ScanResult` without its path),
  keyed by the sha256 of the file's bytes and its base name (a standalone module is named from its
  file name), so an image seen before is not parsed again.

Every key also holds the cache format, the tool version, a hash of the signature set
(`signatures.json`), a hash of the code that parses images and analyses modules (the sources of
ovmftool's model, ops and scan packages, the native walk included: a changed tool never reads
another tool's results), which capstone decodes (its package and library files' sizes and
modification times) and which walk runs (native or Python). Scans with
`--symbols` do not use the cache (their names come from files outside the image).

Entries live in `$XDG_CACHE_HOME/ovmftool/results` (an absolute XDG_CACHE_HOME; else
`~/.cache/ovmftool/results`), one file per key, `KEY[:2]/KEY.json`. Each is written to a
temporary file in the same directory and renamed over its name (`os.replace`), so a reader sees
a whole entry or none, and concurrent runs that compute the same entry write the same bytes.
An entry holds its key and the sha256 of its payload; one that is partial, corrupted, of
another key or of the wrong shape is ignored (and rewritten by the scan that recomputes it),
never trusted. Module entries are also checked against the module: each cached site's bytes
must be the module's bytes at that RVA. Cache trouble never changes a result or fails a scan:
an unreadable entry is a miss, an unwritable directory is a cache that keeps nothing.

`--no-cache` or OVMFTOOL_NO_CACHE=1 turn it off; removing the directory is always safe.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import stat
from typing import Any

import ovmftool
from ovmftool.model.parser import MAX_IMAGE_SIZE
from ovmftool.scan.codemap import native_available

FORMAT = 2  # the entries' layout; bump when what an entry holds changes
_PACKAGES = ("model", "ops", "scan")  # the code a scan result is a function of (with errors.py)
_SUFFIXES = (".py", ".json", ".c", ".so", ".pyd")


def cache_dir() -> str:
    """`$XDG_CACHE_HOME/ovmftool/results`, or `~/.cache/ovmftool/results` (the XDG base
    directory rules: a relative XDG_CACHE_HOME is ignored)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ovmftool", "results")


def disabled_by_env() -> bool:
    """OVMFTOOL_NO_CACHE set to anything but "" or "0"."""
    return os.environ.get("OVMFTOOL_NO_CACHE", "") not in ("", "0")


def default_cache(enabled: bool = True) -> ResultCache | None:
    """The user's cache, unless `enabled` is False (`--no-cache`) or OVMFTOOL_NO_CACHE is set."""
    return ResultCache(cache_dir()) if enabled and not disabled_by_env() else None


_FINGERPRINT: str | None = None


def fingerprint() -> str:
    """Hash of what decides a result besides the input: tool version, signature set, the code of
    the model, ops and scan packages, capstone's files, the walk in use. Computed once a process."""
    global _FINGERPRINT
    if _FINGERPRINT is None:
        pkg = os.path.dirname(os.path.abspath(ovmftool.__file__))
        h = hashlib.sha256()
        h.update(
            f"ovmftool {ovmftool.__version__}\0capstone {_capstone_stamp()}\0"
            f"walk {'native' if native_available() else 'python'}\0".encode()
        )
        with open(os.path.join(pkg, "scan", "signatures.json"), "rb") as fh:
            h.update(b"signatures\0" + hashlib.sha256(fh.read()).digest())
        files = [os.path.join(pkg, "errors.py")]
        for sub in _PACKAGES:
            for d, dirs, names in os.walk(os.path.join(pkg, sub)):
                dirs[:] = sorted(x for x in dirs if x != "__pycache__")
                files += [os.path.join(d, n) for n in sorted(names) if n.endswith(_SUFFIXES)]
        for f in files:
            with open(f, "rb") as fh:
                h.update(os.path.relpath(f, pkg).encode() + b"\0" + hashlib.sha256(fh.read()).digest())
        _FINGERPRINT = h.hexdigest()
    return _FINGERPRINT


def _capstone_stamp() -> str:
    """Which capstone decodes: size and modification time of its package and library files
    (found without importing it: the import costs a scan ~25 ms). Another build or version of
    capstone gives another stamp (a reinstall of the same one may too: that only empties the cache)."""

    spec = importlib.util.find_spec("capstone")
    if spec is None or not spec.origin:
        return "none"
    d = os.path.dirname(spec.origin)
    out = []
    for f in (
        "__init__.py",
        os.path.join("lib", "libcapstone.so"),
        os.path.join("lib", "libcapstone.dylib"),
        os.path.join("lib", "capstone.dll"),
    ):
        try:
            st = os.stat(os.path.join(d, f))
        except OSError:
            continue
        out.append(f"{f}:{st.st_size}:{st.st_mtime_ns}")
    return ";".join(out) or "unknown"


def _key(*parts: str) -> str:
    text = "\0".join((f"ovmftool-cache {FORMAT}", fingerprint(), *parts))
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()  # a name's bytes as they are


def module_key(raw_sha256: str, mem_size: int, machine: str, era: str | None) -> str:
    """The key of a module's analysis: its bytes, memory size, machine and the era it is named in."""
    return _key("module", raw_sha256, str(mem_size), machine, era or "")


def image_key(file_sha256: str, basename: str) -> str:
    """The key of an image's checked scan: its bytes and its base name."""
    return _key("image", file_sha256, basename)


class ResultCache:
    """A directory of entries (see the module's doc). `get` returns the payload (JSON data) or
    None; `put` stores one and never raises. `hits`/`misses`/`bad` count lookups."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.writable = True
        self.hits = self.misses = self.bad = 0

    def _path(self, key: str) -> str:
        return os.path.join(self.directory, key[:2], key + ".json")

    def get(self, key: str) -> Any:
        """The payload stored under `key`, or None when there is none or it is not whole and right."""
        try:
            with open(self._path(key), "rb") as fh:
                blob = fh.read(64 << 20)
        except OSError:
            self.misses += 1
            return None
        payload = _unwrap(blob, key)
        if payload is None:
            self.bad += 1
            return None
        self.hits += 1
        return payload

    def reject(self) -> None:
        """The payload `get` just returned proved not to be of its input: a bad entry, not a hit."""
        self.hits -= 1
        self.bad += 1

    def put(self, key: str, payload: Any) -> None:
        """Store `payload` (JSON data) under `key`: atomically, or not at all."""
        import tempfile  # here: a scan that stores nothing does not pay for its import

        if not self.writable:
            return
        body = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        blob = json.dumps(
            {"format": FORMAT, "key": key, "sha256": hashlib.sha256(body.encode()).hexdigest(), "payload": body},
            sort_keys=True,
        ).encode()
        path = self._path(key)
        tmp = None
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=os.path.dirname(path))
            with os.fdopen(fd, "wb") as fh:
                fh.write(blob)
            os.replace(tmp, path)
            tmp = None
        except OSError:
            self.writable = False  # read-only, full or missing: keep nothing, change nothing
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass


def _unwrap(blob: bytes, key: str) -> Any:
    """The payload of an entry's bytes, or None unless it is whole: its format, its key, and the
    sha256 of its payload as written."""
    try:
        doc = json.loads(blob)
        if (
            not isinstance(doc, dict)
            or doc.get("format") != FORMAT
            or doc.get("key") != key
            or not isinstance(doc.get("payload"), str)
        ):
            return None
        body = doc["payload"]
        if hashlib.sha256(body.encode()).hexdigest() != doc.get("sha256"):
            return None
        return json.loads(body)
    except (ValueError, UnicodeError, RecursionError):
        return None


class ImageEntry:
    """The whole-image entry of the file at `path`: its key from the file's bytes (read here;
    an unreadable file has none, and its scan says why). `get` the payload, `put` one."""

    def __init__(self, path: str, cache: ResultCache) -> None:

        self.path, self.cache, self.key, self.sha256, self.size = path, cache, None, None, 0
        try:
            st = os.stat(path)
            if not stat.S_ISREG(st.st_mode) or not 0 < st.st_size <= MAX_IMAGE_SIZE:
                return
            with open(path, "rb") as fh:
                data = fh.read(MAX_IMAGE_SIZE + 1)
        except OSError:
            return
        self.sha256, self.size = hashlib.sha256(data).hexdigest(), len(data)
        self.key = image_key(self.sha256, os.path.basename(path))

    def get(self) -> Any:
        """The payload cached for this file, or None."""
        return self.cache.get(self.key) if self.key is not None else None

    def put(self, sha256: str, size: int, payload: Any) -> None:
        """Store the payload of a result of `sha256`/`size`: only when they are the bytes this
        entry's key was made from (the file did not change between the two reads)."""
        if self.key is not None and sha256 == self.sha256 and size == self.size:
            self.cache.put(self.key, payload)
