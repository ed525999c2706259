"""Errors raised by :mod:`midswarm.reasoning` beyond the built-in ones."""

from __future__ import annotations

__all__ = ["SchemaError", "WriterLockedError"]


class SchemaError(Exception):
    """A file is not what the opener expected.

    Raised when the path is not an SQLite database, is an SQLite database that
    midswarm did not write, holds another kind of midswarm store (a
    ReasoningBank opened as a PatternStore, say), was written by a newer schema
    version than this code reads, or disagrees with the arguments it was opened
    with (another vector dimension or metric).  Nothing is written to the file.
    """


class WriterLockedError(Exception):
    """Another writer already has the store open.

    A store has one writer at a time (in the swarm it is one actor); any
    number of ``readonly=True`` openers may read beside it.
    """
