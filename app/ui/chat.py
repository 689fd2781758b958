"""The conversation view: Markdown messages, streaming answers, sources and cost under each."""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QSize, Qt, QTimer, QUrl, Signal
from PySide6.QtGui import (
    QDesktopServices,
    QGuiApplication,
    QKeyEvent,
    QTextCharFormat,
    QTextCursor,
    QTextDocument,
)
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QMenu,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QStyle,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.chats import Message
from app.display_text import safe_markdown, without_controls


def render_markdown(text: str) -> str:
    """Model output as HTML for a label, with no image left in it.

    `safe_markdown` defuses images and raw HTML as text, but Markdown's escapes and nesting have
    more corners than a rewrite can be sure of; so the result is parsed by Qt's own importer (the
    one that lays the message out) and every image that still came out of it, from Markdown or
    inline HTML, is replaced by its name before anything is shown or loaded.
    """
    document = QTextDocument()
    document.setMarkdown(safe_markdown(text))
    images: list[tuple[int, int, str]] = []
    block = document.begin()
    while block.isValid():
        fragments = block.begin()
        while not fragments.atEnd():
            fragment = fragments.fragment()
            if fragment.isValid() and fragment.charFormat().isImageFormat():
                name = fragment.charFormat().toImageFormat().name()
                images.append((fragment.position(), fragment.length(), name))
            fragments += 1
        block = block.next()
    cursor = QTextCursor(document)
    for position, length, name in reversed(images):
        cursor.setPosition(position)
        cursor.setPosition(position + length, QTextCursor.MoveMode.KeepAnchor)
        cursor.insertText(f"[image: {name}]", QTextCharFormat())
    return document.toHtml()


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
    source_activated = Signal(str, int)  # a cited document's path, its page (0: none)
    regenerate = Signal()  # the last answer, asked again
    edit = Signal()  # the last question, back into the composer
    retry = Signal()  # an answer cut off by a crash, asked again

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
        self.body.setTextFormat(Qt.TextFormat.RichText)
        self.body.setTextInteractionFlags(Qt.TextInteractionFlag.TextBrowserInteraction)
        self.body.setOpenExternalLinks(False)
        self.body.linkActivated.connect(self.confirm_link)
        layout.addWidget(self.body)
        self.sources = QWidget()
        self.sources.setObjectName("messageSources")
        self.sources_layout = QVBoxLayout(self.sources)
        self.sources_layout.setContentsMargins(0, 0, 0, 0)
        self.sources_layout.setSpacing(2)
        layout.addWidget(self.sources)
        self.cost = WrappedLabel()
        self.cost.setObjectName("messageCost")
        layout.addWidget(self.cost)
        self.anyway: QPushButton | None = None
        self.interrupted = False
        self.role = message.role
        self.message_id = message.id
        # Actions under the message: Copy on answers; Regenerate on the last answer and Edit on the
        # last question (ChatPanel shows those two only there); Retry on an interrupted answer.
        actions = QHBoxLayout()
        actions.setContentsMargins(0, 0, 0, 0)
        self.copy_button = self._action("Copy", "Copy the answer's text", self.copy_text)
        self.regenerate_button = self._action("Regenerate", "Answer the question again", self.regenerate.emit)
        self.edit_button = self._action("Edit", "Change the question and ask it again", self.edit.emit)
        self.retry_button = self._action("Retry", "Ask the interrupted question again", self.retry.emit)
        for button in (self.copy_button, self.regenerate_button, self.edit_button, self.retry_button):
            actions.addWidget(button)
            button.hide()
        actions.addStretch(1)
        layout.addLayout(actions)
        self.copy_button.setVisible(message.role == "assistant" and bool(message.text))
        self.text = message.text
        self.set_text(message.text)
        self.set_details(message.sources, message.stats)

    def _action(self, text: str, tip: str, slot) -> QPushButton:  # noqa: ANN001 (a slot)
        button = QPushButton(text)
        button.setObjectName("messageAction")
        button.setFlat(True)
        button.setToolTip(tip)
        button.setCursor(Qt.CursorShape.PointingHandCursor)
        button.clicked.connect(lambda: slot())
        return button

    def copy_text(self) -> None:
        QGuiApplication.clipboard().setText(without_controls(self.text))

    def mark_interrupted(self) -> None:
        self.interrupted = True
        self.set_text("*This answer was interrupted before it finished (the app closed or stopped).*")

    def minimumSizeHint(self) -> QSize:
        """Its real height is height-for-width at the transcript's width (the layout asks for it);
        a minimum from narrower guesses would only add blank space under the conversation."""
        return QSize(super().minimumSizeHint().width(), 0)

    def set_text(self, text: str) -> None:
        self.text = text
        self.body.setText(render_markdown(text) if text else "…")

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
        while self.sources_layout.count():
            item = self.sources_layout.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        for number, source in enumerate(sources, start=1):
            label = self._source_label(number, source)
            self.sources_layout.addWidget(label)
            label.show()  # at once, not when the layout gets round to it: the message is complete now
        self.sources.setVisible(bool(sources))
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
            self.anyway.show()

    def source_labels(self) -> list[QLabel]:
        return [w for w in self.sources.findChildren(QLabel, "messageSource") if not w.isHidden()]

    def _source_label(self, number: int, source: dict) -> QLabel:
        """`[1] guides/install.html, page 3 — the sentence that matched`; the full path on hover."""
        path = Path(source["path"])
        folder = Path(source["folder"]) if source.get("folder") else None
        shown = path.relative_to(folder).as_posix() if folder and path.is_relative_to(folder) else path.name
        page = source.get("page")
        where = f", page {page}" if page else ""
        excerpt = source.get("excerpt") or " ".join(str(source.get("text", "")).split())[:140] + "…"
        excerpt = without_controls(excerpt)
        missing = not path.exists()
        label = WrappedLabel()
        label.setObjectName("messageSource")
        label.setTextFormat(Qt.TextFormat.RichText)
        label.setTextInteractionFlags(Qt.TextInteractionFlag.TextBrowserInteraction)
        note = ' <span style="color:#c62828">(not available)</span>' if missing else ""
        label.setText(
            f'<a href="source:{number}">[{number}] {html.escape(shown)}{where}</a>{note}'
            f' <span style="color:#6b7785">— {html.escape(excerpt)}</span>'
        )
        label.setToolTip(
            f"{path}{where}"
            + ("\nNot available: moved, deleted, or on a drive that is not connected" if missing else "")
        )
        label.linkActivated.connect(lambda _link: self.source_activated.emit(str(path), int(page or 0)))
        return label

    def _answer_anyway(self, question: str) -> None:
        if self.anyway is not None:
            self.anyway.setEnabled(False)
        self.answer_anyway.emit(question)


