"""boot-check's TCG plugin (`strio.c`): executed string I/O, its counts and ports in one boot.

The plugin is built against the QEMU that is installed, once, into
`$XDG_CACHE_HOME/ovmftool/plugin/<key>/strio.so` (default `~/.cache/ovmftool/plugin`), the key
naming the QEMU version and a hash of `strio.c`: `python -m ovmftool.boot.plugin build` (what
`corpus/scripts/qemu-plugin.sh` runs) compiles it with gcc, taking `qemu-plugin.h` from the
system if installed, else from Debian's source package of the installed QEMU (`apt-get source
--download-only`, only the header is extracted, into the cache; nothing of QEMU's is kept in
this repository). boot-check uses the plugin when it is built and falls back to two boots (the
translation log, then a counting boot) when it is not, saying so in a note; it never builds it.
`OVMFTOOL_BOOT_PLUGIN=0` forces the two boots.

How the plugin finds what boot-check reports (see strio.c):
- sites: every translated instruction is decoded for INS/OUTS (6C-6F after legacy prefixes and
  a REX byte); each one found gets an execution and a memory callback;
- translations: the blocks translated holding it; executions: entries into it (executions
  inside a block that starts before it; when it is never inside one, all of them), as the
  counting boot counts them; iterations and units: its own memory accesses (one per iteration);
- port: QEMU 7.2's plugin API cannot read registers, so at the first access of each entry the
  plugin waits while boot-check asks QEMU's monitor for `info registers`; RDX then holds the
  port. Not for a plain (non-REP) OUTS, where QEMU's copy of the registers may be stale then:
  its port is null.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ovmftool.errors import OvmfToolError

SOURCE = Path(__file__).with_name("strio.c")
MAGIC = 0x4F49534F
HEADER = struct.Struct("<8I32x")
SITE = struct.Struct("<QIIQQQQIIIIBBBB16s64s12x")
MAX_QUERIES = 4096
_REGS = re.compile(r"\b[RE]([CD])X=([0-9a-f]+)")


def enabled() -> bool:
    """False when OVMFTOOL_BOOT_PLUGIN=0 forces the two boots."""
    return os.environ.get("OVMFTOOL_BOOT_PLUGIN", "1") != "0"


def cache_dir() -> Path:
    """`$XDG_CACHE_HOME/ovmftool/plugin` (an absolute XDG_CACHE_HOME), else `~/.cache/ovmftool/plugin`."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        base = str(Path.home() / ".cache")
    return Path(base) / "ovmftool" / "plugin"


def qemu_version(exe: str = "qemu-system-x86_64") -> str | None:
    """`7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)` from `--version`, None without QEMU."""
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"version (\S.*)", out.splitlines()[0] if out else "")
    return m.group(1).strip() if m else None


def key(version: str) -> str:
    src = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    return "qemu-" + re.sub(r"[^A-Za-z0-9.+-]+", "_", version).strip("_") + "-" + src


def plugin_path(version: str | None = None) -> Path | None:
    """The built plugin for the installed QEMU, None when it is not built (or no QEMU)."""
    if not SOURCE.is_file():  # an install without the plugin's source: it cannot have been built
        return None
    version = version or qemu_version()
    if version is None:
        return None
    p = cache_dir() / key(version) / "strio.so"
    return p if p.is_file() else None


def carried_header(version: str | None) -> Path | None:
    """The plugin API header this package carries for QEMU `version` (major.minor: 7.2), or None."""
    m = re.match(r"(\d+)\.(\d+)", version or "")
    p = SOURCE.with_name(f"qemu-{m.group(1)}.{m.group(2)}") / "qemu-plugin.h" if m else None
    return p if p is not None and p.is_file() else None


def _local_header(version: str | None) -> Path | None:
    """qemu-plugin.h without fetching anything: the system's, or the one this package carries."""
    for p in (Path("/usr/include/qemu-plugin.h"), Path("/usr/include/qemu/qemu-plugin.h")):
        if p.is_file():
            return p
    return carried_header(version)


def build_at_first_use(log=lambda s: None) -> Path | None:
    """The plugin for the installed QEMU, built now if it is not (with a header found locally
    and a C compiler: a second or two); None when it cannot be built here (then two boots)."""
    version = qemu_version()
    if version is None or not SOURCE.is_file():
        return None
    if plugin_path(version) is not None:
        return plugin_path(version)
    if _local_header(version) is None or not (shutil.which("gcc") or shutil.which("cc")):
        return None
    try:
        return build(log)
    except OvmfToolError:
        return None


