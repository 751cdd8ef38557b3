"""Output helpers: every file ovmftool writes is written whole or not at all."""

from __future__ import annotations

import os
import stat
import tempfile

from ovmftool.errors import OvmfToolError


def write_atomic(path: str, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same directory and a rename.

    A symlink is followed (its target is replaced, the link stays). A path that is not a regular
    file — /dev/null, /dev/stdout, a FIFO — is written directly: renaming over it would replace
    the device with a file."""
    path = os.path.realpath(path)
    if os.path.isdir(path):
        raise OvmfToolError(f"{path} is a directory")
    if os.path.exists(path) and not stat.S_ISREG(os.stat(path).st_mode):
        with open(path, "wb") as fh:
            fh.write(data)
        return
    d = os.path.dirname(path)
    if not os.path.isdir(d):
        raise OvmfToolError(f"directory {d} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=".ovmftool-", dir=d)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
