"""The states a document goes through, in one place (the database, status, the UI and the CLI
all speak them)."""

from __future__ import annotations

from enum import Enum


class DocumentState(str, Enum):
    """pending -> indexing -> ready | failed | skipped; any change to the file -> pending."""

    PENDING = "pending"
    INDEXING = "indexing"
    READY = "ready"
    FAILED = "failed"
    SKIPPED = "skipped"

    def __str__(self) -> str:
        return self.value

    # Equal to, and hashed like, its value: counts keyed by state answer to "ready" too.
    __hash__ = str.__hash__

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def final(self) -> bool:
        """Nothing left to do until the file changes."""
        return self in FINAL_STATES

    @property
    def has_reason(self) -> bool:
        return self in (DocumentState.FAILED, DocumentState.SKIPPED)


FINAL_STATES = frozenset({DocumentState.READY, DocumentState.FAILED, DocumentState.SKIPPED})
WAITING_STATES = frozenset({DocumentState.PENDING, DocumentState.INDEXING})


class IndexerState(str, Enum):
    """What the indexer is doing, as progress events say it."""

    INDEXING = "indexing"
    IDLE = "idle"
    PAUSED = "paused"
    ERROR = "error"  # a database error from the machine (full disk): it retries

    def __str__(self) -> str:
        return self.value

    __hash__ = str.__hash__
