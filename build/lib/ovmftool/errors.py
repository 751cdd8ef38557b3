"""Errors the tool reports to its user. Every one of them is a one-line message and exit code 2."""

from __future__ import annotations


class OvmfToolError(Exception):
    """An error about the user's input or environment, reported as one line with exit code 2."""

    exit_code = 2


class ImageError(OvmfToolError):
    """The input is not a firmware image, or is damaged beyond what was asked of it."""

    def __init__(self, message: str, where: str | None = None) -> None:
        self.where = where
        super().__init__(f"{message} at {where}" if where else message)


class LimitExceeded(ImageError):
    """A resource cap (expanded size, nesting depth, node count) was hit: a likely bomb."""