def _header(log) -> Path:
    """qemu-plugin.h of the installed QEMU: the system's, the one this package carries for its
    version, a cached one, or Debian's source."""
    local = _local_header(qemu_version())
    if local is not None:
        return local
    try:
        srcver = subprocess.run(
            ["dpkg-query", "-W", "-f", "${source:Version}", "qemu-system-x86"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        raise OvmfToolError(
            "no qemu-plugin.h installed and no Debian qemu-system-x86 package to fetch it from"
        ) from None
    cached = cache_dir() / "headers" / re.sub(r"[^A-Za-z0-9.+-]+", "_", srcver) / "qemu-plugin.h"
    if cached.is_file():
        return cached
    with tempfile.TemporaryDirectory(prefix="ovmftool-qemu-src-") as tmp:
        log(f"fetching QEMU's source package {srcver} for qemu-plugin.h (apt-get source --download-only)")
        r = subprocess.run(
            ["apt-get", "source", "--download-only", f"qemu={srcver}"], cwd=tmp, capture_output=True, text=True
        )
        origs = sorted(Path(tmp).glob("qemu_*.orig.tar.*"))
        if r.returncode != 0 or not origs:
            msg = (r.stderr.strip().splitlines() or ["no source archive"])[-1]
            raise OvmfToolError(
                f"apt-get source qemu={srcver} failed (deb-src enabled? corpus/scripts/apt-sources.sh): {msg}"
            )
        r = subprocess.run(
            ["tar", "-xf", str(origs[0]), "--wildcards", "--no-anchored", "include/qemu/qemu-plugin.h"],
            cwd=tmp,
            capture_output=True,
            text=True,
        )
        found = sorted(Path(tmp).glob("*/include/qemu/qemu-plugin.h"))
        if r.returncode != 0 or not found:
            raise OvmfToolError(f"{origs[0].name} holds no include/qemu/qemu-plugin.h")
        cached.parent.mkdir(parents=True, exist_ok=True)
        part = cached.with_suffix(f".{os.getpid()}.part")
        shutil.copyfile(found[0], part)
        os.replace(part, cached)
    return cached


def build(log=lambda s: None) -> Path:
    """Build the plugin for the installed QEMU into the cache (nothing when it is there)."""
    version = qemu_version()
    if version is None:
        raise OvmfToolError("qemu-system-x86_64 not found: apt-get install qemu-system-x86")
    if not SOURCE.is_file():
        raise OvmfToolError(f"{SOURCE} is missing: install ovmftool from its source tree to build the plugin")
    out = cache_dir() / key(version) / "strio.so"
    if out.is_file():
        return out
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        raise OvmfToolError("no C compiler (gcc) to build the boot-check plugin: apt-get install build-essential")
    hdr = _header(log)
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_suffix(f".{os.getpid()}.part")
    r = subprocess.run(
        [gcc, "-shared", "-fPIC", "-O2", "-Wall", "-I", str(hdr.parent), "-o", str(part), str(SOURCE)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        part.unlink(missing_ok=True)
        raise OvmfToolError("building the boot-check plugin failed: " + " ".join(r.stderr.split())[:300])
    os.replace(part, out)  # atomic: a concurrent boot-check sees the old state or the whole file
    log(f"built {out}")
    return out


# --- one boot with the plugin ---------------------------------------------------------------------


@dataclass
class Site:
    """A string I/O instruction the plugin saw translated, with its counts."""

    address: int
    bytes: str
    disas: str
    rep: bool
    translations: int
    inner_translations: int
    exec_first: int
    exec_inner: int
    accesses: int
    zero_entries: int
    pending: bool
    stray: int
    regs: list[tuple[int, dict]] = field(default_factory=list)  # (kind, {"C": rcx, "D": rdx}) per entry queried

    @property
    def mnemonic(self) -> str:
        """As QEMU's translation log prints it: `rep insb`, `outsl`."""
        w = self.disas.split()
        return " ".join(w[:2]) if w and w[0].startswith("rep") else (w[0] if w else "")

    @property
    def at_start_are_iterations(self) -> bool:
        return self.rep and self.inner_translations > 0

    @property
    def executions(self) -> int:
        return self.exec_inner if self.at_start_are_iterations else self.exec_inner + self.exec_first

    @property
    def iterations(self) -> int:
        if not self.rep:
            return self.executions
        return self.accesses + self.zero_entries + int(self.pending)

    def entry_regs(self) -> list[dict]:
        return [r for kind, r in self.regs if kind == 1 or not self.at_start_are_iterations]


@dataclass
class Table:
    nsites: int
    overflow: bool
    executed: bool
    queries: int
    query_failed: int
    sites: list[Site]


def read_table(path: Path) -> Table | None:
    """The plugin's table, None when the plugin did not start (no file, or not initialised)."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if len(data) < HEADER.size:
        return None
    magic, _ver, n, overflow, executed, queries, failed, site_size = HEADER.unpack_from(data)
    if magic != MAGIC or site_size != SITE.size:
        return None
    sites = []
    for i in range(n):
        (va, tr, itr, ef, ei, acc, _armed, _size, pend, zero, stray, rep, ln, _is_in, _pad, b, dis) = SITE.unpack_from(
            data, HEADER.size + i * SITE.size
        )
        sites.append(
            Site(
                va,
                b[:ln].hex(),
                dis.split(b"\0")[0].decode(errors="replace"),
                bool(rep),
                tr,
                itr,
                ef,
                ei,
                acc,
                zero,
                bool(pend),
                stray,
            )
        )
    return Table(n, bool(overflow), bool(executed), queries, failed, sites)


def executed_any(path: Path) -> bool:
    """The plugin saw a string I/O instruction execute (cheap: the table's header only)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(HEADER.size)
    except OSError:
        return False
    if len(data) < HEADER.size:
        return False
    h = HEADER.unpack(data)
    return h[0] == MAGIC and bool(h[4])


class Responder:
    """Answers the plugin's register queries: `info registers` through QMP while it waits."""

    def __init__(self) -> None:
        self.ours, self.theirs = socket.socketpair()
        self.qemu = None
        self.answers: list[tuple[int, int, dict]] = []  # (site index, kind, registers)
        self._thread: threading.Thread | None = None

    def start(self, qemu) -> None:
        self.theirs.close()
        self.qemu = qemu
        self._thread = threading.Thread(target=self._run, name="ovmftool-plugin-responder", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._serve()
        except Exception:  # noqa: BLE001 - QEMU killed under it (the boot ended): nothing left to answer
            return

    def _serve(self) -> None:
        buf = b""
        while True:
            try:
                chunk = self.ours.recv(64)
            except OSError:
                return
            if not chunk:
                return
            buf += chunk
            while len(buf) >= 8:
                site, kind = struct.unpack_from("<II", buf)
                buf = buf[8:]
                r = self.qemu.command("human-monitor-command", {"command-line": "info registers"})
                regs = {}
                if r and isinstance(r.get("return"), str):
                    for name, v in _REGS.findall(r["return"]):
                        regs.setdefault(name, int(v, 16))
                self.answers.append((site, kind, regs))
                try:
                    self.ours.send(b"k")
                except OSError:
                    return

    def close(self) -> None:
        for s in (self.ours, self.theirs):
            try:
                s.close()
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)


def plugin_args(so: Path, work: Path, query_fd: int | None) -> list[str]:
    spec = f"{so},table={work / 'strio-table.bin'},code={work / 'code.bin'}"
    if query_fd is not None:
        spec += f",query={query_fd}"
    return ["-plugin", spec]


def sites_with_registers(table: Table, answers: list[tuple[int, int, dict]]) -> list[Site]:
    for i, kind, regs in answers:
        if 0 <= i < len(table.sites) and regs:
            table.sites[i].regs.append((kind, regs))
    return table.sites


# --- the translated code the plugin dumps (code.bin) --------------------------------------------

_REC = struct.Struct("<QH")


def iter_blocks(path: Path):
    """(block address, [(instruction address, bytes), ...]) in translation order."""
    try:
        data = path.read_bytes()
    except OSError:
        return
    pos, end = 0, len(data)
    while pos + _REC.size <= end:
        va, n = _REC.unpack_from(data, pos)
        p = pos + _REC.size
        sizes = data[p : p + n]
        p += n
        total = _REC.size + n + sum(sizes) + 4
        if pos + total > end or len(sizes) < n:
            return  # a record cut short (QEMU killed mid-write)
        insns, a = [], va
        for sz in sizes:
            insns.append((a, data[p : p + sz]))
            p += sz
            a += sz
        yield va, insns
        pos += total


def last_block(path: Path) -> list[tuple[int, bytes]]:
    """The instructions of the last block translated, read from the end of the dump."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            while size >= 4:
                fh.seek(size - 4)
                (total,) = struct.unpack("<I", fh.read(4))
                if total < _REC.size + 4 or total > size:
                    return []
                fh.seek(size - total)
                rec = fh.read(total)
                va, n = _REC.unpack_from(rec)
                sizes = rec[_REC.size : _REC.size + n]
                if _REC.size + n + sum(sizes) + 4 != total:
                    return []
                out, p, a = [], _REC.size + n, va
                for sz in sizes:
                    out.append((a, rec[p : p + sz]))
                    p += sz
                    a += sz
                return out
    except OSError:
        pass
    return []
