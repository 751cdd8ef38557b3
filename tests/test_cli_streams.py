"""Standard output as a real process sees it: a reader that goes away, a full device, `-o -`.

These run the installed entry point in a subprocess: click's test runner replaces the streams."""

import os
import subprocess
import sys

import pytest

from tests.conftest import CORPUS_IMAGES

IMG = str(CORPUS_IMAGES["images/debian-2022.11/OVMF_CODE_4M.fd"])
OTHER = str(CORPUS_IMAGES["images/debian-2025.02/OVMF_CODE_4M.fd"])


def _tool(*args):
    return [sys.executable, "-m", "ovmftool", *args]


@pytest.mark.parametrize(
    "args,verdict",
    [
        (["check", IMG], 1),  # 90 NEW lines, printed one by one
        (["diff", IMG, OTHER], 1),
        (["scan", IMG, IMG, IMG], 1),
    ],
)
def test_reader_that_goes_away_keeps_the_verdict(args, verdict):
    """`ovmftool check IMG | head -1`: output nobody reads is dropped, the verdict stays."""
    p = subprocess.Popen(_tool(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # the reader is gone before the first line: every write meets a closed pipe
    err = p.stderr.read()
    assert p.wait(timeout=120) == verdict, err
    assert err == b"", err


@pytest.mark.parametrize(
    "args,verdict", [(["--version"], 0), (["scan", IMG], 1), (["check", IMG], 1), (["scan", "/nonexistent"], 2)]
)
def test_closed_standard_output_keeps_the_verdict(args, verdict):
    """`ovmftool scan IMG >&-`: Python starts with no sys.stdout at all (it was an internal error
    and two tracebacks); output goes nowhere, as to a reader that has gone, and the verdict stays."""
    r = subprocess.run(_tool(*args), capture_output=True, timeout=120, preexec_fn=lambda: os.close(1))
    assert r.returncode == verdict and b"Traceback" not in r.stderr and b"internal error" not in r.stderr, r.stderr


@pytest.mark.parametrize(
    "args", [["scan", IMG], ["scan", "--format", "json", IMG], ["info", IMG], ["decode", "f36e"], ["check", IMG]]
)
def test_full_device_on_stdout_is_one_line_and_exit_2(args):
    with open("/dev/full", "wb") as full:
        r = subprocess.run(_tool(*args), stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr == "ovmftool: error: cannot write standard output: No space left on device\n"


def test_full_device_as_output_file_names_it():
    r = subprocess.run(_tool("scan", "-o", "/dev/full", IMG), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr == "ovmftool: error: cannot write /dev/full: No space left on device\n"


@pytest.mark.parametrize("cmd", [["patch", IMG], ["extract", IMG]])
def test_dash_is_refused_where_the_output_is_not_text(tmp_path, cmd):
    r = subprocess.run(_tool(*cmd, "-o", "-"), capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "'-'" in r.stderr
    assert list(tmp_path.iterdir()) == []
