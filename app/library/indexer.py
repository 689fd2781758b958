"""The background indexer: one thread, one document at a time, highest priority first.

Per document: stat -> size limit -> wait until the file is stable -> hash -> extract (child
process) -> chunk -> encode only chunks whose memory is not stored yet -> one commit. Memories
are written as soon as they are encoded (they are keyed by content), so `kill -9` loses at most
the chunk in flight, and a restart re-encodes nothing already stored.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from app.library.chunking import DEFAULT_CHUNK_TOKENS, chunk_segments
from app.library.extractor import Extractor
from app.library.filters import FolderFilter
from app.library.store import ChunkRecord, Document, Store, StoreError
from inference.bundle import file_digest

PRIORITY_CHANGED = 0
PRIORITY_SCAN = 1
STABLE_FOR_S = 1.0


class EncoderLike(Protocol):
    encoder_identity: str

    def count_tokens(self, text: str) -> int: ...

    def encode_states(self, text: str) -> np.ndarray: ...


@dataclass
class IndexProgress:
    state: str  # indexing | idle | paused | stopped
    documents_done: int
    documents_total: int
    chunks_done: int
    chunks_total: int
    current_file: str | None
    chunks_per_second: float
    encoded: int
    reused: int


class Indexer:
    def __init__(
        self,
        store: Store,
        encoder: EncoderLike,
        filters: Callable[[int], FolderFilter],
        chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
        on_progress: Callable[[IndexProgress], None] | None = None,
        extractor: Extractor | None = None,
    ) -> None:
        self._store = store
        self._encoder = encoder
        self._filters = filters
        self._chunk_tokens = chunk_tokens
        self._on_progress = on_progress or (lambda progress: None)
        self._extractor = extractor or Extractor()
        self._wake = threading.Event()
        self._running = threading.Event()
        self._running.set()
        self._answering = threading.Event()
        self._answering.set()
        self._stop = threading.Event()
        self._idle = threading.Event()
        # Counts wake() calls, so the thread only reports idle if nobody woke it between its last
        # look at the queue and now; otherwise a scan that queued work just then could see "idle".
        self._wakes = 0
        self._wakes_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.encoded = 0
        self.reused = 0
        self._chunks_done = 0
        self._chunks_total = 0
        self._current: str | None = None
        self._rate_window: list[float] = []
        self._last_emit = 0.0
        self.last_error: str | None = None

    # control -------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="dolphin-indexer", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._running.set()
        self._answering.set()
        if self._thread is not None:
            self._thread.join(30)
        self._extractor.close()

    def pause(self) -> None:
        self._running.clear()
        self._emit("paused")

    def resume(self) -> None:
        self._running.set()
        self._wake.set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def answering(self) -> _AnsweringGate:
        """`with indexer.answering():` pauses encoding while a question is answered."""
        return _AnsweringGate(self._answering)

    def wake(self) -> None:
        with self._wakes_lock:
            self._wakes += 1
            self._idle.clear()
        self._wake.set()

    def wait_idle(self, timeout: float | None = None) -> bool:
        return self._idle.wait(timeout)

    # work ----------------------------------------------------------------------------------

    def _emit(self, state: str, every_chunk: bool = False) -> None:
        """Progress for the UI; per-chunk updates at most 10 a second (each one reads the store)."""
        now = time.monotonic()
        if every_chunk and now - self._last_emit < 0.1:
            return
        self._last_emit = now
        counts = self._store.count_states()
        total = sum(counts.values())
        self._rate_window = [t for t in self._rate_window if now - t < 10]
        span = (now - self._rate_window[0]) if len(self._rate_window) > 1 else 0
        rate = (len(self._rate_window) - 1) / span if span > 0 else 0.0
        self._on_progress(
            IndexProgress(
                state,
                counts["ready"] + counts["failed"] + counts["skipped"],
                total,
                self._chunks_done,
                self._chunks_total,
                self._current,
                rate,
                self.encoded,
                self.reused,
            )
        )

    def _gate(self) -> bool:
        """Block while paused or while answering; False when stopping."""
        while not self._stop.is_set():
            if self._running.is_set() and self._answering.is_set():
                return True
            self._answering.wait(0.1) if self._running.is_set() else self._running.wait(0.1)
        return False

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._gate():
                return
            with self._wakes_lock:
                wakes_seen = self._wakes
            try:
                document = self._store.next_pending()
            except StoreError as exc:
                self.last_error = str(exc)
                document = None
            if document is None:
                self._collect_garbage()
                self._current = None
                self._emit("idle")
                with self._wakes_lock:
                    if self._wakes == wakes_seen:
                        self._idle.set()
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            self._idle.clear()
            try:
                self._index(document)
                self.last_error = None
            except StoreError as exc:
                self.last_error = str(exc)
                self._emit("error")
                self._stop.wait(5.0)  # a full disk may be freed; try again, never spin

    def _collect_garbage(self) -> None:
        try:
            self._store.collect_garbage()
        except StoreError as exc:
            self.last_error = str(exc)

    def _wait_until_stable(self, path: Path) -> tuple[int, float] | None:
        """A file still being written (size or mtime moving) is read only once it settles."""
        previous = None
        deadline = time.monotonic() + 600
        while not self._stop.is_set() and time.monotonic() < deadline:
            stat = path.stat()
            current = (stat.st_size, stat.st_mtime)
            if current == previous and time.time() - stat.st_mtime >= STABLE_FOR_S:
                return current
            previous = current
            self._stop.wait(0.25 if time.time() - stat.st_mtime < STABLE_FOR_S else 0.05)
        return None

    def _index(self, document: Document) -> None:
        path = document.path
        self._current = str(path)
        self._chunks_done = self._chunks_total = 0
        folder_filter = self._filters(document.folder_id)
        stat: os.stat_result | None = None
        try:
            if not os.path.lexists(path):
                self._store.remove_documents([path])
                return
            stat = path.stat()
            if not path.is_file():
                self._store.set_state(path, "skipped", "not a regular file")
                return
            reason = folder_filter.too_large(stat.st_size)
            if reason:
                self._store.set_state(path, "skipped", reason, size=stat.st_size, mtime=stat.st_mtime)
                return
            stable = self._wait_until_stable(path)
            if stable is None:
                return
            size, mtime = stable
            content_hash = file_digest(path)
        except FileNotFoundError:
            self._store.remove_documents([path])
            return
        except OSError as exc:
            if isinstance(exc, PermissionError):
                reason = "permission denied"
            elif path.is_symlink():
                reason = "cannot read: a symbolic link that loops or points nowhere"
            else:
                reason = f"cannot read: {exc.strerror or exc}"
            facts = {"size": stat.st_size, "mtime": stat.st_mtime} if stat else {}
            self._store.set_state(path, "failed", reason, **facts)
            return
        if document.content_hash == content_hash and document.state in ("ready", "indexing") and document.chunk_count:
            self._store.set_state(path, "ready", size=size, mtime=mtime)
            return
        self._store.set_state(path, "indexing")
        self._emit("indexing")
        result = self._extractor.extract(path)
        if result.state != "ok":
            self._store.set_state(path, result.state, result.reason, size=size, mtime=mtime, content_hash=content_hash)
            self._emit("indexing")
            return
        _, chunks = chunk_segments(result.segments, self._encoder.count_tokens, self._chunk_tokens)
        self._chunks_total = len(chunks)
        identity = self._encoder.encoder_identity
        for chunk in chunks:
            if not self._gate():
                return
            if self._store.has_memory(chunk.text_hash, identity):
                self.reused += 1
            else:
                states = self._encoder.encode_states(chunk.text)
                self._store.put_memory(chunk.text_hash, identity, states, chunk.token_count)
                self.encoded += 1
            self._chunks_done += 1
            self._rate_window.append(time.monotonic())
            self._emit("indexing", every_chunk=True)
        records = [
            ChunkRecord(i, c.text, c.char_start, c.char_end, c.page, c.token_count, c.text_hash)
            for i, c in enumerate(chunks)
        ]
        self._store.replace_chunks(path, records, size, mtime, content_hash)
        self._emit("indexing")


class _AnsweringGate:
    def __init__(self, event: threading.Event) -> None:
        self._event = event

    def __enter__(self) -> None:
        self._event.clear()

    def __exit__(self, *_: object) -> None:
        self._event.set()
