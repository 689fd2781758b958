"""The app's log: a rotating file in the data folder, fed by `logging`, crashes and stray exceptions.

Errors a user never sees in a terminal (a worker thread's exception, a hard crash inside a native
library, a watcher that stopped) must still leave a trace they can send us: everything goes to
`<data folder>/logs/dolphin-desk.log`, rotated at 2 MB with five old files kept. `faulthandler`
writes native crashes (segfaults, aborts) into the same file, and is pointed at the new file
whenever it rotates. No Qt here: the GUI adds its own dialog on top (`app/ui/crash.py`).
"""

from __future__ import annotations

import faulthandler
import logging
import logging.handlers
import os
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

LOG_FOLDER = "logs"
LOG_NAME = "dolphin-desk.log"
MAX_BYTES = 2 * 1024 * 1024
BACKUPS = 5
LEVEL_ENV = "DOLPHIN_DESK_LOG_LEVEL"
FORMAT = "%(asctime)s %(levelname)-7s %(threadName)s %(name)s: %(message)s"

log = logging.getLogger("dolphin")

ExceptionListener = Callable[[str, str], None]
_listeners: list[ExceptionListener] = []
_previous_hooks: tuple[object, object] | None = None


class _CrashAwareRotatingHandler(logging.handlers.RotatingFileHandler):
    """Keeps faulthandler writing into the current log file across rotations."""

    def doRollover(self) -> None:
        super().doRollover()
        if self.stream is not None:
            faulthandler.enable(file=self.stream, all_threads=True)

    def handleError(self, record: logging.LogRecord) -> None:
        """A log that cannot be written (a full disk) costs one line on stderr, not a traceback
        per message; the app itself reports the full disk where it matters."""
        if not getattr(self, "_told", False):
            self._told = True
            print(f"dolphin-desk: note: the log file {self.baseFilename} cannot be written", file=sys.stderr)


def log_path(data_dir: Path) -> Path:
    return Path(data_dir) / LOG_FOLDER / LOG_NAME


def _level() -> int:
    name = os.environ.get(LEVEL_ENV, "INFO").upper()
    level = logging.getLevelName(name)
    return level if isinstance(level, int) else logging.INFO


def setup_logging(data_dir: Path) -> Path | None:
    """Send the app's log to the data folder (replacing an earlier data folder's file).

    Returns the log file, or None when it cannot be written (a read-only data folder): the app
    still runs, and the reason is on stderr.
    """
    path = log_path(data_dir)
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _CrashAwareRotatingHandler)]:
        root.removeHandler(handler)
        handler.close()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = _CrashAwareRotatingHandler(
            path, maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8", errors="backslashreplace"
        )
    except OSError as exc:
        print(f"dolphin-desk: note: no log file ({path}: {exc.strerror or exc})", file=sys.stderr)
        return None
    handler.setFormatter(logging.Formatter(FORMAT))
    root.addHandler(handler)
    root.setLevel(_level())
    logging.captureWarnings(True)
    if handler.stream is not None:
        faulthandler.enable(file=handler.stream, all_threads=True)
    log.info("log opened (pid %d, Python %s)", os.getpid(), sys.version.split()[0])
    return path


def describe_exception(exc: BaseException) -> str:
    """One line for a person: what went wrong, without the traceback."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def add_exception_listener(listener: ExceptionListener) -> None:
    """`listener(summary, details)` is called for every unhandled exception, on the raising thread."""
    _listeners.append(listener)


def remove_exception_listener(listener: ExceptionListener) -> None:
    if listener in _listeners:
        _listeners.remove(listener)


def report_unhandled(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None, where: str) -> None:
    details = "".join(traceback.format_exception(exc_type, exc, tb))
    log.critical("unhandled exception in %s\n%s", where, details.rstrip())
    for listener in list(_listeners):
        try:
            listener(f"{describe_exception(exc)} (in {where})", details)
        except Exception:  # a failing listener must not hide the original error
            log.exception("an exception listener failed")


def _sys_hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    report_unhandled(exc_type, exc, tb, "the main thread")


def _thread_hook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "a thread"
    report_unhandled(args.exc_type, args.exc_value or args.exc_type(), args.exc_traceback, f"thread {name}")


def install_exception_hooks() -> None:
    """Route exceptions nobody caught (main thread and worker threads) to the log and listeners."""
    global _previous_hooks
    if _previous_hooks is None:
        _previous_hooks = (sys.excepthook, threading.excepthook)
    sys.excepthook = _sys_hook
    threading.excepthook = _thread_hook


def uninstall_exception_hooks() -> None:
    global _previous_hooks
    if _previous_hooks is not None:
        sys.excepthook, threading.excepthook = _previous_hooks  # type: ignore[assignment]
        _previous_hooks = None
