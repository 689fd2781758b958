"""The library facade the CLI and the UI drive: folders, indexing, status, questions."""

from __future__ import annotations

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
from app.library.store import Folder, Store, StoredChunk
from app.library.watcher import Change, FolderWatcher
from inference import AnswerStream, DolphinModel, GenerationSettings, InputError, Memory

RECONCILE_EVERY_S = 600.0


class LibraryError(Exception):
    """A library operation the user asked for cannot be done; one line."""


class ModelEncoder:
    """What the indexer needs of the model."""

    def __init__(self, model: DolphinModel) -> None:
        self._model = model
        self.encoder_identity = model.encoder_identity

    def count_tokens(self, text: str) -> int:
        return len(self._model.tokenizer.encode(text))

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
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.store = Store(self.data_dir)
        self.model = model
        self._filters: dict[int, FolderFilter] = {}
        self._lock = threading.RLock()
        self.indexer = Indexer(
            self.store,
            ModelEncoder(model),
            self.folder_filter,
            chunk_tokens,
            on_progress,
            Extractor(timeout_s=extraction_timeout_s),
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
        if self.watcher is not None:
            self.watcher.watch(folder.path)
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
        if not folder.path.is_dir():
            return  # missing (unmounted?): keep its index until it comes back or is removed
        found: dict[Path, tuple[int, float] | None] = {}
        for path in self.folder_filter(folder.id).walk():
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

    def reconcile(self) -> None:
        for folder in self.store.folders():
            self._scan(folder)
        self.indexer.wake()

    # watching ------------------------------------------------------------------------------

    def start(self, watch: bool = False) -> None:
        self.reconcile()
        self.indexer.start()
        if watch:
            self.watcher = FolderWatcher(self._on_change, self._debounce_s)
            self.watcher.start()
            for folder in self.store.folders():
                self.watcher.watch(folder.path)
            self._reconciler = threading.Thread(
                target=self._reconcile_periodically, name="dolphin-reconcile", daemon=True
            )
            self._reconciler.start()

    def _reconcile_periodically(self) -> None:
        """What the watcher missed (network drives, events dropped under load) is caught here."""
        while not self._stopping.wait(RECONCILE_EVERY_S):
            try:
                self.reconcile()
                for folder in self.store.folders():
                    if self.watcher is not None and folder.path.is_dir():
                        self.watcher.watch(folder.path)
            except Exception as exc:  # noqa: BLE001 - keep reconciling; the error is shown in status
                self.indexer.last_error = str(exc)

    def stop(self) -> None:
        self._stopping.set()
        if self.watcher is not None:
            self.watcher.stop()
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
        self.indexer.start()
        self.indexer.wake()
        return self.indexer.wait_idle(timeout)

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
    """Per folder and per document state; readable without loading a model."""
    folders = []
    for folder in store.folders():
        documents = store.documents(folder.id)
        counts: dict[str, int] = {}
        for document in documents:
            counts[document.state] = counts.get(document.state, 0) + 1
        folders.append(
            {
                "path": str(folder.path),
                "missing": not folder.path.is_dir(),
                "counts": counts,
                "documents": len(documents),
            }
        )
    documents = [
        {
            "path": str(d.path),
            "state": d.state,
            "chunks": d.chunk_count,
            "indexed_at": d.indexed_at,
            "error": d.error if d.state in ("failed", "skipped") else None,
        }
        for d in store.documents()
    ]
    return {
        "data_dir": str(store.path.parent),
        "folders": folders,
        "documents": documents,
        "counts": store.count_states(),
        "memories": store.memory_stats(),
    }
