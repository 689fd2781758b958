"""The longest GUI event-loop stall while the app indexes and answers at once.

    python -m benchmarks.gui_stall --bundle B [--questions 3]

Runs the real window offscreen on a fresh data dir, adds the KJV folder (so the indexer encodes
in the background), asks questions while it does, and times a 5 ms QTimer: any gap between two
ticks is time the GUI thread could not run. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QCoreApplication, QTimer
from PySide6.QtWidgets import QApplication

from app.settings import Settings, save_settings
from app.ui.main import create_window

KJV = Path(__file__).resolve().parent / "data" / "kjv"
QUESTIONS = ("Who was Ruth?", "What did Jonah do?", "Why was Vashti removed?", "Who was Esther?")


class StallMeter:
    """A 5 ms QTimer on the GUI thread: any longer gap between two ticks is time the event loop
    could not run. Also used by tests/test_ui.py."""

    def __init__(self) -> None:
        self.gaps: list[float] = []
        self._last = time.perf_counter()
        self._timer = QTimer()
        self._timer.setInterval(5)
        self._timer.timeout.connect(self._tick)

    def _tick(self) -> None:
        now = time.perf_counter()
        self.gaps.append(now - self._last)
        self._last = now

    def start(self) -> None:
        self._last = time.perf_counter()
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()

    @property
    def max_ms(self) -> float:
        return max(self.gaps) * 1000

    @property
    def p99_ms(self) -> float:
        return sorted(self.gaps)[int(len(self.gaps) * 0.99)] * 1000


def wait_until(condition: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark step did not finish in time")
        QCoreApplication.processEvents()
        time.sleep(0.001)


def measure(bundle: Path, questions: int, answer_tokens: int) -> dict[str, float | int]:
    app = QApplication.instance() or QApplication(sys.argv)
    with tempfile.TemporaryDirectory() as data_dir:
        save_settings(Path(data_dir), Settings(bundle_path=str(bundle), max_new_tokens=answer_tokens))
        window, controller = create_window(Path(data_dir))
        window.show()
        try:
            wait_until(lambda: controller.model_state == "ready", 300)
            meter = StallMeter()
            progress = []
            controller.index_progress.connect(progress.append)
            controller.add_folder(str(KJV))
            meter.start()
            wait_until(lambda: bool(progress) and progress[-1].state == "indexing", 120)
            for question in QUESTIONS[:questions]:
                window.ask(question)
                wait_until(lambda: window.worker is None, 600)
            meter.stop()
            chunks = progress[-1].encoded if progress else 0
        finally:
            window.close()
            controller.shutdown()
    del app
    return {
        "max_gui_stall_ms": meter.max_ms,
        "p99_gui_stall_ms": meter.p99_ms,
        "ticks": len(meter.gaps),
        "questions": questions,
        "chunks_encoded_meanwhile": chunks,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gui_stall")
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--questions", type=int, default=3)
    parser.add_argument("--answer-tokens", type=int, default=64)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.bundle, args.questions, args.answer_tokens)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
