"""Folders and their documents (a view of app/ui/library_model.py): live progress, failures with
reasons, files left out with theirs, problems, actions (a folder's own patterns among them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from PySide6.QtCore import QModelIndex, QPoint, Qt, QUrl, Signal
from PySide6.QtGui import QDesktopServices, QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMenu,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QTableView,
    QTreeView,
    QVBoxLayout,
    QWidget,
)

from app.library.events import IndexProgress
from app.library.states import IndexerState
from app.ui.dialogs import FolderPatternsDialog
from app.ui.library_model import PATH_ROLE, PATTERNS_ROLE, LibraryTreeModel


def reveal_in_file_manager(path: Path) -> None:
    if sys.platform == "win32":
        subprocess.Popen(["explorer", "/select,", str(path)])
    elif sys.platform == "darwin":
        subprocess.Popen(["open", "-R", str(path)])
    else:
        QDesktopServices.openUrl(QUrl.fromLocalFile(str(path.parent)))


def format_time_left(seconds: float | None) -> str:
    """'about 40 s left', 'about 12 min left', 'about 3 h 10 min left'; empty when unknown."""
    if seconds is None:
        return ""
    if seconds < 60:
        return f"about {max(1, round(seconds / 5) * 5)} s left"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"about {minutes} min left"
    return f"about {minutes // 60} h {minutes % 60} min left"


class FoldersPanel(QWidget):
    add_folder = Signal(str)
    remove_folder = Signal(str)
    reindex = Signal(str)
    pause_toggled = Signal(bool)

    def __init__(self, model: LibraryTreeModel | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAcceptDrops(True)
        self.setObjectName("foldersPanel")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 12, 12, 12)
        title = QLabel("Folders")
        title.setObjectName("panelTitle")
        layout.addWidget(title)
        hint = QLabel(
            "Add folders (or drop them here). Their documents are compressed into memories in the background; "
            "right-click a folder to choose which of its files are read."
        )
        hint.setObjectName("hint")
        hint.setWordWrap(True)
        layout.addWidget(hint)
        buttons = QHBoxLayout()
        self.add_button = QPushButton("Add folder…")
        self.remove_button = QPushButton("Remove folder…")
        self.remove_button.setToolTip("Take the selected folder out of the library (the files on disk are not touched)")
        self.pause_button = QPushButton("Pause")
        self.pause_button.setCheckable(True)
        for button in (self.add_button, self.remove_button, self.pause_button):
            buttons.addWidget(button)
        layout.addLayout(buttons)
        self.progress = QProgressBar()
        self.progress.setTextVisible(True)
        self.progress.setFormat("No folders yet")
        self.progress.setValue(0)
        layout.addWidget(self.progress)
        self.current = QLabel("")
        self.current.setObjectName("hint")
        self.current.setWordWrap(True)
        layout.addWidget(self.current)
        self.problems = QLabel("")
        self.problems.setObjectName("problems")
        self.problems.setWordWrap(True)
        self.problems.hide()
        layout.addWidget(self.problems)
        self.model = model or LibraryTreeModel(self)
        # Folders above, the selected folder's problems and documents below. Both views show
        # the same model; the documents are a table rooted at the folder, because a table
        # inserts a row among 20,000 in microseconds where an expanded tree re-lays out every
        # row (measured: 77 ms).
        self.folder_list = QTreeView()
        self.folder_list.setModel(self.model)
        self.folder_list.setRootIsDecorated(False)
        self.folder_list.setItemsExpandable(False)
        self.folder_list.setExpandsOnDoubleClick(False)
        self.folder_list.setUniformRowHeights(True)
        self.folder_list.setMaximumHeight(140)
        self.folder_list.header().setStretchLastSection(True)
        self.folder_list.header().resizeSection(0, 190)
        self.folder_list.hideColumn(1)
        layout.addWidget(self.folder_list)
        self.documents = QTableView()
        self.documents.setModel(self.model)
        self.documents.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.documents.setShowGrid(False)
        self.documents.setWordWrap(False)
        self.documents.verticalHeader().hide()
        self.documents.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        self.documents.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 6)
        self.documents.horizontalHeader().setStretchLastSection(True)
        self.documents.horizontalHeader().resizeSection(0, 190)
        self.documents.horizontalHeader().resizeSection(1, 56)
        self.documents.hide()
        layout.addWidget(self.documents, 1)
        for view in (self.folder_list, self.documents):
            view.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
            view.customContextMenuRequested.connect(lambda position, v=view: self._menu(v, position))
            view.doubleClicked.connect(self._open)
        self.folder_list.selectionModel().currentRowChanged.connect(self._show_folder)
        self.add_button.clicked.connect(self._choose_folder)
        self.remove_button.clicked.connect(self._remove_selected)
        self.pause_button.toggled.connect(self._toggle_pause)
        for signal in (self.model.rowsInserted, self.model.rowsRemoved, self.model.modelReset):
            signal.connect(self._update_buttons)
        self._update_buttons()
        self.model.rowsInserted.connect(self._select_new_folder)
        self.model.modelReset.connect(self._select_first_folder)
        self.model.rowsRemoved.connect(lambda parent, *_: None if parent.isValid() else self._select_first_folder())

    # actions -------------------------------------------------------------------------------

    def _choose_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Add a folder to the library")
        if path:
            self.add_folder.emit(path)

    def _selected_path(self) -> str | None:
        view = self.documents if self.documents.hasFocus() else self.folder_list
        index = view.currentIndex()
        return index.siblingAtColumn(0).data(PATH_ROLE) if index.isValid() else None

    def _remove_selected(self) -> None:
        index = self.folder_list.currentIndex()
        if index.isValid():
            self.confirm_removal(index.siblingAtColumn(0).data(PATH_ROLE))

    def confirm_removal(self, path: str) -> QMessageBox:
        """Removing a folder drops its memories, hours of encoding for a big one: ask first.

        The box is window-modal and answered through a signal, so the event loop keeps running.
        Whatever is selected in the documents list, it is the whole folder that goes, and the box
        says so.
        """
        folder = self._folder_index(path)
        count = self.model.rowCount(folder) if folder.isValid() else 0
        box = QMessageBox(self)
        box.setObjectName("confirmRemoveFolder")
        box.setIcon(QMessageBox.Icon.Question)
        box.setWindowTitle("Remove folder")
        box.setText(f"Remove the folder “{Path(path).name}” from the library?")
        box.setInformativeText(
            f"Its {count:,} document{'s' if count != 1 else ''} and their memories leave the library, "
            "and the folder is no longer watched. The files on disk are not touched; adding the "
            "folder again indexes it again."
        )
        remove = box.addButton("Remove folder", QMessageBox.ButtonRole.DestructiveRole)
        box.addButton(QMessageBox.StandardButton.Cancel)
        box.setDefaultButton(QMessageBox.StandardButton.Cancel)
        box.setWindowModality(Qt.WindowModality.WindowModal)
        box.finished.connect(lambda _: self.remove_folder.emit(path) if box.clickedButton() is remove else None)
        box.open()
        return box

    def _folder_index(self, path: str) -> QModelIndex:
        return next(
            (
                self.model.index(row, 0)
                for row in range(self.model.rowCount())
                if self.model.index(row, 0).data(PATH_ROLE) == path
            ),
            QModelIndex(),
        )

    def edit_patterns(self, path: str) -> FolderPatternsDialog:
        """The folder's own include/exclude patterns, next to the Settings ones it would follow.

        Window-modal and answered through a signal (the event loop keeps running); saving goes
        through the model to the controller, which saves them and scans the folder again in the
        background.
        """
        own = self._folder_index(path).data(PATTERNS_ROLE) or (None, None)
        dialog = FolderPatternsDialog(Path(path), own, self.model.inherited_patterns, self)
        dialog.setWindowModality(Qt.WindowModality.WindowModal)

        def save() -> None:
            index = self._folder_index(path)  # the folder may have been removed meanwhile
            if index.isValid() and dialog.result_patterns is not None:
                self.model.setData(index, dialog.result_patterns, PATTERNS_ROLE)

        dialog.accepted.connect(save)
        dialog.open()
        return dialog

    def _update_buttons(self, *_args: object) -> None:
        """Remove and Pause act on folders: with none in the library there is nothing to act on."""
        any_folder = self.model.rowCount() > 0
        self.remove_button.setEnabled(any_folder)
        self.pause_button.setEnabled(any_folder or self.pause_button.isChecked())

    def _toggle_pause(self, paused: bool) -> None:
        self.pause_button.setText("Resume" if paused else "Pause")
        self.pause_toggled.emit(paused)

    def _open(self, index: QModelIndex) -> None:
        path = index.siblingAtColumn(0).data(PATH_ROLE)
        if path:
            QDesktopServices.openUrl(QUrl.fromLocalFile(path))

    def _menu(self, view: QAbstractItemView, position: QPoint) -> None:
        index = view.indexAt(position)
        path_text = index.siblingAtColumn(0).data(PATH_ROLE) if index.isValid() else None
        if not path_text:
            return  # nothing, or a problem row: nothing to open
        path = Path(path_text)
        menu = QMenu(self)
        menu.addAction("Open", lambda: self._open(index))
        menu.addAction("Show in file manager", lambda: reveal_in_file_manager(path))
        menu.addAction("Re-index", lambda: self.reindex.emit(str(path)))
        if view is self.folder_list:
            menu.addAction("Patterns…", lambda: self.edit_patterns(str(path)))
            menu.addAction("Remove from library…", lambda: self.confirm_removal(str(path)))
        menu.popup(view.viewport().mapToGlobal(position))

    def _show_folder(self, current: QModelIndex, _previous: QModelIndex | None = None) -> None:
        if current.isValid() and not current.parent().isValid():
            self.documents.setRootIndex(current.siblingAtColumn(0))
            self.documents.show()
        else:
            self.documents.hide()

    def _select_new_folder(self, parent: QModelIndex, first: int, _last: int) -> None:
        if not parent.isValid():
            self.folder_list.setCurrentIndex(self.model.index(first, 0))

    def _select_first_folder(self) -> None:
        current = self.folder_list.currentIndex()
        if current.isValid() and not current.parent().isValid():
            self._show_folder(current)
        elif self.model.rowCount() > 0:
            self.folder_list.setCurrentIndex(self.model.index(0, 0))
        else:
            self._show_folder(QModelIndex())

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if event.mimeData().hasUrls() and any(Path(u.toLocalFile()).is_dir() for u in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        for url in event.mimeData().urls():
            if Path(url.toLocalFile()).is_dir():
                self.add_folder.emit(url.toLocalFile())
        event.acceptProposedAction()

    # what tests and screenshots read ---------------------------------------------------------

    def folder_rows(self) -> list[tuple[str, str]]:
        """(name, summary) per folder, as shown."""
        return [(self.model.index(r, 0).data(), self.model.index(r, 2).data()) for r in range(self.model.rowCount())]

    def document_rows(self, folder_row: int = 0) -> dict[str, str]:
        """Name -> state column of a folder's children (problem rows start with ⚠), as shown."""
        parent = self.model.index(folder_row, 0)
        return {
            self.model.index(r, 0, parent).data(): self.model.index(r, 2, parent).data()
            for r in range(self.model.rowCount(parent))
        }

    # display -------------------------------------------------------------------------------

    def show_problems(self) -> None:
        problems = [p.message for p in self.model.library_problems]
        self.problems.setText("\n".join(f"⚠ {p}" for p in problems))
        self.problems.setVisible(bool(problems))

    def show_progress(self, progress: IndexProgress) -> None:
        """The bar measures work (chunks), not documents: one big file can be most of a run."""
        estimated = progress.estimated_chunks_total
        documents = f"{progress.documents_done:,} of {progress.documents_total:,} documents"
        if progress.state == IndexerState.INDEXING and estimated:
            self.progress.setMaximum(max(estimated, 1))
            self.progress.setValue(min(progress.chunks_done, estimated))
            approx = "" if estimated == progress.chunks_total else "~"
            left = format_time_left(progress.seconds_left)
            short = f"{progress.documents_done:,}/{progress.documents_total:,} documents"
            self.progress.setFormat(
                f"{progress.chunks_done:,} of {approx}{estimated:,} chunks · {short}{f' · {left}' if left else ''}"
            )
        else:
            self.progress.setMaximum(max(progress.documents_total, 1))
            self.progress.setValue(progress.documents_done)
            if progress.documents_total == 0:
                self.progress.setFormat("No documents yet")
            elif progress.state == IndexerState.PAUSED:
                self.progress.setFormat(f"Paused · {documents}")
            elif progress.state == IndexerState.IDLE:
                self.progress.setFormat(f"Up to date · {progress.documents_total:,} documents")
            else:
                self.progress.setFormat(documents)
        if progress.state == IndexerState.INDEXING and progress.current_file:
            name = Path(progress.current_file).name
            if progress.reading:
                page = f": {progress.ocr_page}" if progress.ocr_page else ""
                self.current.setText(f"Reading {name}{page}…")
            else:
                rate = f" · {progress.chunks_per_second:.1f} chunks/s" if progress.chunks_per_second else ""
                self.current.setText(f"Compressing {name}{rate}")
        elif progress.state == IndexerState.ERROR:
            self.current.setText("Indexing stopped: see the message above")
        else:
            self.current.setText("")