class Transcript(QScrollArea):
    """The conversation, scrolled. It follows the newest text while the user is at the bottom,
    and stays where the user scrolled to while they read further up."""

    answer_anyway = Signal(str)
    source_activated = Signal(str, int)
    regenerate = Signal()
    edit = Signal()
    retry = Signal()

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
        self.empty_hint = QLabel(
            "Ask a question about the files in your folders.\nEach answer lists the passages it comes from."
        )
        self.empty_hint.setObjectName("hint")
        self.empty_hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self._layout.addWidget(self.empty_hint)
        self._layout.addStretch(1)
        self.setWidget(self._inner)
        self.views: list[MessageView] = []
        self.actions_on = True
        self._following = True
        bar = self.verticalScrollBar()
        # Messages get their height only once laid out, after they were added: follow the range.
        bar.rangeChanged.connect(self._range_changed)
        bar.valueChanged.connect(self._value_changed)

    def clear(self) -> None:
        for view in self.views:
            view.deleteLater()
        self.views = []
        self.empty_hint.show()

    def add(self, message: Message) -> MessageView:
        view = MessageView(message)
        view.answer_anyway.connect(self.answer_anyway)
        view.source_activated.connect(self.source_activated)
        view.regenerate.connect(self.regenerate)
        view.edit.connect(self.edit)
        view.retry.connect(self.retry)
        self.empty_hint.hide()
        self._layout.insertWidget(self._layout.count() - 1, view)
        self.views.append(view)
        QTimer.singleShot(0, self.scroll_to_end)
        return view

    def remove_last(self) -> None:
        if self.views:
            self.views.pop().deleteLater()
        self.empty_hint.setVisible(not self.views)
        self.update_last_actions()

    def update_last_actions(self) -> None:
        """Regenerate and Edit act on the last exchange only."""
        last_answer = next((v for v in reversed(self.views) if v.role == "assistant"), None)
        last_question = next((v for v in reversed(self.views) if v.role == "user"), None)
        for view in self.views:
            last = view is self.views[-1]
            view.regenerate_button.setVisible(view is last_answer and last and not view.interrupted and self.actions_on)
            view.edit_button.setVisible(view is last_question and self.actions_on)
            view.retry_button.setVisible(view.interrupted and last and self.actions_on)

    def set_actions_on(self, on: bool) -> None:
        """Off while an answer streams: the last exchange is still being written."""
        self.actions_on = on
        self.update_last_actions()

    def scroll_to_end(self) -> None:
        self._following = True
        bar = self.verticalScrollBar()
        bar.setValue(bar.maximum())

    def _range_changed(self, _minimum: int, maximum: int) -> None:
        if self._following:
            self.verticalScrollBar().setValue(maximum)

    def _value_changed(self, value: int) -> None:
        self._following = value >= self.verticalScrollBar().maximum() - 4


