"""Boot firmware under QEMU (TCG) and watch it: the UEFI shell, a hang, a reset, QEMU exiting.

QEMU starts paused with its QMP monitor on stdin/stdout (`-S -qmp stdio`): once the monitor is
ready the guest is resumed, so no event is missed; the monitor reports how a run ended
(`SHUTDOWN` with the reason: `guest-reset` for a reset or triple fault, which `-no-reboot` turns
into an exit) and, when the boot is stopped early, the CPU's registers (`info registers`): where
the code that never finished was running.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ovmftool.errors import OvmfToolError

SHELL_MARKERS = (b"Shell>", b"UEFI Interactive Shell")
# Where BDS ends when there is no shell boot option (e.g. a build without the shell in its boot
# options) or nothing to boot: the boot manager fallback counts as a completed boot (AmdSev's
# BDS, which has no boot manager menu, says "No bootable option was found."; PXE and HTTP boot
# attempts are where a network boot begins).
FALLBACK_MARKERS = (
    b"No bootable option or device was found",
    b"No bootable option was found.",
    b"Press any key to enter the Boot Manager Menu",
    b">>Start PXE",
    b">>Start HTTP Boot",
)
FINISHED = ("shell", "boot-manager")
POLL = 0.5  # seconds between looks at the logs

_LIVE: set[Qemu] = set()  # started and not yet closed: close_all() kills them (a signal's way out)


def qemu_binary() -> str:
    """qemu-system-x86_64, or an error naming the package."""
    exe = shutil.which("qemu-system-x86_64")
    if exe is None:
        raise OvmfToolError("qemu-system-x86_64 not found: apt-get install qemu-system-x86")
    return exe


def _opt(path) -> str:
    """A path as the value of a QEMU option list (`-drive ...,file=PATH`): a comma is written
    twice, else it would end the value (an image named `a,b.fd` did not boot)."""
    return str(path).replace(",", ",,")


@dataclass
class Ending:
    """How a run ended."""

    verdict: str  # shell, boot-manager, timeout, hang, reset, qemu-exit, or what `stop` returned
    seconds: float
    detail: str = ""  # reset: "triple fault"/"reset by the guest"; qemu-exit: status and QEMU's last message
    quiet: float = 0.0  # seconds without new serial, debug-console output or translated code at the end
    registers: str | None = None  # `info registers` when the guest was stopped while running

    @property
    def finished(self) -> bool:
        return self.verdict in FINISHED


class Qemu:
    """One QEMU process booting `code` (pflash unit 0, read-only) with a fresh copy of
    `vars_template` (unit 1); `vars_template` None: `code` is a whole OVMF.fd with its own store,
    booted from a writable copy (on `microvm`, which has no flash, a copy loaded with `-bios`).
    Serial and the ISA debug console (port 0x402, as propolis has)
    go to files in `work`; `log` are QEMU `-d` options logged to trace.log."""

    def __init__(
        self,
        code: Path,
        vars_template: Path | None,
        work: Path,
        machine: str = "q35",
        log: list[str] | None = None,
        extra: list[str] | None = None,
        watch: Path | None = None,
        pass_fds: tuple[int, ...] = (),
    ) -> None:
        exe = qemu_binary()
        work.mkdir(parents=True, exist_ok=True)
        self.work = work
        self.serial, self.debug, self.trace = work / "serial.log", work / "debug.log", work / "trace.log"
        # the file whose growth means "new code ran" for hang detection: the translation log, or
        # the TCG plugin's code dump (`extra` holds the -plugin option then)
        self.watch = watch or self.trace
        self._lock = threading.RLock()  # QMP: boot-check's plugin responder thread asks too
        self.stderr = work / "qemu-stderr.log"
        for f in (self.serial, self.debug, self.trace):
            f.write_bytes(b"")
        if vars_template is not None:
            vars_copy = work / "vars.fd"
            shutil.copyfile(vars_template, vars_copy)
            drives = [
                "-drive",
                f"if=pflash,format=raw,unit=0,readonly=on,file={_opt(code)}",
                "-drive",
                f"if=pflash,format=raw,unit=1,file={_opt(vars_copy)}",
            ]
        else:
            flash = work / "flash.fd"
            shutil.copyfile(code, flash)
            # microvm has no flash: its firmware is a ROM (`-bios`), its variables live in RAM
            pflash = ["-drive", f"if=pflash,format=raw,unit=0,file={_opt(flash)}"]
            drives = ["-bios", str(flash)] if machine == "microvm" else pflash
        cmd = [
            exe,
            "-machine",
            f"{machine},accel=tcg",
            "-m",
            "512",
            "-nodefaults",
            "-display",
            "none",
            *drives,
            "-serial",
            f"file:{self.serial}",
            "-debugcon",
            f"file:{self.debug}",
            "-global",
            "isa-debugcon.iobase=0x402",
            "-net",
            "none",
            "-no-reboot",
            "-S",
            "-qmp",
            "stdio",
        ]
        if log:
            cmd += [*log, "-D", str(self.trace)]
        cmd += extra or []
        with open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, pass_fds=pass_fds
            )
        _LIVE.add(self)
        self._buf = b""
        self.events: list[dict] = []
        self.started = False
        try:
            greeting = self._message(15.0)
            if greeting is not None and "QMP" in greeting and self.command("qmp_capabilities") is not None:
                self.started = self.command("cont") is not None
        except BaseException:  # interrupted while QEMU starts: never leave it running
            self.close()
            raise
        self.t0 = time.monotonic()

    # --- QMP ---------------------------------------------------------------------------------

    def _fill(self, timeout: float) -> bool:
        """Read what QEMU wrote to stdout within `timeout`; False at end of file."""
        out = self.proc.stdout
        if out is None:
            return False
        r, _, _ = select.select([out], [], [], max(0.0, timeout))
        if not r:
            return True
        chunk = os.read(out.fileno(), 65536)
        self._buf += chunk
        return bool(chunk)

    def _message(self, timeout: float) -> dict | None:
        """The next QMP message (events are kept in `events` too), or None."""
        end = time.monotonic() + timeout
        while True:
            while b"\n" in self._buf:
                line, self._buf = self._buf.split(b"\n", 1)
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if isinstance(msg, dict):
                    if "event" in msg:
                        self.events.append(msg)
                    return msg
            left = end - time.monotonic()
            if left <= 0 or not self._fill(left):
                return None

    def command(self, name: str, args: dict | None = None, timeout: float = 10.0) -> dict | None:
        """Run a QMP command; its `return` (None on error or when QEMU is gone)."""
        with self._lock:
            return self._command(name, args, timeout)

    def _command(self, name: str, args: dict | None, timeout: float) -> dict | None:
        if self.proc.poll() is not None or self.proc.stdin is None:
            return None
        req = {"execute": name, **({"arguments": args} if args else {})}
        try:
            self.proc.stdin.write(json.dumps(req).encode() + b"\n")
            self.proc.stdin.flush()
        except OSError:
            return None
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            msg = self._message(left)
            if msg is None:
                return None
            if "return" in msg:
                return msg if isinstance(msg["return"], dict) else {"return": msg["return"]}
            if "error" in msg:
                return None
        return None

    def drain(self) -> None:
        """Collect the events QEMU sent (after it exited: all it wrote)."""
        for _ in range(1000):
            before = len(self._buf)
            if not self._fill(0.05) or len(self._buf) == before:
                break
        while b"\n" in self._buf and self._message(0.0) is not None:
            pass

    def registers(self) -> str | None:
        """Stop the guest and return `info registers` (None if QEMU does not answer)."""
        if self.command("stop") is None:
            return None
        r = self.command("human-monitor-command", {"command-line": "info registers"})
        return r["return"] if r and isinstance(r.get("return"), str) else None

    def shutdown_reason(self) -> str | None:
        self.drain()
        for e in self.events:
            if e.get("event") == "SHUTDOWN":
                return (e.get("data") or {}).get("reason")
        return None

    def last_stderr(self) -> str:
        try:
            lines = [x.strip() for x in self.stderr.read_text(errors="replace").splitlines() if x.strip()]
        except OSError:
            return ""
        return lines[-1][:300] if lines else ""

    def close(self) -> None:
        """Kill QEMU (if it still runs) and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        _LIVE.discard(self)
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass

    def sizes(self) -> tuple[int, int, int]:
        return tuple(f.stat().st_size if f.exists() else 0 for f in (self.serial, self.debug, self.watch))


