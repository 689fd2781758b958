"""The desktop app, driven like a user would, offscreen, with a real tiny bundle."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from app.settings import Settings, load_settings, save_settings
from app.ui.main import create_window
from tests.conftest import ROOT, set_user_version

KJV = ROOT / "benchmarks" / "data" / "kjv"


@pytest.fixture
def open_window(qtbot, tmp_path):
    """Open main windows on a data dir; each is closed and shut down after the test."""
    opened = []

    def open_(data_dir: Path | None = None, settings: Settings | None = None):
        data_dir = data_dir or tmp_path / "data"
        if settings is not None:
            save_settings(data_dir, settings)
        window, controller = create_window(data_dir)
        qtbot.addWidget(window)
        window.show()
        opened.append((window, controller))
        return window, controller

    yield open_
    import threading

    for window, controller in opened:
        window.close()
        controller.shutdown()
    alive = [t.name for t in threading.enumerate() if t.name.startswith("dolphin-")]
    assert not alive, f"threads left running: {alive}"


def wait_ready(qtbot, controller) -> None:
    qtbot.waitUntil(lambda: controller.model_state == "ready", timeout=60000)


def index_folder(qtbot, window, controller, folder: Path) -> None:
    controller.add_folder(str(folder))
    qtbot.waitUntil(
        lambda: (
            controller.library is not None
            and controller.library.store.count_states()["ready"] >= 1
            and controller.library.store.count_states()["pending"] == 0
            and controller.library.store.count_states()["indexing"] == 0
        ),
        timeout=60000,
    )
    qtbot.waitUntil(
        lambda: len(window.folders.folder_rows()) == 1 and len(window.folders.document_rows(0)) >= 1,
        timeout=10000,
    )


def test_first_run_explains_and_accepts_a_bundle(qtbot, open_window, fp32_bundle, tmp_path) -> None:
    window, controller = open_window()
    assert window.windowTitle().startswith("Dolphin Desk")
    assert window.stack.currentWidget() is window.welcome
    assert "No model bundle" in window.model_label.text()
    with qtbot.waitSignal(
        controller.model_state_changed, check_params_cb=lambda state, _: state == "ready", timeout=60000
    ):
        window.welcome.bundle_chosen.emit(str(fp32_bundle))
    assert window.stack.currentIndex() == 1
    assert "fp32 · CPU" in window.model_label.text()
    assert load_settings(tmp_path / "data")[0].bundle_path == str(fp32_bundle)


def test_a_broken_bundle_is_explained_on_the_welcome_page(qtbot, open_window, bundle_copy) -> None:
    (bundle_copy / "decoder" / "model.onnx.data").unlink()
    window, controller = open_window(settings=Settings(bundle_path=str(bundle_copy)))
    qtbot.waitUntil(lambda: controller.model_state == "error", timeout=30000)
    assert window.stack.currentWidget() is window.welcome
    banner = window.welcome.banner
    assert "decoder/model.onnx.data is missing" in banner.text() and banner.isVisibleTo(window.welcome)


def test_converting_without_the_converter_says_how_to_get_it(qtbot, open_window, monkeypatch) -> None:
    import app.ui.welcome as welcome

    monkeypatch.setattr(welcome, "converter_available", lambda: False)
    window, _ = open_window()
    window.welcome.start_conversion(str(ROOT / "tests" / "fixtures" / "tiny-dolphin"))
    assert "pip install torch==2.13.0" in window.welcome.banner.text()
    assert window.welcome.choose.isEnabled()


def test_adding_a_folder_shows_progress_and_documents(qtbot, open_window, fp32_bundle, tmp_path) -> None:
    folder = tmp_path / "Books"
    shutil.copytree(KJV, folder)
    (folder / "broken.docx").write_bytes(b"PK\x03\x04 not a docx")
    window, controller = open_window(settings=Settings(bundle_path=str(fp32_bundle)))
    wait_ready(qtbot, controller)
    index_folder(qtbot, window, controller, folder)
    qtbot.waitUntil(lambda: window.folders.progress.format().startswith("Up to date"), timeout=30000)

    def rows() -> dict[str, str]:
        return window.folders.document_rows(0)

    qtbot.waitUntil(lambda: len(rows()) == 7 and rows()["jonah.txt"] == "ready", timeout=10000)
    assert rows()["broken.docx"].startswith("failed: not a valid DOCX file")
    # The bar and the folder row come from the same stream of events: once the bar says up to
    # date, the row says so too (they used to be read at different times).
    assert window.folders.folder_rows()[0][1] == "6 ready, 1 failed"


def test_asking_streams_an_answer_with_its_sources(qtbot, open_window, fp32_bundle, tmp_path) -> None:
    folder = tmp_path / "Books"
    shutil.copytree(KJV, folder)
    window, controller = open_window(settings=Settings(bundle_path=str(fp32_bundle), greedy=True, max_new_tokens=24))
    wait_ready(qtbot, controller)
    index_folder(qtbot, window, controller, folder)
    window.chat.composer.setPlainText("How long was Jonah inside the great fish?")
    pieces: list[str] = []
    original_ask = window.ask

    def ask_and_watch(question: str) -> None:
        original_ask(question)
        window.worker.piece.connect(pieces.append)

    window.chat.send.disconnect()
    window.chat.send.connect(ask_and_watch)
    qtbot.keyClick(window.chat.composer, Qt.Key.Key_Return)
    assert window.chat.generating
    qtbot.waitUntil(lambda: window.worker is None, timeout=60000)
    assert len(pieces) >= 2
    answer = window.chat.transcript.views[-1]
    assert answer.text == "".join(pieces)
    sources = [label.text() for label in answer.source_labels()]
    assert "jonah.txt" in sources[0]
    # The sentence that answers, not the chunk's first characters.
    assert "a great fish to swallow up Jonah." in sources[0]
    assert "memories stood in for" in answer.cost.text() and "tokens/s" in answer.cost.text()
    assert window.chat.composer.toPlainText() == ""
    assert window.windowTitle() == "Dolphin Desk — How long was Jonah inside the great fish?"


def test_stop_ends_the_answer_mid_way(qtbot, open_window, fp32_bundle, tmp_path) -> None:
    folder = tmp_path / "Books"
    folder.mkdir()
    shutil.copy(KJV / "ruth.txt", folder / "ruth.txt")
    window, controller = open_window(settings=Settings(bundle_path=str(fp32_bundle), max_new_tokens=400))
    wait_ready(qtbot, controller)
    index_folder(qtbot, window, controller, folder)
    window.ask("Who was Ruth?")
    stopped = []

    def stop_on_first_piece(_piece: str) -> None:
        if not stopped:
            stopped.append(True)
            qtbot.mouseClick(window.chat.button, Qt.MouseButton.LeftButton)

    window.worker.piece.connect(stop_on_first_piece)
    assert window.chat.button.text() == "Stop"
    qtbot.waitUntil(lambda: window.worker is None, timeout=60000)
    messages = controller.chats.messages(window.conversation_id)
    assert messages[-1].stats["stop_reason"] == "cancelled"
    assert messages[-1].stats["new_tokens"] < 400
    assert "stopped" in window.chat.transcript.views[-1].cost.text()
    assert window.chat.button.text() == "Send"


def test_an_empty_library_says_so_then_answers_anyway_and_escape_stops_it(
    qtbot, open_window, fp32_bundle, tmp_path
) -> None:
    window, controller = open_window(settings=Settings(bundle_path=str(fp32_bundle), max_new_tokens=400))
    wait_ready(qtbot, controller)
    window.ask("Tell me everything.")
    qtbot.waitUntil(lambda: window.worker is None, timeout=60000)
    reply = window.chat.transcript.views[-1]
    assert reply.text.startswith("Nothing in your library matches this question.")
    assert reply.anyway is not None and not reply.anyway.isHidden()
    qtbot.mouseClick(reply.anyway, Qt.MouseButton.LeftButton)
    assert window.worker is not None and not reply.anyway.isEnabled()
    window.worker.piece.connect(lambda _: qtbot.keyClick(window.chat.composer, Qt.Key.Key_Escape))
    qtbot.waitUntil(lambda: window.worker is None, timeout=60000)
    messages = controller.chats.messages(window.conversation_id)
    assert [m.role for m in messages] == ["user", "assistant", "assistant"]
    assert messages[1].stats["outcome"] == "nothing_matches"
    assert messages[-1].stats["outcome"] == "without_sources" and messages[-1].stats["stop_reason"] == "cancelled"
    assert messages[-1].stats["memory_count"] == 0


def test_chats_and_settings_survive_a_restart(qtbot, open_window, fp32_bundle, tmp_path) -> None:
    data = tmp_path / "data"
    window, controller = open_window(data, Settings(bundle_path=str(fp32_bundle), greedy=True, max_new_tokens=8))
    wait_ready(qtbot, controller)
    window.ask("What is the first question?")
    qtbot.waitUntil(lambda: window.worker is None, timeout=60000)
    window.new_conversation()
    window.ask("A second chat")
    qtbot.waitUntil(lambda: window.worker is None, timeout=60000)
    controller.settings.top_k = 5
    controller.settings.temperature = 0.3
    controller.save_settings()
    window.close()
    controller.shutdown()

    window2, controller2 = open_window(data)
    titles = [window2.sidebar.list.item(i).text() for i in range(window2.sidebar.list.count())]
    assert titles == ["A second chat", "What is the first question?"]
    window2.sidebar.list.setCurrentRow(1)
    texts = [view.text for view in window2.chat.transcript.views]
    assert texts[0] == "What is the first question?" and len(texts) == 2
    assert controller2.settings.top_k == 5 and controller2.settings.temperature == 0.3
    assert controller2.settings.bundle_path == str(fp32_bundle)


def test_settings_dialog_validates_and_saves(qtbot, tmp_path) -> None:
    from app.ui.dialogs import SettingsDialog

    dialog = SettingsDialog(Settings(), str(tmp_path))
    qtbot.addWidget(dialog)
    dialog.top_k.setValue(4)
    dialog.greedy.setChecked(True)
    dialog.exclude.setPlainText(".* node_modules secret*")
    dialog._accept()
    assert dialog.result_settings is not None
    assert dialog.result_settings.top_k == 4 and dialog.result_settings.greedy
    assert dialog.result_settings.exclude_patterns == [".*", "node_modules", "secret*"]


def test_the_event_loop_never_stalls_while_indexing_and_answering(
    qtbot, open_window, fp32_bundle, tmp_path, report
) -> None:
    """Measured, reported, and only loosely bounded: timings are noisy on this machine."""
    folder = tmp_path / "Books"
    for copy in range(3):
        shutil.copytree(KJV, folder / f"set{copy}")
    window, controller = open_window(
        settings=Settings(bundle_path=str(fp32_bundle), max_new_tokens=300, chunk_tokens=96)
    )
    wait_ready(qtbot, controller)
    from benchmarks.gui_stall import StallMeter

    meter = StallMeter()
    meter.start()
    latest = []
    controller.index_progress.connect(latest.append)
    controller.add_folder(str(folder))
    qtbot.waitUntil(lambda: bool(latest) and latest[-1].state == "indexing", timeout=30000)
    for question in ("Who was Ruth?", "What did Jonah do?", "Why was Vashti removed?"):
        window.ask(question)
        qtbot.waitUntil(lambda: window.worker is None, timeout=60000)
    qtbot.waitUntil(lambda: latest[-1].state == "idle" and latest[-1].documents_done == 18, timeout=120000)
    meter.stop()
    worst_ms = meter.max_ms
    report(
        f"longest GUI event-loop stall while indexing 18 documents and answering 3 questions: {worst_ms:.1f} ms "
        f"over {len(meter.gaps)} ticks"
    )
    assert worst_ms < 2000


def test_dropping_a_folder_adds_it(qtbot, open_window, fp32_bundle, tmp_path) -> None:
    from PySide6.QtCore import QMimeData, QPointF, QUrl
    from PySide6.QtGui import QDropEvent

    folder = tmp_path / "Dropped"
    folder.mkdir()
    (folder / "note.md").write_text("A note dropped in from the file manager.")
    window, controller = open_window(settings=Settings(bundle_path=str(fp32_bundle)))
    wait_ready(qtbot, controller)
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(folder))])
    event = QDropEvent(
        QPointF(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier
    )
    window.folders.dropEvent(event)
    qtbot.waitUntil(
        lambda: [name for name, _ in window.folders.folder_rows()] == ["Dropped"],
        timeout=30000,
    )


def test_shift_enter_adds_a_line_and_enter_sends(qtbot, open_window) -> None:
    window, _ = open_window()
    window.stack.setCurrentIndex(1)
    sent: list[str] = []
    window.chat.send.connect(sent.append)
    window.chat.composer.setFocus()
    qtbot.keyClicks(window.chat.composer, "first line")
    qtbot.keyClick(window.chat.composer, Qt.Key.Key_Return, Qt.KeyboardModifier.ShiftModifier)
    qtbot.keyClicks(window.chat.composer, "second line")
    assert window.chat.composer.toPlainText() == "first line\nsecond line"
    assert sent == []
    qtbot.keyClick(window.chat.composer, Qt.Key.Key_Return)
    assert sent == ["first line\nsecond line"]


def test_the_window_reports_a_library_from_a_newer_app(qtbot, open_window, fp32_bundle, tmp_path) -> None:
    from app.library.store import SCHEMA_VERSION, Store

    data_dir = tmp_path / "data"
    Store(data_dir).close()
    set_user_version(data_dir / "library.sqlite3", SCHEMA_VERSION + 1)
    before = (data_dir / "library.sqlite3").read_bytes()
    _window, controller = open_window(data_dir, Settings(bundle_path=str(fp32_bundle)))
    qtbot.waitUntil(lambda: controller.model_state == "error", timeout=60000)
    assert "newer Dolphin Desk" in controller.model_message
    assert "update the app" in controller.model_message
    assert (data_dir / "library.sqlite3").read_bytes() == before
