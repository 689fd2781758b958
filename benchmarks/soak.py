"""Soak: the real window for half an hour or more, indexing, idling, answering, watching changes.

The app is a long-lived process; a defect that costs one reference or one kilobyte per update
kills it only after minutes or hours, which no test of a few seconds sees (the 6.12.0 Qt binding
aborted an idle window after 12 minutes). The window runs in a child process exactly as
`dolphin-desk` starts it (log file, exception hooks, crash dialog), driven through a scenario that
repeats for the whole duration:

  a new chat -> add a folder of real text -> ask questions while it indexes -> idle -> edit, add
  and delete files (watcher events) -> a burst of questions -> every other round, remove the
  folder and add it again (the whole tree rebuilt)

Every 10 s the child reports RSS, open file descriptors, threads, the reference counts of None /
True / False, and the longest event-loop stall. The parent writes the samples and a verdict: the
child is alive at the end, and RSS, descriptors and threads are flat over the second half.

    python -m benchmarks.soak --bundle B [--minutes 30] [--json benchmarks/results/soak.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.kjv import KJV, QUESTIONS

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_S = 10.0


# child: the window ------------------------------------------------------------------------


def _rss_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def _make_corpus(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for book in sorted(KJV.glob("*.txt")):
        lines = book.read_text(encoding="utf-8").splitlines()
        for start in range(0, len(lines), 40):
            for copy in range(4):
                piece = "\n".join(lines[start : start + 40])
                (folder / f"{book.stem}-{start:04}-{copy}.txt").write_text(f"Copy {copy}.\n\n{piece}", encoding="utf-8")


def child(bundle: Path, minutes: float, work: Path) -> int:
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from app.logs import install_exception_hooks, setup_logging
    from app.settings import Settings, save_settings
    from app.ui.crash import CrashReporter
    from app.ui.main import create_window

    rng = random.Random(5)
    data = work / "data"
    folder = work / "Books"
    _make_corpus(folder)
    save_settings(data, Settings(bundle_path=str(bundle), greedy=True, max_new_tokens=48))
    app = QApplication([])
    log_file = setup_logging(data)
    install_exception_hooks()
    window, controller = create_window(data)
    reporter = CrashReporter(window, log_file)
    window.resize(1280, 800)
    window.show()
    started = time.monotonic()
    deadline = started + minutes * 60
    counters = {"answers": 0, "rounds": 0, "dialogs": 0, "max_stall_ms": 0.0, "edits": 0}
    last_tick = [time.monotonic()]

    def tick() -> None:
        now = time.monotonic()
        counters["max_stall_ms"] = max(counters["max_stall_ms"], (now - last_tick[0] - 0.02) * 1000)
        last_tick[0] = now

    ticker = QTimer()
    ticker.setInterval(20)
    ticker.timeout.connect(tick)
    ticker.start()

    def sample() -> None:
        library = controller.library
        counts = library.store.count_states() if library is not None else {}
        counters["dialogs"] = len(reporter.dialogs)
        record = {
            "t": round(time.monotonic() - started, 1),
            "rss_mb": round(_rss_mb(), 1),
            "fds": len(os.listdir("/proc/self/fd")),
            "threads": threading.active_count(),
            "refs": [sys.getrefcount(None), sys.getrefcount(True), sys.getrefcount(False)],
            "ready": counts.get("ready", 0),
            "pending": counts.get("pending", 0) + counts.get("indexing", 0),
            **counters,
        }
        counters["max_stall_ms"] = 0.0
        print(json.dumps(record), flush=True)

    sampler = QTimer()
    sampler.setInterval(int(SAMPLE_S * 1000))
    sampler.timeout.connect(sample)
    sampler.start()

    def ask() -> None:
        if window.worker is None and controller.library is not None:
            window.chat.composer.setPlainText(rng.choice(QUESTIONS))
            window.chat._send()
            counters["answers"] += 1

    def edit_files() -> None:
        files = sorted(folder.glob("*.txt"))
        for path in rng.sample(files, min(5, len(files))):
            with path.open("a", encoding="utf-8") as handle:
                handle.write(f"\nA note added in round {counters['rounds']}.\n")
        for i in range(3):
            (folder / f"new-{counters['rounds']}-{i}.txt").write_text(rng.choice(QUESTIONS) * 20, encoding="utf-8")
        for path in sorted(folder.glob("new-*.txt"))[:-6]:
            path.unlink()
        counters["edits"] += 1

    # One round is 4 minutes; events are (seconds into the round, action).
    def start_round() -> None:
        if time.monotonic() > deadline:
            finish()
            return
        counters["rounds"] += 1
        round_ = counters["rounds"]
        # A new chat each round, as a user starts one per topic: memory that grows with one
        # conversation's length is content, not a leak, and would hide one.
        window.new_conversation()
        if round_ == 1 or round_ % 2 == 0:
            controller.add_folder(str(folder))
        plan = [(5, ask), (20, ask), (35, ask), (110, edit_files), (140, ask), (150, ask), (160, ask), (170, ask)]
        if round_ % 2 == 1 and round_ > 1:
            plan.append((200, lambda: controller.remove_folder(str(folder))))
        for at, action in plan:
            QTimer.singleShot(at * 1000, action)
        QTimer.singleShot(240 * 1000, start_round)

    def finish() -> None:
        sample()
        window.close()
        app.quit()

    QTimer.singleShot(3000, start_round)
    QTimer.singleShot(int(minutes * 60 * 1000) + 5000, finish)
    code = app.exec()
    reporter.close()
    controller.shutdown()
    print(json.dumps({"finished": True, "t": round(time.monotonic() - started, 1)}), flush=True)
    return code


# parent: run and judge -----------------------------------------------------------------------


def _slope_per_hour(samples: list[dict], key: str) -> float:
    xs = [s["t"] / 3600 for s in samples]
    ys = [s[key] for s in samples]
    if len(xs) < 3:
        return 0.0
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    denominator = sum((x - mean_x) ** 2 for x in xs)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / denominator if denominator else 0.0


def judge(samples: list[dict], finished: bool, returncode: int, minutes: float) -> dict[str, object]:
    second_half = [s for s in samples if s["t"] >= samples[-1]["t"] / 2] if samples else []
    rss = [s["rss_mb"] for s in second_half]
    verdict = {
        "alive_to_the_end": finished and returncode == 0 and bool(samples) and samples[-1]["t"] >= minutes * 60 - 30,
        "exit_status": returncode,
        "minutes": round(samples[-1]["t"] / 60, 1) if samples else 0,
        "rounds": samples[-1]["rounds"] if samples else 0,
        "answers": samples[-1]["answers"] if samples else 0,
        "rss_mb_first_sample": samples[0]["rss_mb"] if samples else None,
        "rss_mb_second_half": {"min": min(rss), "max": max(rss), "median": statistics.median(rss)} if rss else None,
        "rss_slope_mb_per_hour_second_half": round(_slope_per_hour(second_half, "rss_mb"), 1),
        "fds_second_half": [min(s["fds"] for s in second_half), max(s["fds"] for s in second_half)] if rss else None,
        "threads_second_half": [min(s["threads"] for s in second_half), max(s["threads"] for s in second_half)]
        if rss
        else None,
        "refcount_change_none_true_false": [b - a for a, b in zip(samples[0]["refs"], samples[-1]["refs"], strict=True)]
        if samples
        else None,
        "max_stall_ms": max(s["max_stall_ms"] for s in samples) if samples else None,
        "error_dialogs": samples[-1]["dialogs"] if samples else None,
    }
    # Flat: under 20 MB/h of growth over the second half (a leak of one update's worth per tick
    # would show as hundreds), and no descriptors or threads piling up.
    verdict["flat"] = (
        bool(rss)
        and abs(verdict["rss_slope_mb_per_hour_second_half"]) < 20
        and (
            verdict["fds_second_half"][1] - verdict["fds_second_half"][0] < 20  # type: ignore[index]
        )
    )
    return verdict


def run(bundle: Path, minutes: float, platform: str) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="dolphin-soak-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "QT_QPA_PLATFORM": platform}
    command = [sys.executable, "-m", "benchmarks.soak", "--child", "--bundle", str(bundle), "--minutes", str(minutes)]
    process = subprocess.Popen(
        [*command, "--work", str(work)], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    samples: list[dict] = []
    finished = False
    assert process.stdout is not None
    for line in process.stdout:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("finished"):
            finished = True
        elif "rss_mb" in record:
            samples.append(record)
            line = f"t={record['t']:>7.0f}s rss={record['rss_mb']:.0f} MB fds={record['fds']}"
            line += f" threads={record['threads']} ready={record['ready']} answers={record['answers']}"
            print(f"  {line}", flush=True)
    stderr = process.stderr.read() if process.stderr else ""
    process.wait()
    result = {
        **judge(samples, finished, process.returncode, minutes),
        "platform": platform,
        "stderr_tail": stderr[-1500:],
        "samples": samples,
    }
    shutil.rmtree(work, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--platform", default=os.environ.get("QT_QPA_PLATFORM", "offscreen"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        raise SystemExit(child(args.bundle, args.minutes, args.work))
    result = run(args.bundle, args.minutes, args.platform)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))
    raise SystemExit(0 if result["alive_to_the_end"] and result["flat"] else 1)


if __name__ == "__main__":
    main()
