"""The folders and their documents as a Qt item model, kept up to date by library events.

Nothing is rebuilt: a Snapshot fills the model once, and every later event changes just the
rows it names (`dataChanged` for a new state, `beginInsertRows` for new documents in sorted
runs, `beginRemoveRows` for vanished ones). Views keep their scroll position, selection and
expanded folders, and an update of one document costs the same with 20 documents or 20,000.

Top-level rows are folders; a folder's children are its problems (a watcher that failed, a bad
.gitignore), then its documents sorted by path, including the files the patterns leave out
("skipped: excluded by pattern *.log"), so a folder never looks empty without saying why.

A folder's own include/exclude patterns are edited through the model, as Qt views edit any
model: `setData(folder, (include, exclude), PATTERNS_ROLE)` asks for them (`patterns_edited`),
and the folder row changes once the library has them (a FoldersChanged event).
"""

from __future__ import annotations

import bisect
import os
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PySide6.QtCore import QAbstractItemModel, QModelIndex, QPersistentModelIndex, Qt, Signal
from PySide6.QtGui import QColor

from app.library.events import FolderInfo
from app.library.states import DocumentState
from app.library.store import LIBRARY_WIDE, Document, Problem, display_path

STATE_COLOURS = {
    DocumentState.READY: QColor("#2e7d32"),
    DocumentState.FAILED: QColor("#c62828"),
    DocumentState.SKIPPED: QColor("#8d6e00"),
    DocumentState.PENDING: QColor("#546e7a"),
    DocumentState.INDEXING: QColor("#1565c0"),
}
PROBLEM_COLOUR = QColor("#c62828")
SUMMARY_ORDER = (
    DocumentState.READY,
    DocumentState.PENDING,
    DocumentState.INDEXING,
    DocumentState.FAILED,
    DocumentState.SKIPPED,
)
PATH_ROLE = Qt.ItemDataRole.UserRole
# A folder's own (include, exclude) patterns, each None where it follows the Settings patterns.
PATTERNS_ROLE = Qt.ItemDataRole.UserRole + 1
# A document as the model keeps it: a plain tuple of plain values, which Python's cyclic garbage
# collector stops tracking. 20,000 tracked row objects made each full collection take 20-40 ms,
# a stall of the window (measured with benchmarks/library_scale.py).
Row = tuple  # (path, state value, chunks, error, note, indexed_at)
PATH, STATE, CHUNKS, ERROR, NOTE, INDEXED_AT = range(6)
REASON_STATES = frozenset({DocumentState.FAILED.value, DocumentState.SKIPPED.value})


def _row(document: Document) -> Row:
    return (
        str(document.path),
        document.state.value,
        document.chunk_count,
        document.error,
        document.note,
        document.indexed_at,
    )


COLUMNS = ("Name", "Chunks", "State")
Index = QModelIndex | QPersistentModelIndex


@dataclass
class _Folder:
    info: FolderInfo
    keys: list[str] = field(default_factory=list)  # document paths, sorted
    documents: list[Row] = field(default_factory=list)  # in the order of `keys`
    problems: list[Problem] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)  # by state value

    @property
    def path(self) -> str:
        return str(self.info.path)

    def summary(self) -> str:
        if self.info.missing:
            return "missing"
        parts = [f"{self.counts[s]} {s}" for s in SUMMARY_ORDER if self.counts.get(s)]
        return ", ".join(parts) or "empty"


