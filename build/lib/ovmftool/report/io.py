"""Output helpers: every file ovmftool writes is written whole or not at all."""

from __future__ import annotations

import os
import tempfile

from ovmftool.errors import OvmfToolError


def write_atomic(path: str, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same directory and a rename."""
    path = os.path.abspath(path)
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
