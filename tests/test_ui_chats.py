"""Chats as a user works with them: drafts, interrupted answers, regenerate, edit, copy, export."""

from __future__ import annotations

import shutil

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication

from app.chats import Message
from app.settings import Settings
from tests.test_ui import KJV, index_folder, open_window, wait_ready  # noqa: F401 (fixture)
from tests.test_ui_chat import _long_answers

SETTINGS = {"greedy": True, "max_new_tokens": 8}


def _select(window, conversation_id: int) -> None:
    window._load_conversations(select=conversation_id)


def test_each_chat_keeps_its_own_draft_across_a_restart(qtbot, open_window, fp32_bundle, tmp_path) -> None:  # noqa: F811
    data = tmp_path / "data"
    window, controller = open_window(data, Settings(bundle_path=str(fp32_bundle)))
    first = window.conversation_id
    second = controller.chats.create("Second").id
    window.chat.composer.setPlainText("half a question about Jonah")
    _select(window, second)
    assert window.chat.composer.toPlainText() == ""
    window.chat.composer.setPlainText("and one about Ruth")
    _select(window, first)
    assert window.chat.composer.toPlainText() == "half a question about Jonah"
    window.close()
    again, _ = open_window(data)
    _select(again, second)
    assert again.chat.composer.toPlainText() == "and one about Ruth"


def test_an_answer_cut_off_by_a_crash_is_marked_and_retried(qtbot, open_window, fp32_bundle, tmp_path) -> None:  # noqa: F811
    folder = tmp_path / "Books"
    shutil.copytree(KJV, folder)
    data = tmp_path / "data"
    window, controller = open_window(data, Settings(bundle_path=str(fp32_bundle), **SETTINGS))
    wait_ready(qtbot, controller)
    index_folder(qtbot, window, controller, folder)
    # What a crash mid-answer leaves: the question saved, no answer after it.
    chat = controller.chats.create("Jonah")
    controller.chats.add(chat.id, Message("user", "How long was Jonah inside the great fish?"))
    _select(window, chat.id)
    last = window.chat.transcript.views[-1]
    assert last.interrupted and "interrupted" in last.body.text() and not last.retry_button.isHidden()
    qtbot.mouseClick(last.retry_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.worker is None, timeout=60000)
    saved = controller.chats.messages(chat.id)
    assert [m.role for m in saved] == ["user", "assistant"] and saved[1].sources
    answer = window.chat.transcript.views[-1]
    assert not answer.interrupted and answer.text == saved[1].text
    # Regenerate replaces the answer; Copy copies it; Edit takes the question back.
    assert not answer.regenerate_button.isHidden()
    qtbot.mouseClick(answer.regenerate_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: window.worker is None, timeout=60000)
    saved = controller.chats.messages(chat.id)
    assert [m.role for m in saved] == ["user", "assistant"] and len(window.chat.transcript.views) == 2
    answer = window.chat.transcript.views[-1]
    qtbot.mouseClick(answer.copy_button, Qt.MouseButton.LeftButton)
    assert QGuiApplication.clipboard().text() == saved[1].text
    exported = tmp_path / "jonah.md"
    window.export_conversation(exported)
    text = exported.read_text(encoding="utf-8")
    assert text.startswith("# Jonah\n") and "**You:**\n\nHow long was Jonah inside the great fish?" in text
    assert "jonah.txt" in text and saved[1].text.strip() in text
    question = window.chat.transcript.views[0]
    assert not question.edit_button.isHidden()
    qtbot.mouseClick(question.edit_button, Qt.MouseButton.LeftButton)
    assert window.chat.composer.toPlainText() == "How long was Jonah inside the great fish?"
    assert controller.chats.messages(chat.id) == [] and window.chat.transcript.views == []


def test_a_restored_chat_opens_at_its_latest_message(qtbot, open_window, fp32_bundle, tmp_path) -> None:  # noqa: F811
    window, controller = open_window(settings=Settings(bundle_path=str(fp32_bundle)))
    chat = controller.chats.create("Long")
    for number, answer in enumerate(_long_answers(12)):
        controller.chats.add(chat.id, Message("user", f"Question {number}?"))
        controller.chats.add(chat.id, Message("assistant", answer))
    _select(window, chat.id)
    bar = window.chat.transcript.verticalScrollBar()
    qtbot.waitUntil(lambda: bar.maximum() > 0 and bar.value() == bar.maximum(), timeout=5000)
