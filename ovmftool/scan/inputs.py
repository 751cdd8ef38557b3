"""`scan`'s inputs: files, directories and glob patterns, expanded into the images to scan.

- A **file** (or anything that is not a directory and not a pattern) is an input as given, even
  when it does not exist: its scan then fails and says why, in its place.
- A **directory** stands for every file under it, recursively, whose name ends (in any case)
  in one of `IMAGE_SUFFIXES` — `.fd`, `.fv`, `.rom`, `.bin`, `.efi`, `.te` — in sorted order
  (sorted by path, component by component). Symbolic links are followed (each directory is
  read once, so a link loop ends). Entries with such a name that are not regular files
  (broken links, FIFOs, devices) are inputs too and fail (`not a regular file`), as does a
  subdirectory that cannot be listed: no image is left out silently. A directory holding no such file fails itself:
  `DIR: no firmware image
  (*.fd, ...) in this directory`.
- A **glob pattern** (`*`, `?`, `[...]`, and `**` for any depth), for a shell or CI that passes it
  quoted, expands here as the shell would (hidden names only when the pattern spells the dot),
  sorted and without duplicates; each match is then an input as if given on the command line
  (a matched directory expands as above). A pattern that matches nothing fails: `PATTERN: no
  file matches`. An argument that exists as a file or directory is never read as a pattern.

Inputs keep the order of the arguments; a file a directory or pattern brings in again (it
was named, or brought in, before) is taken once. Files of identical contents (a file named twice, a copy
under another name) are scanned once and reported under each name. A failing input
(`ScanFailure`) keeps its place and makes the exit code 2, as an unreadable image does, except
that a file a directory or pattern brought in which holds nothing the tool checks (a variable
store, a blob `extract` wrote, a PE that is no UEFI module, firmware for another architecture:
`errors.NothingToCheck`; but not a `.fd`/`.fv`/`.rom` with no volume: a cut image) is listed as
skipped with the reason and does not change the verdict.
Named on the command line, such a file is an error.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable

from ovmftool.scan.scanner import Found, ScanFailure

IMAGE_SUFFIXES = (".fd", ".fv", ".rom", ".bin", ".efi", ".te")
_MAGIC = frozenset("*?[")


def is_pattern(arg: str) -> bool:
    """True for an argument the tool expands: it holds a glob character and names no existing path."""
    return any(c in _MAGIC for c in arg) and not os.path.lexists(arg)


def expand_inputs(args: Iterable[str]) -> list[str | ScanFailure]:
    """The images to scan, in order, for `scan`'s arguments (see the module's doc)."""
    out: list[str | ScanFailure] = []
    for arg in args:
        if is_pattern(arg):
            matches = sorted(set(glob.glob(arg, recursive=True)))
            if not matches:
                out.append(ScanFailure(arg, f"{arg}: no file matches"))
            for m in matches:
                out += [Found(x) if isinstance(x, str) else x for x in _expand_path(m)]
        else:
            out += _expand_path(arg)
    return _once(out)


def _once(items: list[str | ScanFailure]) -> list[str | ScanFailure]:
    """`items` without a file a directory or pattern brought in again (`Found`) when an earlier
    input is the same file: overlapping arguments (`fw fw/x64/OVMF_CODE.fd`, two patterns)
    scan and report each file once. A file named twice on the command line stays twice."""
    seen: set[str] = set()
    out: list[str | ScanFailure] = []
    for x in items:
        if isinstance(x, str):
            real = os.path.realpath(x)
            if isinstance(x, Found) and real in seen:
                continue
            seen.add(real)
        out.append(x)
    return out


def _expand_path(path: str) -> list[str | ScanFailure]:
    if not os.path.isdir(path):
        return [path]
    found = directory_images(path)
    if not found:
        kinds = ", ".join("*" + s for s in IMAGE_SUFFIXES)
        return [ScanFailure(path, f"{path}: no firmware image ({kinds}) in this directory")]
    return [Found(x) if isinstance(x, str) else x for x in found]


def directory_images(top: str) -> list[str | ScanFailure]:
    """Every path under the directory `top` whose name ends in an image suffix, in sorted order
    (each directory's entries by name, a subdirectory's files in its place); a directory reached
    twice (links) is read once; one that cannot be listed is a failing input in its place."""
    out: list[str | ScanFailure] = []
    seen: set[tuple[int, int]] = set()
    stack = [iter([top])]  # depth first, in name order, without recursion (any depth)
    while stack:
        d = next(stack[-1], None)
        if d is None:
            stack.pop()
            continue
        if d is not top and not os.path.isdir(d):
            if os.path.basename(d).lower().endswith(IMAGE_SUFFIXES):
                out.append(d)
            continue
        try:
            st = os.stat(d)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            names = sorted(os.listdir(d))
        except OSError as e:
            out.append(ScanFailure(d, f"cannot read directory {d}: {e.strerror}"))
            continue
        stack.append(iter([os.path.join(d, n) for n in names]))
    return out
