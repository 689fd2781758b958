"""Take assets/screenshot.png (1400x900) and assets/screenshot-800x600.png: the main window with a
real three-question conversation over real files, at a desktop size and at a small one.

    QT_QPA_PLATFORM=offscreen python assets/make_screenshot.py [--bundle B]

Without --bundle it converts the repository's tiny random Dolphin checkpoint (needs the convert
extra), so the answer text is noise; the sources, costs and folder states are real.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PySide6.QtCore import QEventLoop, QTimer  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402

from app.settings import Settings, save_settings  # noqa: E402
from app.ui.main import create_window  # noqa: E402


def wait_until(condition, timeout_s: float = 120) -> None:  # noqa: ANN001
    loop = QEventLoop()
    timer = QTimer()
    timer.timeout.connect(lambda: loop.quit() if condition() else None)
    timer.start(50)
    QTimer.singleShot(int(timeout_s * 1000), loop.quit)
    loop.exec()
    timer.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bundle", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "assets", help="folder for the two screenshots")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dolphin-shot-"))
    bundle = args.bundle
    if bundle is None:
        from onnx_export.convert import convert

        bundle = convert(
            str(ROOT / "tests" / "fixtures" / "tiny-dolphin"), work / "bundle", precision="fp32", provider="cpu"
        )
    docs = work / "Books"
    shutil.copytree(ROOT / "benchmarks" / "data" / "kjv", docs)
    (docs / "scan.pdf").write_bytes(b"%PDF-1.4 damaged")
    save_settings(work / "data", Settings(bundle_path=str(bundle), greedy=True, max_new_tokens=40))
    app = QApplication.instance() or QApplication(sys.argv)
    window, controller = create_window(work / "data")
    window.resize(1400, 900)
    window.show()
    wait_until(lambda: controller.model_state == "ready")
    controller.add_folder(str(docs))
    wait_until(
        lambda: (
            controller.library is not None
            and controller.library.store.count_states()["pending"] == 0
            and controller.library.store.count_states()["ready"] >= 6
        )
    )
    controller.chats.rename(window.conversation_id, "Jonah and the fish")
    window._load_conversations(select=window.conversation_id)
    for question in (
        "How long was Jonah inside the great fish?",
        "And what did he do in there?",
        "Who went back to Bethlehem with Ruth?",
    ):
        window.ask(question)
        wait_until(lambda: window.worker is None)
    for (width, height), name in (((1400, 900), "screenshot.png"), ((800, 600), "screenshot-800x600.png")):
        window.resize(width, height)
        wait_until(lambda: False, timeout_s=1.5)
        window.grab().save(str(args.out / name))
        print(args.out / name)
    window.close()
    controller.shutdown()
    shutil.rmtree(work, ignore_errors=True)
    app.quit()


if __name__ == "__main__":
    main()
