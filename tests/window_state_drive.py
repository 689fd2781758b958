"""Run by tests/test_ui_window.py in a process of its own: open the window, lay it out, close it,
open it again and print what came back. A process of its own because restoring a geometry is
clamped to the screen, and the test needs an offscreen screen larger than the default 800x800."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from PySide6.QtWidgets import QApplication

from app.ui.main import create_window


def settle(app: QApplication) -> None:
    for _ in range(20):
        app.processEvents()


def main() -> None:
    data = Path(sys.argv[1])
    app = QApplication(sys.argv[:1])
    window, controller = create_window(data)
    window.show()
    window.resize(1300, 820)
    settle(app)
    window.splitter.setSizes([300, 600, 400])
    settle(app)
    before = {"size": [window.width(), window.height()], "splitter": window.splitter.sizes()}
    window.close()
    controller.shutdown()
    again, controller = create_window(data)
    again.show()
    settle(app)
    after = {"size": [again.width(), again.height()], "splitter": again.splitter.sizes()}
    again.close()
    controller.shutdown()
    print(json.dumps({"before": before, "after": after}))


if __name__ == "__main__":
    main()
