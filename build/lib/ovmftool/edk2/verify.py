"""`plan --verify`: apply the series to a scratch copy of the tree, build with the same DSC,
target and options, scan the firmware, and fail unless no string I/O site remains."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ovmftool.errors import OvmfToolError

NEEDED = {"gcc": "build-essential", "make": "build-essential", "nasm": "nasm", "iasl": "acpica-tools",
          "python3": "python3", "git": "git"}


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


def scratch_copy(tree: Path, parent: Path) -> Path:
    """Copy the tree (without its Build directory) for a verification build."""
    dest = Path(tempfile.mkdtemp(prefix="edk2-", dir=parent))
    tar = subprocess.Popen(["tar", "-C", str(tree), "--exclude=./Build", "--exclude=./Conf/BuildEnv.sh", "-cf", "-", "."],
                           stdout=subprocess.PIPE)
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
        r = subprocess.run(["make", "-C", str(tree / "BaseTools"), f"-j{os.cpu_count() or 1}"], capture_output=True,
                           text=True)
        if r.returncode != 0:
            raise OvmfToolError(f"building BaseTools failed: {r.stderr.strip().splitlines()[-1:]}")
    args = ["build", "-t", "GCC5", "-p", dsc, "-b", target, "-n", str(os.cpu_count() or 1)]
    for a in arches:
        args += ["-a", a]
    for k, v in defines.items():
        args += ["-D", f"{k}={v}"]
    # The copy's own BaseTools and Conf, whatever the tree's Conf/BuildEnv.sh remembered.
    cmd = ("set -e; unset WORKSPACE PACKAGES_PATH CONF_PATH; export EDK_TOOLS_PATH=\"$PWD/BaseTools\"; "
           ". ./edksetup.sh >/dev/null; " + " ".join(_q(a) for a in args))
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
