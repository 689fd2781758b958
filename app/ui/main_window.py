"""The main window: conversations, chat, folders, status bar."""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from pathlib import Path

from PySide6.QtCore import QByteArray, QObject, Qt, QUrl, Signal
from PySide6.QtGui import QAction, QCloseEvent, QDesktopServices, QKeySequence, QShortcut
from PySide6.QtWidgets import (
    QApplication,
    QFileDialog,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QMessageBox,
    QPushButton,
    QSplitter,
    QStackedWidget,
    QSystemTrayIcon,
    QVBoxLayout,
    QWidget,
)

from app.chats import Message, as_markdown, turns
from app.library.events import IndexProgress
from app.library.pack import PackError, read_manifest
from app.library.pack_import import ImportReport
from app.library.states import DocumentState, IndexerState
from app.logs import log_path
from app.ui.chat import ChatPanel
from app.ui.controller import AnswerWorker, AppController
from app.ui.crash import open_log_file
from app.ui.dialogs import SettingsDialog, about_text
from app.ui.folders import FoldersPanel
from app.ui.library_model import PATH_ROLE
from app.ui.open_file import OpenResult, open_document
from app.ui.welcome import WelcomePage

APP_TITLE = "Dolphin Desk"
WINDOW_STATE = "window.json"  # in the data folder: size, position and panel widths
DRAFTS = "drafts.json"  # in the data folder: each chat's unsent question
# Below this width the side panels step aside so the chat keeps a readable width.
NARROW_WIDTH = 1000
# An indexing run at least this long ends with a desktop notification: the user has moved on.
LONG_RUN_S = 60.0

log = logging.getLogger("dolphin.ui")


class ConversationList(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("sidebar")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 12, 10, 12)
        title = QLabel("Chats")
        title.setObjectName("panelTitle")
        layout.addWidget(title)
        self.new_button = QPushButton("+ New chat")
        self.new_button.setObjectName("newChat")
        self.new_button.setToolTip("New chat (Ctrl+N)")
        layout.addWidget(self.new_button)
        self.search = QLineEdit()
        self.search.setObjectName("chatSearch")
        self.search.setPlaceholderText("Search chats (Ctrl+F)")
        self.search.setClearButtonEnabled(True)
        layout.addWidget(self.search)
        self.list = QListWidget()
        self.list.setObjectName("conversations")
        self.list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.list.setTextElideMode(Qt.TextElideMode.ElideRight)
        layout.addWidget(self.list, 1)
        row = QHBoxLayout()
        self.rename_button = QPushButton("Rename")
        self.delete_button = QPushButton("Delete")
        row.addWidget(self.rename_button)
        row.addWidget(self.delete_button)
        layout.addLayout(row)


class RemoteRequests(QObject):
    """Requests from other processes on this library (app/instance.py), handed to the GUI thread.

    `handle` runs on the channel's thread: it emits, and the window acts in its own thread. An
    added folder is answered once it is in the library and scanned, so `dolphin-desk index`
    waits for documents that are really there.
    """

    show_requested = Signal()
    add_folder_requested = Signal(str, object)  # the path, and a callback taking None or the reason it failed
    ADD_TIMEOUT_S = 120.0

    def handle(self, request: dict) -> dict:
        op = request.get("op")
        if op == "show":
            self.show_requested.emit()
            return {"ok": True}
        if op == "add_folder" and isinstance(request.get("path"), str):
            done = threading.Event()
            outcome: list[str | None] = []

            def finished(reason: str | None) -> None:
                outcome.append(reason)
                done.set()

            self.add_folder_requested.emit(request["path"], finished)
            if not done.wait(self.ADD_TIMEOUT_S):
                return {"ok": False, "error": "the window did not finish adding the folder in time"}
            return {"ok": True} if outcome[0] is None else {"ok": False, "error": outcome[0]}
        return {"ok": False, "error": f"unknown request {op!r}"}


