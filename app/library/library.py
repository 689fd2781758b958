"""The library the CLI and the UI drive: folders, watching, indexing, questions.

It wires the parts of the data flow together (docs/ARCHITECTURE.md §1 and §5):

* `Scanner` walks folders (on the caller's thread: a scan only reads the disk);
* the `Indexer` thread is the one writer: every change to the database is a command it runs,
  and it pushes each change to listeners as an event (`subscribe`);
* `FolderWatcher` turns file-system events into commands;
* `Answerer` retrieves and answers through its own read connection.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path

import numpy as np

from app.library.answering import Answerer, LibraryAnswer, Source, Turn
from app.library.chunking import DEFAULT_CHUNK_TOKENS
from app.library.events import (
    EventHub,
    FolderInfo,
    IndexerStopped,
    IndexProgress,
    Listener,
    Snapshot,
)
from app.library.extractor import DEFAULT_TIMEOUT_S, Extractor
from app.library.filters import FolderFilter, is_left_out, pattern_problems
from app.library.indexer import PRIORITY_CHANGED, PRIORITY_SCAN, Indexer, IndexerStoppedError
from app.library.ocr import OCR_OFF, OcrOptions
from app.library.retrieval import DEFAULT_TOP_K
from app.library.scanner import Scanner, ScanResult
from app.library.states import DocumentState
from app.library.status import library_status
from app.library.store import LIBRARY_WIDE, Document, Folder, Store, StoredChunk, StoreError, display_path
from app.library.watcher import Change, FolderWatcher
from inference import DolphinModel, GenerationSettings

RECONCILE_EVERY_S = 600.0

log = logging.getLogger("dolphin.library")

__all__ = ["Library", "LibraryAnswer", "LibraryError", "Source", "library_status"]


class LibraryError(Exception):
    """A library operation the user asked for cannot be done; one line."""


class ModelEncoder:
    """What the indexer needs of the model."""

    def __init__(self, model: DolphinModel) -> None:
        self._model = model
        self.encoder_identity = model.encoder_identity
        self.embedder = model.embedder

    def encode_states(self, text: str) -> np.ndarray:
        return self._model.encode(text).states


class Library:
    def __init__(
        self,
        data_dir: Path,
        model: DolphinModel,
        chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
        on_progress: Callable[[IndexProgress], None] | None = None,
        extraction_timeout_s: float = DEFAULT_TIMEOUT_S,
        debounce_s: float = 1.0,
        on_indexer_failure: Callable[[str], None] | None = None,
        include: list[str] | None = None,
        exclude: list[str] | None = None,
        ocr: bool = True,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.store = Store(self.data_dir)
        self.model = model
        self.hub = EventHub()
        self.scanner = Scanner(include, exclude)
        extractor = Extractor(
            model.manifest.path("tokenizer"), chunk_tokens, timeout_s=extraction_timeout_s, ocr=OcrOptions(enabled=ocr)
        )
        self._extractor = extractor
        self.indexer = Indexer(self.store, ModelEncoder(model), self.folder_filter, extractor, self.hub)
        self.answerer = Answerer(self.store, model, self.indexer.answering)
        if on_progress is not None:
            self.hub.subscribe(lambda event: on_progress(event) if isinstance(event, IndexProgress) else None)
        if on_indexer_failure is not None:
            self.hub.subscribe(
                lambda event: on_indexer_failure(event.reason) if isinstance(event, IndexerStopped) else None
            )
        self._debounce_s = debounce_s
        self.watcher: FolderWatcher | None = None
        self._stopping = threading.Event()
        self._reconciler: threading.Thread | None = None

    # listeners -----------------------------------------------------------------------------

    def subscribe(self, listener: Listener) -> None:
        """`listener(event)` for every change, on the writer thread (app/library/events.py)."""
        self.hub.subscribe(listener)

    def unsubscribe(self, listener: Listener) -> None:
        self.hub.unsubscribe(listener)

    def request_snapshot(self) -> Future[Snapshot]:
        """A Snapshot event in the stream (and in the Future): the whole state at that point."""

        def take() -> Snapshot:
            snapshot = Snapshot(
                tuple(FolderInfo.of(f) for f in self.store.folders()),
                tuple(self.store.documents()),
                tuple(self.store.problems()),
                self.indexer.progress(),
            )
            self.hub.emit(snapshot)
            return snapshot

        return self.indexer.submit(take)

    # folders -------------------------------------------------------------------------------

    def folder_filter(self, folder_id: int) -> FolderFilter:
        folder = next((f for f in self.store.folders() if f.id == folder_id), None)
        if folder is None:
            return FolderFilter(Path("/nonexistent"), include=[], exclude=["*"])
        return self.scanner.filter_for(folder)

    def _writer(self, function: Callable[[], object]) -> object:
        try:
            return self.indexer.run(function)
        except IndexerStoppedError as exc:
            raise LibraryError(str(exc)) from None

    def add_folder(self, path: Path, include: list[str] | None = None, exclude: list[str] | None = None) -> Folder:
        """Add (or re-add) a folder and queue its files. Without patterns the folder follows
        the app's include/exclude settings."""
        path = Path(path).expanduser().resolve()
        if not path.is_dir():
            raise LibraryError(f"{path} is not a folder")
        if path == self.data_dir or path in self.data_dir.parents:
            raise LibraryError(f"{path} contains the app's data folder ({self.data_dir}); choose another folder")
        preview = Folder(-1, path, include, exclude)
        self.scanner.forget(-1)
        result = self.scanner.scan(preview)
        self.scanner.forget(-1)

        def add() -> Folder:
            folder = self.store.add_folder(path, include, exclude)
            self.scanner.forget(folder.id)
            self.indexer.note_folders()
            self._apply_scan(ScanResult(folder, result.found, result.problems, left_out=result.left_out), PRIORITY_SCAN)
            return folder

        folder = self._writer(add)
        assert isinstance(folder, Folder)
        self._watch(folder)
        return folder

    def remove_folder(self, path: Path) -> None:
        path = Path(path).expanduser().resolve()
        folder = next((f for f in self.store.folders() if f.path == path), None)
        if folder is None:
            raise LibraryError(f"{path} is not in the library")
        if self.watcher is not None:
            self.watcher.unwatch(folder.path)

        def remove() -> None:
            gone = [d.path for d in self.store.documents(folder.id)]
            self.store.remove_folder(folder.id)
            self.scanner.forget(folder.id)
            self.indexer.note_removed(gone)
            self.indexer.note_folders()
            self.indexer.note_problems()

        self._writer(remove)

    def reindex(self, target: Path) -> int:
        """Queue a document, or every document under a folder, to be read again (its chunks
        serve until new ones replace them; unchanged chunks keep their memories). Files the
        patterns leave out stay listed, unread."""
        target = Path(target)

        def queue() -> int:
            documents = [
                d
                for d in self.store.documents()
                if (d.path == target or target in d.path.parents)
                and not (d.state is DocumentState.SKIPPED and is_left_out(d.error))
            ]
            for folder_id in {d.folder_id for d in documents}:
                paths = [d.path for d in documents if d.folder_id == folder_id]
                self.store.queue_documents(folder_id, paths, PRIORITY_CHANGED)
            self.indexer.note_changed([d.path for d in documents])
            return len(documents)

        count = self._writer(queue)
        assert isinstance(count, int)
        return count

    def set_patterns(self, include: list[str], exclude: list[str]) -> None:
        """New app-wide patterns: every folder that follows them is scanned again, so newly
        excluded files leave the library and newly included ones are indexed."""
        if self.scanner.set_patterns(include, exclude):
            self.reconcile()

    def set_ocr(self, enabled: bool) -> None:
        """Turn reading scans and images on or off; turning it on reads what it had skipped.
        Documents already read by OCR keep their text when it is turned off."""

        def apply() -> None:
            self._extractor.ocr = replace(self._extractor.ocr, enabled=enabled)
            if enabled:
                paths = self.store.requeue_skipped_because(OCR_OFF, PRIORITY_CHANGED)
                if paths:
                    self.indexer.note_changed(paths)

        self._writer(apply)

    def set_folder_patterns(self, path: Path, include: list[str] | None, exclude: list[str] | None) -> None:
        """A folder's own patterns (None: follow the app's), kept in the database, and a scan
        with them: newly excluded files leave the index (listed with the pattern), newly
        included ones are indexed."""
        folder = next((f for f in self.store.folders() if f.path == Path(path)), None)
        if folder is None:
            raise LibraryError(f"{path} is not in the library")
        problems = pattern_problems(include or [], "include") + pattern_problems(exclude or [], "exclude")
        if problems:
            raise LibraryError("; ".join(problems))

        def update() -> None:
            self.store.set_folder_patterns(folder.id, include, exclude)
            self.scanner.forget(folder.id)
            self.indexer.note_folders()

        self._writer(update)
        self._scan(next(f for f in self.store.folders() if f.id == folder.id))

    def set_chunk_tokens(self, chunk_tokens: int) -> None:
        """Chunk documents to a new size, in the background; memories of chunks whose text is
        unchanged are reused, the others are encoded."""

        def change() -> None:
            self.indexer._extractor.chunk_tokens = chunk_tokens
            if self.indexer._indexing:
                self._requeue_other_chunkers()

        self._writer(change)

    def _requeue_other_chunkers(self) -> None:
        paths = self.store.requeue_other_chunkers(self.indexer.chunker, PRIORITY_SCAN)
        if paths:
            log.info("%d documents were chunked otherwise (%s): re-chunking them", len(paths), self.indexer.chunker)
            self.indexer.note_changed(paths)

    def _folder_of(self, path: Path) -> Folder | None:
        matches = [f for f in self.store.folders() if f.path == path or f.path in path.parents]
        return max(matches, key=lambda f: len(f.path.parts), default=None)

    # scanning (reads on the caller's thread, writes on the writer's) ------------------------

    def _scan(self, folder: Folder, new_priority: int = PRIORITY_SCAN) -> None:
        result = self.scanner.scan(folder)
        if not result.missing:
            self._writer(lambda: self._apply_scan(result, new_priority))

    def _apply_scan(self, result: ScanResult, new_priority: int) -> None:
        """Bring the store in line with a walk of one folder (writer thread)."""
        folder = result.folder
        if not any(f.id == folder.id for f in self.store.folders()):
            return  # removed meanwhile
        known = {d.path: d for d in self.store.documents(folder.id)}
        new, changed = [], []
        for path, facts in result.found.items():
            document = known.get(path)
            if document is None or (document.state is DocumentState.SKIPPED and is_left_out(document.error)):
                new.append(path)  # new, or let in by the patterns now
            elif facts is None and document.state is not DocumentState.FAILED:
                changed.append(path)
            elif facts is not None and (document.size, document.mtime) != facts:
                changed.append(path)
        listed = {
            path: reason
            for path, reason in result.left_out.items()
            if path not in known or (known[path].state, known[path].error) != (DocumentState.SKIPPED, reason)
        }
        vanished = [p for p in known if p not in result.found and p not in result.left_out]
        # New and changed files are queued before vanished ones are removed: a renamed or moved
        # file is then pending before its old entry goes, so the memory garbage collector never
        # sees its memories unreferenced and the indexer reuses them instead of re-encoding.
        if new:
            self.store.queue_documents(folder.id, new, new_priority)
        if changed:
            self.store.queue_documents(folder.id, changed, PRIORITY_CHANGED)
        if listed:
            self._list_left_out(folder.id, listed, known)
        if new or changed or listed:
            self.indexer.note_changed([*new, *changed, *listed])
        if vanished:
            self.store.remove_documents(vanished)
            self.indexer.note_removed(vanished)
        self._set_problems(folder.id, "gitignore", {display_path(p): m for p, m in result.problems.items()})

    def _list_left_out(self, folder_id: int, reasons: dict[Path, str], known: dict[Path, Document]) -> None:
        """Files the scan leaves out become rows that say why ("skipped: excluded by pattern
        *.log"), never read (writer thread). A row that was indexed loses its chunks: the file
        leaves the index but stays visible, so a folder of such files never looks empty."""
        fresh = [path for path in reasons if path not in known]
        if fresh:
            self.store.queue_documents(folder_id, fresh, PRIORITY_SCAN)  # a row to hold the reason
        for path, reason in reasons.items():
            self.store.set_state(path, DocumentState.SKIPPED, reason)

    def _set_problems(self, folder_id: int, source: str, problems: dict[str, str]) -> None:
        """Make `source`'s recorded problems for a folder exactly `problems` (writer thread);
        listeners hear of it only if something changed."""
        before = self.store.problems()
        for subject, message in problems.items():
            self.store.set_problem(folder_id, source, subject, message)
        self.store.clear_problems(folder_id, source, keep_subjects=problems)
        if self.store.problems() != before:
            self.indexer.note_problems()

    def _record_problem(self, folder_id: int, source: str, subject: str, message: str | None) -> None:
        """Record (message) or clear (None) one problem, from any thread."""

        def record() -> None:
            before = self.store.problems()
            if message is None:
                self.store.clear_problem(folder_id, source, subject)
            else:
                self.store.set_problem(folder_id, source, subject, message)
            if self.store.problems() != before:
                self.indexer.note_problems()

        try:
            self._writer(record)
        except (LibraryError, StoreError):
            log.exception("could not record a problem: %s", message)

    def reconcile(self) -> None:
        for folder in self.store.folders():
            self._scan(folder)
        self.indexer.note_folders()  # a folder that went missing, or came back, shows as such

    # watching ------------------------------------------------------------------------------

    def start(self, watch: bool = False) -> None:
        """Scan every folder, start indexing (re-chunking what was chunked otherwise) and,
        with `watch`, follow changes."""
        self.indexer.start()
        self.reconcile()
        self._writer(self._requeue_other_chunkers)
        self.indexer.enable_indexing()
        if watch:
            self.watcher = FolderWatcher(self._on_change, self._debounce_s, on_error=self._on_watch_error)
            self.watcher.start()
            for folder in self.store.folders():
                self._watch(folder)
            self._reconciler = threading.Thread(
                target=self._reconcile_periodically, name="dolphin-reconcile", daemon=True
            )
            self._reconciler.start()
            threading.Thread(target=self._warm_up_search, name="dolphin-search-warm-up", daemon=True).start()

    def _warm_up_search(self) -> None:
        """The app's first question should not wait for the search matrix to be read."""
        try:
            self.answerer.retriever.warm_up()
        except Exception as exc:  # noqa: BLE001 - a closing library; the first question reads it instead
            log.debug("search warm-up skipped: %s", exc)

    def _watch(self, folder: Folder) -> None:
        if self.watcher is None or not folder.path.is_dir():
            return
        if self.watcher.watch(folder.path):
            self._record_problem(folder.id, "watcher", "", None)
        else:
            message = self.watcher.errors.get(folder.path, "cannot watch this folder")
            self._record_problem(folder.id, "watcher", "", f"{message}; changes are found every 10 minutes instead")

    def _on_watch_error(self, path: Path, message: str) -> None:
        """An event the watcher could not apply (recorded; the periodic reconcile catches up)."""
        log.warning("watcher: %s: %s", display_path(path), message)
        folder = self._folder_of(path)
        self._record_problem(folder.id if folder else LIBRARY_WIDE, "watcher", display_path(path), message)

    def _reconcile_periodically(self) -> None:
        """What the watcher missed (network drives, events dropped under load) is caught here."""
        while not self._stopping.wait(RECONCILE_EVERY_S):
            try:
                self.reconcile()
                for folder in self.store.folders():
                    self._watch(folder)
                self._record_problem(LIBRARY_WIDE, "reconcile", "", None)
            except Exception as exc:  # keep reconciling; the error is shown in status
                log.exception("reconcile failed")
                self._record_problem(LIBRARY_WIDE, "reconcile", "", f"checking the folders failed: {exc}")

    def stop(self) -> None:
        self._stopping.set()
        if self.watcher is not None:
            self.watcher.stop()
        if self._reconciler is not None:
            self._reconciler.join(30)
        self.indexer.stop()
        self.store.close()
        self.model.answer_cache.clear()

    def _on_change(self, change: Change) -> None:
        target = change.dest if change.kind in ("moved", "dir_moved") else change.path
        if target is not None and change.kind not in ("deleted", "dir_deleted"):
            self._queue(change.kind, target)
        # After the destination is queued (see _apply_scan for why the order matters).
        if change.kind in ("deleted", "dir_deleted", "moved", "dir_moved"):
            self._forget(change.path, directory=change.kind.startswith("dir"))

    def _queue(self, kind: str, target: Path) -> None:
        folder = self._folder_of(target)
        if folder is None:
            return
        folder_filter = self.scanner.filter_for(folder)
        if target.name == ".gitignore":
            folder_filter.forget_gitignore(target.parent)
            self._scan(folder)
        elif kind in ("dir_created", "dir_moved"):
            if target.is_dir():
                self._scan(folder, new_priority=PRIORITY_CHANGED)
        elif target.is_file() and folder_filter.excluded_directory(target) is None:
            reason = folder_filter.file_reason(target)
            if reason is None:

                def queue() -> None:
                    self.store.queue_documents(folder.id, [target], PRIORITY_CHANGED)
                    self.indexer.note_changed([target])

                self._writer(queue)
            else:
                self._writer(lambda: self._list_left_out_one(folder.id, target, reason))
        # A file inside an excluded directory: that directory's entry stands for it (its count
        # of files is brought up to date by the next scan).

    def _list_left_out_one(self, folder_id: int, path: Path, reason: str) -> None:
        """A file the watcher saw that the patterns leave out (writer thread); no write when its
        row already says so (a log being written must not cost a write per save)."""
        document = self.store.document(path)
        if document is not None and (document.state, document.error) == (DocumentState.SKIPPED, reason):
            return
        self._list_left_out(folder_id, {path: reason}, {path: document} if document else {})
        self.indexer.note_changed([path])

    def _forget(self, path: Path, directory: bool) -> None:
        if any(f.path == path for f in self.store.folders()):
            # The watched folder itself vanished (moved, deleted, its drive unplugged): keep its
            # index (see Scanner.scan), and say it is missing.
            self.indexer.note_folders()
            return

        def forget() -> None:
            if directory:
                gone = self.store.remove_under(path)
                if self.store.remove_documents([path]):  # the row of an excluded directory
                    gone.append(path)
            else:
                gone = [path] if self.store.remove_documents([path]) else []
            self.indexer.note_removed(gone)

        self._writer(forget)

    def index_until_done(self, timeout: float | None = None) -> bool:
        """Index everything pending; True when done, False on timeout. Raises LibraryError when
        the indexer stopped (its reason is also in the log and in `status`)."""
        self.indexer.enable_indexing()
        done = self.indexer.wait_idle(timeout)
        if self.indexer.failure is not None:
            raise LibraryError(f"the indexer stopped: {self.indexer.failure} (details are in the log)")
        return done

    # status and questions -------------------------------------------------------------------

    def status(self) -> dict[str, object]:
        return library_status(self.store)

    def retrieve(self, question: str, k: int = DEFAULT_TOP_K, earlier: Sequence[str] = ()) -> list[StoredChunk]:
        return self.answerer.retrieve(question, k, earlier)

    def ask(
        self,
        question: str,
        k: int = DEFAULT_TOP_K,
        settings: GenerationSettings | None = None,
        history: Sequence[Turn] = (),
        without_sources: bool = False,
        folders: Sequence[Path] | None = None,
        conversation: Hashable | None = None,
    ) -> LibraryAnswer:
        """Answer from the library (or only `folders` of it); `history` makes it a follow-up
        of `conversation` (app/library/answering.py)."""
        return self.answerer.ask(question, k, settings, history, without_sources, folders, conversation)

    def forget_conversation(self, conversation: Hashable) -> None:
        """Drop what answering keeps for a deleted conversation."""
        self.answerer.forget_conversation(conversation)
