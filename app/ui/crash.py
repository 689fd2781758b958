"""Unhandled exceptions, from any thread, shown in a dialog with their details (and logged).

`app.logs` routes exceptions nobody caught to the log file; this adds what a GUI user needs:
a window that says something went wrong, that the app is still running, where the log is, and
the traceback to copy into a bug report (qutebrowser's crash handler works the same way). The
dialog is not modal, and at most a few are shown a minute, so a failing timer cannot bury the
window in dialogs.
"""

from __future__ import annotations

import time
from pathlib import Path

from PySide6.QtCore import QObject, Qt, QUrl, Signal
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import QMessageBox, QWidget

from app.logs import add_exception_listener, remove_exception_listener

MAX_DIALOGS_PER_MINUTE = 3


def open_log_file(parent: QWidget | None, log_file: Path | None) -> bool:
    """Open the log in the platform's viewer; say where it is when there is no viewer."""
    if log_file is not None and log_file.exists() and QDesktopServices.openUrl(QUrl.fromLocalFile(str(log_file))):
        return True
    where = str(log_file) if log_file is not None else "not written (the data folder is read-only)"
    QMessageBox.information(parent, "Log file", f"The log could not be opened here. It is at:\n{where}")
    return False


class CrashReporter(QObject):
    caught = Signal(str, str)

    def __init__(self, window: QWidget, log_file: Path | None) -> None:
        super().__init__(window)
        self._window = window
        self._log_file = log_file
        self._shown: list[float] = []
        self.dialogs: list[QMessageBox] = []
        self.caught.connect(self._show, Qt.ConnectionType.QueuedConnection)
        add_exception_listener(self._listen)

    def _listen(self, summary: str, details: str) -> None:
        """Called on the thread that raised; the dialog is made on the GUI thread."""
        self.caught.emit(summary, details)

    def close(self) -> None:
        remove_exception_listener(self._listen)

    def _show(self, summary: str, details: str) -> None:
        now = time.monotonic()
        self._shown = [t for t in self._shown if now - t < 60]
        if len(self._shown) >= MAX_DIALOGS_PER_MINUTE:
            return  # already logged; more dialogs would only bury the window
        self._shown.append(now)
        box = QMessageBox(self._window)
        box.setIcon(QMessageBox.Icon.Critical)
        box.setWindowTitle("Dolphin Desk hit an error")
        box.setText(f"Something went wrong: {summary}")
        where = f"The details are also in the log:\n{self._log_file}" if self._log_file else ""
        box.setInformativeText(f"The app is still running; what you had is kept. {where}".strip())
        box.setDetailedText(details)
        show_log = box.addButton("Show log", QMessageBox.ButtonRole.ActionRole)
        box.addButton(QMessageBox.StandardButton.Close)
        show_log.clicked.connect(lambda: open_log_file(self._window, self._log_file))
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.setWindowModality(Qt.WindowModality.NonModal)
        box.finished.connect(lambda _: self.dialogs.remove(box) if box in self.dialogs else None)
        self.dialogs.append(box)
        box.show()