class MainWindow(QMainWindow):
    def __init__(self, controller: AppController) -> None:
        super().__init__()
        self.controller = controller
        self.remote = RemoteRequests(self)
        self.worker: AnswerWorker | None = None
        self.conversation_id: int | None = None
        self.setWindowTitle(APP_TITLE)
        self.resize(1280, 800)
        self.welcome = WelcomePage(controller.data_dir, controller.settings.hub_repo)
        self.sidebar = ConversationList()
        self.chat = ChatPanel()
        self.folders = FoldersPanel(controller.tree)
        splitter = QSplitter()
        splitter.setObjectName("mainSplitter")
        splitter.addWidget(self.sidebar)
        splitter.addWidget(self.chat)
        splitter.addWidget(self.folders)
        splitter.setSizes([220, 700, 420])
        splitter.setChildrenCollapsible(False)
        self.splitter = splitter
        self._narrow: bool | None = None
        self._run_started: float | None = None
        self._tray: QSystemTrayIcon | None = None
        self.notifications: list[str] = []  # what was announced, newest last
        self.pack_summary: QMessageBox | None = None  # the last import's report, while it is open
        self.drafts: dict[int, str] = self._read_drafts()
        self.stack = QStackedWidget()
        self.stack.addWidget(self.welcome)
        self.stack.addWidget(splitter)
        self.setCentralWidget(self.stack)
        self.model_label = QLabel()
        self.index_label = QLabel()
        self.statusBar().addWidget(self.model_label, 1)
        self.statusBar().addPermanentWidget(self.index_label)
        self._build_menu()
        self._connect()
        stop = QShortcut(QKeySequence(Qt.Key.Key_Escape), self)
        stop.setContext(Qt.ShortcutContext.WindowShortcut)
        stop.activated.connect(self.stop_answer)
        self._load_conversations()
        self._on_model_state(controller.model_state, controller.model_message)
        self._restore_window_state()

    # setup ---------------------------------------------------------------------------------

    def _build_menu(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        new_chat = QAction("&New chat", self)
        new_chat.setShortcut(QKeySequence.StandardKey.New)
        new_chat.triggered.connect(self.new_conversation)
        file_menu.addAction(new_chat)
        add = QAction("&Add folder…", self)
        add.triggered.connect(self.folders._choose_folder)
        file_menu.addAction(add)
        self.add_folder_action = add
        import_pack = QAction("&Import pack…", self)
        import_pack.setToolTip("Add a memory pack a team encoded on a cluster (dolphin-desk cluster-index)")
        import_pack.triggered.connect(self._choose_pack)
        file_menu.addAction(import_pack)
        self.import_pack_action = import_pack
        # Ctrl+, everywhere: Qt's Preferences key is empty on Linux and Windows.
        settings = QAction("&Settings…", self)
        settings.setShortcuts(
            [
                QKeySequence("Ctrl+,"),
                *[
                    k
                    for k in QKeySequence.keyBindings(QKeySequence.StandardKey.Preferences)
                    if k != QKeySequence("Ctrl+,")
                ],
            ]
        )
        settings.triggered.connect(self.open_settings)
        file_menu.addAction(settings)
        self.settings_action = settings
        file_menu.addSeparator()
        quit_action = QAction("&Quit", self)
        quit_action.setShortcut(QKeySequence.StandardKey.Quit)
        quit_action.triggered.connect(self.close)
        file_menu.addAction(quit_action)
        chat_menu = self.menuBar().addMenu("&Chat")
        rename = QAction("&Rename chat…", self)
        rename.setShortcut(QKeySequence(Qt.Key.Key_F2))
        rename.triggered.connect(self.rename_conversation)
        chat_menu.addAction(rename)
        delete = QAction("&Delete chat…", self)
        delete.triggered.connect(self.delete_conversation)
        chat_menu.addAction(delete)
        export = QAction("&Export chat as Markdown…", self)
        export.triggered.connect(self._choose_export)
        chat_menu.addAction(export)
        find = QAction("&Search chats", self)
        find.setShortcut(QKeySequence.StandardKey.Find)
        find.triggered.connect(self._focus_search)
        chat_menu.addAction(find)
        # Del deletes a chat only from the chat list: in the composer it deletes text.
        delete_key = QShortcut(QKeySequence(QKeySequence.StandardKey.Delete), self.sidebar.list)
        delete_key.setContext(Qt.ShortcutContext.WidgetShortcut)
        delete_key.activated.connect(self.delete_conversation)
        view_menu = self.menuBar().addMenu("&View")
        self.chats_panel_action = QAction("&Chats panel", self, checkable=True, checked=True)
        self.chats_panel_action.setShortcut(QKeySequence("Ctrl+Shift+C"))
        self.chats_panel_action.toggled.connect(self.sidebar.setVisible)
        view_menu.addAction(self.chats_panel_action)
        self.folders_panel_action = QAction("&Folders panel", self, checkable=True, checked=True)
        self.folders_panel_action.setShortcut(QKeySequence("Ctrl+Shift+F"))
        self.folders_panel_action.toggled.connect(self.folders.setVisible)
        view_menu.addAction(self.folders_panel_action)
        help_menu = self.menuBar().addMenu("&Help")
        show_log = QAction("Show &log", self)
        show_log.triggered.connect(lambda: open_log_file(self, log_path(self.controller.data_dir)))
        help_menu.addAction(show_log)
        self.show_log_action = show_log
        data_folder = QAction("Open &data folder", self)
        data_folder.triggered.connect(
            lambda: QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.controller.data_dir)))
        )
        help_menu.addAction(data_folder)
        help_menu.addSeparator()
        about = QAction("&About Dolphin Desk", self)
        about.triggered.connect(self.show_about)
        help_menu.addAction(about)

    def _connect(self) -> None:
        c = self.controller
        c.model_state_changed.connect(self._on_model_state)
        c.index_progress.connect(self._on_progress)
        c.pump.problems_changed.connect(self.folders.show_problems)
        c.error.connect(self._on_error)
        c.pack_progress.connect(
            lambda done, total: self.statusBar().showMessage(f"Importing the pack: shard {done} of {total}…")
        )
        self.welcome.bundle_chosen.connect(c.use_bundle)
        self.folders.add_folder.connect(c.add_folder)
        self.folders.remove_folder.connect(c.remove_folder)
        self.folders.reindex.connect(c.reindex)
        self.folders.pause_toggled.connect(c.set_paused)
        self.chat.send.connect(self.ask)
        self.chat.answer_anyway.connect(lambda question: self.ask(question, without_sources=True))
        self.chat.source_activated.connect(self.open_source)
        self.chat.regenerate.connect(self.regenerate_answer)
        self.chat.retry.connect(self.retry_answer)
        self.chat.edit.connect(self.edit_question)
        self.chat.folder_source = self._library_folders
        self.chat.scope_bar.scope_changed.connect(self._scope_changed)
        self.chat.stop.connect(self.stop_answer)
        self.sidebar.new_button.clicked.connect(self.new_conversation)
        self.sidebar.rename_button.clicked.connect(self.rename_conversation)
        self.sidebar.delete_button.clicked.connect(self.delete_conversation)
        self.sidebar.list.currentItemChanged.connect(self._conversation_selected)
        self.sidebar.list.itemDoubleClicked.connect(lambda _item: self.rename_conversation())
        self.sidebar.search.textChanged.connect(lambda _text: self._load_conversations(select=self.conversation_id))
        self.remote.show_requested.connect(self.bring_to_front)
        self.remote.add_folder_requested.connect(lambda path, finished: c.add_folder(path, finished))

    def bring_to_front(self) -> None:
        """Another start on this library asked for the window (app/instance.py)."""
        if self.isMinimized():
            self.showNormal()
        self.show()
        self.raise_()
        self.activateWindow()

    # model and library ----------------------------------------------------------------------

    def _on_model_state(self, state: str, message: str) -> None:
        icons = {"missing": "○", "loading": "◌", "ready": "●", "error": "⚠"}
        self.model_label.setText(f"{icons.get(state, '')} Model: {message}")
        if state == "ready":
            self.stack.setCurrentIndex(1)
            self.chat.show_banner("")
        elif state in ("missing", "error") and self.controller.model is None:
            self.stack.setCurrentIndex(0)
            if state == "error" and not self.welcome.banner.text():
                self.welcome.show_error(f"The model bundle could not be loaded: {message}")
        self.chat.button.setEnabled(state == "ready" or self.chat.generating)
        # Folders need the model's encoder: adding one before it is loaded could only fail later.
        ready = state == "ready"
        self.add_folder_action.setEnabled(ready)
        self.folders.add_button.setEnabled(ready)
        self.folders.add_button.setToolTip("" if ready else "Load a model first: folders are encoded with it")
        self.folders.setAcceptDrops(ready)

    def _on_progress(self, progress: IndexProgress) -> None:
        self.folders.show_progress(progress)
        if progress.state == IndexerState.INDEXING and self._run_started is None:
            self._run_started = time.monotonic()
        elif progress.state == IndexerState.IDLE and self._run_started is not None:
            took, self._run_started = time.monotonic() - self._run_started, None
            if took >= LONG_RUN_S:
                self.notify_indexing_finished(progress, took)
        if progress.state == IndexerState.INDEXING:
            self.index_label.setText(f"Indexing {progress.documents_done}/{progress.documents_total}")
        elif progress.state == IndexerState.PAUSED:
            self.index_label.setText("Indexing paused")
        elif progress.state == IndexerState.ERROR:
            self.index_label.setText("Indexing stopped")
            if self.controller.library is not None and self.controller.library.indexer.last_error:
                self.chat.show_banner(f"Indexing stopped: {self.controller.library.indexer.last_error}")
        else:
            self.index_label.setText(f"Library up to date · {progress.documents_total} documents")

    def notify_indexing_finished(self, progress: IndexProgress, took_s: float) -> None:
        """A desktop notification where the platform has them; otherwise the taskbar entry asks
        for attention and the status bar says it."""
        counts = progress.counts or {}
        failed = counts.get(DocumentState.FAILED, 0)
        minutes = max(1, round(took_s / 60))
        text = (
            f"{counts.get(DocumentState.READY, progress.documents_done):,} documents ready"
            f"{f', {failed:,} failed' if failed else ''} after {minutes} min of indexing."
        )
        self.notifications.append(text)
        if QSystemTrayIcon.isSystemTrayAvailable() and QSystemTrayIcon.supportsMessages():
            if self._tray is None:
                self._tray = QSystemTrayIcon(self.windowIcon(), self)
            self._tray.show()
            self._tray.showMessage("Dolphin Desk: library up to date", text, QSystemTrayIcon.MessageIcon.Information)
        else:
            QApplication.alert(self)
        self.statusBar().showMessage(f"Indexing finished: {text}", 30000)

    def _on_error(self, message: str, details: str) -> None:
        if self.stack.currentIndex() == 0:
            self.welcome.show_error(message, details)
        else:
            self.chat.show_banner(message, details)

    def _choose_pack(self) -> None:
        """Pick a pack folder, then say where each of its source folders is on this computer
        (if anywhere): citations then open the user's copy, and that folder is watched."""
        chosen = QFileDialog.getExistingDirectory(self, "Import a memory pack")
        if not chosen:
            return
        try:
            roots = read_manifest(Path(chosen)).source_roots
        except PackError as exc:
            self._on_error(f"The pack was not imported: {exc}", "")
            return
        mappings = []
        for root in roots:
            if Path(root).is_dir():
                continue
            answer = QMessageBox.question(
                self,
                "Import a memory pack",
                f"The pack was made from {root}. Do you have a copy of that folder on this computer?\n\n"
                "If you do, choose it: its files are watched and open from your copy. If not, the pack's "
                "documents are still searchable, and their citations say they are not available here.",
            )
            if answer == QMessageBox.StandardButton.Yes:
                local = QFileDialog.getExistingDirectory(self, f"Your copy of {root}")
                if local:
                    mappings.append(f"{root}={local}")
        self.import_pack(Path(chosen), mappings)

    def import_pack(self, pack: Path, mappings: list[str]) -> None:
        self.statusBar().showMessage(f"Importing the pack {pack.name}…")
        self.controller.import_pack(str(pack), mappings, self._pack_imported)

    def _pack_imported(self, report: ImportReport) -> None:
        lines = report.lines()
        self.statusBar().showMessage(lines[0], 30000)
        box = QMessageBox(QMessageBox.Icon.Information, "Memory pack imported", "\n".join(lines), parent=self)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.open()  # not modal: the folders panel fills in behind it
        self.pack_summary = box

    def open_settings(self) -> None:
        dialog = SettingsDialog(self.controller.settings, str(self.controller.data_dir), self)
        if dialog.exec() and dialog.result_settings is not None:
            self.controller.apply_settings(dialog.result_settings)

    def show_about(self) -> None:
        QMessageBox.about(self, "About Dolphin Desk", about_text(self.controller.settings.bundle_path or None))

    # conversations ---------------------------------------------------------------------------

    def _load_conversations(self, select: int | None = None) -> None:
        query = self.sidebar.search.text().strip()
        if query:
            conversations = self.controller.chats.search(query)
            if not conversations:
                self.sidebar.list.clear()
                return
        else:
            conversations = self.controller.chats.conversations() or [self.controller.chats.create()]
        self.sidebar.list.blockSignals(True)
        self.sidebar.list.clear()
        for conversation in conversations:
            item = QListWidgetItem(conversation.title)
            item.setData(Qt.ItemDataRole.UserRole, conversation.id)
            self.sidebar.list.addItem(item)
        self.sidebar.list.blockSignals(False)
        ids = [c.id for c in conversations]
        target = select if select in ids else ids[0]
        for row in range(self.sidebar.list.count()):
            if self.sidebar.list.item(row).data(Qt.ItemDataRole.UserRole) == target:
                self.sidebar.list.setCurrentRow(row)

    def _conversation_selected(self, current: QListWidgetItem | None, _previous: QListWidgetItem | None) -> None:
        if current is None:
            return
        if self.worker is not None:
            self.stop_answer()
        self._keep_draft()
        self.conversation_id = current.data(Qt.ItemDataRole.UserRole)
        self.chat.show_messages(self.controller.chats.messages(self.conversation_id))
        self.chat.composer.setPlainText(self.drafts.get(self.conversation_id, ""))
        self.chat.scope_bar.set_scope(self.controller.chats.scope(self.conversation_id))
        self.setWindowTitle(f"{APP_TITLE} — {current.text()}")

    def new_conversation(self) -> None:
        """An empty chat is reused rather than another one piled on top of it."""
        empty = next(
            (c for c in self.controller.chats.conversations() if not self.controller.chats.messages(c.id)), None
        )
        conversation = empty or self.controller.chats.create()
        self._load_conversations(select=conversation.id)
        self.chat.composer.setFocus()

    def rename_conversation(self) -> None:
        item = self.sidebar.list.currentItem()
        if item is None:
            return
        title, ok = QInputDialog.getText(self, "Rename chat", "Name:", text=item.text())
        if ok:
            self.controller.chats.rename(item.data(Qt.ItemDataRole.UserRole), title)
            self._load_conversations(select=item.data(Qt.ItemDataRole.UserRole))

    def delete_conversation(self) -> QMessageBox | None:
        """A chat cannot be brought back once deleted: ask first (a window-modal box answered
        through a signal, so answers streaming elsewhere keep going)."""
        item = self.sidebar.list.currentItem()
        if item is None:
            return None
        conversation = item.data(Qt.ItemDataRole.UserRole)
        count = len(self.controller.chats.messages(conversation))
        if count == 0:
            self._delete_conversation(conversation)
            return None
        box = QMessageBox(self)
        box.setObjectName("confirmDeleteChat")
        box.setIcon(QMessageBox.Icon.Question)
        box.setWindowTitle("Delete chat")
        box.setText(f"Delete the chat “{item.text()}”?")
        box.setInformativeText(f"Its {count} message{'s' if count != 1 else ''} cannot be brought back.")
        delete = box.addButton("Delete chat", QMessageBox.ButtonRole.DestructiveRole)
        box.addButton(QMessageBox.StandardButton.Cancel)
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)
        box.setWindowModality(Qt.WindowModality.WindowModal)
        box.finished.connect(
            lambda _: self._delete_conversation(conversation) if box.clickedButton() is delete else None
        )
        box.open()
        return box

    def _delete_conversation(self, conversation: int) -> None:
        if conversation == self.conversation_id and self.worker is not None:
            self.stop_answer()
        self.controller.chats.delete(conversation)
        self.controller.forget_conversation(conversation)
        self._load_conversations()

    def open_source(self, path: str, page: int) -> OpenResult:
        """Open a cited document (at its page where the viewer allows); say why when it cannot be."""
        result = open_document(Path(path), page or None)
        if result.message:
            self.chat.show_banner(result.message)
        return result

    def _library_folders(self) -> list[Path]:
        model = self.folders.model
        paths = (model.index(row, 0).data(PATH_ROLE) for row in range(model.rowCount()))
        return [Path(p) for p in paths if p]

    def _scope_changed(self, scope: list[Path] | None) -> None:
        if self.conversation_id is not None:
            self.controller.chats.set_scope(self.conversation_id, scope)

    def _focus_search(self) -> None:
        self.chats_panel_action.setChecked(True)
        self.sidebar.search.setFocus()
        self.sidebar.search.selectAll()

    # window state ----------------------------------------------------------------------------

    def _restore_window_state(self) -> None:
        """Size, position and panel widths as the user left them (a damaged file is ignored)."""
        path = self.controller.data_dir / WINDOW_STATE
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            geometry = QByteArray(base64.b64decode(state["geometry"]))
            splitter = QByteArray(base64.b64decode(state["splitter"]))
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("window state in %s not used: %s", path, exc)
            return
        self.restoreGeometry(geometry)
        self.splitter.restoreState(splitter)
        self.chats_panel_action.setChecked(bool(state.get("chats_panel", True)))
        self.folders_panel_action.setChecked(bool(state.get("folders_panel", True)))

    def save_window_state(self) -> None:
        state = {
            "geometry": base64.b64encode(bytes(self.saveGeometry())).decode(),
            "splitter": base64.b64encode(bytes(self.splitter.saveState())).decode(),
            "chats_panel": self.chats_panel_action.isChecked(),
            "folders_panel": self.folders_panel_action.isChecked(),
        }
        path = self.controller.data_dir / WINDOW_STATE
        try:
            path.write_text(json.dumps(state), encoding="utf-8")
        except OSError as exc:
            log.warning("window state not saved to %s: %s", path, exc)

    def resizeEvent(self, event) -> None:  # noqa: ANN001 (QResizeEvent)
        """Crossing NARROW_WIDTH hides or brings back both side panels; View shows either again."""
        super().resizeEvent(event)
        narrow = self.width() < NARROW_WIDTH
        if narrow != self._narrow:
            if self._narrow is not None or narrow:
                self.chats_panel_action.setChecked(not narrow)
                self.folders_panel_action.setChecked(not narrow)
            self._narrow = narrow

    # answering -------------------------------------------------------------------------------

    def ask(self, question: str, without_sources: bool = False, again: bool = False) -> None:
        """Answer `question` as a follow-up of the open chat; `without_sources` answers a question
        the chat already holds (its "nothing matches" reply offered to) from the model alone;
        `again` answers the chat's last question again (Regenerate, Retry)."""
        if self.conversation_id is None or self.worker is not None:
            return
        chats = self.controller.chats
        earlier = chats.messages(self.conversation_id)
        history = turns(earlier)
        if (without_sources or again) and history and history[-1].question == question:
            history = history[:-1]
        conversation = self.conversation_id
        worker = self.controller.answer(
            question, history, without_sources, folders=chats.scope(conversation), conversation=conversation
        )
        if worker is None:
            return
        if not earlier:
            chats.rename(self.conversation_id, question[:48])
            self._load_conversations(select=self.conversation_id)
        if not (without_sources or again):
            self.chat.transcript.add(chats.add(self.conversation_id, Message("user", question)))
            self.chat.composer.clear()
            self.drafts.pop(self.conversation_id, None)
        self.chat.show_banner("")
        self.chat.begin_answer()
        self.chat.set_generating(True)
        worker.piece.connect(self.chat.append_piece)
        worker.completed.connect(lambda text, sources, stats: self._answered(conversation, text, sources, stats))
        worker.failed.connect(self._answer_failed)
        worker.finished.connect(self._worker_finished)
        self.worker = worker
        worker.start()

    def _last_exchange(self) -> tuple[Message | None, Message | None]:
        """The chat's last question and the answer after it (None when it has none)."""
        messages = self.controller.chats.messages(self.conversation_id) if self.conversation_id else []
        if not messages:
            return None, None
        if messages[-1].role == "user":
            return messages[-1], None
        question = messages[-2] if len(messages) > 1 and messages[-2].role == "user" else None
        return question, messages[-1]

    def regenerate_answer(self) -> None:
        question, answer = self._last_exchange()
        if question is None or answer is None or self.worker is not None:
            return
        self.controller.chats.delete_messages([answer.id])
        self.chat.transcript.remove_last()
        self.ask(question.text, again=True)

    def retry_answer(self) -> None:
        question, answer = self._last_exchange()
        if question is None or answer is not None or self.worker is not None:
            return
        self.chat.transcript.remove_last()  # the "interrupted" placeholder
        self.ask(question.text, again=True)

    def edit_question(self) -> None:
        """The last question goes back into the composer; it and its answer leave the chat."""
        question, answer = self._last_exchange()
        if question is None or self.worker is not None:
            return
        self.controller.chats.delete_messages([m.id for m in (question, answer) if m is not None])
        self.chat.show_messages(self.controller.chats.messages(self.conversation_id))
        self.chat.composer.setPlainText(question.text)
        self.chat.composer.setFocus()

    def export_conversation(self, path: Path) -> None:
        item = self.sidebar.list.currentItem()
        title = item.text() if item is not None else "Chat"
        messages = self.controller.chats.messages(self.conversation_id) if self.conversation_id else []
        try:
            path.write_text(as_markdown(title, messages) + "\n", encoding="utf-8")
        except OSError as exc:
            self.chat.show_banner(f"The chat could not be exported to {path}: {exc.strerror or exc}")
            return
        self.statusBar().showMessage(f"Exported to {path}", 10000)

    def _choose_export(self) -> None:
        item = self.sidebar.list.currentItem()
        title = item.text() if item else "chat"
        name = " ".join("".join(c if c.isalnum() or c in " -_" else " " for c in title).split())
        path, _ = QFileDialog.getSaveFileName(
            self, "Export chat", str(Path.home() / f"{name or 'chat'}.md"), "Markdown (*.md)"
        )
        if path:
            self.export_conversation(Path(path))

    def _keep_draft(self) -> None:
        if self.conversation_id is None:
            return
        text = self.chat.composer.toPlainText()
        if text.strip():
            self.drafts[self.conversation_id] = text
        else:
            self.drafts.pop(self.conversation_id, None)

    def _read_drafts(self) -> dict[int, str]:
        try:
            data = json.loads((self.controller.data_dir / DRAFTS).read_text(encoding="utf-8"))
            return {int(k): str(v) for k, v in data.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("drafts not read: %s", exc)
            return {}

    def save_drafts(self) -> None:
        self._keep_draft()
        try:
            (self.controller.data_dir / DRAFTS).write_text(json.dumps(self.drafts), encoding="utf-8")
        except OSError as exc:
            log.warning("drafts not saved: %s", exc)

    def stop_answer(self) -> None:
        if self.worker is not None:
            self.worker.stop()

    def _answered(self, conversation: int, text: str, sources: list, stats: dict) -> None:
        self.controller.chats.add(conversation, Message("assistant", text, sources, stats))
        if conversation == self.conversation_id:
            self.chat.finish_answer(text, sources, stats)

    def _answer_failed(self, message: str, details: str) -> None:
        self.chat.finish_answer("", [], {})
        self.chat.show_banner(f"The answer failed: {message}", details)

    def _worker_finished(self) -> None:
        if self.worker is not None:
            self.worker.deleteLater()
        self.worker = None
        self.chat.set_generating(False)

    def closeEvent(self, event: QCloseEvent) -> None:
        self.save_window_state()
        self.save_drafts()
        if self.worker is not None:
            self.worker.stop()
            self.worker.wait(10000)
        event.accept()
