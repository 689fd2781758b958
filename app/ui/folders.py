"""Folders and their documents: live indexing progress, failures with reasons, actions."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from PySide6.QtCore import QPoint, Qt, QUrl, Signal
from PySide6.QtGui import QColor, QDesktopServices, QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMenu,
    QProgressBar,
    QPushButton,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.library.indexer import IndexProgress

STATE_COLOURS = {
    "ready": "#2e7d32",
    "failed": "#c62828",
    "skipped": "#8d6e00",
    "pending": "#546e7a",
    "indexing": "#1565c0",
}


def reveal_in_file_manager(path: Path) -> None:
    if sys.platform == "win32":
        subprocess.Popen(["explorer", "/select,", str(path)])
    elif sys.platform == "darwin":
        subprocess.Popen(["open", "-R", str(path)])
    else:
        QDesktopServices.openUrl(QUrl.fromLocalFile(str(path.parent)))


class FoldersPanel(QWidget):
    add_folder = Signal(str)
    remove_folder = Signal(str)
    reindex = Signal(str)
    pause_toggled = Signal(bool)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAcceptDrops(True)
        self.setObjectName("foldersPanel")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(12, 12, 12, 12)
        title = QLabel("Folders")
        title.setObjectName("panelTitle")
        layout.addWidget(title)
        hint = QLabel(
            "Add folders (or drop them here). Their documents are compressed into memories in the background."
        )
        hint.setObjectName("hint")
        hint.setWordWrap(True)
        layout.addWidget(hint)
        buttons = QHBoxLayout()
        self.add_button = QPushButton("Add folder…")
        self.remove_button = QPushButton("Remove")
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
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["Name", "Chunks", "State"])
        self.tree.header().setStretchLastSection(True)
        self.tree.header().setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        self.tree.header().setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        self.tree.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.tree.customContextMenuRequested.connect(self._menu)
        self.tree.itemDoubleClicked.connect(lambda item, _: self._open(item))
        layout.addWidget(self.tree, 1)
        self.add_button.clicked.connect(self._choose_folder)
        self.remove_button.clicked.connect(self._remove_selected)
        self.pause_button.toggled.connect(self._toggle_pause)
        self._expanded: set[str] = set()
        self._shown: dict | None = None

    # actions -------------------------------------------------------------------------------

    def _choose_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Add a folder to the library")
        if path:
            self.add_folder.emit(path)

    def _selected_path(self) -> str | None:
        item = self.tree.currentItem()
        return item.data(0, Qt.ItemDataRole.UserRole) if item else None

    def _remove_selected(self) -> None:
        item = self.tree.currentItem()
        if item is not None and item.parent() is None:
            self.remove_folder.emit(item.data(0, Qt.ItemDataRole.UserRole))

    def _toggle_pause(self, paused: bool) -> None:
        self.pause_button.setText("Resume" if paused else "Pause")
        self.pause_toggled.emit(paused)

    def _open(self, item: QTreeWidgetItem) -> None:
        path = item.data(0, Qt.ItemDataRole.UserRole)
        if path:
            QDesktopServices.openUrl(QUrl.fromLocalFile(path))

    def _menu(self, position: QPoint) -> None:
        item = self.tree.itemAt(position)
        if item is None or not item.data(0, Qt.ItemDataRole.UserRole):
            return  # a problem row: nothing to open
        path = Path(item.data(0, Qt.ItemDataRole.UserRole))
        menu = QMenu(self)
        menu.addAction("Open", lambda: self._open(item))
        menu.addAction("Show in file manager", lambda: reveal_in_file_manager(path))
        menu.addAction("Re-index", lambda: self.reindex.emit(str(path)))
        if item.parent() is None:
            menu.addAction("Remove from library", lambda: self.remove_folder.emit(str(path)))
        menu.popup(self.tree.viewport().mapToGlobal(position))

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if event.mimeData().hasUrls() and any(Path(u.toLocalFile()).is_dir() for u in event.mimeData().urls()):
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        for url in event.mimeData().urls():
            if Path(url.toLocalFile()).is_dir():
                self.add_folder.emit(url.toLocalFile())
        event.acceptProposedAction()

    # display -------------------------------------------------------------------------------

    def show_progress(self, progress: IndexProgress) -> None:
        total = max(progress.documents_total, 1)
        self.progress.setMaximum(total)
        self.progress.setValue(progress.documents_done)
        if progress.documents_total == 0:
            self.progress.setFormat("No documents yet")
        elif progress.state == "paused":
            self.progress.setFormat(f"Paused · {progress.documents_done} of {progress.documents_total} documents")
        elif progress.state == "idle":
            self.progress.setFormat(f"Up to date · {progress.documents_total} documents")
        else:
            self.progress.setFormat(f"{progress.documents_done} of {progress.documents_total} documents · %p%")
        if progress.state == "indexing" and progress.current_file:
            rate = f" · {progress.chunks_per_second:.1f} chunks/s" if progress.chunks_per_second else ""
            name = Path(progress.current_file).name
            self.current.setText(f"Compressing {name} ({progress.chunks_done}/{progress.chunks_total} chunks){rate}")
        elif progress.state == "error":
            self.current.setText("Indexing stopped: see the message above")
        else:
            self.current.setText("")

    def show_status(self, status: dict) -> None:
        if status == self._shown:
            return  # unchanged: keep the tree, its scroll position and selection as they are
        self._shown = status
        library_problems = [p["message"] for p in status.get("problems", [])]
        indexer = status.get("indexer", {})
        if indexer.get("state") == "stopped":
            library_problems.insert(0, str(indexer.get("reason")))
        self.problems.setText("\n".join(f"⚠ {p}" for p in library_problems))
        self.problems.setVisible(bool(library_problems))
        for index in range(self.tree.topLevelItemCount()):
            item = self.tree.topLevelItem(index)
            if item.isExpanded():
                self._expanded.add(item.data(0, Qt.ItemDataRole.UserRole))
            else:
                self._expanded.discard(item.data(0, Qt.ItemDataRole.UserRole))
        selected = self._selected_path()
        self.tree.clear()
        documents_by_folder: dict[str, list[dict]] = {f["path"]: [] for f in status["folders"]}
        for document in status["documents"]:
            owner = max(
                (f for f in documents_by_folder if document["path"].startswith(f + os.sep)), key=len, default=None
            )
            if owner is not None:
                documents_by_folder[owner].append(document)
        for folder in status["folders"]:
            counts = folder["counts"]
            summary = ", ".join(
                f"{counts[s]} {s}" for s in ("ready", "pending", "indexing", "failed", "skipped") if counts.get(s)
            )
            state = "missing" if folder["missing"] else (summary or "empty")
            item = QTreeWidgetItem([Path(folder["path"]).name or folder["path"], "", state])
            item.setToolTip(0, folder["path"])
            item.setData(0, Qt.ItemDataRole.UserRole, folder["path"])
            self.tree.addTopLevelItem(item)
            for problem in folder.get("problems", []):
                subject = problem["subject"]
                if subject.startswith(folder["path"] + os.sep):
                    subject = os.path.relpath(subject, folder["path"])
                text = f"{subject}: {problem['message']}" if subject else problem["message"]
                row = QTreeWidgetItem([f"⚠ {problem['source']}", "", text])
                row.setToolTip(0, problem["subject"] or folder["path"])
                row.setToolTip(2, text)
                row.setForeground(2, QColor(STATE_COLOURS["failed"]))
                item.addChild(row)
            for document in documents_by_folder[folder["path"]]:
                relative = os.path.relpath(document["path"], folder["path"])
                detail = document["error"] or document.get("note")
                label = document["state"] + (f": {detail}" if detail else "")
                child = QTreeWidgetItem([relative, str(document["chunks"] or ""), label])
                child.setData(0, Qt.ItemDataRole.UserRole, document["path"])
                child.setToolTip(0, document["path"])
                indexed = document.get("indexed_at")
                when = time.strftime(" · indexed %Y-%m-%d %H:%M", time.localtime(indexed)) if indexed else ""
                child.setToolTip(2, label + when)
                child.setTextAlignment(1, Qt.AlignmentFlag.AlignRight)
                child.setForeground(2, QColor(STATE_COLOURS.get(document["state"], "#333333")))
                item.addChild(child)
                if document["path"] == selected:
                    self.tree.setCurrentItem(child)
            item.setExpanded(folder["path"] in self._expanded or len(status["folders"]) == 1)
