"""Stopping cleanly: SIGTERM/SIGHUP as `Terminated` (a cancelled CI job kills QEMU and removes the
work directory), signals held back while a cleanup runs, and the scan run beside the boot."""

from __future__ import annotations

import contextlib
import signal
import threading

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)  # a cancelled CI job, a closed terminal

_CLEANUP_SIGNALS = {signal.SIGTERM, signal.SIGHUP, signal.SIGINT}


class Terminated(BaseException):
    """A stop signal (SIGTERM, SIGHUP) arrived while `stop_on_signals` was active. A BaseException,
    like KeyboardInterrupt, so that no `except Exception` swallows it on its way out: every
    `finally` on the way kills QEMU and removes the work directory."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # as the shell reports a process the signal ended: 143 for SIGTERM


@contextlib.contextmanager
def stop_on_signals(signals=STOP_SIGNALS):
    """Turn SIGTERM and SIGHUP into `Terminated` (as SIGINT is KeyboardInterrupt) for the duration.
    A signal the process ignores (nohup) stays ignored; a second one while the first unwinds is
    dropped, so it cannot cut the cleanup short. Only in the main thread (elsewhere: no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired: list[int] = []

    def handler(signum, _frame):
        if fired:
            return
        fired.append(signum)
        raise Terminated(signum)

    old = {}
    for sig in signals:
        if signal.getsignal(sig) is not signal.SIG_IGN:
            old[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


@contextlib.contextmanager
def signals_held():
    """Hold SIGTERM, SIGHUP and SIGINT back (delivered when this ends) so a cleanup runs whole."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _CLEANUP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class InBackground:
    """`fn()` in a thread — the static scan while QEMU boots (TCG keeps one core busy, the scan
    the other); `result()` waits for it and re-raises what it raised."""

    def __init__(self, fn) -> None:
        self._out, self._err = None, None
        self._thread = threading.Thread(target=self._run, args=(fn,), name="ovmftool-scan", daemon=True)
        self._thread.start()

    def _run(self, fn) -> None:
        try:
            self._out = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            self._err = e

    def result(self):
        self._thread.join()
        if self._err is not None:
            raise self._err
        return self._out
