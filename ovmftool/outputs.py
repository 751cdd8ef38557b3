"""Output helpers: every file ovmftool writes is written whole or not at all.

Outputs honour the umask like any file a shell redirection or `cp` makes (0644 files, 0755
directories under umask 022), and an output that replaces an existing file or (empty) directory
keeps that one's mode. Whether an output can be written is checked before any work starts
(`check_output_file`, `check_output_dir`), so an unwritable `-o` is one line naming the path and
the system's reason, not an error after minutes of work.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable

from ovmftool.errors import OvmfToolError

_umask_cache: int | None = None


def current_umask() -> int:
    """The process umask, read without changing it (Linux: /proc/self/status).

    Where /proc does not say, it is read once by setting and restoring it, and remembered."""
    global _umask_cache
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    if _umask_cache is None:
        old = os.umask(0o022)
        os.umask(old)
        _umask_cache = old
    return _umask_cache


def _cannot(path: str, reason: str | int) -> OvmfToolError:
    if isinstance(reason, int):
        reason = os.strerror(reason)
    return OvmfToolError(f"cannot write {path}: {reason}")


def _probe_dir(shown: str, d: str, directory: bool = False) -> None:
    """Raise unless a file (or directory) can be created in the existing directory `d`."""
    import tempfile  # imported here: a run that writes no file does not pay for it

    if not os.path.exists(d):
        raise _cannot(shown, errno.ENOENT)
    if not os.path.isdir(d):
        raise _cannot(shown, errno.ENOTDIR)
    try:  # os.access says yes to root on read-only bind mounts, immutable directories, /sys
        if directory:
            os.rmdir(tempfile.mkdtemp(prefix=".ovmftool-probe-", dir=d))
        else:
            fd, tmp = tempfile.mkstemp(prefix=".ovmftool-probe-", dir=d)
            os.close(fd)
            os.unlink(tmp)
    except OSError as e:
        raise _cannot(shown, e.strerror or str(e)) from None


def check_output_file(path: str) -> None:
    """Raise a one-line OvmfToolError unless `path` can be written by `write_atomic`."""
    real = os.path.realpath(path)
    if os.path.isdir(real):
        raise _cannot(path, "is a directory")
    if os.path.exists(real):
        if not stat.S_ISREG(os.stat(real).st_mode):  # device or FIFO: written in place, never opened here
            if not os.access(real, os.W_OK):
                raise _cannot(path, errno.EACCES)
            return
        if not os.access(real, os.W_OK):  # read-only file, immutable file, read-only file system
            try:  # the open fails, and its error is the reason (EACCES, EPERM, EROFS)
                os.close(os.open(real, os.O_WRONLY | getattr(os, "O_NOCTTY", 0)))
            except OSError as e:
                raise _cannot(path, e.strerror or str(e)) from None
            raise _cannot(path, errno.EACCES)
    _probe_dir(path, os.path.dirname(real))


def check_patch_output(image: str, output: str | None, dry_run: bool) -> None:
    """`patch`: an output unless `dry_run`; never the input image; in a directory that exists."""
    if not dry_run and not output:
        raise OvmfToolError("give -o OUTPUT (or --dry-run)")
    if not output:
        return
    check_not_input(output, [image], "patch")
    if not os.path.isdir(os.path.dirname(os.path.abspath(output))):
        raise OvmfToolError(f"directory {os.path.dirname(os.path.abspath(output))} does not exist")


def check_not_input(output: str | None, inputs: Iterable[object], command: str) -> None:
    """Raise a one-line OvmfToolError when the file `output` is one of `inputs` (by name, through a
    symbolic link or as a hard link): no command writes over what it reads. Inputs that are not
    paths (a `ScanFailure` in `scan`'s list) are passed over."""
    if not output or output == "-" or not os.path.exists(output):
        return
    for image in inputs:
        if not isinstance(image, str):
            continue
        try:
            same = os.path.samefile(output, image)
        except OSError:  # an input that does not exist: its own error comes later
            continue
        if same:
            named = "" if os.path.abspath(image) == os.path.abspath(output) else f" {image}"
            raise OvmfToolError(f"{output} is the input image{named}; {command} never modifies its input")


def check_output_dir(path: str, parents: bool = False) -> None:
    """Raise a one-line OvmfToolError unless the directory `path` can be created.

    It must be absent or an empty directory. Its parent must exist, or with `parents` the
    nearest existing ancestor must be a directory where directories can be made."""
    real = os.path.realpath(path)
    if os.path.exists(real):
        if not os.path.isdir(real):
            raise _cannot(path, errno.ENOTDIR)
        try:
            if os.listdir(real):
                raise _cannot(path, errno.ENOTEMPTY)
        except OSError as e:
            raise _cannot(path, e.strerror or str(e)) from None
    parent = os.path.dirname(real)
    if parents:
        while not os.path.lexists(parent) and os.path.dirname(parent) != parent:
            parent = os.path.dirname(parent)
    _probe_dir(path, parent, directory=True)


def _keep_owner(fd_or_path, st: os.stat_result) -> None:
    """Give a replacement the owner and group of what it replaces, where allowed (as editors do)."""
    try:
        if isinstance(fd_or_path, int):
            os.fchown(fd_or_path, st.st_uid, st.st_gid)
        else:
            os.chown(fd_or_path, st.st_uid, st.st_gid)
    except OSError:
        pass


def write_atomic(path: str, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same directory and a rename.

    A new file gets mode 0666 less the umask; a replaced regular file keeps its mode (and, where
    allowed, its owner). A symlink is followed (its target is replaced, the link stays). A path
    that is not a regular file — /dev/null, /dev/stdout, a FIFO — is written directly: renaming
    over it would replace the device with a file."""
    import tempfile  # imported here: a run that writes no file does not pay for it

    shown = path
    path = os.path.realpath(path)
    if os.path.isdir(path):
        raise _cannot(shown, "is a directory")
    old = os.stat(path) if os.path.exists(path) else None
    if old is not None and not stat.S_ISREG(old.st_mode):
        try:
            with open(path, "wb") as fh:
                fh.write(data)
        except OSError as e:
            raise _cannot(shown, e.strerror or str(e)) from None
        return
    d = os.path.dirname(path)
    if not os.path.isdir(d):
        raise _cannot(shown, errno.ENOENT)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".ovmftool-", dir=d)
    except OSError as e:
        raise _cannot(shown, e.strerror or str(e)) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            if old is not None:
                os.fchmod(fh.fileno(), stat.S_IMODE(old.st_mode))
                if (old.st_uid, old.st_gid) != (os.getuid(), os.getgid()):
                    _keep_owner(fh.fileno(), old)
            else:
                os.fchmod(fh.fileno(), 0o666 & ~current_umask())
            fh.write(data)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):  # a full disk, a quota, a vanished directory
            raise _cannot(shown, e.strerror or str(e)) from None
        raise


def new_output_dir(path: str, parents: bool = False) -> str:
    """A temporary sibling of the output directory `path` to fill, with the mode `path` will have.

    Pass it to `commit_output_dir` once everything is written, or `discard_output_dir` on failure."""
    import tempfile  # imported here: a run that writes no file does not pay for it

    real = os.path.realpath(path)
    parent = os.path.dirname(real)
    if parents:
        os.makedirs(parent, exist_ok=True)
    elif not os.path.isdir(parent):
        raise _cannot(path, errno.ENOENT)
    try:
        tmp = tempfile.mkdtemp(prefix=".ovmftool-", dir=parent)
    except OSError as e:
        raise _cannot(path, e.strerror or str(e)) from None
    if os.path.isdir(real):  # an empty directory given as the output keeps its mode and owner
        st = os.stat(real)
        os.chmod(tmp, stat.S_IMODE(st.st_mode))
        if (st.st_uid, st.st_gid) != (os.getuid(), os.getgid()):
            _keep_owner(tmp, st)
    else:
        os.chmod(tmp, 0o777 & ~current_umask())
    return tmp


def commit_output_dir(tmp: str, path: str) -> None:
    """Move the filled temporary directory into place (replacing an empty directory)."""
    real = os.path.realpath(path)
    if os.path.isdir(real):
        try:
            os.rmdir(real)
        except OSError as e:
            raise _cannot(path, e.strerror or str(e)) from None
    os.rename(tmp, real)


def discard_output_dir(tmp: str) -> None:
    """Remove a temporary output directory and everything in it."""
    import shutil  # imported here: a run that writes no file does not pay for it

    shutil.rmtree(tmp, ignore_errors=True)


class GuardedStdout:
    """The CLI's standard output. Once the reader has gone (`ovmftool check IMG | head -1`) the
    rest of the output is dropped and the command still ends with its own verdict; any other
    write error (a full disk, `> /dev/full`) is one line naming standard output and the reason."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self.reader_gone = stream is None  # started with standard output closed (`>&-`): as a gone reader
        self.error: str | None = None  # the write error, once one happened (later writes raise it again)

    def _detach(self) -> None:
        """Point the descriptor at /dev/null so that no later flush (at exit too) can fail."""
        try:
            fd = os.open(os.devnull, os.O_WRONLY)
            os.dup2(fd, self._stream.fileno())
            os.close(fd)
        except (OSError, ValueError):
            pass

    def _guard(self, op):
        if self.error is not None:
            raise OvmfToolError(self.error)
        if self.reader_gone:
            return None
        try:
            return op()
        except BrokenPipeError:
            self.reader_gone = True
            self._detach()
        except OSError as e:
            self.error = str(_cannot("standard output", e.strerror or str(e)))
            self._detach()
            raise OvmfToolError(self.error) from None
        return None

    def write(self, s):
        n = self._guard(lambda: self._stream.write(s))
        return len(s) if n is None else n

    def flush(self) -> None:
        if self.error is None:  # once failed, the error is reported; flushing at exit must not raise again
            self._guard(lambda: self._stream.flush())

    def __getattr__(self, name):
        return getattr(self._stream, name)