def close_all() -> None:
    """Kill and reap every QEMU this process started that is not closed yet."""
    for q in list(_LIVE):
        q.close()


def wait(q: Qemu, timeout: float, hang_after: float | None = None, stop=None, progress=None) -> Ending:
    """Wait for the shell prompt (or the boot manager's fallback) on serial; stop earlier when
    QEMU exits, `stop()` returns a verdict, or (`hang_after`) nothing new appeared on serial, the
    debug console or in the translation log for that many seconds; at the timeout at the latest.
    QEMU is killed before returning (after reading its registers when the guest was running)."""
    try:
        start = q.t0
        last, changed = q.sizes(), time.monotonic()
        if not q.started:
            try:
                q.proc.wait(timeout=5)  # it closed its monitor: it is exiting
            except subprocess.TimeoutExpired:
                return Ending("qemu-exit", 0.0, "QEMU's monitor did not answer: " + (q.last_stderr() or "no message"))
            return _exited(q, 0.0, 0.0)
        while True:
            now = time.monotonic()
            if progress:
                progress(now - start)
            out = q.serial.read_bytes() if q.serial.exists() else b""
            if any(m in out for m in SHELL_MARKERS):
                return Ending("shell", now - start)
            if any(m in out for m in FALLBACK_MARKERS):
                return Ending("boot-manager", now - start)
            sizes = q.sizes()
            if sizes != last:
                last, changed = sizes, now
            if q.proc.poll() is not None:
                return _exited(q, now - start, now - changed)
            why = stop() if stop else None
            if why:
                return Ending(why, now - start, quiet=now - changed, registers=q.registers())
            if hang_after is not None and now - changed >= hang_after:
                return Ending("hang", now - start, quiet=now - changed, registers=q.registers())
            if now - start >= timeout:
                return Ending("timeout", now - start, quiet=now - changed, registers=q.registers())
            time.sleep(POLL)
    finally:
        q.close()


def _exited(q: Qemu, secs: float, quiet: float) -> Ending:
    rc = q.proc.returncode
    reason = q.shutdown_reason()
    if reason == "guest-reset":
        return Ending("reset", secs, "triple fault" if _triple_fault(q.trace) else "reset by the guest", quiet)
    if reason == "guest-shutdown":
        return Ending("qemu-exit", secs, "the guest powered off", quiet)
    if reason == "guest-panic":
        return Ending("qemu-exit", secs, "guest panic", quiet)
    msg = q.last_stderr()
    return Ending("qemu-exit", secs, f"status {rc}" + (f": {msg}" if msg else ""), quiet)


def _triple_fault(trace: Path) -> bool:
    """QEMU logs `Triple fault` (with `-d cpu_reset`) before the reset it causes."""
    try:
        with open(trace, "rb") as fh:
            fh.seek(max(0, trace.stat().st_size - 65536))
            return b"Triple fault" in fh.read()
    except OSError:
        return False
