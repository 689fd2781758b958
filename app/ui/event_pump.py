"""Library events, from the writer thread to the GUI thread, applied in slices.

The writer pushes events as it commits (app/library/events.py); `post` may be called from any
thread and only queues. On the GUI thread the queue is applied in order, a few milliseconds at a
time, so a scan that adds 20,000 documents never holds the event loop (the longest slice is
SLICE_MS, then the loop takes input and paints before the next one). Progress events only
matter as the latest one: a newer one replaces an older one that was not applied yet, which
keeps the order of everything else.

Everything before the Snapshot the pump is waiting for is dropped: it is in the Snapshot.
"""

from __future__ import annotations

import time
from collections import deque

from PySide6.QtCore import QObject, Qt, QTimer, Signal

from app.library.events import (
    DocumentsChanged,
    DocumentsRemoved,
    FoldersChanged,
    IndexerStopped,
    IndexProgress,
    LibraryEvent,
    ProblemsChanged,
    Snapshot,
)
from app.ui.library_model import LibraryTreeModel

SLICE_MS = 8.0
BATCH = 400  # documents applied at a time from a large change


class EventPump(QObject):
    _arrived = Signal(object)  # crosses threads: queued to the GUI thread
    progress = Signal(object)  # IndexProgress, after the changes before it are applied
    problems_changed = Signal()
    indexer_stopped = Signal(str)
    snapshot_applied = Signal()

    def __init__(self, model: LibraryTreeModel, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.model = model
        self._queue: deque[LibraryEvent] = deque()
        self._waiting_for_snapshot = True
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(0)
        self._timer.timeout.connect(self._apply_some)
        self._arrived.connect(self._enqueue, Qt.ConnectionType.QueuedConnection)
        self.applied_events = 0

    def post(self, event: LibraryEvent) -> None:
        """From any thread (the library calls this for each event)."""
        self._arrived.emit(event)

    def expect_snapshot(self) -> None:
        """Drop what arrives until the next Snapshot (a new library is being opened)."""
        self._waiting_for_snapshot = True
        self._queue.clear()

    def _enqueue(self, event: LibraryEvent) -> None:
        if isinstance(event, Snapshot):
            self._waiting_for_snapshot = False
            self._queue.clear()
        elif self._waiting_for_snapshot:
            if isinstance(event, IndexerStopped):
                self.indexer_stopped.emit(event.reason)
            return
        if isinstance(event, IndexProgress) and self._queue and isinstance(self._queue[-1], IndexProgress):
            self._queue[-1] = event
        elif isinstance(event, DocumentsChanged) and len(event.documents) > BATCH:
            for start in range(0, len(event.documents), BATCH):
                self._queue.append(DocumentsChanged(event.documents[start : start + BATCH]))
        elif isinstance(event, DocumentsRemoved) and len(event.paths) > BATCH:
            for start in range(0, len(event.paths), BATCH):
                self._queue.append(DocumentsRemoved(event.paths[start : start + BATCH]))
        else:
            self._queue.append(event)
        if not self._timer.isActive():
            self._timer.start()

    @property
    def pending(self) -> int:
        return len(self._queue)

    def _apply_some(self) -> None:
        deadline = time.perf_counter() + SLICE_MS / 1000
        while self._queue and time.perf_counter() < deadline:
            self._apply(self._queue.popleft())
            self.applied_events += 1
        if self._queue:
            self._timer.start()

    def _apply(self, event: LibraryEvent) -> None:
        if isinstance(event, Snapshot):
            self.model.reset(event.folders, event.documents, event.problems)
            self.snapshot_applied.emit()
            self.problems_changed.emit()
            self.progress.emit(event.progress)
        elif isinstance(event, DocumentsChanged):
            self.model.update_documents(event.documents)
        elif isinstance(event, DocumentsRemoved):
            self.model.remove_documents(event.paths)
        elif isinstance(event, FoldersChanged):
            self.model.set_folders(event.folders)
        elif isinstance(event, ProblemsChanged):
            self.model.set_problems(event.problems)
            self.problems_changed.emit()
        elif isinstance(event, IndexProgress):
            self.progress.emit(event)
        elif isinstance(event, IndexerStopped):
            self.indexer_stopped.emit(event.reason)
