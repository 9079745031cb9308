"""One exception hierarchy for hyperlapse.

Every class also subclasses the matching built-in type, so callers can catch either
``hyperlapse.errors.StoreError`` or plain ``ValueError``. Messages say what was expected,
what was received and what to do.
"""

from __future__ import annotations


class HyperlapseError(Exception):
    """Base class of every error raised by hyperlapse."""


class ConfigError(HyperlapseError, ValueError):
    """An argument or configuration value is invalid."""


class StoreError(HyperlapseError, ValueError):
    """A trajectory store is missing, malformed or incompatible."""


class NotAStoreError(StoreError, FileNotFoundError):
    """The path does not hold a hyperlapse trajectory store."""


class IncompatibleStoreError(StoreError):
    """An existing store was written for a different model (architecture or parameters)."""


class EmptyStoreError(StoreError):
    """The store holds no committed snapshot yet."""


class CorruptStoreError(StoreError):
    """A store is damaged: a checksum does not match, a committed chunk is missing, or its
    metadata is malformed. Damaged data is never returned as values."""


class StoreLockedError(StoreError):
    """Another writer holds the store (one writer at a time)."""


class StoreExistsError(StoreError, FileExistsError):
    """A store already exists where a new one was asked for (``mode="new"``), or reopening it
    would not continue the recorded run (``mode="auto"``/``"resume"``)."""


class StoreNotReadyError(StoreError):
    """The store is being created by a writer and has no readable description yet: not damage.
    Wait for its first commit (``hyperlapse watch`` does) and try again."""


class OutputError(HyperlapseError, OSError):
    """An output location (report folder, predictor file) cannot be written; checked before the
    work starts."""


class WriterError(HyperlapseError, RuntimeError):
    """The background writer failed; raised on the training thread with the cause attached."""


class ArchitectureError(HyperlapseError, TypeError):
    """The model is not an MLP that hyperlapse can turn into a parameter graph."""


class MissingDependencyError(HyperlapseError, ImportError):
    """An optional dependency is needed for the requested feature."""


class HyperlapseWarning(UserWarning):
    """Something the user should know that does not stop the run (non-finite weights, a model
    that is recorded but is not an MLP)."""
