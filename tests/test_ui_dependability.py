"""The window notices what goes wrong behind it: a dying indexer is shown and restarted, an
unhandled exception opens a dialog with its details, problems show in the folders panel, and the
log is one click away."""

from __future__ import annotations

import threading

from PySide6.QtGui import QDesktopServices

from app.logs import install_exception_hooks, uninstall_exception_hooks
from app.settings import Settings
from app.ui.crash import CrashReporter
from tests.test_ui import index_folder, open_window, wait_ready  # noqa: F401 - open_window is a fixture


def test_a_dying_indexer_is_shown_and_restarted(qtbot, open_window, fp32_bundle, tmp_path) -> None:  # noqa: F811
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("The keeper kept the lamp burning.")
    window, controller = open_window(settings=Settings(bundle_path=str(fp32_bundle)))
    wait_ready(qtbot, controller)
    index_folder(qtbot, window, controller, folder)
    library = controller.library
    real = library.store.next_pending
    calls = {"n": 0}

    def broken_once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("simulated bug in the indexer loop")
        return real(*args, **kwargs)

    library.store.next_pending = broken_once
    with qtbot.waitSignal(controller.pump.indexer_stopped, timeout=20000):
        library.indexer.wake()
    qtbot.waitUntil(lambda: "stopped unexpectedly" in window.chat.banner.text(), timeout=10000)
    assert "RuntimeError: simulated bug" in window.chat.banner.text()
    qtbot.waitUntil(lambda: library.indexer.alive, timeout=10000)
    (folder / "b.txt").write_text("A file added after the restart is indexed.")

    def b_ready() -> bool:
        document = library.store.document(folder / "b.txt")
        return document is not None and document.state == "ready"

    qtbot.waitUntil(b_ready, timeout=30000)
    # The restarted indexer clears the record, and the panel says so.
    qtbot.waitUntil(lambda: window.folders.progress.format().startswith("Up to date"), timeout=10000)
    qtbot.waitUntil(lambda: window.folders.problems.isHidden(), timeout=10000)
    assert library.status()["indexer"] == {"state": "running"}


def test_an_unhandled_exception_opens_a_dialog_with_details(qtbot, open_window, tmp_path) -> None:  # noqa: F811
    window, _ = open_window()
    reporter = CrashReporter(window, tmp_path / "data" / "logs" / "dolphin-desk.log")
    install_exception_hooks()
    try:
        with qtbot.waitSignal(reporter.caught, timeout=5000):
            worker = threading.Thread(target=lambda: {}["missing key"], name="dolphin-test-worker")
            worker.start()
            worker.join()
        qtbot.waitUntil(lambda: len(reporter.dialogs) == 1, timeout=5000)
        box = reporter.dialogs[0]
        assert "KeyError" in box.text() and "dolphin-test-worker" in box.text()
        assert "Traceback" in box.detailedText()
        assert "still running" in box.informativeText()
        box.close()
    finally:
        uninstall_exception_hooks()
        reporter.close()


def test_show_log_opens_the_log_file(qtbot, open_window, tmp_path, monkeypatch) -> None:  # noqa: F811
    from app.logs import log_path

    opened: list[str] = []
    monkeypatch.setattr(QDesktopServices, "openUrl", staticmethod(lambda url: opened.append(url.toLocalFile()) or True))
    window, controller = open_window()
    path = log_path(controller.data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("a log line\n")
    window.show_log_action.trigger()
    assert opened == [str(path)]


def test_folder_problems_show_in_the_panel(qtbot, open_window, fp32_bundle, tmp_path) -> None:  # noqa: F811
    folder = tmp_path / "repo"
    folder.mkdir()
    (folder / ".gitignore").write_text("*.tmp\n!\n")
    (folder / "a.txt").write_text("The keeper kept the lamp burning.")
    window, controller = open_window(settings=Settings(bundle_path=str(fp32_bundle)))
    wait_ready(qtbot, controller)
    index_folder(qtbot, window, controller, folder)

    def rows() -> list[tuple[str, str]]:
        return list(window.folders.document_rows(0).items())

    qtbot.waitUntil(lambda: any(name.startswith("⚠ gitignore") for name, _ in rows()), timeout=10000)
    problem = next(text for name, text in rows() if name.startswith("⚠"))
    assert problem.startswith(".gitignore: invalid pattern(s) ignored: line 2")
