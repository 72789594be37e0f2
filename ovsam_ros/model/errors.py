"""Errors of the model package, at the bottom of its import graph (every module may raise them)."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A weights file could not be used; the message names the file and the keys."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The weights file does not exist."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint's pickle would run code or rebuild objects we refuse to rebuild; nothing of
    it was executed."""


__all__ = ["CheckpointError", "CheckpointNotFoundError", "UnsafeCheckpointError"]
