"""What the library tells its listeners, pushed as it happens (never polled).

The writer thread emits these in the order its transactions commit, so a listener that applies
them in order always holds one consistent picture: the counts in a progress event agree with
the document rows delivered before it. A listener starts from a `Snapshot` (asked for with
`Library.request_snapshot`), which travels the same stream: everything before it is already in
it, everything after it is newer.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from app.library.states import DocumentState, IndexerState
from app.library.store import Document, Folder, Problem


@dataclass(frozen=True)
class FolderInfo:
    id: int
    path: Path
    missing: bool
    include_patterns: list[str] | None
    exclude_patterns: list[str] | None

    @classmethod
    def of(cls, folder: Folder) -> FolderInfo:
        return cls(folder.id, folder.path, not folder.path.is_dir(), folder.include_patterns, folder.exclude_patterns)


@dataclass(frozen=True)
class IndexProgress:
    """Where indexing stands. Counts are of documents; `chunks_*` are of the current run's
    work: chunks encoded or reused since the queue was last empty, out of the chunks of the
    documents read so far."""

    state: IndexerState
    documents_done: int
    documents_total: int
    chunks_done: int
    chunks_total: int
    current_file: str | None
    chunks_per_second: float
    encoded: int
    reused: int
    counts: dict[DocumentState, int] | None = None
    documents_read: int = 0  # documents of this run whose chunks are counted in chunks_total
    reading: bool = False  # the current file is being read (its chunks are not known yet)
    ocr_page: str = ""  # 'reading page 3 of 40 (OCR)' while a page of it is read by OCR

    @property
    def estimated_chunks_total(self) -> int:
        """This run's chunks: those of the documents read, plus the documents still waiting at
        the run's chunks per document so far. Work is chunks, not documents: one big file can be
        most of a run."""
        waiting = self.documents_total - self.documents_done - (0 if self.reading or not self.current_file else 1)
        if self.documents_read == 0 or waiting <= 0:
            return self.chunks_total
        return self.chunks_total + round(self.chunks_total / self.documents_read * waiting)

    @property
    def seconds_left(self) -> float | None:
        """At the encoding rate of the last seconds; None until there is one."""
        if self.chunks_per_second <= 0:
            return None
        return max(0, self.estimated_chunks_total - self.chunks_done) / self.chunks_per_second


@dataclass(frozen=True)
class Snapshot:
    folders: tuple[FolderInfo, ...]
    documents: tuple[Document, ...]
    problems: tuple[Problem, ...]
    progress: IndexProgress


@dataclass(frozen=True)
class DocumentsChanged:
    documents: tuple[Document, ...]


@dataclass(frozen=True)
class DocumentsRemoved:
    paths: tuple[Path, ...]


@dataclass(frozen=True)
class FoldersChanged:
    folders: tuple[FolderInfo, ...]


@dataclass(frozen=True)
class ProblemsChanged:
    problems: tuple[Problem, ...]


@dataclass(frozen=True)
class IndexerStopped:
    reason: str


LibraryEvent = (
    Snapshot | DocumentsChanged | DocumentsRemoved | FoldersChanged | ProblemsChanged | IndexProgress | IndexerStopped
)
Listener = Callable[[LibraryEvent], None]


class EventHub:
    """Fans events out to listeners; a listener that raises is logged and kept."""

    def __init__(self) -> None:
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()

    def subscribe(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def emit(self, event: LibraryEvent) -> None:
        import logging

        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(event)
            except Exception:  # a listener's bug must not stop the library
                logging.getLogger("dolphin.events").exception("a library listener failed on %s", type(event).__name__)
