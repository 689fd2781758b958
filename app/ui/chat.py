"""The conversation view: Markdown messages, streaming answers, sources and cost under each."""

from __future__ import annotations

import html
from pathlib import Path

from PySide6.QtCore import QSize, Qt, QTimer, QUrl, Signal
from PySide6.QtGui import QDesktopServices, QKeyEvent
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from app.chats import Message
from app.display_text import safe_markdown, without_controls


def format_cost(stats: dict) -> str:
    """'first token 0.42 s · 18.3 tokens/s · 3 memories stood in for 1,052 text tokens'."""
    if not stats:
        return ""
    parts = []
    if stats.get("first_token_s"):
        parts.append(f"first token {stats['first_token_s']:.2f} s")
    if stats.get("decode_tokens_per_s"):
        parts.append(f"{stats['decode_tokens_per_s']:.1f} tokens/s")
    if stats.get("memory_count"):
        parts.append(
            f"{stats['memory_count']} memories stood in for {stats.get('text_tokens_replaced', 0):,} text tokens"
        )
    if stats.get("stop_reason") == "cancelled":
        parts.append("stopped")
    return " · ".join(parts)


class WrappedLabel(QLabel):
    """A word-wrapped label as wide as the transcript and exactly as tall as its text there.

    Its width policy is Ignored so a long line never widens the transcript, and its height comes
    from height-for-width at the width it is given. QLabel's own minimum size hint is the height
    its text needs at a narrow guessed width: summed over a conversation, those minimums made the
    transcript far taller than its messages, and scrolling to the end showed blank space.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWordWrap(True)
        policy = QSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Minimum)
        policy.setHeightForWidth(True)
        self.setSizePolicy(policy)

    def minimumSizeHint(self) -> QSize:
        return QSize(0, self.fontMetrics().height())

    def sizeHint(self) -> QSize:
        width = max(self.width(), 200)
        return QSize(width, self.heightForWidth(width))


class MessageView(QFrame):
    """One message; an assistant message can grow while it streams.

    A "nothing in your library matches" reply carries a button to answer anyway, without sources.
    """

    answer_anyway = Signal(str)  # the question

    def __init__(self, message: Message, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("assistantMessage" if message.role == "assistant" else "userMessage")
        self.setFrameShape(QFrame.Shape.NoFrame)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(14, 10, 14, 10)
        layout.setSpacing(6)
        who = QLabel("Dolphin" if message.role == "assistant" else "You")
        who.setObjectName("messageAuthor")
        layout.addWidget(who)
        self.body = WrappedLabel()
        self.body.setObjectName("messageBody")
        self.body.setTextFormat(Qt.TextFormat.MarkdownText)
        self.body.setTextInteractionFlags(Qt.TextInteractionFlag.TextBrowserInteraction)
        self.body.setOpenExternalLinks(False)
        self.body.linkActivated.connect(self.confirm_link)
        layout.addWidget(self.body)
        self.sources = WrappedLabel()
        self.sources.setObjectName("messageSources")
        self.sources.setTextFormat(Qt.TextFormat.RichText)
        self.sources.setOpenExternalLinks(False)
        self.sources.linkActivated.connect(lambda url: QDesktopServices.openUrl(QUrl(url)))
        layout.addWidget(self.sources)
        self.cost = WrappedLabel()
        self.cost.setObjectName("messageCost")
        layout.addWidget(self.cost)
        self.anyway: QPushButton | None = None
        self.text = message.text
        self.set_text(message.text)
        self.set_details(message.sources, message.stats)

    def minimumSizeHint(self) -> QSize:
        """Its real height is height-for-width at the transcript's width (the layout asks for it);
        a minimum from narrower guesses would only add blank space under the conversation."""
        return QSize(super().minimumSizeHint().width(), 0)

    def set_text(self, text: str) -> None:
        self.text = text
        self.body.setText(safe_markdown(text) or "…")

    def confirm_link(self, url: str) -> QMessageBox:
        """A link in an answer came from a model reading documents: show where it goes, then ask."""
        target = QUrl(url)
        where = target.toLocalFile() if target.isLocalFile() else target.toString()
        box = QMessageBox(self)
        box.setObjectName("confirmLink")
        box.setIcon(QMessageBox.Icon.Question)
        box.setWindowTitle("Open link")
        box.setText("Open this link from the answer?")
        box.setInformativeText(where)
        open_button = box.addButton("Open", QMessageBox.ButtonRole.AcceptRole)
        box.addButton(QMessageBox.StandardButton.Cancel)
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)
        box.setWindowModality(Qt.WindowModality.WindowModal)
        box.finished.connect(lambda _: QDesktopServices.openUrl(target) if box.clickedButton() is open_button else None)
        box.open()
        return box

    def set_details(self, sources: list[dict], stats: dict) -> None:
        lines = []
        for number, source in enumerate(sources, start=1):
            path = Path(source["path"])
            page = f", page {source['page']}" if source.get("page") else ""
            excerpt = " ".join(without_controls(source.get("text", "")).split())[:140]
            url = QUrl.fromLocalFile(str(path)).toString()
            lines.append(
                f'<a href="{html.escape(url)}">[{number}] {html.escape(path.name)}{page}</a>'
                f' <span style="color:#6b7785">— {html.escape(excerpt)}…</span>'
            )
        self.sources.setText("<br>".join(lines))
        self.sources.setVisible(bool(lines))
        cost = format_cost(stats)
        notes = stats.get("notes") or []
        self.cost.setText(" · ".join([c for c in (cost, *notes) if c]))
        self.cost.setVisible(bool(self.cost.text()))
        if stats.get("outcome") == "nothing_matches" and stats.get("question") and self.anyway is None:
            question = str(stats["question"])
            self.anyway = QPushButton("Answer anyway, without sources")
            self.anyway.setObjectName("answerAnyway")
            self.anyway.setToolTip("The model answers from what it learned in training alone; it may be wrong.")
            self.anyway.clicked.connect(lambda: self._answer_anyway(question))
            row = QHBoxLayout()
            row.addWidget(self.anyway)
            row.addStretch(1)
            self.layout().addLayout(row)  # type: ignore[union-attr]

    def _answer_anyway(self, question: str) -> None:
        if self.anyway is not None:
            self.anyway.setEnabled(False)
        self.answer_anyway.emit(question)


class Transcript(QScrollArea):
    """The conversation, scrolled. It follows the newest text while the user is at the bottom,
    and stays where the user scrolled to while they read further up."""

    answer_anyway = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWidgetResizable(True)
        self.setObjectName("transcript")
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self._inner = QWidget()
        self._inner.setObjectName("transcriptInner")
        self._layout = QVBoxLayout(self._inner)
        self._layout.setContentsMargins(18, 18, 18, 18)
        self._layout.setSpacing(12)
        self._layout.addStretch(1)
        self.setWidget(self._inner)
        self.views: list[MessageView] = []
        self._following = True
        bar = self.verticalScrollBar()
        # Messages get their height only once laid out, after they were added: follow the range.
        bar.rangeChanged.connect(self._range_changed)
        bar.valueChanged.connect(self._value_changed)

    def clear(self) -> None:
        for view in self.views:
            view.deleteLater()
        self.views = []

    def add(self, message: Message) -> MessageView:
        view = MessageView(message)
        view.answer_anyway.connect(self.answer_anyway)
        self._layout.insertWidget(self._layout.count() - 1, view)
        self.views.append(view)
        QTimer.singleShot(0, self.scroll_to_end)
        return view

    def scroll_to_end(self) -> None:
        self._following = True
        bar = self.verticalScrollBar()
        bar.setValue(bar.maximum())

    def _range_changed(self, _minimum: int, maximum: int) -> None:
        if self._following:
            self.verticalScrollBar().setValue(maximum)

    def _value_changed(self, value: int) -> None:
        self._following = value >= self.verticalScrollBar().maximum() - 4


class Composer(QPlainTextEdit):
    """Enter sends, Shift+Enter adds a newline."""

    send_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setPlaceholderText("Ask about your files…  (Enter sends, Shift+Enter adds a line)")
        self.setObjectName("composer")
        self.setFixedHeight(72)

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if (
            event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter)
            and not event.modifiers() & Qt.KeyboardModifier.ShiftModifier
        ):
            self.send_requested.emit()
            return
        super().keyPressEvent(event)


class ChatPanel(QWidget):
    send = Signal(str)
    stop = Signal()
    answer_anyway = Signal(str)  # a question to answer without sources

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        self.banner = QLabel()
        self.banner.setObjectName("banner")
        self.banner.setWordWrap(True)
        self.banner.hide()
        layout.addWidget(self.banner)
        self.transcript = Transcript()
        self.transcript.answer_anyway.connect(self.answer_anyway)
        layout.addWidget(self.transcript, 1)
        bottom = QHBoxLayout()
        bottom.setContentsMargins(12, 10, 12, 12)
        self.composer = Composer()
        self.button = QPushButton("Send")
        self.button.setObjectName("sendButton")
        self.button.setFixedWidth(88)
        bottom.addWidget(self.composer, 1)
        bottom.addWidget(self.button)
        layout.addLayout(bottom)
        self.generating = False
        self.composer.send_requested.connect(self._send)
        self.button.clicked.connect(lambda: self._stop() if self.generating else self._send())
        self._pending_text: str | None = None
        self._streaming: MessageView | None = None
        self._flush = QTimer(self)
        self._flush.setInterval(33)
        self._flush.timeout.connect(self._apply_pending)

    def _send(self) -> None:
        text = self.composer.toPlainText().strip()
        if text and not self.generating:
            self.send.emit(text)

    def _stop(self) -> None:
        if self.generating:
            self.stop.emit()

    def set_generating(self, generating: bool) -> None:
        self.generating = generating
        self.button.setText("Stop" if generating else "Send")
        self.button.setObjectName("stopButton" if generating else "sendButton")
        self.button.style().unpolish(self.button)
        self.button.style().polish(self.button)

    def show_messages(self, messages: list[Message]) -> None:
        self.transcript.clear()
        for message in messages:
            self.transcript.add(message)

    def begin_answer(self) -> MessageView:
        self._streaming = self.transcript.add(Message("assistant", ""))
        self._flush.start()
        return self._streaming

    def append_piece(self, piece: str) -> None:
        """Tokens arrive faster than a repaint is worth; the view catches up 30 times a second."""
        if self._streaming is not None:
            self._pending_text = (
                self._pending_text if self._pending_text is not None else self._streaming.text
            ) + piece

    def _apply_pending(self) -> None:
        if self._streaming is not None and self._pending_text is not None:
            self._streaming.set_text(self._pending_text)
            self._pending_text = None

    def finish_answer(self, text: str, sources: list[dict], stats: dict) -> None:
        self._flush.stop()
        self._pending_text = None
        if self._streaming is not None:
            self._streaming.set_text(text)
            self._streaming.set_details(sources, stats)
            self._streaming = None

    def show_banner(self, text: str) -> None:
        self.banner.setText(text)
        self.banner.setVisible(bool(text))
