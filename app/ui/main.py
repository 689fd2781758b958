"""Start the desktop app."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication, QMessageBox

from app.chats import ChatStoreError
from app.instance import AlreadyRunning, InstanceLock, InstanceServer, ask_running_app
from app.library.paths import default_data_dir
from app.logs import install_exception_hooks, setup_logging
from app.settings import SettingsError
from app.ui.controller import AppController
from app.ui.crash import CrashReporter
from app.ui.main_window import MainWindow
from app.ui.theme import Theme

log = logging.getLogger("dolphin.ui")

ASSETS = Path(__file__).resolve().parents[2] / "assets"
_theme: Theme | None = None  # one per process: it follows the system's colour scheme for the app's lifetime


def assets_dir() -> Path:
    """The assets folder, from a source checkout or inside a packaged app."""
    frozen = getattr(sys, "_MEIPASS", None)
    return Path(frozen) / "assets" if frozen else ASSETS


def create_window(data_dir: Path | None = None) -> tuple[MainWindow, AppController]:
    app = QApplication.instance()
    assert app is not None
    # Worker threads (indexer, answer streaming) hold the GIL in 5 ms slices by default; shorter
    # slices let the GUI thread back in sooner, which is what an interactive window needs.
    sys.setswitchinterval(0.001)
    app.setApplicationName("Dolphin Desk")
    app.setDesktopFileName("dolphin-desk")
    app.setOrganizationName("Dolphin Desk")
    icon = assets_dir() / "icon.svg"
    if icon.exists():
        app.setWindowIcon(QIcon(str(icon)))
    global _theme
    if _theme is None:
        _theme = Theme(app, assets_dir())
    controller = AppController(data_dir or default_data_dir())
    window = MainWindow(controller)
    controller.load_model()
    return window, controller


def run_app(data_dir: Path | None = None) -> int:
    app = QApplication.instance() or QApplication(sys.argv)
    data_dir = data_dir or default_data_dir()
    log_file = setup_logging(data_dir)
    install_exception_hooks()
    lock = InstanceLock(data_dir)
    try:
        info = lock.acquire()
    except AlreadyRunning as exc:
        return _hand_over_to_running_app(data_dir, exc)
    except OSError as exc:
        return _cannot_start(f"cannot use the data folder: {exc}")
    try:
        try:
            window, controller = create_window(data_dir)
        except (ChatStoreError, SettingsError, OSError) as exc:
            # Nothing can be shown without the data folder: say why in a dialog, not a traceback.
            return _cannot_start(
                f"cannot use the data folder: {exc}" if isinstance(exc, OSError) else str(exc).capitalize()
            )
        server = InstanceServer(info, window.remote.handle)
        reporter = CrashReporter(window, log_file)
        window.show()
        code = app.exec()
        server.close()
        reporter.close()
        controller.shutdown()
    finally:
        lock.release()
    log.info("closed")
    return code


def _cannot_start(message: str) -> int:
    log.error("cannot start: %s", message)
    QMessageBox.critical(None, "Dolphin Desk cannot start", message)
    return 1


def _hand_over_to_running_app(data_dir: Path, refused: AlreadyRunning) -> int:
    """A second start on the same library brings the running window to the front instead."""
    reply = ask_running_app(data_dir, {"op": "show"})
    if reply and reply.get("ok"):
        log.info("%s: brought its window to the front", refused)
        print(f"{refused}: brought its window to the front.", file=sys.stderr)
        return 0
    log.error("cannot start: %s, and it does not answer", refused)
    QMessageBox.warning(
        None,
        "Dolphin Desk is already running",
        f"{refused}.\n\nOne library can be open in one Dolphin Desk at a time. Switch to the "
        "running window, or close it and start again.",
    )
    return 1
