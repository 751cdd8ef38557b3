"""Write a plan's patches as a `git format-patch` series (made by git itself, so `git am` takes it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ovmftool.edk2.strategy import PatchSpec
from ovmftool.errors import OvmfToolError, require_one_line

FIXED_DATE = "Thu, 1 Jan 2026 00:00:00 +0000"  # deterministic series


def _git(cwd: str, *args: str, env: dict | None = None) -> str:
    try:
        r = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env=env)
    except FileNotFoundError:
        raise OvmfToolError("git is needed to write the patch series (apt-get install git)") from None
    if r.returncode != 0:
        raise OvmfToolError(
            f"git {args[0]} failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}"
        )
    return r.stdout


def parse_identity(text: str, option: str) -> tuple[str, str]:
    """`Name <mail>` (--author, --signoff) as (name, mail): one of each, on one line (a newline
    would forge a header or a trailer of the patch)."""
    require_one_line(text, option)
    name, _, mail = text.strip().partition("<")
    name, mail = name.strip(), mail.removesuffix(">").strip()
    if not name or not mail or not text.strip().endswith(">") or any(c in "<>" for c in name + mail):
        raise OvmfToolError(f"{option} must look like 'Name <mail@example.org>', not {text!r}")
    return name, mail


def write_series(patches: list[PatchSpec], out_dir: Path, author: tuple[str, str], signoff: str | None) -> list[Path]:
    """Commit each patch on top of the original files in a scratch repository and format them.
    `author` is (name, mail) as `parse_identity` reads it; `signoff` the trailer's value."""
    name, mail = author
    env = dict(
        os.environ,
        GIT_AUTHOR_NAME=name,
        GIT_AUTHOR_EMAIL=mail,
        GIT_COMMITTER_NAME=name,
        GIT_COMMITTER_EMAIL=mail,
        GIT_AUTHOR_DATE=FIXED_DATE,
        GIT_COMMITTER_DATE=FIXED_DATE,
        GIT_CONFIG_GLOBAL=os.devnull,
        GIT_CONFIG_NOSYSTEM="1",
    )
    work = tempfile.mkdtemp(prefix="ovmftool-series-")
    try:
        _git(work, "init", "-q", env=env)
        _git(work, "config", "core.autocrlf", "false", env=env)
        originals: dict[str, bytes | None] = {}
        for p in patches:
            for e in p.edits:
                originals.setdefault(e.path, e.old)
        for rel, data in originals.items():
            if data is not None:
                f = Path(work, rel)
                f.parent.mkdir(parents=True, exist_ok=True)
                f.write_bytes(data)
        _git(work, "add", "-A", env=env)
        _git(work, "commit", "-q", "--allow-empty", "-m", "base", env=env)
        for p in patches:
            for e in p.edits:
                f = Path(work, e.path)
                f.parent.mkdir(parents=True, exist_ok=True)
                f.write_bytes(e.new)
            msg = f"{p.subject}\n\n{p.body.rstrip()}\n"
            if signoff:
                msg += f"\nSigned-off-by: {signoff}\n"
            _git(work, "add", "-A", env=env)
            subprocess.run(
                ["git", "commit", "-q", "-F", "-"],
                cwd=work,
                input=msg,
                text=True,
                env=env,
                check=True,
                capture_output=True,
            )
        tmp_out = Path(work, ".series")
        _git(
            work,
            "format-patch",
            "-q",
            "--zero-commit",
            "--no-signature",
            "--full-index",
            "-N" if len(patches) == 1 else "-n",
            "-o",
            str(tmp_out),
            f"HEAD~{len(patches)}",
            env=env,
        )
        files = sorted(tmp_out.glob("*.patch"))
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for f in files:
            dest = out_dir / f.name
            shutil.copyfile(f, dest)
            written.append(dest)
        return written
    finally:
        shutil.rmtree(work, ignore_errors=True)


def check_applies(series: list[Path], tree: Path) -> None:
    """`git apply --check` the series, in order, against `tree` (a scratch copy is not needed)."""
    for p in series:
        r = subprocess.run(["git", "apply", "--check", "-p1", str(p)], cwd=tree, capture_output=True, text=True)
        if r.returncode != 0:
            raise OvmfToolError(f"{p.name} does not apply to {tree}: {r.stderr.strip().splitlines()[-1]}")
        # later patches in this series touch other files, so checking each against the pristine tree is valid
