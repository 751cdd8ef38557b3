"""Boot firmware under QEMU (TCG) and watch the serial console for the UEFI shell."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from ovmftool.errors import OvmfToolError

SHELL_MARKERS = (b"Shell>", b"UEFI Interactive Shell")
# Where BDS ends when there is no shell boot option (e.g. a build without the shell in its boot
# options) or nothing to boot: the boot manager fallback counts as a completed boot.
FALLBACK_MARKERS = (b"No bootable option or device was found", b"Press any key to enter the Boot Manager Menu",
                    b">>Start PXE")


def qemu_binary() -> str:
    """qemu-system-x86_64, or an error naming the package."""
    exe = shutil.which("qemu-system-x86_64")
    if exe is None:
        raise OvmfToolError("qemu-system-x86_64 not found: apt-get install qemu-system-x86")
    return exe


def launch(code: Path, vars_template: Path, work: Path, machine: str = "q35", trace: bool = False,
           extra: list[str] | None = None):
    """Start QEMU (TCG) on `code` with a fresh copy of the variable store, serial and the ISA debug
    console (port 0x402, as propolis has) logged to files in `work`; with `trace`, QEMU's translation
    log too (or the log QEMU options in `extra` ask for). Returns the process and the log paths
    (serial, debug, trace)."""
    exe = qemu_binary()
    work.mkdir(parents=True, exist_ok=True)
    vars_copy = work / "vars.fd"
    shutil.copyfile(vars_template, vars_copy)
    serial, debug, trace_log = work / "serial.log", work / "debug.log", work / "trace.log"
    for f in (serial, debug, trace_log):
        f.write_bytes(b"")
    cmd = [exe, "-machine", f"{machine},accel=tcg", "-m", "512", "-nodefaults", "-display", "none",
           "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
           "-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}",
           "-serial", f"file:{serial}", "-debugcon", f"file:{debug}", "-global", "isa-debugcon.iobase=0x402",
           "-net", "none", "-no-reboot"]
    if trace:
        cmd += ["-d", "in_asm,nochain", "-D", str(trace_log)]
    elif extra:
        cmd += [*extra, "-D", str(trace_log)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, serial, debug, trace_log


def wait(proc, serial: Path, timeout: float, stop=None, progress=None) -> tuple[str, float]:
    """Wait for the shell prompt on serial, the process to exit, `stop()` to say why, or the
    timeout; then kill QEMU. Returns how it ended and the seconds it took."""
    start = time.monotonic()
    ended = "timeout"
    try:
        while time.monotonic() - start < timeout:
            time.sleep(0.5)
            if progress:
                progress(time.monotonic() - start)
            out = serial.read_bytes()
            if any(m in out for m in SHELL_MARKERS):
                ended = "shell"
                break
            if any(m in out for m in FALLBACK_MARKERS):
                ended = "boot-manager"
                break
            why = stop() if stop else None
            if why:
                ended = why
                break
            if proc.poll() is not None:
                ended = f"exit {proc.returncode}"
                break
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    return ended, time.monotonic() - start
