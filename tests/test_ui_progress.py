"""Indexing progress measured in work (chunks), an honest rate, and a notification at the end."""

from __future__ import annotations

import shutil

from app.library.events import IndexProgress
from app.library.states import IndexerState
from app.settings import Settings
from app.ui import main_window
from app.ui.folders import format_time_left
from tests.test_ui import KJV, open_window, wait_ready  # noqa: F401 (fixture)


def _progress(**fields) -> IndexProgress:
    base = {
        **{"state": IndexerState.INDEXING, "documents_done": 0, "documents_total": 0, "chunks_done": 0},
        **{"chunks_total": 0, "current_file": "/books/big.txt", "chunks_per_second": 0.0, "encoded": 0, "reused": 0},
    }
    return IndexProgress(**{**base, **fields})


def test_the_estimate_counts_chunks_not_documents() -> None:
    # The case: 99% of documents done while one big file still had 2,300 of 6,413 chunks to go.
    big = _progress(documents_done=99, documents_total=100, chunks_done=4113 + 98 * 3, chunks_total=6413 + 98 * 3,
                    documents_read=99, chunks_per_second=2.0)  # fmt: skip
    assert big.estimated_chunks_total == 6413 + 98 * 3
    assert big.chunks_done / big.estimated_chunks_total < 0.7
    assert big.seconds_left == 2300 / 2.0
    # Documents not read yet count at the run's chunks per document so far.
    early = _progress(documents_done=2, documents_total=10, chunks_done=25, chunks_total=30, documents_read=3)
    assert early.estimated_chunks_total == 30 + 10 * 7 and early.seconds_left is None
    assert format_time_left(None) == "" and format_time_left(3 * 3600 + 600) == "about 3 h 10 min left"


def test_progress_shows_reading_then_chunks_and_a_notification_after_a_long_run(
    qtbot,
    open_window,  # noqa: F811
    fp32_bundle,
    tmp_path,
    monkeypatch,
) -> None:
    monkeypatch.setattr(main_window, "LONG_RUN_S", 0.0)
    folder = tmp_path / "Books"
    shutil.copytree(KJV, folder)
    window, controller = open_window(settings=Settings(bundle_path=str(fp32_bundle)))
    wait_ready(qtbot, controller)
    shown: list[tuple[str, str, bool]] = []
    panel = window.folders

    def record(progress: IndexProgress) -> None:
        shown.append((panel.progress.format(), panel.current.text(), progress.reading))

    controller.index_progress.connect(record)
    controller.add_folder(str(folder))
    qtbot.waitUntil(lambda: bool(window.notifications), timeout=120000)
    assert any(reading and current.startswith("Reading ") for _, current, reading in shown)
    assert not any("0/0" in current or "(0" in current for _, current, _ in shown)
    assert any(" chunks · " in bar and "documents" in bar for bar, _, _ in shown)
    assert "6 documents ready" in window.notifications[-1]
    assert "Indexing finished" in window.statusBar().currentMessage()
    # Copies of the same books reuse every memory: no rate is claimed for reused chunks.
    shown.clear()
    copies = tmp_path / "Copies"
    shutil.copytree(KJV, copies)
    controller.add_folder(str(copies))
    qtbot.waitUntil(lambda: len(window.notifications) == 2, timeout=120000)
    assert any(current.startswith("Compressing ") for _, current, _ in shown)
    assert not any("chunks/s" in current for _, current, _ in shown)