class LibraryTreeModel(QAbstractItemModel):
    # folder path, include, exclude (None: follow the Settings patterns): a view asks for a
    # folder's own patterns; the controller applies them in the background.
    patterns_edited = Signal(str, object, object)

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self._folders: list[_Folder] = []  # sorted by path
        self._by_id: dict[int, _Folder] = {}
        self._where: dict[str, int] = {}  # document path -> folder id
        self.library_problems: list[Problem] = []
        # The Settings patterns, which every folder without its own follows (shown when editing).
        self.inherited_patterns: tuple[list[str], list[str]] = ([], [])

    def set_inherited_patterns(self, include: Sequence[str], exclude: Sequence[str]) -> None:
        self.inherited_patterns = (list(include), list(exclude))

    # structure -----------------------------------------------------------------------------

    def _row_of(self, folder: _Folder) -> int:
        return self._folders.index(folder)

    def index(self, row: int, column: int, parent: Index = QModelIndex()) -> QModelIndex:  # noqa: B008
        if not self.hasIndex(row, column, parent):
            return QModelIndex()
        if not parent.isValid():
            return self.createIndex(row, column, 0)
        folder = self._folders[parent.row()]
        return self.createIndex(row, column, folder.info.id)

    def parent(self, child: Index = QModelIndex()) -> QModelIndex:  # type: ignore[override]  # noqa: B008
        if not child.isValid() or child.internalId() == 0:
            return QModelIndex()
        folder = self._by_id.get(child.internalId())
        if folder is None:
            return QModelIndex()
        return self.createIndex(self._row_of(folder), 0, 0)

    def rowCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        if not parent.isValid():
            return len(self._folders)
        if parent.internalId() != 0 or parent.column() != 0:
            return 0
        folder = self._folders[parent.row()]
        return len(folder.problems) + len(folder.documents)

    def columnCount(self, parent: Index = QModelIndex()) -> int:  # noqa: B008
        return len(COLUMNS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return COLUMNS[section]
        return None

    # contents ------------------------------------------------------------------------------

    def data(self, index: Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        column = index.column()
        if index.internalId() == 0:
            folder = self._folders[index.row()]
            if role == Qt.ItemDataRole.DisplayRole:
                return (folder.info.path.name or folder.path, "", folder.summary())[column]
            if role == Qt.ItemDataRole.ToolTipRole:
                return display_path(folder.info.path) + self._patterns_hint(folder.info)
            if role == PATH_ROLE:
                return folder.path
            if role == PATTERNS_ROLE:
                return folder.info.include_patterns, folder.info.exclude_patterns
            return None
        folder = self._by_id[index.internalId()]
        row = index.row()
        if row < len(folder.problems):
            return self._problem_data(folder, folder.problems[row], column, role)
        document = folder.documents[row - len(folder.problems)]
        return self._document_data(folder, document, column, role)

    @staticmethod
    def _patterns_hint(info: FolderInfo) -> str:
        own = [
            f"{kind}: {' '.join(patterns) or '(none)'}"
            for kind, patterns in (("include", info.include_patterns), ("exclude", info.exclude_patterns))
            if patterns is not None
        ]
        if not own:
            return "\nFollows the Settings patterns (right-click → Patterns… to give it its own)"
        return "\nPatterns of its own: " + "; ".join(own)

    def setData(self, index: Index, value: Any, role: int = Qt.ItemDataRole.EditRole) -> bool:
        """A folder's own (include, exclude) patterns, asked for through `patterns_edited`; the
        row shows them once the library has saved them and scanned the folder again."""
        if role != PATTERNS_ROLE or not index.isValid() or index.internalId() != 0:
            return False
        include, exclude = value
        self.patterns_edited.emit(self._folders[index.row()].path, include, exclude)
        return True

    @staticmethod
    def _problem_text(folder: _Folder, problem: Problem) -> str:
        subject = problem.subject
        if subject.startswith(folder.path + os.sep):
            subject = os.path.relpath(subject, folder.path)
        return f"{subject}: {problem.message}" if subject else problem.message

    def _problem_data(self, folder: _Folder, problem: Problem, column: int, role: int) -> Any:
        if role == Qt.ItemDataRole.DisplayRole:
            return (f"⚠ {problem.source}", "", self._problem_text(folder, problem))[column]
        if role == Qt.ItemDataRole.ToolTipRole:
            return problem.subject or folder.path if column == 0 else self._problem_text(folder, problem)
        if role == Qt.ItemDataRole.ForegroundRole and column == 2:
            return PROBLEM_COLOUR
        return None

    @staticmethod
    def _label(row: Row) -> str:
        detail = row[ERROR] if row[STATE] in REASON_STATES else row[NOTE]
        return f"{row[STATE]}: {detail}" if detail else row[STATE]

    def _document_data(self, folder: _Folder, row: Row, column: int, role: int) -> Any:
        if role == Qt.ItemDataRole.DisplayRole:
            if column == 0:
                return display_path(os.path.relpath(row[PATH], folder.path))
            if column == 1:
                return str(row[CHUNKS] or "")
            return self._label(row)
        if role == Qt.ItemDataRole.ToolTipRole:
            if column == 2:
                indexed = row[INDEXED_AT]
                # A skipped or failed file was looked at, never indexed.
                verb = "indexed" if row[STATE] not in REASON_STATES else "checked"
                when = time.strftime(f" · {verb} %Y-%m-%d %H:%M", time.localtime(indexed)) if indexed else ""
                return self._label(row) + when
            return display_path(row[PATH])
        if role == Qt.ItemDataRole.ForegroundRole and column == 2:
            return STATE_COLOURS.get(row[STATE])
        if role == Qt.ItemDataRole.TextAlignmentRole and column == 1:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == PATH_ROLE:
            return row[PATH]
        return None

    def folder_summary(self, row: int) -> str:
        return self._folders[row].summary()

    def document_count(self) -> int:
        return len(self._where)

    # updates -------------------------------------------------------------------------------

    def reset(self, folders: Sequence[FolderInfo], documents: Iterable[Document], problems: Sequence[Problem]) -> None:
        self.beginResetModel()
        self._folders = [_Folder(info) for info in sorted(folders, key=lambda f: str(f.path))]
        self._by_id = {f.info.id: f for f in self._folders}
        self._where = {}
        for document in sorted(documents, key=lambda d: str(d.path)):
            folder = self._by_id.get(document.folder_id)
            if folder is None:
                continue
            row = _row(document)
            folder.keys.append(row[PATH])
            folder.documents.append(row)
            folder.counts[row[STATE]] += 1
            self._where[row[PATH]] = folder.info.id
        self._assign_problems(problems)
        self.endResetModel()

    def _assign_problems(self, problems: Sequence[Problem]) -> None:
        for folder in self._folders:
            folder.problems = [p for p in problems if p.folder_id == folder.info.id]
        self.library_problems = [p for p in problems if p.folder_id == LIBRARY_WIDE]

    def _folder_changed(self, folder: _Folder) -> None:
        row = self._row_of(folder)
        self.dataChanged.emit(self.index(row, 0), self.index(row, len(COLUMNS) - 1))

    def set_folders(self, folders: Sequence[FolderInfo]) -> None:
        wanted = {f.id: f for f in folders}
        for folder in [f for f in self._folders if f.info.id not in wanted]:
            row = self._row_of(folder)
            self.beginRemoveRows(QModelIndex(), row, row)
            del self._folders[row]
            del self._by_id[folder.info.id]
            for key in folder.keys:
                self._where.pop(key, None)
            self.endRemoveRows()
        for info in sorted(folders, key=lambda f: str(f.path)):
            existing = self._by_id.get(info.id)
            if existing is not None:
                if existing.info != info:
                    existing.info = info
                    self._folder_changed(existing)
                continue
            row = bisect.bisect([f.path for f in self._folders], str(info.path))
            self.beginInsertRows(QModelIndex(), row, row)
            folder = _Folder(info)
            self._folders.insert(row, folder)
            self._by_id[info.id] = folder
            self.endInsertRows()

    def set_problems(self, problems: Sequence[Problem]) -> None:
        for folder in self._folders:
            wanted = [p for p in problems if p.folder_id == folder.info.id]
            if wanted == folder.problems:
                continue
            parent = self.index(self._row_of(folder), 0)
            if folder.problems:
                self.beginRemoveRows(parent, 0, len(folder.problems) - 1)
                folder.problems = []
                self.endRemoveRows()
            if wanted:
                self.beginInsertRows(parent, 0, len(wanted) - 1)
                folder.problems = wanted
                self.endInsertRows()
        self.library_problems = [p for p in problems if p.folder_id == LIBRARY_WIDE]

    def update_documents(self, documents: Iterable[Document]) -> None:
        """New rows go in sorted runs (one insert per run); known rows change in place."""
        additions: dict[int, list[Row]] = {}
        for document in documents:
            folder = self._by_id.get(document.folder_id)
            if folder is None:
                continue
            row = _row(document)
            key = row[PATH]
            owner = self._where.get(key)
            if owner is not None and owner != folder.info.id:
                self.remove_documents([document.path])
                owner = None
            if owner is None:
                additions.setdefault(folder.info.id, []).append(row)
                continue
            position = bisect.bisect_left(folder.keys, key)
            old = folder.documents[position]
            folder.documents[position] = row
            if old[STATE] != row[STATE]:
                folder.counts[old[STATE]] -= 1
                folder.counts[row[STATE]] += 1
                self._folder_changed(folder)
            parent = self.index(self._row_of(folder), 0)
            row = len(folder.problems) + position
            self.dataChanged.emit(self.index(row, 0, parent), self.index(row, len(COLUMNS) - 1, parent))
        for folder_id, new in additions.items():
            self._insert(self._by_id[folder_id], new)

    def _insert(self, folder: _Folder, new: list[Row]) -> None:
        """New rows into the sorted list: each new key's place is found by bisection (never a
        re-sort of the folder), adjacent places go in as one run."""
        unique = {row[PATH]: row for row in new}
        parent = self.index(self._row_of(folder), 0)
        offset = len(folder.problems)
        keys = sorted(unique)
        # Where each new key lands in the merged list: its place among the old keys, plus the
        # number of new keys before it.
        merged_positions = [bisect.bisect_left(folder.keys, key) + i for i, key in enumerate(keys)]
        start = 0
        for first, last in _runs(merged_positions):
            count = last - first + 1
            self._insert_run(folder, parent, offset, first, keys[start : start + count], unique)
            start += count
        self._folder_changed(folder)

    def _insert_run(
        self, folder: _Folder, parent: QModelIndex, offset: int, start: int, keys: list[str], new: dict[str, Row]
    ) -> None:
        self.beginInsertRows(parent, offset + start, offset + start + len(keys) - 1)
        folder.keys[start:start] = keys
        folder.documents[start:start] = [new[k] for k in keys]
        for key in keys:
            folder.counts[new[key][STATE]] += 1
            self._where[key] = folder.info.id
        self.endInsertRows()

    def remove_documents(self, paths: Iterable[Path]) -> None:
        by_folder: dict[int, list[str]] = {}
        for path in paths:
            key = str(path)
            folder_id = self._where.get(key)
            if folder_id is not None:
                by_folder.setdefault(folder_id, []).append(key)
        for folder_id, keys in by_folder.items():
            folder = self._by_id[folder_id]
            positions = sorted(bisect.bisect_left(folder.keys, key) for key in keys)
            parent = self.index(self._row_of(folder), 0)
            offset = len(folder.problems)
            for start, end in reversed(_runs(positions)):
                self.beginRemoveRows(parent, offset + start, offset + end)
                for row in folder.documents[start : end + 1]:
                    folder.counts[row[STATE]] -= 1
                    self._where.pop(row[PATH], None)
                del folder.keys[start : end + 1]
                del folder.documents[start : end + 1]
                self.endRemoveRows()
            self._folder_changed(folder)


def _runs(positions: list[int]) -> list[tuple[int, int]]:
    """[1, 2, 3, 7, 8] -> [(1, 3), (7, 8)]."""
    runs: list[tuple[int, int]] = []
    for position in positions:
        if runs and runs[-1][1] == position - 1:
            runs[-1] = (runs[-1][0], position)
        else:
            runs.append((position, position))
    return runs
