"""The background indexer: one thread, one document at a time, highest priority first.

Per document: stat -> size limit -> wait until the file has settled -> hash -> extract and chunk
(child process) -> encode only chunks whose memory is not stored yet -> one commit. Memories are
written as soon as they are encoded (they are keyed by content), so `kill -9` loses at most the
chunk in flight, and a restart re-encodes nothing already stored.

Whatever goes wrong with one document ends that document as `failed` with a reason, and the
indexer goes on with the next. If the thread dies anyway (a bug outside any one document), it
says so: `failure` holds the reason, waiters are released, the library records it for `status`,
and `on_failure` lets the owner (the GUI) show it and start a new thread.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from app.library.extractor import Extractor
from app.library.filters import FolderFilter
from app.library.store import LIBRARY_WIDE, ChunkRecord, Document, Store, StoreError, display_path
from app.logs import describe_exception
from inference.bundle import file_digest

PRIORITY_CHANGED = 0
PRIORITY_SCAN = 1
STABLE_FOR_S = 1.0  # a file whose size and mtime held this long is not being written
UNSETTLED_RETRY_S = 5.0  # a file still being written is looked at again after this
UNSETTLED_GIVE_UP_S = 60.0  # ... and read as it is once it has kept changing this long (a live log)

log = logging.getLogger("dolphin.indexer")


class EncoderLike(Protocol):
    encoder_identity: str

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
        extractor: Extractor,
        on_progress: Callable[[IndexProgress], None] | None = None,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self._store = store
        self._encoder = encoder
        self._filters = filters
        self._on_progress = on_progress or (lambda progress: None)
        self._on_failure = on_failure or (lambda reason: None)
        self._extractor = extractor
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
        # Files still being written: document id -> when to look again; path -> first seen moving.
        self._retry_at: dict[int, float] = {}
        self._moving_since: dict[Path, float] = {}
        self._given_up: set[int] = set()  # documents whose failure could not even be recorded
        self.encoded = 0
        self.reused = 0
        self._chunks_done = 0
        self._chunks_total = 0
        self._current: str | None = None
        self._rate_window: list[float] = []
        self._last_emit = 0.0
        self._progress_broken = False
        self.last_error: str | None = None
        self.failure: str | None = None  # why the thread died, until it is started again

    # control -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread; also after it died (the failure is then forgotten)."""
        if self._thread is not None and self._thread.is_alive():
            if self.failure is None:
                return
            # Dying: `on_failure` (which may call this) runs on the dying thread's way out.
            if threading.current_thread() is not self._thread:
                self._thread.join(10)
        if self._stop.is_set():
            return
        self.failure = None
        self._idle.clear()
        self._thread = threading.Thread(target=self._run, name="dolphin-indexer", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

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
        """True once nothing is left to do, or once the thread has died (see `failure`)."""
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
        progress = IndexProgress(
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
        try:
            self._on_progress(progress)
        except Exception:  # whoever listens must not stop the indexing
            if not self._progress_broken:
                log.exception("the progress listener failed (logged once)")
            self._progress_broken = True

    def _gate(self) -> bool:
        """Block while paused or while answering; False when stopping."""
        while not self._stop.is_set():
            if self._running.is_set() and self._answering.is_set():
                return True
            self._answering.wait(0.1) if self._running.is_set() else self._running.wait(0.1)
        return False

    def _run(self) -> None:
        try:
            self._store.clear_problems(LIBRARY_WIDE, "indexer")
            self._loop()
        except BaseException as exc:  # the thread is dying: say so, never silently
            self.failure = describe_exception(exc)
            log.critical("the indexer stopped", exc_info=exc)
            try:
                self._store.set_problem(LIBRARY_WIDE, "indexer", "", f"the indexer stopped: {self.failure}")
            except Exception:  # the database may be what failed; the log has it
                log.exception("could not record that the indexer stopped")
            self._idle.set()
            try:
                self._on_failure(self.failure)
            except Exception:  # nothing left to tell; the log has it
                log.exception("the failure listener failed")

    def _next_document(self) -> Document | None:
        now = time.monotonic()
        for document_id in [i for i, at in self._retry_at.items() if at <= now]:
            del self._retry_at[document_id]
        try:
            return self._store.next_pending(exclude=[*self._retry_at, *self._given_up])
        except StoreError as exc:
            self.last_error = str(exc)
            return None

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self._gate():
                return
            with self._wakes_lock:
                wakes_seen = self._wakes
            document = self._next_document()
            if document is None:
                self._current = None
                if self._retry_at:  # only files still being written are left: not idle yet
                    self._wake.wait(max(0.05, min(self._retry_at.values()) - time.monotonic()))
                    self._wake.clear()
                    continue
                self._collect_garbage()
                self._emit("idle")
                with self._wakes_lock:
                    if self._wakes == wakes_seen:
                        self._idle.set()
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            self._idle.clear()
            self._index_one(document)

    def _index_one(self, document: Document) -> None:
        """Index one document; whatever fails ends it as failed, not the indexer."""
        started = time.perf_counter()
        try:
            self._index(document)
            self.last_error = None
        except StoreError as exc:
            if not exc.environmental:
                self._fail(document, f"cannot be stored: {exc}", exc)
                return
            self.last_error = str(exc)
            log.error("library database: %s", exc)
            self._emit("error")
            self._stop.wait(5.0)  # a full disk may be freed; try again, never spin
        except Exception as exc:  # noqa: BLE001 - one document's problem must not stop the others
            self._fail(document, f"could not be indexed: {describe_exception(exc)}", exc)
        finally:
            elapsed = time.perf_counter() - started
            if elapsed > 30:
                log.info("%s took %.1f s", display_path(document.path), elapsed)

    def _fail(self, document: Document, reason: str, exc: BaseException) -> None:
        log.error("%s: %s", display_path(document.path), reason, exc_info=exc)
        try:
            self._store.set_state(document.path, "failed", reason)
        except StoreError as store_exc:
            log.error("%s: the failure could not be recorded either: %s", display_path(document.path), store_exc)
            self._given_up.add(document.id)  # until the next start: never the same failure in a loop
        self._emit("indexing")

    def _collect_garbage(self) -> None:
        try:
            self._store.collect_garbage()
        except StoreError as exc:
            self.last_error = str(exc)

    def _settled(self, path: Path) -> tuple[int, float] | None:
        """(size, mtime) once the file is not being written, else None.

        A file modified a while ago needs one more look; one modified just now, or with a
        modification time in the future (copied from a machine whose clock is ahead), must keep
        its size and mtime for STABLE_FOR_S. The wall clock alone never decides.
        """
        first = path.stat()
        age = time.time() - first.st_mtime
        if self._stop.wait(0.05 if age >= STABLE_FOR_S else STABLE_FOR_S):
            return None
        second = path.stat()
        if (first.st_size, first.st_mtime_ns) != (second.st_size, second.st_mtime_ns):
            return None
        return second.st_size, second.st_mtime

    def _index(self, document: Document) -> None:
        path = document.path
        self._current = str(path)
        self._chunks_done = self._chunks_total = 0
        folder_filter = self._filters(document.folder_id)
        stat: os.stat_result | None = None
        note: list[str] = []
        try:
            if not os.path.lexists(path):
                self._store.remove_documents([path])
                return
            stat = path.stat()
            if not path.is_file():
                self._store.set_state(path, "skipped", "not a regular file")
                return
            if path.is_symlink() and not _inside(path.resolve(), folder_filter.root.resolve()):
                self._store.set_state(path, "skipped", "a link to a file outside this folder")
                return
            reason = folder_filter.too_large(stat.st_size)
            if reason:
                self._store.set_state(path, "skipped", reason, size=stat.st_size, mtime=stat.st_mtime)
                return
            settled = self._settled(path)
            if settled is None:
                if self._stop.is_set():
                    return
                moving_since = self._moving_since.setdefault(path, time.monotonic())
                if time.monotonic() - moving_since < UNSETTLED_GIVE_UP_S:
                    self._retry_at[document.id] = time.monotonic() + UNSETTLED_RETRY_S
                    return
                note.append("the file kept changing while it was read: indexed as it was then")
                current = path.stat()
                settled = current.st_size, current.st_mtime
            self._moving_since.pop(path, None)
            size, mtime = settled
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
            self._store.set_state(path, "ready", size=size, mtime=mtime, note=document.note)
            return
        self._store.set_state(path, "indexing")
        self._emit("indexing")
        result = self._extractor.extract(path)
        if result.state != "ok":
            log.info("%s: %s: %s", display_path(path), result.state, result.reason)
            self._store.set_state(path, result.state, result.reason, size=size, mtime=mtime, content_hash=content_hash)
            self._emit("indexing")
            return
        chunks = result.chunks
        self._chunks_total = len(chunks)
        identity = self._encoder.encoder_identity
        encoded = 0
        for chunk in chunks:
            if not self._gate():
                return
            if self._store.has_memory(chunk.text_hash, identity):
                self.reused += 1
            else:
                states = self._encoder.encode_states(chunk.text)
                self._store.put_memory(chunk.text_hash, identity, states, chunk.token_count)
                log.debug("encoded %s", chunk.text_hash)
                self.encoded += 1
                encoded += 1
            self._chunks_done += 1
            self._rate_window.append(time.monotonic())
            self._emit("indexing", every_chunk=True)
        records = [
            ChunkRecord(i, c.text, c.char_start, c.char_end, c.page, c.token_count, c.text_hash)
            for i, c in enumerate(chunks)
        ]
        notes = "; ".join([*result.notes, *note]) or None
        self._store.replace_chunks(path, records, size, mtime, content_hash, note=notes)
        log.info("%s: ready, %d chunks (%d encoded)", display_path(path), len(chunks), encoded)
        self._emit("indexing")


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


class _AnsweringGate:
    def __init__(self, event: threading.Event) -> None:
        self._event = event

    def __enter__(self) -> None:
        self._event.clear()

    def __exit__(self, *_: object) -> None:
        self._event.set()
