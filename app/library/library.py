"""The library facade the CLI and the UI drive: folders, indexing, status, questions."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.library.chunking import DEFAULT_CHUNK_TOKENS
from app.library.extractor import DEFAULT_TIMEOUT_S, Extractor
from app.library.filters import DEFAULT_EXCLUDE, DEFAULT_INCLUDE, FolderFilter
from app.library.indexer import PRIORITY_CHANGED, PRIORITY_SCAN, Indexer, IndexProgress
from app.library.retrieval import DEFAULT_TOP_K, retrieve
from app.library.store import (
    LIBRARY_WIDE,
    Folder,
    Store,
    StoredChunk,
    StoreError,
    display_path,
)
from app.library.watcher import Change, FolderWatcher
from inference import AnswerStream, DolphinModel, GenerationSettings, InputError, Memory

RECONCILE_EVERY_S = 600.0

log = logging.getLogger("dolphin.library")


class LibraryError(Exception):
    """A library operation the user asked for cannot be done; one line."""


class ModelEncoder:
    """What the indexer needs of the model."""

    def __init__(self, model: DolphinModel) -> None:
        self._model = model
        self.encoder_identity = model.encoder_identity

    def encode_states(self, text: str) -> np.ndarray:
        return self._model.encode(text).states


@dataclass
class Source:
    path: Path
    page: int | None
    char_start: int
    char_end: int
    text: str
    score: float

    def as_dict(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "page": self.page,
            "char_start": self.char_start,
            "char_end": self.char_end,
            "text": self.text,
            "score": self.score,
        }


@dataclass
class LibraryAnswer:
    """An answer over the library: iterate for text; background encoding waits meanwhile."""

    stream: AnswerStream
    sources: list[Source]
    _gate: Callable[[], object]
    notes: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[str]:
        with self._gate():  # type: ignore[attr-defined]
            yield from self.stream

    def cancel(self) -> None:
        self.stream.cancel()


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
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.store = Store(self.data_dir)
        self.model = model
        self._filters: dict[int, FolderFilter] = {}
        self._lock = threading.RLock()
        # One scan at a time: start-up, the periodic reconcile and watcher events all scan.
        self._scan_lock = threading.Lock()
        self.indexer = Indexer(
            self.store,
            ModelEncoder(model),
            self.folder_filter,
            Extractor(model.manifest.path("tokenizer"), chunk_tokens, timeout_s=extraction_timeout_s),
            on_progress,
            on_indexer_failure,
        )
        self._debounce_s = debounce_s
        self.watcher: FolderWatcher | None = None
        self._stopping = threading.Event()
        self._reconciler: threading.Thread | None = None

    # folders -------------------------------------------------------------------------------

    def folder_filter(self, folder_id: int) -> FolderFilter:
        with self._lock:
            if folder_id not in self._filters:
                folder = next((f for f in self.store.folders() if f.id == folder_id), None)
                if folder is None:
                    return FolderFilter(Path("/nonexistent"), include=[], exclude=["*"])
                self._filters[folder_id] = FolderFilter(
                    folder.path,
                    list(folder.include_patterns or DEFAULT_INCLUDE),
                    list(folder.exclude_patterns or DEFAULT_EXCLUDE),
                )
            return self._filters[folder_id]

    def add_folder(self, path: Path, include: list[str] | None = None, exclude: list[str] | None = None) -> Folder:
        path = Path(path).expanduser().resolve()
        if not path.is_dir():
            raise LibraryError(f"{path} is not a folder")
        if path == self.data_dir or path in self.data_dir.parents:
            raise LibraryError(f"{path} contains the app's data folder ({self.data_dir}); choose another folder")
        folder = self.store.add_folder(path, include, exclude)
        with self._lock:
            self._filters.pop(folder.id, None)
        self._scan(folder)
        self._watch(folder)
        self.indexer.wake()
        return folder

    def remove_folder(self, path: Path) -> None:
        path = Path(path).expanduser().resolve()
        folder = next((f for f in self.store.folders() if f.path == path), None)
        if folder is None:
            raise LibraryError(f"{path} is not in the library")
        if self.watcher is not None:
            self.watcher.unwatch(folder.path)
        self.store.remove_folder(folder.id)
        with self._lock:
            self._filters.pop(folder.id, None)
        self.indexer.wake()

    def _folder_of(self, path: Path) -> Folder | None:
        matches = [f for f in self.store.folders() if f.path == path or f.path in path.parents]
        return max(matches, key=lambda f: len(f.path.parts), default=None)

    # reconcile -----------------------------------------------------------------------------

    def _scan(self, folder: Folder, new_priority: int = PRIORITY_SCAN) -> None:
        """Bring the store in line with the disk for one folder (start-up, periodic, new folder)."""
        with self._scan_lock:
            self._scan_locked(folder, new_priority)

    def _scan_locked(self, folder: Folder, new_priority: int) -> None:
        if not folder.path.is_dir():
            return  # missing (unmounted?): keep its index until it comes back or is removed
        found: dict[Path, tuple[int, float] | None] = {}
        folder_filter = self.folder_filter(folder.id)
        for path in folder_filter.walk():
            try:
                stat = path.stat()
                found[path] = (stat.st_size, stat.st_mtime)
            except OSError:
                found[path] = None  # unreadable (a looping link, a vanished file): the indexer records why
        known = {d.path: d for d in self.store.documents(folder.id)}
        # New and changed files are queued before vanished ones are removed: a renamed or moved
        # file is then pending before its old entry goes, so the memory garbage collector never
        # sees its memories unreferenced and the indexer reuses them instead of re-encoding.
        for path, facts in found.items():
            document = known.get(path)
            if document is None:
                self.store.upsert_pending(folder.id, path, new_priority)
            elif facts is None and document.state != "failed":
                self.store.upsert_pending(folder.id, path, PRIORITY_CHANGED)
            elif facts is not None and (document.size, document.mtime) != facts:
                self.store.upsert_pending(folder.id, path, PRIORITY_CHANGED)
        self.store.remove_documents([p for p in known if p not in found])
        self._record_filter_problems(folder, folder_filter)

    def _record_filter_problems(self, folder: Folder, folder_filter: FolderFilter) -> None:
        problems = dict(folder_filter.problems)
        for path, message in problems.items():
            self.store.set_problem(folder.id, "gitignore", display_path(path), message)
        self.store.clear_problems(folder.id, "gitignore", keep_subjects=[display_path(p) for p in problems])

    def reconcile(self) -> None:
        for folder in self.store.folders():
            self._scan(folder)
        self.indexer.wake()

    # watching ------------------------------------------------------------------------------

    def start(self, watch: bool = False) -> None:
        self.reconcile()
        self.indexer.start()
        if watch:
            self.watcher = FolderWatcher(self._on_change, self._debounce_s, on_error=self._on_watch_error)
            self.watcher.start()
            for folder in self.store.folders():
                self._watch(folder)
            self._reconciler = threading.Thread(
                target=self._reconcile_periodically, name="dolphin-reconcile", daemon=True
            )
            self._reconciler.start()

    def _watch(self, folder: Folder) -> None:
        if self.watcher is None or not folder.path.is_dir():
            return
        if self.watcher.watch(folder.path):
            self.store.clear_problems(folder.id, "watcher")
        else:
            message = self.watcher.errors.get(folder.path, "cannot watch this folder")
            self.store.set_problem(folder.id, "watcher", "", f"{message}; changes are found every 10 minutes instead")

    def _on_watch_error(self, path: Path, message: str) -> None:
        """An event the watcher could not apply (recorded; the periodic reconcile catches up)."""
        log.warning("watcher: %s: %s", display_path(path), message)
        folder = self._folder_of(path)
        try:
            self.store.set_problem(folder.id if folder else LIBRARY_WIDE, "watcher", display_path(path), message)
        except StoreError:
            log.exception("could not record a watcher problem")

    def _reconcile_periodically(self) -> None:
        """What the watcher missed (network drives, events dropped under load) is caught here."""
        while not self._stopping.wait(RECONCILE_EVERY_S):
            try:
                self.reconcile()
                for folder in self.store.folders():
                    self._watch(folder)
                self.store.clear_problems(LIBRARY_WIDE, "reconcile")
            except Exception as exc:  # keep reconciling; the error is shown in status
                log.exception("reconcile failed")
                self.indexer.last_error = str(exc)
                try:
                    self.store.set_problem(LIBRARY_WIDE, "reconcile", "", f"checking the folders failed: {exc}")
                except StoreError:
                    pass

    def stop(self) -> None:
        self._stopping.set()
        if self.watcher is not None:
            self.watcher.stop()
        if self._reconciler is not None:
            self._reconciler.join(30)
        self.indexer.stop()
        self.store.close()

    def _on_change(self, change: Change) -> None:
        target = change.dest if change.kind in ("moved", "dir_moved") else change.path
        if target is not None and change.kind not in ("deleted", "dir_deleted"):
            self._queue(change.kind, target)
        # After the destination is queued (see _scan for why the order matters).
        if change.kind in ("deleted", "dir_deleted", "moved", "dir_moved"):
            self._forget(change.path, directory=change.kind.startswith("dir"))
        self.indexer.wake()

    def _queue(self, kind: str, target: Path) -> None:
        folder = self._folder_of(target)
        if folder is None:
            return
        folder_filter = self.folder_filter(folder.id)
        if target.name == ".gitignore":
            folder_filter.forget_gitignore(target.parent)
            self._scan(folder)
        elif kind in ("dir_created", "dir_moved"):
            if target.is_dir():
                self._scan(folder, new_priority=PRIORITY_CHANGED)
        elif folder_filter.in_scope(target) and target.is_file():
            self.store.upsert_pending(folder.id, target, PRIORITY_CHANGED)

    def _forget(self, path: Path, directory: bool) -> None:
        folder = next((f for f in self.store.folders() if f.path == path), None)
        if folder is not None:
            return  # the watched folder itself vanished: keep its index (see _scan)
        if directory:
            self.store.remove_under(path)
        else:
            self.store.remove_documents([path])

    def index_until_done(self, timeout: float | None = None) -> bool:
        """Index everything pending; True when done, False on timeout. Raises LibraryError when
        the indexer stopped (its reason is also in the log and in `status`)."""
        self.indexer.start()
        self.indexer.wake()
        done = self.indexer.wait_idle(timeout)
        if self.indexer.failure is not None:
            raise LibraryError(f"the indexer stopped: {self.indexer.failure} (details are in the log)")
        return done

    # status and questions -------------------------------------------------------------------

    def status(self) -> dict[str, object]:
        return library_status(self.store)

    def retrieve(self, question: str, k: int = DEFAULT_TOP_K) -> list[StoredChunk]:
        return retrieve(self.store, question, k)

    def ask(self, question: str, k: int = DEFAULT_TOP_K, settings: GenerationSettings | None = None) -> LibraryAnswer:
        if not question.strip():
            raise InputError("the question is empty")
        chunks = self.retrieve(question, k)
        memories: list[Memory] = []
        sources: list[Source] = []
        notes: list[str] = []
        for chunk in chunks:
            stored = self.store.get_memory(chunk.text_hash, self.model.encoder_identity)
            if stored is None:
                notes.append(f"{chunk.document_path.name}: its memory is not ready yet")
                continue
            states, token_count = stored
            memories.append(Memory(states, token_count, self.model.encoder_identity))
            sources.append(
                Source(chunk.document_path, chunk.page, chunk.char_start, chunk.char_end, chunk.text, chunk.score)
            )
        if not chunks:
            notes.append("no document in the library matches this question")
        stream = self.model.answer(question, memories, settings)
        return LibraryAnswer(stream, sources, self.indexer.answering, notes + stream.notes)


def library_status(store: Store) -> dict[str, object]:
    """Per folder and per document state, and what went wrong outside documents (a folder
    that cannot be watched, a bad .gitignore, the indexer stopping); readable without a model."""
    problems = store.problems()

    def problems_of(folder_id: int) -> list[dict[str, object]]:
        return [
            {"source": p.source, "subject": p.subject, "message": p.message, "at": p.at}
            for p in problems
            if p.folder_id == folder_id
        ]

    folders = []
    for folder in store.folders():
        documents = store.documents(folder.id)
        counts: dict[str, int] = {}
        for document in documents:
            counts[document.state] = counts.get(document.state, 0) + 1
        folders.append(
            {
                "path": display_path(folder.path),
                "missing": not folder.path.is_dir(),
                "counts": counts,
                "documents": len(documents),
                "problems": problems_of(folder.id),
            }
        )
    documents = [
        {
            "path": display_path(d.path),
            "state": d.state,
            "chunks": d.chunk_count,
            "indexed_at": d.indexed_at,
            "error": d.error if d.state in ("failed", "skipped") else None,
            "note": d.note if d.state == "ready" else None,
        }
        for d in store.documents()
    ]
    stopped = next((p.message for p in problems if p.folder_id == LIBRARY_WIDE and p.source == "indexer"), None)
    return {
        "data_dir": str(store.path.parent),
        "folders": folders,
        "documents": documents,
        "counts": store.count_states(),
        "memories": store.memory_stats(),
        "indexer": {"state": "stopped", "reason": stopped} if stopped else {"state": "running"},
        "problems": [p for p in problems_of(LIBRARY_WIDE) if p["source"] != "indexer"],
    }
