"""`boot-check`: boot the firmware under QEMU (TCG) and report every string port-I/O instruction
that executed — where propolis without DecodeAssist would stop.

QEMU's `-d in_asm` log lists every translated block with guest addresses and bytes: a block that
was translated was about to run. Executed INS/OUTS are mapped back to modules:

- from the DEBUG log on the ISA debug console (port 0x402): `Loading PEIM at …`/`Loading driver
  at …` lines give each image's load address (exact);
- PEI modules that execute in place run at their image base (exact);
- otherwise by the scanner's sites with the same instruction at the same offset within a 4 KiB
  page (images load page-aligned); when several modules qualify, the one whose code matches
  the other blocks QEMU translated around that load address wins (`code-match`); if none
  stands out, all candidates are listed.

A second boot counts executions and reads the I/O port: QEMU logs each execution of the
translated blocks that contain an executed site (`-d exec,cpu,nochain -dfilter`), with the CPU
registers on entry. An entry into the instruction (a block that starts before it) is one
execution, with RCX = count and DX = port when the block does not change them first; QEMU runs
each further REP iteration as a block at the instruction itself, so iterations are counted too.
A block QEMU logged but did not run (an interrupt was taken first: "Stopped execution of TB
chain") is not counted.

With the TCG plugin built (`ovmftool/boot/plugin`: `corpus/scripts/qemu-plugin.sh`) all of this
comes from ONE boot without `-d in_asm`: the plugin records the string I/O sites QEMU translates,
counts their executions and memory accesses, has boot-check read RDX/RCX at each entry (QMP
`info registers` while it waits) and dumps the translated code (`code.bin`) for mapping and hang
detection. Without it (or with OVMFTOOL_BOOT_PLUGIN=0) the two boots above run, and a note says so.

A boot that does not reach the shell (or the boot manager's fallback) is not a pass: a hang (no
new serial, debug-console output or translated code for a while), a reset (triple fault), QEMU
exiting or the timeout each get a verdict and `StoppedAt`: the CPU's address (or the last block
QEMU translated) mapped to module, phase and function (`locate`).

The parts: `records` (what is reported), `trace` (reading QEMU's logs and the plugin's dump),
`locate` (addresses to modules and functions, through the scan's `ModuleCode`), `signals`
(stopping cleanly); this file runs the boots.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from ovmftool.boot import plugin
from ovmftool.boot.locate import locate, map_to_modules, stopped_where
from ovmftool.boot.qemu import Ending, Qemu, close_all, qemu_binary, wait
from ovmftool.boot.records import BootCheck, Executed, StoppedAt
from ovmftool.boot.signals import STOP_SIGNALS, InBackground, Terminated, signals_held, stop_on_signals
from ovmftool.boot.trace import INSN_LINE, STRING_IO, executed_string_io
from ovmftool.boot.varstore import VarsPlan, plan_vars
from ovmftool.errors import OvmfToolError
from ovmftool.model.binary import BinaryFile
from ovmftool.model.flash import FlashImage
from ovmftool.model.parser import read_image
from ovmftool.ops.modules import iter_modules
from ovmftool.scan.advice import platform_dsc
from ovmftool.scan.scanner import ScanResult, default_jobs, scan_checked

__all__ = [  # what callers import from here (the records and signals live in their own files)
    "STOP_SIGNALS",
    "BootCheck",
    "Executed",
    "StoppedAt",
    "Terminated",
    "boot_check",
    "boot_image",
    "check_bootable",
    "locate",
    "stop_on_signals",
]


# The first boot logs translations only (`in_asm`: a block is logged when translated, chained or
# not); `nochain` there changed what QEMU 7.2 executes in SMM builds (they hung at
# PcdCpuSmmStackGuard: Debian's secure-boot images), and in_asm does not need it.
FIRST_BOOT_LOG = ["-d", "in_asm,cpu_reset"]  # cpu_reset: QEMU names a triple fault
COUNT_SLOWDOWN, COUNT_MIN_SECONDS = 10.0, 30.0  # the counting boot's budget: times the first boot's, at least


def run_boot(
    code: Path,
    vars_file: Path | None,
    machine: str,
    timeout: float,
    fail_fast: bool,
    work: Path,
    progress=None,
    hang_after: float | None = None,
) -> Ending:
    """Boot with the translation log on; stop at the shell, the timeout, a hang, or (fail_fast)
    the first string I/O."""
    q = Qemu(code, vars_file, work, machine, log=FIRST_BOOT_LOG)
    trace = q.trace
    pos = [0]

    def first_string_io() -> str | None:
        if not fail_fast:
            return None
        with open(trace, "rb") as fh:
            fh.seek(pos[0])
            chunk = fh.read()
        pos[0] += max(0, len(chunk) - 200)
        return "fail-fast" if STRING_IO.search(chunk.decode(errors="replace")) else None

    return wait(q, timeout, hang_after, first_string_io, progress)


_TRACE = re.compile(r"^Trace \d+: \S+ \[[0-9a-f]+/([0-9a-f]+)/")
_STOPPED = re.compile(r"\[([0-9a-f]+)\]")
_REGS = re.compile(r"\b[RE]([CD])X=([0-9a-f]+)")


def count_executions(
    code: Path, vars_file: Path | None, machine: str, timeout: float, execd: list[Executed], work: Path, progress=None
) -> bool:
    """Second boot logging only the blocks that hold executed sites: executions, REP iterations,
    counts and ports. False if that boot did not run the same sites (nothing is attached then)."""
    if not execd:
        return True
    ranges = ",".join(f"0x{min(b for b, _ in e.blocks + [(e.address, False)]):x}..0x{e.address:x}" for e in execd)
    q = Qemu(code, vars_file, work / "count", machine, log=["-d", "in_asm,exec,cpu,nochain", "-dfilter", ranges])
    trace = q.trace
    ended = wait(q, timeout, None, None, progress).verdict
    blocks = {e.address: {b: dirty for b, dirty in e.blocks} for e in execd}
    stats = {
        e.address: {
            "entries": 0,
            "again": 0,
            "units": 0,
            "ports": set(),
            "unknown": False,
            "rep": e.mnemonic.startswith("rep"),
        }
        for e in execd
    }
    owner = {}
    for e in execd:
        for b, _ in e.blocks:
            owner.setdefault(b, []).append(e.address)
    cur: int | None = None
    regs: dict[str, int] = {}
    code_at: dict[int, bytes] = {}  # instruction bytes of the latest translation at each logged address
    valid: dict[int, set[int]] = {}  # block start -> sites it holds with the expected bytes (latest translation)
    want = {e.address: bytes.fromhex(e.bytes) for e in execd}
    block: int | None = None
    with open(trace, errors="replace") as fh:
        for line in fh:
            m = _TRACE.match(line)
            if m:
                _flush(cur, regs, owner, blocks, stats, valid)
                cur, regs, block = int(m.group(1), 16), {}, None
                continue
            if line.startswith("Stopped execution"):  # the block logged last did not run (interrupt)
                sm = _STOPPED.search(line)
                if sm and cur == int(sm.group(1), 16):
                    cur = None
                continue
            if line.startswith("IN:"):
                _flush(cur, regs, owner, blocks, stats, valid)
                cur, block = None, -1
                continue
            if block is not None:
                im = INSN_LINE.match(line)
                if im:
                    a = int(im.group(1), 16)
                    block = a if block == -1 else block
                    code_at[a] = bytes.fromhex(im.group(2).replace(" ", ""))
                    if a in want:  # code at the site changed: other images reuse this memory
                        valid[block] = {s for s in owner.get(block, ()) if code_at.get(s) == want[s]}
                continue
            if cur is not None and ("DX=" in line or "CX=" in line):
                for r, v in _REGS.findall(line):
                    regs[r] = int(v, 16)
    _flush(cur, regs, owner, blocks, stats, valid)
    if ended not in ("shell", "boot-manager") or any(st["entries"] == 0 for st in stats.values()):
        return False
    for e in execd:
        st = stats[e.address]
        e.executions = st["entries"]
        e.iterations = st["entries"] + st["again"] if e.mnemonic.startswith("rep") else st["entries"]
        e.units = None if st["unknown"] else st["units"]
        ports = sorted(st["ports"])
        e.port = ports[0] if len(ports) == 1 else None
        e.ports = ports
    return True


def _flush(pc, regs, owner, blocks, stats, valid) -> None:
    """Account one logged block execution (pc, registers on entry) to the sites it holds (as
    last translated: memory another image reuses runs other code at the same address)."""
    if pc is None:
        return
    for site in owner.get(pc, ()):
        if site not in valid.get(pc, ()):
            continue
        st = stats[site]
        clean = not blocks[site].get(pc, True)
        # QEMU runs each further REP iteration as a block at the instruction itself; when the
        # instruction also sits in a block that starts before it, blocks at it are iterations.
        if st["rep"] and pc == site and any(b < site for b in blocks[site]):
            st["again"] += 1
        else:
            st["entries"] += 1
            if not st["rep"]:
                st["units"] += 1
            elif clean and "C" in regs:
                st["units"] += regs["C"]
            else:
                st["unknown"] = True
        if clean and "D" in regs:
            st["ports"].add(regs["D"] & 0xFFFF)


# --- one boot with the TCG plugin ---------------------------------------------------------------

PLUGIN_BOOT_LOG = ["-d", "cpu_reset"]  # QEMU still names a triple fault; no translation log


def run_plugin_boot(
    code: Path,
    vars_file: Path | None,
    machine: str,
    timeout: float,
    fail_fast: bool,
    work: Path,
    so: Path,
    query: bool,
    progress=None,
    hang_after: float | None = None,
) -> tuple[Ending, plugin.Table | None, list]:
    """Boot once with the plugin; stop as run_boot does (fail_fast: at the first string I/O the
    plugin saw execute). The plugin's table (None: it did not start) and the registers read at
    each entry (`query`)."""
    table_path = work / "strio-table.bin"
    for f in (table_path, work / "code.bin"):
        f.unlink(missing_ok=True)
    resp = plugin.Responder() if query else None
    try:
        fd = resp.theirs.fileno() if resp else None
        q = Qemu(
            code,
            vars_file,
            work,
            machine,
            log=PLUGIN_BOOT_LOG,
            extra=plugin.plugin_args(so, work, fd),
            watch=work / "code.bin",
            pass_fds=(fd,) if resp else (),
        )
        if resp:
            resp.start(q)

        def first_string_io() -> str | None:
            return "fail-fast" if fail_fast and plugin.executed_any(table_path) else None

        end = wait(q, timeout, hang_after, first_string_io, progress)
    finally:
        if resp:
            resp.close()
    return end, plugin.read_table(table_path), resp.answers if resp else []


def executed_from_plugin(table: plugin.Table, answers: list, counted: bool) -> tuple[list[Executed], list[str]]:
    """Executed sites from the plugin's table, in order of first translation; with executions,
    iterations, units and ports when `counted`. Notes on anything that limits them."""
    notes = []
    sites = plugin.sites_with_registers(table, answers)
    out = []
    for i, s in enumerate(sites):
        e = Executed(s.address, s.bytes, s.mnemonic, i, s.translations)
        if counted:
            e.executions, e.iterations, e.units = s.executions, s.iterations, s.accesses
            plain_outs = not s.rep and int(s.bytes[-2:], 16) >= 0x6E
            ports = set() if plain_outs else {r["D"] & 0xFFFF for r in s.entry_regs() if "D" in r}
            e.ports = sorted(ports)
            e.port = e.ports[0] if len(e.ports) == 1 else None
        out.append(e)
    if table.overflow:
        notes.append("more string I/O sites than the plugin's table holds: the list is cut short")
    if counted and table.query_failed:
        notes.append(
            "ports are from the entries whose registers could be read "
            + (
                f"(the plugin's limit of {plugin.MAX_QUERIES} reads was reached)"
                if table.query_failed & 2
                else "(boot-check stopped answering the plugin)"
            )
        )
    return out, notes


# --- the whole check ------------------------------------------------------------------------------


# OvmfPkg platforms whose firmware QEMU's q35/pc machines do not boot: why, and what does
_OTHER_VMM = {
    "OvmfPkg/CloudHv/CloudHvX64.dsc": "a Cloud Hypervisor firmware (CloudHvX64: a PVH ELF image): boot it with "
    "cloud-hypervisor",
    "OvmfPkg/OvmfXen.dsc": "a Xen firmware (OvmfXen): it boots as a Xen HVM/PVH guest's firmware",
    "OvmfPkg/Bhyve/BhyveX64.dsc": "a bhyve firmware (BhyveX64: bhyve's devices and ACPI): boot it with bhyve",
}
# Platforms QEMU boots on a machine of their own (firmware loaded with `-bios`: see Qemu)
_OWN_MACHINE = {"OvmfPkg/Microvm/MicrovmX64.dsc": ("microvm", "a microvm firmware (MicrovmX64)")}


def check_bootable(image: str, root: FlashImage, machine: str | None = None) -> str:
    """Refuse (before any work) an input boot-check cannot boot: a standalone module, the
    firmware of a platform QEMU does not boot (named by its modules, as `scan`'s advice names
    the DSC), a machine the firmware was not built for. Returns the machine to boot it on:
    `machine`, else the platform's own (microvm), else q35."""
    if isinstance(root, BinaryFile):
        raise OvmfToolError(
            f"{image} is a standalone UEFI module, not a flash image: boot-check boots a firmware "
            "image (OVMF_CODE.fd or OVMF.fd)"
        )
    mods = list(iter_modules(root))
    dsc, why = platform_dsc(tuple(sorted({m.arch for m in mods})), {m.name for m in mods})
    if dsc in _OTHER_VMM:
        raise OvmfToolError(
            f"{image} is {_OTHER_VMM[dsc]} ({why}); boot-check boots firmware for QEMU's q35, pc and microvm machines"
        )
    own, what = _OWN_MACHINE.get(dsc, (None, ""))
    if own is not None and machine not in (None, own):
        raise OvmfToolError(
            f"{image} is {what} ({why}): it boots only on QEMU's {own} machine, not --machine {machine}"
        )
    if own is None and machine in {m for m, _w in _OWN_MACHINE.values()}:
        raise OvmfToolError(
            f"{image} is not a {machine} firmware (built for {dsc}): --machine {machine} boots only firmware built "
            f"for that machine"
        )
    return machine or own or "q35"


