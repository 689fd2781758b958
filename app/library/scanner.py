"""Which files of each folder belong in the library: the include/exclude patterns (the app's
own, or a folder's), .gitignore files, and a walk of the folder that finds them.

Walking reads the disk only; the result goes to the writer thread, which compares it with the
database and queues or forgets documents, and lists each file that is left out with its reason
(app/library/library.py).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from app.library.filters import DEFAULT_EXCLUDE, DEFAULT_INCLUDE, FolderFilter
from app.library.store import Folder

Facts = tuple[int, float] | None  # (size, mtime), or None for a file that cannot be stat'ed


@dataclass(frozen=True)
class ScanResult:
    folder: Folder
    found: dict[Path, Facts]
    problems: dict[Path, str]  # .gitignore path -> what is wrong with it
    missing: bool = False  # the folder itself is not there (unmounted?): keep its index
    # path -> why it is not indexed; an excluded directory is one entry ("... (1,234 files)")
    left_out: dict[Path, str] = field(default_factory=dict)


class Scanner:
    def __init__(self, include: list[str] | None = None, exclude: list[str] | None = None) -> None:
        self._include = list(include) if include is not None else list(DEFAULT_INCLUDE)
        self._exclude = list(exclude) if exclude is not None else list(DEFAULT_EXCLUDE)
        self._filters: dict[int, FolderFilter] = {}
        self._lock = threading.Lock()

    @property
    def patterns(self) -> tuple[list[str], list[str]]:
        return list(self._include), list(self._exclude)

    def set_patterns(self, include: list[str], exclude: list[str]) -> bool:
        """The app-wide patterns (folders without their own follow them); True if they changed."""
        with self._lock:
            if (list(include), list(exclude)) == (self._include, self._exclude):
                return False
            self._include, self._exclude = list(include), list(exclude)
            self._filters.clear()
            return True

    def forget(self, folder_id: int) -> None:
        with self._lock:
            self._filters.pop(folder_id, None)

    def filter_for(self, folder: Folder) -> FolderFilter:
        with self._lock:
            existing = self._filters.get(folder.id)
            if existing is None or existing.root != folder.path:
                include = folder.include_patterns if folder.include_patterns is not None else self._include
                exclude = folder.exclude_patterns if folder.exclude_patterns is not None else self._exclude
                existing = self._filters[folder.id] = FolderFilter(folder.path, list(include), list(exclude))
            return existing

    def scan(self, folder: Folder) -> ScanResult:
        if not folder.path.is_dir():
            return ScanResult(folder, {}, {}, missing=True)
        folder_filter = self.filter_for(folder)
        walk = folder_filter.walk()
        found: dict[Path, Facts] = {}
        for path in walk.found:
            try:
                stat = path.stat()
                found[path] = (stat.st_size, stat.st_mtime)
            except OSError:
                found[path] = None  # unreadable (a looping link, a vanished file): the indexer records why
        return ScanResult(folder, found, dict(folder_filter.problems), left_out=walk.left_out)