class Banner(QFrame):
    """A problem the user should see: a warning icon, the message, Details when there are any,
    and a close button. It stays until closed or replaced, unlike a status-bar message."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("banner")
        row = QHBoxLayout(self)
        row.setContentsMargins(12, 8, 8, 8)
        self.icon = QLabel()
        self.icon.setPixmap(self.style().standardIcon(QStyle.StandardPixmap.SP_MessageBoxWarning).pixmap(20, 20))
        row.addWidget(self.icon, 0, Qt.AlignmentFlag.AlignTop)
        self.label = WrappedLabel()
        self.label.setObjectName("bannerText")
        self.label.setTextFormat(Qt.TextFormat.PlainText)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        row.addWidget(self.label, 1)
        self.details_button = QPushButton("Details…")
        self.details_button.clicked.connect(self.show_details)
        row.addWidget(self.details_button, 0, Qt.AlignmentFlag.AlignTop)
        self.close_button = QPushButton("✕")
        self.close_button.setObjectName("bannerClose")
        self.close_button.setToolTip("Dismiss")
        self.close_button.setFixedWidth(28)
        self.close_button.clicked.connect(lambda: self.show_message(""))
        row.addWidget(self.close_button, 0, Qt.AlignmentFlag.AlignTop)
        self.details = ""
        self.hide()

    def text(self) -> str:
        return self.label.text()

    def show_message(self, text: str, details: str = "") -> None:
        self.label.setText(without_controls(text))
        self.details = details
        self.details_button.setVisible(bool(details))
        self.setVisible(bool(text))

    def show_details(self) -> QMessageBox:
        box = QMessageBox(self)
        box.setObjectName("bannerDetails")
        box.setIcon(QMessageBox.Icon.Warning)
        box.setWindowTitle("Details")
        box.setText(self.label.text())
        box.setDetailedText(self.details)
        box.setWindowModality(Qt.WindowModality.WindowModal)
        box.open()
        return box


class ScopeBar(QWidget):
    """Which folders the open chat searches (GPT4All's collections), above the composer.

    The menu lists the library's folders as `folders()` gives them when it opens; ticking some
    limits the chat to those, "All folders" lifts the limit.
    """

    scope_changed = Signal(object)  # list[Path], or None for the whole library

    def __init__(self, folders: Callable[[], list[Path]], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("scopeBar")
        self._folders = folders
        self.scope: list[Path] | None = None
        row = QHBoxLayout(self)
        row.setContentsMargins(12, 6, 12, 0)
        label = QLabel("Searching:")
        label.setObjectName("hint")
        row.addWidget(label)
        self.button = QToolButton()
        self.button.setObjectName("scopeButton")
        self.button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.menu = QMenu(self.button)
        self.menu.aboutToShow.connect(self._fill_menu)
        self.button.setMenu(self.menu)
        row.addWidget(self.button)
        row.addStretch(1)
        self.set_scope(None)

    def set_scope(self, scope: list[Path] | None) -> None:
        self.scope = scope
        if scope is None:
            text, tip = "All folders", "This chat searches every folder of the library"
        elif not scope:
            text, tip = "No folders", "This chat searches nothing: choose folders"
        else:
            text = ", ".join(p.name for p in scope[:3]) + (f" +{len(scope) - 3}" if len(scope) > 3 else "")
            tip = "This chat searches only:\n" + "\n".join(str(p) for p in scope)
        self.button.setText(f"{text} ▾")
        self.button.setToolTip(tip)

    def _fill_menu(self) -> None:
        self.menu.clear()
        every = self.menu.addAction("All folders")
        every.setCheckable(True)
        every.setChecked(self.scope is None)
        every.triggered.connect(lambda: self.choose(None))
        self.menu.addSeparator()
        for folder in self._folders():
            action = self.menu.addAction(folder.name)
            action.setToolTip(str(folder))
            action.setCheckable(True)
            action.setChecked(self.scope is not None and folder in self.scope)
            action.triggered.connect(lambda checked, f=folder: self.toggle(f, checked))

    def toggle(self, folder: Path, on: bool) -> None:
        current = list(self.scope) if self.scope is not None else []
        if on and folder not in current:
            current.append(folder)
        elif not on and folder in current:
            current.remove(folder)
        self.choose(current or None)

    def choose(self, scope: list[Path] | None) -> None:
        self.set_scope(scope)
        self.scope_changed.emit(scope)


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
    source_activated = Signal(str, int)
    regenerate = Signal()
    edit = Signal()
    retry = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        self.banner = Banner()
        layout.addWidget(self.banner)
        self.transcript = Transcript()
        self.transcript.answer_anyway.connect(self.answer_anyway)
        self.transcript.source_activated.connect(self.source_activated)
        self.transcript.regenerate.connect(self.regenerate)
        self.transcript.edit.connect(self.edit)
        self.transcript.retry.connect(self.retry)
        layout.addWidget(self.transcript, 1)
        # The library's folders, for the scope menu: the window sets it (the chat does not know the library).
        self.folder_source: Callable[[], list[Path]] = list
        self.scope_bar = ScopeBar(lambda: self.folder_source())
        layout.addWidget(self.scope_bar)
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
        self.transcript.set_actions_on(not generating)
        self.button.setObjectName("stopButton" if generating else "sendButton")
        self.button.style().unpolish(self.button)
        self.button.style().polish(self.button)

    def show_messages(self, messages: list[Message]) -> None:
        """A chat as saved. A question without an answer is one the app never finished answering
        (it crashed or was closed): its answer is shown as interrupted, with Retry."""
        self.transcript.clear()
        for message in messages:
            self.transcript.add(message)
        if messages and messages[-1].role == "user":
            self.transcript.add(Message("assistant", "")).mark_interrupted()
        self.transcript.update_last_actions()
        self.transcript.scroll_to_end()

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
            self._streaming.copy_button.setVisible(bool(text))
            self._streaming = None
        self.transcript.update_last_actions()

    def show_banner(self, text: str, details: str = "") -> None:
        self.banner.show_message(text, details)