def boot_check(
    image: str,
    root: FlashImage,
    scan,
    vars_plan: VarsPlan,
    machine: str = "q35",
    timeout: float = 180.0,
    fail_fast: bool = False,
    keep: Path | None = None,
    progress=None,
    count: bool = True,
    hang_after: float | None = 30.0,
) -> BootCheck:
    """Boot, collect executed string I/O, map it to modules; then (unless `fail_fast` or not
    `count`) boot again to count executions and read ports. A boot that does not reach the shell
    (or the boot manager's fallback) says where it stopped. The work directory (logs, the copy of
    the variable store) is removed at the end unless `keep` names it (created if absent; its
    parent must exist): also on an error, Ctrl-C, or `Terminated` (see `stop_on_signals`); every
    QEMU started is killed first. `scan`: the image's ScanResult, or a function returning it (run
    while the first boot runs)."""
    notes = [n] if (n := vars_plan.note(machine)) else []
    if hang_after is not None and hang_after >= timeout:
        notes.append(f"hang detection off: --hang-after {hang_after:g} is not below --timeout {timeout:g}")
        hang_after = None
    work: Path | None = None
    try:
        with signals_held():  # no signal between creating the directory and knowing to remove it
            work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="ovmftool-bootcheck-"))
        work.mkdir(exist_ok=True)
        template = vars_plan.template(work)
        pending = InBackground(scan) if callable(scan) else None
        so = plugin.build_at_first_use() if plugin.enabled() else None
        end = None
        if so is not None:
            end, table, answers = run_plugin_boot(
                Path(image),
                template,
                machine,
                timeout,
                fail_fast,
                work,
                so,
                count and not fail_fast,
                progress,
                hang_after,
            )
            if table is None:  # the plugin did not load: QEMU refused it
                notes.append(f"the boot-check TCG plugin did not load ({end.detail or end.verdict}): two boots")
                end = None
                (work / "code.bin").unlink(missing_ok=True)
        elif plugin.enabled():
            notes.append(
                "two boots (the second counts executions and reads ports): the boot-check TCG plugin "
                "could not be built for this QEMU (a C compiler and its qemu-plugin.h are needed: "
                "corpus/scripts/qemu-plugin.sh)"
            )
        counted = False
        if end is not None:  # one boot: the plugin counted
            counted = count and not fail_fast and end.finished
            execd, more = executed_from_plugin(table, answers, counted)
            notes += more
            counted = counted and bool(execd)
            scan = pending.result() if pending else scan
            map_to_modules(execd, root, scan, work / "debug.log", work / "code.bin")
            stopped = None if end.finished else stopped_where(end, root, work)
        else:
            end = run_boot(Path(image), template, machine, timeout, fail_fast, work, progress, hang_after)
            execd = executed_string_io(work / "trace.log")
            scan = pending.result() if pending else scan
            map_to_modules(execd, root, scan, work / "debug.log", work / "trace.log")
            stopped = None if end.finished else stopped_where(end, root, work)
            if count and not fail_fast and execd and end.finished:
                # the counting boot logs every execution of the sites' blocks (no TB chaining): a
                # few times slower than the first; past COUNT_SLOWDOWN times, it is given up (SMM
                # builds under QEMU 7.2 do not finish without chaining), and the sites are listed
                # uncounted
                budget = min(timeout, max(COUNT_MIN_SECONDS, COUNT_SLOWDOWN * end.seconds))
                counted = count_executions(Path(image), template, machine, budget, execd, work, progress)
        logs = {}
        if keep:
            logs = {
                "serial": str(work / "serial.log"),
                "debug": str(work / "debug.log"),
                "trace": str(work / "trace.log"),
                "count_debug": str(work / "count" / "debug.log") if counted and (work / "count").is_dir() else None,
                "code": str(work / "code.bin") if (work / "code.bin").is_file() else None,
            }  # text only
        return BootCheck(
            image,
            end.verdict,
            end.seconds,
            execd,
            vars_plan.as_dict(),
            end.detail,
            end.quiet,
            hang_after,
            stopped,
            counted,
            logs,
            str(work) if keep else None,
            notes,
        )
    finally:
        with signals_held():  # a second signal waits until QEMU is gone and the directory removed
            close_all()
            if work is not None and not keep:
                shutil.rmtree(work, ignore_errors=True)


def boot_image(
    image: str,
    vars_file: str | None = None,
    machine: str | None = None,
    timeout: float = 180.0,
    fail_fast: bool = False,
    keep: Path | None = None,
    progress=None,
    count: bool = True,
    hang_after: float | None = 30.0,
    scan: ScanResult | None = None,
) -> BootCheck:
    """`boot-check` of the file `image`: the refusals first (not an image that boots, a store of
    the wrong size, no QEMU), before anything boots; then `boot_check`, with the image scanned
    while QEMU boots unless `scan` is the image's result already."""
    root = read_image(image)
    machine = check_bootable(image, root, machine)
    plan = plan_vars(image, vars_file)
    qemu_binary()
    todo = scan if scan is not None else (lambda: scan_checked(image, None, default_jobs(), root=root))
    return boot_check(
        image, root, todo, plan, machine, timeout, fail_fast, keep, progress, count=count, hang_after=hang_after
    )
