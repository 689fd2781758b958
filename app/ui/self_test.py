"""The window half of the self-test: Qt, its plugins, the stylesheet and the model load path."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from PySide6.QtCore import QCoreApplication
from PySide6.QtWidgets import QApplication

from app.settings import Settings, save_settings


def open_main_window(bundle: Path, data_dir: Path, timeout_s: float = 120) -> str:
    """Open the real window on `data_dir`, wait for the model to load, close it cleanly."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from app.ui.main import create_window

    app = QApplication.instance() or QApplication(sys.argv[:1])
    save_settings(data_dir, Settings(bundle_path=str(bundle)))
    window, controller = create_window(data_dir)
    window.show()
    try:
        deadline = time.monotonic() + timeout_s
        while controller.model_state in ("loading", "missing") and time.monotonic() < deadline:
            QCoreApplication.processEvents()
            time.sleep(0.005)
        if controller.model_state != "ready":
            raise RuntimeError(f"model state {controller.model_state}: {controller.model_message}")
        return f"{app.platformName()} platform, status: {controller.model_message}"
    finally:
        window.close()
        controller.shutdown()
