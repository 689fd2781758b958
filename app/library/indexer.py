"""The library's one writer: a thread that runs commands and indexes documents.

Every change to the library database is made here (docs/ARCHITECTURE.md §5): other threads
submit commands (add a folder, apply a scan, forget a file, record a problem) and get a Future;
between commands the thread indexes the most urgent pending document. Because one thread makes
every change, it also knows every change: it keeps the document counts in memory and pushes
each change to listeners as an event (app/library/events.py), in commit order. Nothing polls.
When there is nothing to do, the thread blocks on its queue and the database is not touched.

Per document: stat -> size limit -> wait until the file has settled -> still in scope (patterns,
and the content of a file without an extension) -> hash -> extract and chunk (child process) ->
encode only chunks whose memory is not stored yet -> one commit. Memories are written as soon as
they are encoded (they are keyed by content), so `kill -9` loses at most the chunk in flight, and
a restart re-encodes nothing already stored.

Whatever goes wrong with one document ends that document as `failed` with a reason, and the
indexer goes on. If the thread dies anyway (a bug outside any one document), it says so:
`failure` holds the reason, waiters and queued commands are released with an error, the
problem is recorded for `status`, and listeners get `IndexerStopped` (the GUI starts a new thread).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from app.library.events import (
    DocumentsChanged,
    DocumentsRemoved,
    EventHub,
    FolderInfo,
    FoldersChanged,
    IndexerStopped,
    IndexProgress,
    ProblemsChanged,
)
from app.library.extractor import Extractor
from app.library.filters import FolderFilter
from app.library.ocr import PageProgress, PageStep
from app.library.states import FINAL_STATES, DocumentState, IndexerState
from app.library.store import LIBRARY_WIDE, ChunkRecord, Document, Store, StoreError, display_path
from app.logs import describe_exception
from inference.bundle import file_digest

PRIORITY_CHANGED = 0
PRIORITY_SCAN = 1
STABLE_FOR_S = 1.0  # a file whose size and mtime held this long is not being written
UNTOUCHED_S = 10.0  # a file modified longer ago than this (and not in the future) is not being written
UNSETTLED_RETRY_S = 5.0  # a file still being written is looked at again after this
UNSETTLED_GIVE_UP_S = 60.0  # ... and read as it is once it has kept changing this long (a live log)
PROGRESS_EVERY_S = 0.1  # progress events at most ten a second
STORE_RETRY_S = 5.0  # after a full disk or a locked database
BACKFILL_BATCH = 64  # chunks embedded at a time when a library gains an embedder

log = logging.getLogger("dolphin.indexer")
T = TypeVar("T")


class EmbedderLike(Protocol):
    identity: str

    def embed(self, texts: list[str], kind: str = "document") -> np.ndarray: ...


class EncoderLike(Protocol):
    encoder_identity: str
    embedder: EmbedderLike | None

    def encode_states(self, text: str) -> np.ndarray: ...


class IndexerStoppedError(Exception):
    """The writer thread is not running (it died, or the library is closing)."""


__all__ = ["PRIORITY_CHANGED", "PRIORITY_SCAN", "IndexProgress", "Indexer", "IndexerStoppedError"]


class _Command:
    __slots__ = ("function", "future")

    def __init__(self, function: Callable[[], Any] | None) -> None:
        self.function = function
        self.future: Future[Any] = Future()


class Indexer:
    def __init__(
        self,
        store: Store,
        encoder: EncoderLike,
        filters: Callable[[int], FolderFilter],
        extractor: Extractor,
        hub: EventHub | None = None,
    ) -> None:
        self._store = store
        self._encoder = encoder
        self._filters = filters
        self._extractor = extractor
        self.hub = hub or EventHub()
        self._queue: queue.Queue[_Command] = queue.Queue()
        self._queue_lock = threading.Lock()
        self._idle = threading.Event()
        self._stop = threading.Event()
        self._paused = False
        self._answering = 0
        self._indexing = False
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()
        # Files still being written: document id -> when to look again; path -> first seen moving.
        self._retry_at: dict[int, float] = {}
        self._moving_since: dict[Path, float] = {}
        self._given_up: set[int] = set()  # documents whose failure could not even be recorded
        # Every document's state, by path string (strings, not Path objects: 20,000 of those
        # would make every full garbage collection, and so every stall it causes, longer).
        self._states: dict[str, DocumentState] = {}
        self._counts: Counter[DocumentState] = Counter()
        self._garbage = True  # memories may be unreferenced: collect at the next idle moment
        self._backfill = True  # chunks may lack embeddings (the bundle gained an embedder)
        self.encoded = 0
        self.reused = 0
        self._chunks_done = 0
        self._chunks_total = 0
        self._documents_read = 0
        self._reading = False
        self._ocr_page = ""  # 'reading page 3 of 40 (OCR)' while the reader is on such a page
        self._ocr_later: set[int] = set()  # scans put back while cheaper documents wait
        self._ocr_now: int | None = None  # the scan whose turn it is (not put back again)
        self._current: str | None = None
        self._rate_window: list[float] = []
        self._last_progress = 0.0
        self._progress_state: IndexerState | None = None
        self.last_error: str | None = None
        self.failure: str | None = None  # why the thread died, until it is started again

    # lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread (also after it died: the failure is then forgotten). Commands run
        from now on; documents are indexed once `enable_indexing` was called."""
        with self._thread_lock:
            if self._thread is not None and self._thread.is_alive():
                if self.failure is None:
                    return
                # Dying: listeners of IndexerStopped (which may call this) run on its way out.
                if threading.current_thread() is not self._thread:
                    self._thread.join(10)
            if self._stop.is_set():
                return
            self.failure = None
            self._idle.clear()
            self._thread = threading.Thread(target=self._run, name="dolphin-indexer", daemon=True)
            self._thread.start()

    def enable_indexing(self) -> None:
        self._indexing = True
        self.start()
        self.wake()

    def stop(self) -> None:
        self._stop.set()
        self._put(_Command(None))
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(30)
        self._fail_queued("the library is closing")
        self._extractor.close()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # commands ------------------------------------------------------------------------------

    def submit(self, function: Callable[[], T]) -> Future[T]:
        """Run `function` on the writer thread; its result (or exception) comes in the Future."""
        if self._stop.is_set():
            raise IndexerStoppedError("the library is closing")
        if self.failure is not None and not self.alive:
            raise IndexerStoppedError(f"the indexer stopped: {self.failure}")
        command = _Command(function)
        self._put(command)
        self.start()
        return command.future

    def run(self, function: Callable[[], T], timeout: float | None = None) -> T:
        """Run `function` on the writer thread and wait for it (runs inline on that thread)."""
        if threading.current_thread() is self._thread:
            return function()
        return self.submit(function).result(timeout)

    def on_writer_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def _put(self, command: _Command) -> None:
        with self._queue_lock:
            self._idle.clear()
            self._queue.put(command)

    def wake(self) -> None:
        self._put(_Command(None))

    def _execute(self, command: _Command) -> None:
        if command.function is None:
            command.future.set_result(None)
            return
        if not command.future.set_running_or_notify_cancel():
            return
        try:
            command.future.set_result(command.function())
        except BaseException as exc:  # the caller gets it; the writer goes on
            command.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise

    def _drain(self) -> None:
        """Run every queued command (between documents, and between chunks of one)."""
        while True:
            try:
                command = self._queue.get_nowait()
            except queue.Empty:
                return
            self._execute(command)

    def _wait_for_command(self, timeout: float | None) -> None:
        try:
            command = self._queue.get(timeout=timeout)
        except queue.Empty:
            return
        self._execute(command)

    def _fail_queued(self, reason: str) -> None:
        while True:
            try:
                command = self._queue.get_nowait()
            except queue.Empty:
                return
            if command.function is None:
                command.future.set_result(None)
            elif command.future.set_running_or_notify_cancel():
                command.future.set_exception(IndexerStoppedError(reason))

    # control -------------------------------------------------------------------------------

    def pause(self) -> None:
        self._paused = True
        self.wake()

    def resume(self) -> None:
        self._paused = False
        self.wake()

    @property
    def paused(self) -> bool:
        return self._paused

    def answering(self) -> _AnsweringGate:
        """`with indexer.answering():` holds encoding back while a question is answered."""
        return _AnsweringGate(self)

    def _held(self) -> bool:
        return self._paused or self._answering > 0

    def wait_idle(self, timeout: float | None = None) -> bool:
        """True once nothing is left to do, or once the thread has died (see `failure`)."""
        return self._idle.wait(timeout)

    # what changed: counts in memory, events out ---------------------------------------------

    def note_changed(self, paths: Iterable[Path]) -> list[Document]:
        """Tell listeners about these documents' rows as committed (writer thread only)."""
        documents = self._store.documents_at(list(paths))
        for document in documents:
            self._count(document.path, document.state)
            if document.state.has_reason:
                self._garbage = True  # a failed or skipped document's chunks are gone: maybe memories too
        if documents:
            self.hub.emit(DocumentsChanged(tuple(documents)))
            self._progress(self._progress_state or IndexerState.INDEXING)
        return documents

    def note_removed(self, paths: Iterable[Path]) -> None:
        gone = [p for p in paths if os.fspath(p) in self._states]
        for path in gone:
            self._counts[self._states.pop(os.fspath(path))] -= 1
        if gone:
            self._garbage = True
            self.hub.emit(DocumentsRemoved(tuple(gone)))
            self._progress(self._progress_state or IndexerState.INDEXING)

    def note_folders(self) -> None:
        self.hub.emit(FoldersChanged(tuple(FolderInfo.of(f) for f in self._store.folders())))

    def note_problems(self) -> None:
        self.hub.emit(ProblemsChanged(tuple(self._store.problems())))

    def _count(self, path: Path, state: DocumentState) -> None:
        key = os.fspath(path)
        old = self._states.get(key)
        if old is not None:
            self._counts[old] -= 1
        self._states[key] = state
        self._counts[state] += 1

    @property
    def counts(self) -> dict[DocumentState, int]:
        return {state: self._counts.get(state, 0) for state in DocumentState}

    def progress(self, state: IndexerState | None = None) -> IndexProgress:
        now = time.monotonic()
        self._rate_window = [t for t in self._rate_window if now - t < 10]
        span = (now - self._rate_window[0]) if len(self._rate_window) > 1 else 0
        rate = (len(self._rate_window) - 1) / span if span > 0 else 0.0
        counts = self.counts
        return IndexProgress(
            state or self._progress_state or IndexerState.IDLE,
            sum(counts[s] for s in FINAL_STATES),
            sum(counts.values()),
            self._chunks_done,
            self._chunks_total,
            self._current,
            rate,
            self.encoded,
            self.reused,
            counts,
            self._documents_read,
            self._reading,
            self._ocr_page,
        )

    def _progress(self, state: IndexerState, every_chunk: bool = False) -> None:
        """A progress event; per-chunk ones at most ten a second."""
        now = time.monotonic()
        if every_chunk and now - self._last_progress < PROGRESS_EVERY_S and state == self._progress_state:
            return
        self._last_progress = now
        self._progress_state = state
        self.hub.emit(self.progress(state))

    # the thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._load_states()
            if any(p.source == "indexer" for p in self._store.problems()):
                self._store.clear_problems(LIBRARY_WIDE, "indexer")  # this start replaces that record
                self.note_problems()
            self._loop()
        except BaseException as exc:  # the thread is dying: say so, never silently
            self.failure = describe_exception(exc)
            log.critical("the indexer stopped", exc_info=exc)
            try:
                self._store.set_problem(LIBRARY_WIDE, "indexer", "", f"the indexer stopped: {self.failure}")
            except Exception:  # the database may be what failed; the log has it
                log.exception("could not record that the indexer stopped")
            self._fail_queued(f"the indexer stopped: {self.failure}")
            self._idle.set()
            self.hub.emit(IndexerStopped(self.failure))

    def _load_states(self) -> None:
        self._states = {os.fspath(d.path): d.state for d in self._store.documents()}
        self._counts = Counter(self._states.values())

    def _next_document(self) -> Document | None:
        """The most urgent pending document; scans put back for cheaper text come last."""
        now = time.monotonic()
        for document_id in [i for i, at in self._retry_at.items() if at <= now]:
            del self._retry_at[document_id]
        try:
            document = self._store.next_pending(exclude=[*self._retry_at, *self._given_up, *self._ocr_later])
            if document is None and self._ocr_later:
                document = self._store.next_pending(exclude=[*self._retry_at, *self._given_up])
                if document is not None:
                    self._ocr_now = document.id  # its turn: it is not put back again
            return document
        except StoreError as exc:
            self.last_error = str(exc)
            return None

    def _on_ocr_page(self, document: Document, page: PageProgress) -> PageStep:
        """Before each page the reader reads by OCR (seconds each): show it, let a question be
        answered first, stop when asked to; and before the first, put the document back if a
        cheaper one (text, no OCR) is waiting."""
        if self._stop.is_set():
            return PageStep.STOP
        if page.index == 0 and document.id != self._ocr_now:
            try:
                cheaper = self._store.next_pending(
                    exclude=[document.id, *self._retry_at, *self._given_up, *self._ocr_later]
                )
            except StoreError:
                cheaper = None
            if cheaper is not None:
                return PageStep.STOP
        self._ocr_page = page.describe()
        self._progress(IndexerState.INDEXING)
        self._drain()
        while self._held() and not self._stop.is_set():
            self._progress(IndexerState.PAUSED if self._paused else IndexerState.INDEXING)
            self._wait_for_command(None)
        return PageStep.STOP if self._stop.is_set() else PageStep.GO

    def _loop(self) -> None:
        while True:
            self._drain()
            if self._stop.is_set():
                return
            if not self._indexing or self._held():
                if self._indexing and self._paused and self._progress_state is not IndexerState.PAUSED:
                    self._progress(IndexerState.PAUSED)
                self._wait_for_command(None)  # held is not idle: work may be waiting
                continue
            document = self._next_document()
            if document is None and self._backfill_embeddings():
                continue
            if document is None:
                self._current = None
                if self._retry_at:  # only files still being written are left: not idle yet
                    self._wait_for_command(max(0.05, min(self._retry_at.values()) - time.monotonic()))
                    continue
                self._collect_garbage()
                self._chunks_done = self._chunks_total = self._documents_read = 0
                self._rate_window = []  # a rate is of this run's encoding, not the last one's
                if self._progress_state is not IndexerState.IDLE:
                    self._progress(IndexerState.IDLE)
                self._go_idle_or_wait(None)
                continue
            self._idle.clear()
            self._index_one(document)

    def _go_idle_or_wait(self, timeout: float | None) -> None:
        """Say idle (if nothing was queued meanwhile), then block until a command comes."""
        with self._queue_lock:
            if self._queue.empty():
                self._idle.set()
        self._wait_for_command(timeout)

    def _embedder(self) -> EmbedderLike | None:
        return getattr(self._encoder, "embedder", None)

    def _embed(self, texts: dict[str, str]) -> None:
        """Embeddings for these chunk texts (by hash) that are not stored yet."""
        embedder = self._embedder()
        if embedder is None or not texts:
            return
        missing = self._store.missing_embeddings(texts, embedder.identity)
        if missing:
            vectors = embedder.embed([texts[h] for h in missing])
            self._store.put_embeddings(embedder.identity, dict(zip(missing, vectors, strict=True)))

    def _backfill_embeddings(self) -> bool:
        """Embed a batch of chunks indexed before the bundle had an embedder; False when none
        is left (then it is not looked for again: new chunks are embedded as they are indexed)."""
        embedder = self._embedder()
        if embedder is None or not self._backfill:
            return False
        batch = self._store.chunks_without_embedding(embedder.identity, BACKFILL_BATCH)
        if not batch:
            self._backfill = False
            return False
        self._idle.clear()
        self._current = "search index (embedding earlier chunks)"
        self._embed(dict(batch))
        self._progress(IndexerState.INDEXING, every_chunk=True)
        return True

    def expect_unembedded(self) -> None:
        """Chunks without an embedding arrived by another road (a memory pack made without the
        embedder): look for them again, in the background, as after gaining an embedder."""
        self._backfill = True
        self.wake()

    def _collect_garbage(self) -> None:
        if not self._garbage:
            return  # nothing was removed or replaced since the last collection: no write at all
        try:
            removed = self._store.collect_garbage()
            self._garbage = False
            if removed:
                log.info("released %d memories no document uses", removed)
        except StoreError as exc:
            self.last_error = str(exc)

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
            self._progress(IndexerState.ERROR)
            self._wait_for_command(STORE_RETRY_S)  # a full disk may be freed; try again, never spin
        except Exception as exc:  # noqa: BLE001 - one document's problem must not stop the others
            self._fail(document, f"could not be indexed: {describe_exception(exc)}", exc)
        finally:
            elapsed = time.perf_counter() - started
            if elapsed > 30:
                log.info("%s took %.1f s", display_path(document.path), elapsed)

    def _fail(self, document: Document, reason: str, exc: BaseException) -> None:
        log.error("%s: %s", display_path(document.path), reason, exc_info=exc)
        try:
            self._set_state(document.path, DocumentState.FAILED, reason)
        except StoreError as store_exc:
            log.error("%s: the failure could not be recorded either: %s", display_path(document.path), store_exc)
            self._given_up.add(document.id)  # until the next start: never the same failure in a loop

    def _set_state(self, path: Path, state: DocumentState, reason: str | None = None, **facts: Any) -> None:
        self._store.set_state(path, state, reason, **facts)
        self.note_changed([path])

    def _settled(self, path: Path) -> tuple[int, float] | None:
        """(size, mtime) once the file is not being written, else None.

        A file untouched for UNTOUCHED_S is read at once (a folder of 20,000 old notes must not
        cost a pause each); one modified seconds ago needs one more look; one modified just now,
        or with a modification time in the future (copied from a machine whose clock is ahead),
        must keep its size and mtime for STABLE_FOR_S: the wall clock alone never decides that a
        file is finished.
        """
        first = path.stat()
        age = time.time() - first.st_mtime
        if age >= UNTOUCHED_S:
            return first.st_size, first.st_mtime  # nobody has written it for a while: read it now
        if self._stop.wait(0.05 if age >= STABLE_FOR_S else STABLE_FOR_S):
            return None
        second = path.stat()
        if (first.st_size, first.st_mtime_ns) != (second.st_size, second.st_mtime_ns):
            return None
        return second.st_size, second.st_mtime

    def _index(self, document: Document) -> None:
        path = document.path
        self._current = str(path)
        folder_filter = self._filters(document.folder_id)
        stat: os.stat_result | None = None
        note: list[str] = []
        try:
            if not os.path.lexists(path):
                self._store.remove_documents([path])
                self.note_removed([path])
                return
            stat = path.stat()
            if not path.is_file():
                self._set_state(path, DocumentState.SKIPPED, "not a regular file")
                return
            if path.is_symlink() and not _inside(path.resolve(), folder_filter.root.resolve()):
                self._set_state(path, DocumentState.SKIPPED, "a link to a file outside this folder")
                return
            reason = folder_filter.too_large(stat.st_size)
            if reason:
                self._set_state(path, DocumentState.SKIPPED, reason, size=stat.st_size, mtime=stat.st_mtime)
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
            # What the scan decided may be out of date (a file without an extension that was
            # still empty, or patterns changed since): a file left out is listed, never read.
            left_out = folder_filter.left_out_reason(path)
            if left_out is not None:
                self._set_state(path, DocumentState.SKIPPED, left_out)
                return
            size, mtime = settled
            content_hash = file_digest(path)
        except FileNotFoundError:
            self._store.remove_documents([path])
            self.note_removed([path])
            return
        except OSError as exc:
            if isinstance(exc, PermissionError):
                reason = "permission denied"
            elif path.is_symlink():
                reason = "cannot read: a symbolic link that loops or points nowhere"
            else:
                reason = f"cannot read: {exc.strerror or exc}"
            facts = {"size": stat.st_size, "mtime": stat.st_mtime} if stat else {}
            self._set_state(path, DocumentState.FAILED, reason, **facts)
            return
        chunker = self.chunker
        unchanged = document.content_hash == content_hash and document.chunk_count and document.chunker == chunker
        if unchanged and document.state in (DocumentState.READY, DocumentState.INDEXING, DocumentState.PENDING):
            self._set_state(path, DocumentState.READY, size=size, mtime=mtime, note=document.note)
            return
        self._set_state(path, DocumentState.INDEXING)
        self._reading = True
        self._progress(IndexerState.INDEXING)
        try:
            result = self._extractor.extract(path, on_page=lambda page: self._on_ocr_page(document, page))
        finally:
            self._reading = False
            self._ocr_page = ""
        if result.stopped:
            # Put back: for cheaper documents first (see _on_ocr_page), or because we are stopping.
            if not self._stop.is_set():
                self._ocr_later.add(document.id)
            self._set_state(path, DocumentState.PENDING)
            return
        self._ocr_later.discard(document.id)
        if result.state is not DocumentState.READY:
            log.info("%s: %s: %s", display_path(path), result.state, result.reason)
            self._set_state(path, result.state, result.reason, size=size, mtime=mtime, content_hash=content_hash)
            return
        chunks = result.chunks
        self._chunks_total += len(chunks)
        self._documents_read += 1
        identity = self._encoder.encoder_identity
        encoded = 0
        for chunk in chunks:
            self._drain()
            while self._held() and not self._stop.is_set():
                self._progress(IndexerState.PAUSED if self._paused else IndexerState.INDEXING)
                self._wait_for_command(None)
            if self._stop.is_set():
                return
            if self._store.has_memory(chunk.text_hash, identity):
                self.reused += 1
            else:
                states = self._encoder.encode_states(chunk.text)
                self._store.put_memory(chunk.text_hash, identity, states, chunk.token_count)
                log.debug("encoded %s", chunk.text_hash)
                self.encoded += 1
                encoded += 1
                self._rate_window.append(time.monotonic())
            self._chunks_done += 1
            self._progress(IndexerState.INDEXING, every_chunk=True)
        self._embed({c.text_hash: c.text for c in chunks})
        records = [
            ChunkRecord(i, c.text, c.char_start, c.char_end, c.page, c.token_count, c.text_hash)
            for i, c in enumerate(chunks)
        ]
        notes = "; ".join([*result.notes, *note]) or None
        self._store.replace_chunks(path, records, size, mtime, content_hash, note=notes, chunker=chunker)
        self._garbage = True
        log.info("%s: ready, %d chunks (%d encoded)", display_path(path), len(chunks), encoded)
        self.note_changed([path])

    @property
    def chunker(self) -> str:
        """What chunks are made with: chunk size and encoder (documents made otherwise re-chunk)."""
        return f"{self._extractor.chunk_tokens}@{self._encoder.encoder_identity}"


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


class _AnsweringGate:
    _lock = threading.Lock()

    def __init__(self, indexer: Indexer) -> None:
        self._indexer = indexer

    def __enter__(self) -> None:
        with self._lock:
            self._indexer._answering += 1

    def __exit__(self, *_: object) -> None:
        with self._lock:
            self._indexer._answering -= 1
        self._indexer.wake()
