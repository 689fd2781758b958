"""The conversation view as a user sees it: sizes, scrolling, what a message shows."""

from __future__ import annotations

from PySide6.QtCore import QPoint

from app.chats import Message
from app.ui.chat import ChatPanel
from tests.conftest import ROOT

KJV = ROOT / "benchmarks" / "data" / "kjv"


def _long_answers(count: int) -> list[str]:
    words = " ".join(p.read_text(encoding="utf-8") for p in sorted(KJV.glob("*.txt"))).split()
    return [" ".join(words[i * 180 : (i + 1) * 180]) for i in range(count)]


def test_the_newest_message_is_in_view_after_twenty_long_answers(qtbot) -> None:
    panel = ChatPanel()
    qtbot.addWidget(panel)
    panel.resize(800, 600)
    panel.show()
    qtbot.waitExposed(panel)
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


def test_reading_further_up_is_not_interrupted_by_a_streaming_answer(qtbot) -> None:
    panel = ChatPanel()
    qtbot.addWidget(panel)
    panel.resize(800, 600)
    panel.show()
    qtbot.waitExposed(panel)
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
