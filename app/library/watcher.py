"""watchdog observers on the library's folders, debounced into library updates.

Editors save in bursts (temp file, rename, modify), copies arrive in pieces: an event only
reaches the library once its path has been quiet for `debounce_s`. Whether the file itself has
settled is checked again by the indexer before it reads anything.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from app.logs import describe_exception

DEFAULT_DEBOUNCE_S = 1.0

log = logging.getLogger("dolphin.watcher")


@dataclass(frozen=True)
class Change:
    kind: str  # changed | deleted | moved | dir_created | dir_deleted | dir_moved
    path: Path
    dest: Path | None = None


class _Handler(FileSystemEventHandler):
    def __init__(self, push: Callable[[Change], None]) -> None:
        self._push = push

    def on_any_event(self, event: FileSystemEvent) -> None:
        src = Path(str(event.src_path))
        dest = Path(str(event.dest_path)) if getattr(event, "dest_path", "") else None
        if event.event_type in ("opened", "closed_no_write"):
            return
        if event.is_directory:
            kind = {"created": "dir_created", "deleted": "dir_deleted", "moved": "dir_moved"}.get(event.event_type, "")
            if not kind:
                return  # "modified" on a directory only echoes events of its files
        else:
            kind = {"deleted": "deleted", "moved": "moved"}.get(event.event_type, "changed")
        self._push(Change(kind, src, dest))


class FolderWatcher:
    def __init__(
        self,
        on_change: Callable[[Change], None],
        debounce_s: float = DEFAULT_DEBOUNCE_S,
        on_error: Callable[[Path, str], None] | None = None,
    ) -> None:
        self._on_change = on_change
        self._on_error = on_error or (lambda path, message: None)
        self._debounce_s = debounce_s
        self._observer = Observer()
        self._watches: dict[Path, object] = {}
        self._pending: dict[tuple[str, Path], tuple[Change, float]] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name="dolphin-watch-debounce", daemon=True)
        self.errors: dict[Path, str] = {}

    def start(self) -> None:
        self._observer.start()
        self._flusher.start()

    def stop(self) -> None:
        self._stop.set()
        with self._changed:
            self._changed.notify()
        self._observer.unschedule_all()
        self._watches.clear()
        self._observer.stop()
        self._observer.join(10)
        self._flusher.join(10)

    def watch(self, root: Path) -> bool:
        """Start watching `root`; False (with the reason in `errors`) if it cannot be watched."""
        if root in self._watches:
            return True
        try:
            self._watches[root] = self._observer.schedule(_Handler(self._push), str(root), recursive=True)
        except OSError as exc:
            self.errors[root] = f"cannot watch: {exc.strerror or exc}"
            return False
        self.errors.pop(root, None)
        return True

    def unwatch(self, root: Path) -> None:
        watch = self._watches.pop(root, None)
        if watch is not None:
            try:
                self._observer.unschedule(watch)
            except (KeyError, OSError):
                pass

    def _push(self, change: Change) -> None:
        with self._changed:
            self._pending[(change.kind, change.path)] = (change, time.monotonic())
            self._changed.notify()

    def _flush_loop(self) -> None:
        """Sleeps until an event comes (no polling while nothing happens), then until the
        oldest pending path has been quiet for the debounce time."""
        while not self._stop.is_set():
            with self._changed:
                if not self._pending:
                    self._changed.wait()
                    continue
                now = time.monotonic()
                due = min(t for _, t in self._pending.values()) + self._debounce_s
                if due > now:
                    self._changed.wait(due - now)
                    continue
                ready = [k for k, (_, t) in self._pending.items() if now - t >= self._debounce_s]
                changes = [self._pending.pop(k)[0] for k in ready]
            for change in changes:
                try:
                    self._on_change(change)
                except Exception as exc:  # noqa: BLE001 - one bad event must not end watching
                    message = f"a change could not be applied ({describe_exception(exc)})"
                    self.errors[change.path] = message
                    try:
                        self._on_error(change.path, message)
                    except Exception:  # the listener's own failure is logged, watching goes on
                        log.exception("the watcher's error listener failed")
