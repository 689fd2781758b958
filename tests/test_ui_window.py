"""The window and the keyboard: remembered layout, narrow windows, shortcuts, search, theme."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from PySide6.QtCore import Qt
from PySide6.QtGui import QKeySequence
from PySide6.QtWidgets import QApplication, QMessageBox

from app.chats import Message
from app.settings import Settings
from app.ui.main import assets_dir
from app.ui.theme import Theme
from tests.conftest import ROOT
from tests.test_ui import open_window, wait_ready  # noqa: F401 (fixture)


def test_size_and_panel_widths_are_remembered(tmp_path) -> None:
    screen = tmp_path / "screen.json"
    screen.write_text(json.dumps({"screens": [{"name": "big", "x": 0, "y": 0, "width": 1920, "height": 1200,
                                               "logicalDpi": 96, "logicalBaseDpi": 96, "dpr": 1}]}))  # fmt: skip
    env = {**os.environ, "QT_QPA_PLATFORM": f"offscreen:configfile={screen}"}
    drive = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "window_state_drive.py"), str(tmp_path / "data")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    result = json.loads(drive.stdout.strip().splitlines()[-1])
    assert result["before"]["size"] == [1300, 820]
    assert result["after"] == result["before"]


def test_a_narrow_window_gives_the_chat_the_room(qtbot, open_window, fp32_bundle) -> None:  # noqa: F811
    window, controller = open_window(settings=Settings(bundle_path=str(fp32_bundle)))
    wait_ready(qtbot, controller)
    window.resize(800, 600)
    qtbot.waitUntil(
        lambda: not window.sidebar.isVisible() and not window.folders.isVisible() and window.chat.width() >= 760,
        timeout=5000,
    )
    window.folders_panel_action.trigger()  # View → Folders panel brings one back on demand
    qtbot.waitUntil(window.folders.isVisible, timeout=5000)
    window.resize(1400, 900)
    qtbot.waitUntil(lambda: window.sidebar.isVisible() and window.folders.isVisible(), timeout=5000)


def test_keyboard_shortcuts_and_search_across_chats(qtbot, open_window, fp32_bundle) -> None:  # noqa: F811
    window, controller = open_window(settings=Settings(bundle_path=str(fp32_bundle)))
    wait_ready(qtbot, controller)
    chats = controller.chats
    jonah = chats.create("Jonah")
    chats.add(jonah.id, Message("user", "Where did the great fish take him?"))
    ruth = chats.create("Ruth")
    chats.add(ruth.id, Message("user", "Whither thou goest?"))
    window._load_conversations(select=ruth.id)
    assert QKeySequence("Ctrl+,") in window.settings_action.shortcuts()  # on every platform
    assert window.settings_action in window.menuBar().actions()[0].menu().actions()
    qtbot.keyClick(window, Qt.Key.Key_F, Qt.KeyboardModifier.ControlModifier)
    assert window.sidebar.search.hasFocus()
    qtbot.keyClicks(window.sidebar.search, "great FISH")  # message text, any case
    titles = [window.sidebar.list.item(i).text() for i in range(window.sidebar.list.count())]
    assert titles == ["Jonah"] and window.conversation_id == jonah.id
    window.sidebar.search.clear()
    assert window.sidebar.list.count() >= 2
    # Del on the chat list asks to delete the chat; in the composer it is just a key.
    window.sidebar.list.setFocus()
    qtbot.keyClick(window.sidebar.list, Qt.Key.Key_Delete)
    box = next(b for b in window.findChildren(QMessageBox, "confirmDeleteChat") if b.isVisible())
    qtbot.mouseClick(box.button(QMessageBox.StandardButton.Cancel), Qt.MouseButton.LeftButton)
    window.chat.composer.setFocus()
    qtbot.keyClick(window.chat.composer, Qt.Key.Key_N, Qt.KeyboardModifier.ControlModifier)
    assert window.conversation_id not in (jonah.id, ruth.id) and not chats.messages(window.conversation_id)
    rename = next(a for a in window.findChildren(type(window.settings_action)) if a.text() == "&Rename chat…")
    assert rename.shortcut() == QKeySequence(Qt.Key.Key_F2)


def test_add_folder_waits_for_a_model(qtbot, open_window, fp32_bundle) -> None:  # noqa: F811
    window, controller = open_window()
    assert controller.model_state in ("missing", "error")
    assert not window.add_folder_action.isEnabled() and not window.folders.add_button.isEnabled()
    controller.use_bundle(str(fp32_bundle))
    wait_ready(qtbot, controller)
    assert window.add_folder_action.isEnabled() and window.folders.add_button.isEnabled()


def test_the_theme_follows_the_system(qtbot) -> None:
    app = QApplication.instance()
    sheet, palette, style = app.styleSheet(), app.palette(), app.style().name()
    try:
        theme = Theme(app, assets_dir())
        app.styleHints().colorSchemeChanged.emit(Qt.ColorScheme.Dark)
        assert theme.scheme == Qt.ColorScheme.Dark
        assert app.styleSheet() == (assets_dir() / "style-dark.qss").read_text(encoding="utf-8")
        assert app.palette().window().color().lightness() < 80
        app.styleHints().colorSchemeChanged.emit(Qt.ColorScheme.Light)
        assert app.styleSheet() == (assets_dir() / "style.qss").read_text(encoding="utf-8")
        assert app.palette().window().color().lightness() > 180
    finally:
        app.styleHints().colorSchemeChanged.disconnect(theme.apply)
        app.setStyleSheet(sheet)
        app.setPalette(palette)
        app.setStyle(style)


def test_an_empty_library_and_an_empty_chat_say_so(qtbot, open_window, fp32_bundle, tmp_path) -> None:  # noqa: F811
    window, controller = open_window(settings=Settings(bundle_path=str(fp32_bundle)))
    wait_ready(qtbot, controller)
    panel = window.folders
    assert not panel.remove_button.isEnabled() and not panel.pause_button.isEnabled()
    assert not window.chat.transcript.empty_hint.isHidden()
    folder = tmp_path / "Notes"
    folder.mkdir()
    (folder / "a.txt").write_text("A short note about lighthouses and the sea.")
    controller.add_folder(str(folder))
    qtbot.waitUntil(lambda: panel.remove_button.isEnabled() and panel.pause_button.isEnabled(), timeout=30000)
    window.chat.transcript.add(Message("user", "Hello?"))
    assert window.chat.transcript.empty_hint.isHidden()
