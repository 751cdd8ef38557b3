"""Errors the tool reports to its user. Every one of them is a one-line message and exit code 2."""

from __future__ import annotations

import re

_SPACES = re.compile(r"\s+")


def printable(text: str) -> str:
    """`text` with every character that is not printable (controls, line and paragraph
    separators, bidi overrides, lone surrogates...) written as a backslash escape.

    Names read from an image (UI and version strings, PE section names, debug paths) and decoder
    messages go through this before they reach any output, so no input can start a new line,
    move the cursor or reorder what a terminal shows."""
    if text.isprintable():
        return text
    out = []
    for c in text:
        if c.isprintable():
            out.append(c)
        else:
            o = ord(c)
            out.append(f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}" if o < 0x10000 else f"\\U{o:08x}")
    return "".join(out)


def printable_lines(text: str) -> str:
    """`text` with every line `printable`: the line breaks it has stay, no name inside it can
    add one (what every text output goes through)."""
    if text.isprintable():
        return text
    return "\n".join(printable(line) for line in text.split("\n"))


def one_line(text: str) -> str:
    """`text` as one printable line: runs of whitespace (newlines included) become one space,
    anything else unprintable is escaped."""
    return printable(_SPACES.sub(" ", text).strip())


def require_one_line(text: str, what: str) -> None:
    """Refuse an argument that will be written into a file as text (a patch header, a command
    line in SUMMARY.md) when it holds a control character (a newline would forge a line) or bytes
    that are not UTF-8."""
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise OvmfToolError(f"{what} must be one line without control characters, not '{printable(text)}'")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise OvmfToolError(f"{what} must be UTF-8 text, not '{printable(text)}'") from None


class OvmfToolError(Exception):
    """An error about the user's input or environment, reported as one line with exit code 2."""

    exit_code = 2

    def __str__(self) -> str:
        return one_line(super().__str__())


class ImageError(OvmfToolError):
    """The input is not a firmware image, or is damaged beyond what was asked of it."""

    def __init__(self, message: str, where: str | None = None) -> None:
        self.where = where
        super().__init__(f"{message} at {where}" if where else message)


class NothingToCheck(ImageError):
    """The input holds nothing the tool checks: no firmware volume and no PE/TE image, volumes
    without modules (a variable store), a PE that is no UEFI module, firmware for another
    architecture. Named on the command line it is an error like any other; found in a directory
    or by a pattern it is listed as skipped (`scan.inputs`)."""


class NoVolume(NothingToCheck):
    """No firmware volume and no PE/TE image: a blob, or a flash image cut before its first
    volume header (a file named like an image, `.fd`/`.fv`/`.rom`, is then an error even in a
    directory: `scan.scanner.scan_paths`)."""


class DecodeError(ImageError):
    """Compressed data could not be decoded, or declares more than one section may hold: damage
    of that section (the rest of the image is still read)."""


class LimitExceeded(ImageError):
    """A resource cap (expanded size, nesting depth, node count) was hit: a likely bomb."""
