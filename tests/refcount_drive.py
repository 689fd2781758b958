"""Drive the real window's widgets through thousands of updates; print the drift of the
reference counts of None, True and False as JSON.

A Qt binding that drops a reference on every void- or bool-returning call (PySide6-Essentials
6.12.0 on CPython 3.11) shows here as a drift of thousands, or as an abort (`none_dealloc`), long
before a user would see the window die. Run as a child process by tests/test_refcounts.py, so an
abort fails that test instead of the whole run.

    python -m tests.refcount_drive DATA_DIR [ROUNDS]
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6 import __version__ as pyside_version
from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QApplication

from app.library.events import DocumentsChanged, FolderInfo, IndexProgress, ProblemsChanged, Snapshot
from app.library.states import DocumentState, IndexerState
from app.library.store import Document, Problem
from app.ui.main import create_window

STATES = tuple(DocumentState)


class _Pieces(QObject):
    piece = Signal(str)


def _documents(round_: int, root: Path) -> list[Document]:
    """Two folders of 25 documents whose states change every round (so every row is redrawn)."""
    documents = []
    for f in range(2):
        for d in range(25):
            state = STATES[(round_ + d) % len(STATES)]
            error = "cannot parse" if state.has_reason else None
            path = root / f"folder-{f}" / f"doc-{d:02}.txt"
            documents.append(Document(f * 25 + d + 1, f + 1, path, 10, 1.0, "h", state, error, d, 1.7e9 + round_))
    return documents


def _folders(root: Path) -> tuple[FolderInfo, ...]:
    return tuple(FolderInfo(f + 1, root / f"folder-{f}", False, None, None) for f in range(2))


def _problems(round_: int) -> tuple[Problem, ...]:
    return (Problem(2, "watcher", "", f"round {round_}", 0.0),)


def _emit_from_thread(count: int, emit: object, make: object) -> threading.Thread:
    def run() -> None:
        for i in range(count):
            emit(make(i))  # type: ignore[operator]

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def drive(data_dir: Path, rounds: int = 120) -> dict[str, object]:
    app = QApplication.instance() or QApplication([])
    window, controller = create_window(data_dir)
    window.show()
    window.stack.setCurrentIndex(1)
    sources = [{"path": f"/books/book-{i}.txt", "page": i or None, "text": "In the beginning " * 20} for i in range(3)]
    stats = {"first_token_s": 0.4, "decode_tokens_per_s": 20.0, "memory_count": 3, "text_tokens_replaced": 900}
    updates = 0

    def settle() -> None:
        while controller.pump.pending:
            app.processEvents()
        app.processEvents()

    def one_round(round_: int) -> int:
        """Every document row and a problem row changed, progress, status bar, model label, and
        one streamed answer."""
        done = 0
        controller.pump.post(DocumentsChanged(tuple(_documents(round_, data_dir))))
        controller.pump.post(ProblemsChanged(_problems(round_)))
        settle()
        done += 50 + 1
        for step in range(10):
            window._on_progress(IndexProgress(IndexerState.INDEXING, step, 50, step, 10, "/books/a.txt", 1.5, step, 0))
            done += 1
        window._on_model_state("ready", f"bundle · int4 · CPU · {round_}")
        view = window.chat.begin_answer()
        for word in range(20):
            window.chat.append_piece(f" word{word}")
            window.chat._apply_pending()
            done += 1
        window.chat.finish_answer(view.text, sources, stats)
        window.chat.set_generating(round_ % 2 == 0)
        app.processEvents()
        return done + 3

    controller.pump.expect_snapshot()
    progress = IndexProgress(IndexerState.IDLE, 50, 50, 0, 0, None, 0.0, 0, 0)
    controller.pump.post(Snapshot(_folders(data_dir), tuple(_documents(0, data_dir)), _problems(0), progress))
    settle()
    one_round(0)  # warm caches (fonts, style) before measuring
    app.processEvents()
    before = (sys.getrefcount(None), sys.getrefcount(True), sys.getrefcount(False))
    for round_ in range(1, rounds + 1):
        updates += one_round(round_)
    # Cross-thread signal emits (the indexer's progress and the answer stream), as the app does.
    progress = _emit_from_thread(
        3000,
        controller.index_progress.emit,
        lambda i: IndexProgress(IndexerState.INDEXING, i % 50, 50, i % 10, 10, "/books/b.txt", 2.0, i, 0),
    )
    pieces = _Pieces()
    pieces.piece.connect(window.chat.append_piece)
    window.chat.begin_answer()
    stream = _emit_from_thread(3000, pieces.piece.emit, lambda i: f" t{i}")
    while progress.is_alive() or stream.is_alive():
        app.processEvents()
    app.processEvents()
    window.chat.finish_answer("done", sources, stats)
    app.processEvents()
    updates += 6000
    after = (sys.getrefcount(None), sys.getrefcount(True), sys.getrefcount(False))
    window.close()
    controller.shutdown()
    return {
        "updates": updates,
        "drift": {name: a - b for name, a, b in zip(("None", "True", "False"), after, before, strict=True)},
        "pyside6": pyside_version,
        "python": sys.version.split()[0],
    }


if __name__ == "__main__":
    print(json.dumps(drive(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 120)))
