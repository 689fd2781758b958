"""The conversation view as a user sees it: sizes, scrolling, what a message shows."""

from __future__ import annotations

import pytest
from PySide6.QtCore import QPoint

from app.chats import Message
from app.ui.chat import ChatPanel
from tests.conftest import ROOT

KJV = ROOT / "benchmarks" / "data" / "kjv"


def _long_answers(count: int) -> list[str]:
    words = " ".join(p.read_text(encoding="utf-8") for p in sorted(KJV.glob("*.txt"))).split()
    return [" ".join(words[i * 180 : (i + 1) * 180]) for i in range(count)]


@pytest.fixture
def panel(qtbot) -> ChatPanel:
    """A chat panel shown at 800x600."""
    shown = ChatPanel()
    qtbot.addWidget(shown)
    shown.resize(800, 600)
    shown.show()
    qtbot.waitExposed(shown)
    return shown


def test_the_newest_message_is_in_view_after_twenty_long_answers(qtbot, panel) -> None:
    for number, answer in enumerate(_long_answers(20)):
        panel.transcript.add(Message("user", f"Question {number}: what happens next?"))
        panel.begin_answer()
        panel.append_piece(answer)
        panel.finish_answer(answer, [], {})
    transcript = panel.transcript
    last = transcript.views[-1]
    viewport = transcript.viewport()
    inner = transcript.widget()
    layout = inner.layout()

    def blank_below() -> int:
        """Pixels of the scrolled widget under the last message's bottom margin."""
        return inner.height() - (last.geometry().bottom() + 1 + layout.contentsMargins().bottom())

    def settled() -> bool:
        bottom = last.mapTo(viewport, QPoint(0, last.height())).y()
        return blank_below() <= 1 and 0 < bottom <= viewport.height() and transcript.verticalScrollBar().value() > 0

    qtbot.waitUntil(settled, timeout=5000)
    # Every message is as tall as its wrapped text at the width it has: nothing cut off, no gap.
    for view in transcript.views:
        assert abs(view.body.height() - view.body.heightForWidth(view.body.width())) <= 1


def test_reading_further_up_is_not_interrupted_by_a_streaming_answer(qtbot, panel) -> None:
    answers = _long_answers(6)
    for answer in answers[:5]:
        panel.transcript.add(Message("user", "And then?"))
        panel.begin_answer()
        panel.finish_answer(answer, [], {})
    panel.transcript.add(Message("user", "And after that?"))
    panel.begin_answer()
    bar = panel.transcript.verticalScrollBar()
    qtbot.waitUntil(lambda: bar.maximum() > 0 and bar.value() == bar.maximum(), timeout=5000)
    bar.setValue(0)  # while the answer streams, the user scrolls up to read an earlier one
    panel.append_piece(answers[5])
    grown = bar.maximum()
    qtbot.waitUntil(lambda: bar.maximum() > grown, timeout=5000)
    assert bar.value() == 0
    panel.finish_answer(answers[5], [], {})
    assert bar.value() == 0
    panel.transcript.add(Message("user", "Thanks. One more?"))  # asking again brings the view down
    qtbot.waitUntil(lambda: bar.value() == bar.maximum(), timeout=5000)


def _rendered(markdown: str):
    from PySide6.QtGui import QTextDocument

    document = QTextDocument()
    document.setMarkdown(markdown)
    return document


def test_model_output_is_shown_safely(qtbot, tmp_path, monkeypatch) -> None:
    import re

    from PySide6.QtCore import Qt as QtNs
    from PySide6.QtGui import QDesktopServices, QGuiApplication, QImage, QTextDocument
    from PySide6.QtWidgets import QMessageBox

    from app.ui.chat import MessageView

    picture = tmp_path / "secret.png"
    QImage(8, 8, QImage.Format.Format_RGB32).save(str(picture))
    uri = picture.as_uri()
    answer = (
        "Step\x1b[31m one\x07 \u202eevil\u202c.\n\n"
        f'![chart]({uri}) <img src="{uri}"> '
        '<a href="file:///etc/passwd">notes</a> and [the docs](https://docs.python.org/3/)\n\n'
        # Escapes and nesting that a rewrite of the Markdown alone can miss (found in review):
        f"![a\\]b]({uri}) ![a [b] c]({uri}) \\`<a href='file:///etc/passwd'>click</a>\\`\n\n"
        "```\n<b>code stays</b>\n```"
    )
    view = MessageView(Message("assistant", answer))
    qtbot.addWidget(view)
    shown = view.body.text()
    document = QTextDocument()
    document.setHtml(shown)
    html = document.toHtml()
    assert "<img" not in shown and "<img" not in html  # nothing is loaded to lay the answer out
    plain = document.toPlainText()
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]", plain)
    assert "<b>code stays</b>" in plain and "image: chart" in plain
    assert "https://docs.python.org/3/" in re.findall(r'<a href="([^"]+)"', html)
    # Copy and export carry the text without control characters too.
    view.copy_text()
    assert not re.search("[\x00-\x08\x0b-\x1f]", QGuiApplication.clipboard().text())
    # A link asks before it opens, and shows where it goes.
    opened: list[str] = []
    monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: opened.append(url.toString()))
    box = view.confirm_link("https://docs.python.org/3/")
    assert box.informativeText() == "https://docs.python.org/3/"
    qtbot.mouseClick(box.button(QMessageBox.StandardButton.Cancel), QtNs.MouseButton.LeftButton)
    assert opened == []
    box = view.confirm_link(uri)
    assert box.informativeText() == str(picture)
    qtbot.mouseClick(next(b for b in box.buttons() if b.text() == "Open"), QtNs.MouseButton.LeftButton)
    assert opened == [uri]


def test_an_exported_chat_has_no_control_characters() -> None:
    from app.chats import as_markdown

    exported = as_markdown("Notes", [Message("user", "Hi\x1b[2J"), Message("assistant", "Yes\x07\x0c done")])
    assert "\x1b" not in exported and "\x07" not in exported and "Yes done" in exported


def test_an_error_is_a_banner_with_an_icon_and_details(qtbot, panel) -> None:
    from PySide6.QtCore import Qt as QtNs
    from PySide6.QtWidgets import QMessageBox

    panel.show_banner("The answer failed: the model stopped", "Traceback (most recent call last): ...")
    banner = panel.banner
    assert banner.isVisible() and not banner.icon.pixmap().isNull()
    assert banner.text() == "The answer failed: the model stopped" and banner.details_button.isVisible()
    qtbot.mouseClick(banner.details_button, QtNs.MouseButton.LeftButton)
    box = panel.findChild(QMessageBox, "bannerDetails")
    assert box is not None and box.detailedText().startswith("Traceback")
    box.close()
    panel.show_banner("Indexing paused on battery")  # no details: no Details button
    assert not banner.details_button.isVisible()
    qtbot.mouseClick(banner.close_button, QtNs.MouseButton.LeftButton)
    assert not banner.isVisible()
