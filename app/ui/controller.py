"""The app's state behind the window: settings, model, library, chats, and background work.

Every slow call (loading the model, scanning folders, reading status, answering) runs in a
worker; results come back as signals on the GUI thread.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QThread, QTimer, Signal

from app.chats import ChatStore
from app.library.answering import AnswerOutcome, Turn
from app.library.events import IndexProgress, LibraryEvent
from app.library.library import Library, LibraryAnswer
from app.library.pack_import import ImportReport, PathMap, import_into_library
from app.power import on_battery
from app.settings import Effect, Settings, effects, load_settings, save_settings
from app.ui.event_pump import EventPump
from app.ui.library_model import LibraryTreeModel
from app.ui.tasks import TaskRunner
from inference import DolphinModel, GenerationSettings

MAX_RESTARTS = 3  # indexer restarts allowed within RESTART_WINDOW_S before giving up
RESTART_WINDOW_S = 600.0

log = logging.getLogger("dolphin.ui")


class AnswerWorker(QThread):
    """Streams one answer; `stop()` ends it after the current token."""

    piece = Signal(str)
    completed = Signal(str, list, dict)
    failed = Signal(str, str)

    def __init__(
        self,
        library: Library,
        question: str,
        settings: Settings,
        history: Sequence[Turn] = (),
        without_sources: bool = False,
        folders: Sequence[Path] | None = None,
        conversation: int | None = None,
    ) -> None:
        super().__init__()
        self._folders = list(folders) if folders is not None else None
        self._conversation = conversation
        self._library = library
        self._question = question
        self._settings = settings
        self._history = tuple(history)
        self._without_sources = without_sources
        self._answer: LibraryAnswer | None = None
        self._stopped = threading.Event()

    def stop(self) -> None:
        self._stopped.set()
        if self._answer is not None:
            self._answer.cancel()

    def run(self) -> None:
        import traceback

        try:
            generation = GenerationSettings(
                max_new_tokens=self._settings.max_new_tokens,
                greedy=self._settings.greedy,
                temperature=self._settings.temperature,
                top_p=self._settings.top_p,
            )
            answer = self._answer = self._library.ask(
                self._question,
                k=self._settings.top_k,
                settings=generation,
                history=self._history,
                without_sources=self._without_sources,
                folders=self._folders,
                conversation=self._conversation,
            )
            if self._stopped.is_set():
                answer.cancel()
            for text in answer:
                self.piece.emit(text)
            stats = answer.stats()
            if answer.outcome is AnswerOutcome.NOTHING_MATCHES:
                # The reply is the reason; the chat offers to answer anyway, which needs the question.
                stats["notes"], stats["question"] = answer.notes[:-1], self._question
                self.completed.emit(answer.notes[-1], [], stats)
                return
            self.completed.emit(answer.text, [s.as_dict() for s in answer.sources], stats)
        except Exception as exc:  # noqa: BLE001 - shown to the user in the chat
            self.failed.emit(str(exc) or type(exc).__name__, traceback.format_exc())


class AppController(QObject):
    model_state_changed = Signal(str, str)
    index_progress = Signal(object)  # IndexProgress, after the rows before it are in `model`
    error = Signal(str, str)
    pack_progress = Signal(int, int)  # shards of a memory pack imported, of how many

    def __init__(self, data_dir: Path, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.settings, settings_note = load_settings(self.data_dir)
        self.chats = ChatStore(self.data_dir)
        self.tasks = TaskRunner(self)
        self.model: DolphinModel | None = None
        self.library: Library | None = None
        # The library as the window shows it: filled by a snapshot, then kept current by events.
        self.tree = LibraryTreeModel(self)
        self.tree.set_inherited_patterns(self.settings.include_patterns, self.settings.exclude_patterns)
        self.tree.patterns_edited.connect(self.set_folder_patterns)
        self.pump = EventPump(self.tree, self)
        self.pump.progress.connect(self._on_progress)
        self.pump.indexer_stopped.connect(self._restart_indexer)
        self.progress: IndexProgress | None = None
        self.model_state = "missing"
        self.model_message = "No model bundle yet"
        self._paused_for_battery = False
        self._lock = threading.Lock()
        self._closing = False
        self._trying: tuple[str, str] | None = None  # (a bundle being tried, the saved choice before it)
        self._after_ready: tuple[str, str] | None = None  # a message for when the model is back
        self._generation = 0
        self._loaded: list[Library] = []
        self._battery_timer = QTimer(self)
        self._battery_timer.setInterval(30_000)
        self._battery_timer.timeout.connect(self._check_battery)
        self._battery_timer.start()
        self._restarts: list[float] = []
        if settings_note:
            QTimer.singleShot(0, lambda: self.error.emit(settings_note, ""))

    # model ---------------------------------------------------------------------------------

    def _set_model_state(self, state: str, message: str) -> None:
        self.model_state, self.model_message = state, message
        self.model_state_changed.emit(state, message)

    def load_model(self) -> None:
        """Load the configured bundle and open the library; nothing blocks the window."""
        bundle = self.settings.bundle_path
        if not bundle:
            self._set_model_state("missing", "No model bundle yet")
            return
        self._set_model_state("loading", f"Loading {Path(bundle).name}…")
        self._shutdown_library()
        settings = self.settings
        self._generation += 1
        generation = self._generation
        self.pump.expect_snapshot()

        def forward(event: LibraryEvent) -> None:
            """Events of this library only: one that is being replaced must not leak into the window."""
            if generation == self._generation:
                self.pump.post(event)

        def work() -> tuple[DolphinModel, Library]:
            model = DolphinModel.load(bundle, provider=settings.provider, threads=settings.threads or None)
            library = Library(
                self.data_dir,
                model,
                chunk_tokens=settings.chunk_tokens,
                include=settings.include_patterns,
                exclude=settings.exclude_patterns,
                ocr=settings.ocr,
            )
            with self._lock:
                if self._closing:
                    library.stop()
                    raise RuntimeError("the app is closing")
                self._loaded.append(library)
            library.subscribe(forward)
            library.request_snapshot()
            library.start(watch=True)
            return model, library

        def done(result: tuple[DolphinModel, Library]) -> None:
            if self._closing or generation != self._generation:
                self._stop_library(result[1])
                return
            self.model, self.library = result
            # What exists now lives as long as the app: the garbage collector need not scan it
            # again (full collections over it took 15-20 ms, each a stall of the window).
            gc.collect()
            gc.freeze()
            label = {"cpu": "CPU", "cuda": "CUDA", "dml": "DirectML"}[self.model.provider]
            search = (
                "hybrid search"
                if self.model.embedder is not None
                else "keyword search only (this bundle has no embedder: dolphin-desk add-embedder)"
            )
            if self._trying is not None and self._trying[0] == bundle:
                self._trying = None
                self.save_settings()
            self._set_model_state(
                "ready", f"{Path(bundle).name} · {self.model.manifest.precision} · {label} · {search}"
            )
            if self._after_ready is not None:
                self.error.emit(*self._after_ready)
                self._after_ready = None
            self._check_battery()

        def failed(message: str, details: str) -> None:
            if self._trying is not None and self._trying[0] == bundle:
                previous = self._trying[1]
                self._trying = None
                self.settings.bundle_path = previous
                if previous:
                    # Said once the previous bundle is back (a ready model clears the banner).
                    self._after_ready = (f"{bundle} could not be used: {message}. Keeping {Path(previous).name}.",
                                         details)  # fmt: skip
                    self.load_model()
                    return
                message = f"{message} (not saved as your model)"
            self._set_model_state("error", message)
            self.error.emit(f"The model bundle could not be loaded: {message}", details)

        self.tasks.run(work, done, failed)

    def use_bundle(self, path: str) -> None:
        """Try a bundle; it is saved as the choice only once it has loaded. A wrong folder leaves
        the previous choice saved, and loaded again."""
        self._trying = (path, self.settings.bundle_path)
        self.settings.bundle_path = path
        self.load_model()

    def save_settings(self) -> None:
        try:
            save_settings(self.data_dir, self.settings)
        except OSError as exc:
            self.error.emit(f"Settings could not be saved: {exc.strerror or exc}", "")

    # library -------------------------------------------------------------------------------

    def _run_on_library(self, work_name: str, work: Any, done: Any = None, on_failed: Any = None) -> None:
        library = self.library
        if library is None:
            self.error.emit("Load a model bundle before adding folders.", "")
            if on_failed is not None:
                on_failed("no model is loaded")
            return

        def failed(message: str, details: str) -> None:
            self.error.emit(f"{work_name}: {message}", details)
            if on_failed is not None:
                on_failed(message)

        self.tasks.run(lambda: work(library), done, failed)

    def add_folder(self, path: str, finished: Callable[[str | None], None] | None = None) -> None:
        """The folder follows the include/exclude settings (Settings changes reach it).
        `finished(None)` once it is in the library and scanned, `finished(reason)` if not."""
        self._run_on_library(
            "Adding the folder failed",
            lambda lib: lib.add_folder(Path(path)),
            (lambda _folder: finished(None)) if finished else None,
            finished,
        )

    def import_pack(
        self, pack: str, mappings: Sequence[str], finished: Callable[[ImportReport], None] | None = None
    ) -> None:
        """Merge a memory pack into the library in the background (app/library/pack_import.py):
        each shard on the library's writer, whose events bring the documents into the folders
        panel as they land; `pack_progress` counts the shards; `finished(report)` at the end.
        A refused pack (another model or chunk size) comes back as an error banner."""
        specs = list(mappings)
        self._run_on_library(
            "The pack was not imported",
            lambda lib: import_into_library(
                lib, Path(pack), PathMap.parse(specs), lambda done, total: self.pack_progress.emit(done, total)
            ),
            finished,
        )

    def remove_folder(self, path: str) -> None:
        self._run_on_library("Removing the folder failed", lambda lib: lib.remove_folder(Path(path)))

    def reindex(self, path: str) -> None:
        self._run_on_library("Re-indexing failed", lambda lib: lib.reindex(Path(path)))

    def set_folder_patterns(self, path: str, include: list[str] | None, exclude: list[str] | None) -> None:
        """A folder's own patterns (None: follow Settings), saved in the library; the folder is
        scanned again in the background (newly excluded files leave the index, listed with the
        pattern; newly included ones are indexed)."""
        self._run_on_library(
            "Saving the folder's patterns failed", lambda lib: lib.set_folder_patterns(Path(path), include, exclude)
        )

    def apply_settings(self, new: Settings) -> None:
        """Save new settings and do what they require (the schema says what: app/settings.py)."""
        old, self.settings = self.settings, new
        self.save_settings()
        self.tree.set_inherited_patterns(new.include_patterns, new.exclude_patterns)
        needed = effects(old, new)
        if Effect.RELOAD_MODEL in needed:
            self.load_model()
            return
        if Effect.RECHUNK in needed:
            tokens = new.chunk_tokens
            self._run_on_library("Changing the chunk size failed", lambda lib: lib.set_chunk_tokens(tokens))
        if Effect.REREAD in needed:
            enabled = new.ocr
            self._run_on_library("Turning OCR on or off failed", lambda lib: lib.set_ocr(enabled))
        if Effect.RESCAN in needed:
            include, exclude = list(new.include_patterns), list(new.exclude_patterns)
            self._run_on_library("Applying the patterns failed", lambda lib: lib.set_patterns(include, exclude))

    def set_paused(self, paused: bool) -> None:
        if self.library is None:
            return
        if paused:
            self.library.indexer.pause()
        else:
            self.library.indexer.resume()

    def _check_battery(self) -> None:
        if self.library is None:
            return
        battery = on_battery() if self.settings.pause_on_battery else False
        if battery and not self.library.indexer.paused:
            self._paused_for_battery = True
            self.library.indexer.pause()
        elif not battery and self._paused_for_battery:
            self._paused_for_battery = False
            self.library.indexer.resume()

    def _restart_indexer(self, reason: str) -> None:
        """The indexer thread died (a bug): say so and start a new one, unless it keeps dying."""
        library = self.library
        if library is None or self._closing:
            return
        now = time.monotonic()
        self._restarts = [t for t in self._restarts if now - t < RESTART_WINDOW_S]
        if len(self._restarts) >= MAX_RESTARTS:
            self.error.emit(
                f"Indexing stopped: {reason}. It stopped {MAX_RESTARTS} times in a few minutes, so it was not "
                "restarted; Help → Show log has the details. Restart the app to try again.",
                "",
            )
            return
        self._restarts.append(now)
        log.warning("restarting the indexer after: %s", reason)
        library.indexer.start()
        self.error.emit(f"Indexing stopped unexpectedly ({reason}) and was restarted. Help → Show log has details.", "")

    def _on_progress(self, progress: IndexProgress) -> None:
        self.progress = progress
        self.index_progress.emit(progress)

    # answers -------------------------------------------------------------------------------

    def answer(
        self,
        question: str,
        history: Sequence[Turn] = (),
        without_sources: bool = False,
        folders: Sequence[Path] | None = None,
        conversation: int | None = None,
    ) -> AnswerWorker | None:
        """`folders`: the chat's scope (None: the whole library); `conversation`: the chat, whose
        follow-ups continue from its last answer's kept KV cache."""
        if self.library is None:
            self.error.emit("The model is not ready yet.", "")
            return None
        return AnswerWorker(self.library, question, self.settings, history, without_sources, folders, conversation)

    def forget_conversation(self, conversation: int) -> None:
        """A deleted chat leaves nothing behind in the answer caches."""
        if self.library is not None:
            self.library.forget_conversation(conversation)

    def _stop_library(self, library: Library) -> None:
        with self._lock:
            if library not in self._loaded:
                return
            self._loaded.remove(library)
        library.stop()

    def _shutdown_library(self) -> None:
        if self.library is not None:
            library, self.library, self.model = self.library, None, None
            self._stop_library(library)

    def shutdown(self) -> None:
        """Stop every library this controller started, including one still being loaded."""
        with self._lock:
            self._closing = True
        self._battery_timer.stop()
        self.tasks.wait()
        self.library = self.model = None
        for library in list(self._loaded):
            self._stop_library(library)
        self.chats.close()
