"""Rendering of a `boot-check` result (JSON is `BootCheck.as_dict`, schema ovmftool.boot-check/1)."""

from __future__ import annotations

from ovmftool.boot.check import BootCheck, Terminated
from ovmftool.report.document import header, to_json

BOOT_SCHEMA = "ovmftool.boot-check/1"


def _where(bc: BootCheck) -> str:
    """` in MODULE (PHASE) at rva 0x… in FUNCTION (0xADDRESS)`."""
    st = bc.stopped_at
    if st is None:
        return ""
    s = f" in {st.where()}"
    if st.address is not None:
        s += f" (0x{st.address:X}{', halted' if st.halted else ''}"
        s += ", the last code QEMU translated)" if st.source == "last-translated" else ")"
    return s


def _last_output(bc: BootCheck) -> str:
    st = bc.stopped_at
    if st is None:
        return ""
    if st.last_debug:
        return f', last debug line "{st.last_debug}"'
    if st.last_serial:
        return f', last serial line "{st.last_serial}"'
    return ", no serial or debug-console output"


def boot_failure(bc: BootCheck) -> str | None:
    """The one-line error for a boot that did not reach its end (None when it did, or when
    --fail-fast stopped it at the first string I/O)."""
    if bc.finished or bc.verdict == "fail-fast":
        return None
    if bc.verdict == "hang":
        what = f"hung for {bc.quiet:.0f} s (no new output or code)"
    elif bc.verdict == "timeout":
        what = "still running at the timeout"
    elif bc.verdict == "reset":
        what = f"the guest reset ({bc.detail})"
    else:
        what = f"QEMU exited ({bc.detail})"
    return f"{bc.image}: boot did not finish: {what}{_where(bc)}, {bc.seconds:.1f} s into the boot{_last_output(bc)}"


def boot_text(bc: BootCheck) -> str:
    """The boot's end, each executed site (first marked), notes, where the logs are."""
    out = [f"{bc.image}: boot ended: {bc.ended} after {bc.seconds:.1f} s"]
    if bc.stopped_at is not None:
        out.append(f"  stopped{_where(bc)}{_last_output(bc)}")
    for e in bc.executed:
        where = (
            f"{e.module} rva 0x{e.rva:X} in {e.function or '?'} ({e.mapped_by})"
            if e.module
            else ("candidates: " + ", ".join(e.candidates) if e.candidates else "unmapped")
        )
        first = "  <= first: propolis without DecodeAssist stops here" if e.order == 0 else ""
        runs = ""
        if e.executions is not None:
            port = (
                f"port 0x{e.port:X}"
                if e.port is not None
                else ("ports " + ",".join(f"0x{p:X}" for p in e.ports) if e.ports else "port ?")
            )
            units = f", {e.units} units" if e.units is not None else ""
            runs = f"  [{port}, {e.executions}x{units}]"
        out.append(f"  0x{e.address:X}  {e.mnemonic:<10} {e.bytes:<8} {where}{runs}{first}")
    out += [f"note: {n}" for n in bc.notes]
    if bc.kept:
        out.append(
            f"logs kept in {bc.kept} (serial.log, debug.log, trace.log"
            + (", code.bin" if bc.logs.get("code") else "")
            + (", count/" if bc.logs.get("count_debug") else "")
            + ")"
        )
    out.append(
        f"boot-check: {len(bc.executed)} string I/O instruction(s) executed"
        + ("" if bc.counted or not bc.executed else " (not counted: the second boot was skipped or ran differently)")
    )
    return "\n".join(out) + "\n"


def terminated_line(t: Terminated, keep: str | None) -> str:
    """The one stderr line when a stop signal ended boot-check (exit `t.exit_code`)."""
    where = f"the logs so far are in {keep}" if keep else "its work directory removed"
    return f"ovmftool: terminated by {t.name}: boot-check stopped, QEMU killed, {where}"


def boot_error_json(image: str, message: str) -> str:
    """The JSON document of a boot-check that stopped before or without a boot (exit 2): the
    image and the error line (schema ovmftool.boot-check/1, its error form)."""
    return to_json(header(BOOT_SCHEMA, image=image, error=message))


def render_boot(bc: BootCheck, fmt: str) -> str:
    """`boot-check` in `fmt` ("text" or "json")."""
    return to_json({**header(BOOT_SCHEMA), **bc.as_dict()}) if fmt == "json" else boot_text(bc)


def progress_line(seconds: float) -> str:
    """The line a terminal sees (and overwrites) while the boot runs."""
    return f"\rbooting... {seconds:5.0f} s"
