"""Destructive actions ask first, and say what they remove; an empty chat is reused."""

from __future__ import annotations

import shutil

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox

from app.chats import Message
from app.settings import Settings
from tests.test_ui import KJV, index_folder, open_window, wait_ready  # noqa: F401 (fixture)


def _button(box: QMessageBox, text: str):
    return next(b for b in box.buttons() if b.text() == text)


def test_removing_a_folder_asks_first_and_says_what_goes(qtbot, open_window, fp32_bundle, tmp_path) -> None:  # noqa: F811
    folder = tmp_path / "books"
    folder.mkdir()
    for name in ("jonah.txt", "ruth.txt"):
        shutil.copy(KJV / name, folder / name)
    window, controller = open_window(settings=Settings(bundle_path=str(fp32_bundle)))
    wait_ready(qtbot, controller)
    index_folder(qtbot, window, controller, folder)
    panel = window.folders
    qtbot.waitUntil(lambda: len(panel.document_rows(0)) == 2, timeout=10000)
    # A document selected in the list: Remove still names the folder, not the document.
    panel.documents.setFocus()
    panel.documents.setCurrentIndex(panel.documents.model().index(0, 0, panel.documents.rootIndex()))
    removed: list[str] = []
    panel.remove_folder.connect(removed.append)
    qtbot.mouseClick(panel.remove_button, Qt.MouseButton.LeftButton)
    box = panel.findChild(QMessageBox, "confirmRemoveFolder")
    assert box is not None and box.isVisible()
    assert "“books”" in box.text() and "2 documents" in box.informativeText()
    assert "files on disk are not touched" in box.informativeText()
    qtbot.mouseClick(box.button(QMessageBox.StandardButton.Cancel), Qt.MouseButton.LeftButton)
    assert removed == [] and len(panel.folder_rows()) == 1
    box.deleteLater()
    qtbot.mouseClick(panel.remove_button, Qt.MouseButton.LeftButton)
    box = next(b for b in panel.findChildren(QMessageBox, "confirmRemoveFolder") if b.isVisible())
    with qtbot.waitSignal(panel.remove_folder, timeout=5000):
        qtbot.mouseClick(_button(box, "Remove folder"), Qt.MouseButton.LeftButton)
    assert removed == [str(folder)]
    qtbot.waitUntil(lambda: len(panel.folder_rows()) == 0, timeout=10000)


def test_deleting_a_chat_asks_first_and_new_chat_reuses_an_empty_one(qtbot, open_window, fp32_bundle) -> None:  # noqa: F811
    window, controller = open_window(settings=Settings(bundle_path=str(fp32_bundle)))
    chats = controller.chats
    talk = chats.create("Jonah")
    chats.add(talk.id, Message("user", "Who was swallowed by a fish?"))
    chats.add(talk.id, Message("assistant", "Jonah."))
    window._load_conversations(select=talk.id)
    count = len(chats.conversations())
    window.new_conversation()
    window.new_conversation()  # the first new chat is still empty: no second one
    assert len(chats.conversations()) == count
    window._load_conversations(select=talk.id)
    box = window.delete_conversation()
    assert box is not None and "“Jonah”" in box.text() and "2 messages" in box.informativeText()
    qtbot.mouseClick(box.button(QMessageBox.StandardButton.Cancel), Qt.MouseButton.LeftButton)
    assert any(c.id == talk.id for c in chats.conversations())
    box = window.delete_conversation()
    qtbot.mouseClick(_button(box, "Delete chat"), Qt.MouseButton.LeftButton)
    assert not any(c.id == talk.id for c in chats.conversations())
