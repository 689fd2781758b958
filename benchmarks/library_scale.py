"""Twenty thousand documents in the real window: the event loop stays responsive while they are
scanned, indexed and questions are answered, and the app is quiet once it is done.

    python -m benchmarks.library_scale --bundle B [--documents 20000] [--idle-s 60] [--json OUT] [--update-latest]

The documents are real public-domain text: the six KJV books in benchmarks/data, cut into
overlapping windows of 3 to 9 verses (every window a distinct document, a few hundred bytes
each, like a folder of notes). The window runs offscreen, as `dolphin-desk` starts it, with the
given bundle (the tiny test model is enough: what is measured is the app around the model).

Measured: the longest gap between two ticks of a 5 ms timer on the GUI thread (the longest
time the window could not react) from adding the folder until everything is indexed, with a
question asked every 20 s meanwhile; then, idle for `--idle-s` seconds: CPU time of the app
and its extraction child as a percentage of one core, and database commits seen by another
connection (`PRAGMA data_version`).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QEventLoop, QTimer
from PySide6.QtWidgets import QApplication

from app.settings import Settings, save_settings
from app.ui.main import create_window
from benchmarks.gui_stall import StallMeter, wait_until
from benchmarks.kjv import KJV, QUESTIONS

RESULTS = Path(__file__).resolve().parent / "results"


def make_documents(folder: Path, count: int) -> int:
    """`count` distinct documents of 3-9 consecutive verses, in folders of 500."""
    verses: list[tuple[str, str]] = []
    for book in sorted(KJV.glob("*.txt")):
        verses += [(book.stem, line) for line in book.read_text(encoding="utf-8").splitlines() if line.strip()]
    made = 0
    width = 3
    while made < count:
        for start in range(len(verses) - width):
            if made >= count:
                break
            window = verses[start : start + width]
            target = folder / f"part-{made // 500:03}" / f"{window[0][0]}-{start:05}-{width}.txt"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("\n".join(text for _, text in window) + "\n", encoding="utf-8")
            made += 1
        width += 1
    return made


def _cpu_s(pid: int | None) -> float:
    """User + system CPU seconds of this process, plus those of `pid` (the extraction child)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    total = own.ru_utime + own.ru_stime
    if pid:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            pass
    return total


def run_loop_for(seconds: float) -> None:
    """A real event loop (as the app runs), not a polling one."""
    loop = QEventLoop()
    QTimer.singleShot(int(seconds * 1000), loop.quit)
    loop.exec()


def measure(bundle: Path, documents: int, idle_s: float, work: Path) -> dict[str, object]:
    app = QApplication.instance() or QApplication(sys.argv)
    folder = work / "Notes"
    made = make_documents(folder, documents)
    data = work / "data"
    save_settings(data, Settings(bundle_path=str(bundle), greedy=True, max_new_tokens=32))
    window, controller = create_window(data)
    window.resize(1280, 800)
    window.show()
    try:
        wait_until(lambda: controller.model_state == "ready", 300)
        meter = StallMeter()
        meter.start()
        started = time.monotonic()
        controller.add_folder(str(folder))
        answered = 0
        next_question = time.monotonic() + 5

        def done() -> bool:
            progress = controller.progress
            return (
                progress is not None
                and progress.state == "idle"
                and progress.documents_total == made
                and progress.documents_done == made
                and controller.pump.pending == 0
            )

        while not done():
            if time.monotonic() > started + 3600:
                raise TimeoutError("indexing did not finish in an hour")
            if window.worker is None and time.monotonic() >= next_question:
                window.chat.composer.setPlainText(QUESTIONS[answered % len(QUESTIONS)])
                window.chat._send()
                answered += 1
                next_question = time.monotonic() + 20
            run_loop_for(0.05)
        wait_until(lambda: window.worker is None, 300)
        indexed_s = time.monotonic() - started
        meter.stop()
        shown = sum(len(window.folders.document_rows(r)) for r in range(len(window.folders.folder_rows())))
        library = controller.library
        assert library is not None
        watcher = sqlite3.connect(library.store.path)
        version = watcher.execute("PRAGMA data_version").fetchone()[0]
        child = library.indexer._extractor.child_pid
        run_loop_for(2)  # the last events and the watcher's debounce settle
        version = watcher.execute("PRAGMA data_version").fetchone()[0]
        cpu_before, wall_before = _cpu_s(child), time.monotonic()
        idle_meter = StallMeter()
        run_loop_for(idle_s)
        cpu = _cpu_s(child) - cpu_before
        wall = time.monotonic() - wall_before
        writes = watcher.execute("PRAGMA data_version").fetchone()[0] - version
        watcher.close()
        del idle_meter
    finally:
        window.close()
        controller.shutdown()
    del app
    return {
        "documents": made,
        "rows_shown": shown,
        "questions_answered_while_indexing": answered,
        "index_s": round(indexed_s, 1),
        "gui_stall_ms_20k_docs": round(meter.max_ms, 1),
        "p99_gui_stall_ms": round(meter.p99_ms, 1),
        "ticks": len(meter.gaps),
        "idle_s": round(wall, 1),
        "idle_cpu_percent": round(100 * cpu / wall, 2),
        "idle_db_writes": writes,
    }


def update_latest(result: dict[str, object]) -> None:
    path = RESULTS / "latest.json"
    latest = json.loads(path.read_text())
    latest["library_scale"] = result
    for key in ("gui_stall_ms_20k_docs", "idle_cpu_percent", "idle_db_writes"):
        latest["summary"][key] = result[key]
    targets = [t for t in latest["summary"].get("targets", []) if not t["target"].startswith("20k docs")]
    targets += [
        {"target": "20k docs: max GUI stall ms", "value": result["gui_stall_ms_20k_docs"], "goal": "<= 50",
         "met": result["gui_stall_ms_20k_docs"] <= 50},
        {"target": "20k docs: idle CPU %", "value": result["idle_cpu_percent"], "goal": "<= 1",
         "met": result["idle_cpu_percent"] <= 1},
        {"target": "20k docs: idle DB writes", "value": result["idle_db_writes"], "goal": "== 0",
         "met": result["idle_db_writes"] == 0},
    ]  # fmt: skip
    latest["summary"]["targets"] = targets
    path.write_text(json.dumps(latest, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.library_scale")
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--documents", type=int, default=20000)
    parser.add_argument("--idle-s", type=float, default=60.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--update-latest", action="store_true", help="record the figures in results/latest.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dolphin-scale-") as work:
        result = measure(args.bundle, args.documents, args.idle_s, Path(work))
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    if args.update_latest:
        update_latest(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
