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

from app.library.indexer import IndexProgress
from app.ui.main import create_window

STATES = ("ready", "pending", "indexing", "failed", "skipped")


class _Pieces(QObject):
    piece = Signal(str)


def _status(round_: int, root: Path) -> dict:
    """Two folders of 25 documents whose states change every round (so the tree is redrawn)."""
    folders, documents = [], []
    for f in range(2):
        folder = root / f"folder-{f}"
        counts: dict[str, int] = {}
        for d in range(25):
            state = STATES[(round_ + d) % len(STATES)]
            counts[state] = counts.get(state, 0) + 1
            documents.append(
                {
                    "path": str(folder / f"doc-{d:02}.txt"),
                    "state": state,
                    "chunks": d,
                    "indexed_at": 1.7e9 + round_,
                    "error": "cannot parse" if state in ("failed", "skipped") else None,
                    "note": None,
                }
            )
        problems = [{"source": "watcher", "subject": "", "message": f"round {round_}", "at": 0.0}] if f else []
        folders.append(
            {"path": str(folder), "missing": False, "counts": counts, "documents": 25, "problems": problems}
        )
    return {"folders": folders, "documents": documents, "problems": [], "indexer": {"state": "running"}}


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

    def one_round(round_: int) -> int:
        """One redraw of the folder tree, progress, status bar, model label and one streamed answer."""
        done = 0
        status = _status(round_, data_dir)
        window.folders.show_status(status)
        done += len(status["documents"]) + len(status["folders"])
        for step in range(10):
            window._on_progress(IndexProgress("indexing", step, 50, step, 10, "/books/a.txt", 1.5, step, 0))
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

    one_round(0)  # warm caches (fonts, style) before measuring
    app.processEvents()
    before = (sys.getrefcount(None), sys.getrefcount(True), sys.getrefcount(False))
    for round_ in range(1, rounds + 1):
        updates += one_round(round_)
    # Cross-thread signal emits (the indexer's progress and the answer stream), as the app does.
    progress = _emit_from_thread(
        3000,
        controller.index_progress.emit,
        lambda i: IndexProgress("indexing", i % 50, 50, i % 10, 10, "/books/b.txt", 2.0, i, 0),
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
