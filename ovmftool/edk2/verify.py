"""`plan --verify`: apply the series to a scratch copy of the tree, build with the same DSC,
target and options, scan the firmware, boot it to the UEFI shell, and fail unless no string I/O
site remains and none executed. Optionally also measure what switching the DSC alone removes."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ovmftool.boot.check import boot_image
from ovmftool.boot.qemu import qemu_binary
from ovmftool.edk2.series import write_series
from ovmftool.errors import OvmfToolError
from ovmftool.scan.scanner import default_jobs, scan_checked

NEEDED = {
    "gcc": "build-essential",
    "make": "build-essential",
    "nasm": "nasm",
    "iasl": "acpica-tools",
    "python3": "python3",
    "git": "git",
}


@dataclass
class BuildResult:
    """One verification build."""

    fd: Path
    seconds: float
    log: Path


def check_toolchain() -> None:
    """Fail with the apt packages to install when the EDK II toolchain is missing."""
    missing = sorted({pkg for tool, pkg in NEEDED.items() if shutil.which(tool) is None})
    if not Path("/usr/include/uuid/uuid.h").is_file():
        missing.append("uuid-dev")
    if missing:
        raise OvmfToolError(f"the EDK II toolchain is incomplete: apt-get install {' '.join(sorted(set(missing)))}")


def check_tools(boot: bool) -> None:
    """Everything `--verify` needs, checked before anything is written, copied or built."""
    check_toolchain()
    if boot:
        qemu_binary()


def verify_plan(
    p,
    series: list[Path],
    target: str,
    before_image: str | None,
    scratch: str | None,
    keep_dir: Path,
    dsc_switch=None,
    boot: bool = True,
    say=None,
) -> dict:
    """Build the tree of plan `p` with `series` applied (and, when given, with the DSC switch
    alone: `dsc_switch`, a list of PatchSpec), scan each image, boot the patched one; the `verification` record of
    plan.json.
    The patched image is copied into `keep_dir`. Raises OvmfToolError when a site remains or
    the boot did not reach the shell (or boot manager) without string I/O."""
    say = say or (lambda _msg: None)
    tree = Path(p.tree)
    base = Path(scratch).resolve() if scratch else Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)

    def built(patches: list[Path], what: str):
        work = scratch_copy(tree, base)
        try:
            apply_series(work, patches)
            say(f"verify: building {what} ({target})")
            b = build(work, p.dsc, target, p.arches, p.defines, base / f"{work.name}-build-{what}.log")
            res = scan_checked(str(b.fd), jobs=default_jobs())
            return work, b, res
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise

    out: dict = {}
    if before_image:
        before = scan_checked(before_image, jobs=default_jobs())
        out["before"] = {"image": Path(before_image).name, "sha256": before.sha256, "sites": len(before.findings)}
    else:
        work, b, before = built([], "before")
        shutil.rmtree(work, ignore_errors=True)
        out["before"] = {"sites": len(before.findings), "build_seconds": round(b.seconds)}
    if dsc_switch:
        sdir = Path(tempfile.mkdtemp(prefix="dsc-switch-", dir=base))
        try:
            names = write_series(dsc_switch, sdir, ("ovmftool", "ovmftool@users.noreply.invalid"), None)
            work, b, sw = built(names, "dsc-switch")
            shutil.rmtree(work, ignore_errors=True)
        finally:
            shutil.rmtree(sdir, ignore_errors=True)
        out["dsc_switch"] = {
            "sites": len(sw.findings),
            "build_seconds": round(b.seconds),
            "series": [s.subject for s in dsc_switch],
        }
    work, b, after = built(series, "after")
    try:
        name = f"{b.fd.stem}.patched.fd"
        shutil.copyfile(b.fd, keep_dir / name)
        out["after"] = {
            "sites": len(after.findings),
            "build_seconds": round(b.seconds),
            "image": name,
            "sha256": after.sha256,
        }
        if boot and not after.findings:
            out["boot"] = _boot(b.fd, after, say)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out["target"] = target
    sw_txt = f", {out['dsc_switch']['sites']} with the DSC switch alone" if dsc_switch else ""
    say(f"verify: {out['before']['sites']} sites before, {out['after']['sites']} after{sw_txt}")
    if out["after"]["sites"]:
        raise OvmfToolError(f"verification failed: {out['after']['sites']} string I/O sites remain after the series")
    bt = out.get("boot")
    if bt and (not bt["finished"] or bt["executed"]):
        raise OvmfToolError(
            f"verification failed: the patched build's boot ended {bt['verdict']} with "
            f"{bt['executed']} string I/O instruction(s) executed"
        )
    return out


def _boot(fd: Path, scan, say) -> dict:
    """boot-check the patched build with the variable store the build made beside it."""

    say(f"verify: booting the patched {fd.name} under QEMU")
    bc = boot_image(str(fd), timeout=300.0, scan=scan)
    return {
        "verdict": bc.verdict,
        "finished": bc.finished,
        "executed": len(bc.executed),
        "seconds": round(bc.seconds, 1),
        "vars": bc.vars.get("source", ""),
    }


def scratch_copy(tree: Path, parent: Path) -> Path:
    """Copy the tree (without its Build directory) for a verification build."""
    dest = Path(tempfile.mkdtemp(prefix="edk2-", dir=parent))
    tar = subprocess.Popen(
        ["tar", "-C", str(tree), "--exclude=./Build", "--exclude=./Conf/BuildEnv.sh", "-cf", "-", "."],
        stdout=subprocess.PIPE,
    )
    r = subprocess.run(["tar", "-C", str(dest), "-xf", "-"], stdin=tar.stdout, capture_output=True)
    tar.wait()
    if tar.returncode or r.returncode:
        raise OvmfToolError(f"copying {tree} failed")
    return dest


def apply_series(tree: Path, series: list[Path]) -> None:
    """`git apply` each patch in order."""
    for p in series:
        r = subprocess.run(["git", "apply", "-p1", str(p)], cwd=tree, capture_output=True, text=True)
        if r.returncode != 0:
            raise OvmfToolError(f"{p.name} does not apply: {r.stderr.strip()}")


def build(tree: Path, dsc: str, target: str, arches: list[str], defines: dict[str, str], log: Path) -> BuildResult:
    """Build OVMF in `tree` with GCC5; returns the code FD."""
    if not (tree / "BaseTools" / "Source" / "C" / "bin" / "GenFw").is_file():
        r = subprocess.run(
            ["make", "-C", str(tree / "BaseTools"), f"-j{os.cpu_count() or 1}"], capture_output=True, text=True
        )
        if r.returncode != 0:
            raise OvmfToolError(f"building BaseTools failed: {r.stderr.strip().splitlines()[-1:]}")
    args = ["build", "-t", "GCC5", "-p", dsc, "-b", target, "-n", str(os.cpu_count() or 1)]
    for a in arches:
        args += ["-a", a]
    for k, v in defines.items():
        args += ["-D", f"{k}={v}"]
    # The copy's own BaseTools and Conf, whatever the tree's Conf/BuildEnv.sh remembered.
    cmd = (
        'set -e; unset WORKSPACE PACKAGES_PATH CONF_PATH; export EDK_TOOLS_PATH="$PWD/BaseTools"; '
        ". ./edksetup.sh >/dev/null; " + " ".join(_q(a) for a in args)
    )
    start = time.monotonic()
    with open(log, "w") as fh:
        r = subprocess.run(["bash", "-c", cmd], cwd=tree, stdout=fh, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        raise OvmfToolError(f"build failed (log {log}): {' | '.join(tail)}")
    out = None
    for line in (tree / dsc).read_text(errors="replace").splitlines():
        if line.strip().startswith("OUTPUT_DIRECTORY"):
            out = line.split("=", 1)[1].strip()
            break
    fv = tree / (out or "Build") / f"{target}_GCC5" / "FV"
    for name in ("OVMF_CODE.fd", "OVMF.fd", "BHYVE_CODE.fd", "BHYVE.fd"):
        if (fv / name).is_file():
            return BuildResult(fv / name, time.monotonic() - start, log)
    raise OvmfToolError(f"build succeeded but no firmware image in {fv}")


def _q(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"
