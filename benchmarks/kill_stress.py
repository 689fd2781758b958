"""kill -9 a real indexing process at random moments, again and again.

Each cycle starts a fresh library and runs `dolphin-desk index` on a folder of real text (the
KJV books in benchmarks/data, in many documents), killing it with SIGKILL after a random delay
until a run gets to finish on its own. After every kill: `PRAGMA integrity_check` must say ok,
and no chunk whose memory was already stored may be encoded again by a later run (the indexer
logs every encoded chunk's hash at DEBUG level; the memories table says what was stored). At
the end of each cycle the library must be complete: the same chunks and memories as an index
made without any kill.

    python -m benchmarks.kill_stress --bundle B [--kills 100] [--json benchmarks/results/kill-stress.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KJV = ROOT / "benchmarks" / "data" / "kjv"
CHUNK_TOKENS = 96  # small chunks: many memories per document, so kills land mid-document


def make_corpus(folder: Path, copies: int = 3) -> int:
    """Each KJV book, cut into pieces of ~40 lines, in `copies` slightly different copies."""
    folder.mkdir(parents=True, exist_ok=True)
    made = 0
    for book in sorted(KJV.glob("*.txt")):
        lines = book.read_text(encoding="utf-8").splitlines()
        for start in range(0, len(lines), 40):
            piece = "\n".join(lines[start : start + 40])
            for copy in range(copies):
                (folder / f"{book.stem}-{start:04}-{copy}.txt").write_text(f"Copy {copy}.\n\n{piece}", encoding="utf-8")
                made += 1
    return made


def _command(folder: Path, bundle: Path, data: Path) -> list[str]:
    return [
        sys.executable, "-m", "app.cli", "index", str(folder), "--bundle", str(bundle),
        "--data-dir", str(data), "--chunk-tokens", str(CHUNK_TOKENS),
    ]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "DOLPHIN_DESK_LOG_LEVEL": "DEBUG"}


def _stored(database: Path) -> tuple[str, set[str]]:
    db = sqlite3.connect(database)
    try:
        check = db.execute("PRAGMA integrity_check").fetchone()[0]
        return check, {row[0] for row in db.execute("SELECT text_hash FROM memories")}
    finally:
        db.close()


def _encoded_in_last_run(data: Path) -> list[str]:
    """Hashes the latest run logged as encoded (the log starts each run with 'log opened')."""
    log = (data / "logs" / "dolphin-desk.log").read_text(encoding="utf-8", errors="replace")
    last_run = log.rsplit("log opened", 1)[-1]
    return [line.rsplit("encoded ", 1)[1].strip() for line in last_run.splitlines() if " encoded " in line]


def _library(database: Path) -> tuple[dict[str, str], dict[str, bytes]]:
    db = sqlite3.connect(database)
    try:
        states = dict(db.execute("SELECT path, state FROM documents").fetchall())
        memories = dict(db.execute("SELECT text_hash, states FROM memories").fetchall())
        return states, memories
    finally:
        db.close()


def stress(bundle: Path, kills: int, work: Path, seed: int = 11, copies: int = 3) -> dict[str, object]:
    rng = random.Random(seed)
    folder = work / "docs"
    documents = make_corpus(folder, copies)
    reference_dir = work / "reference"
    started = time.monotonic()
    subprocess.run(_command(folder, bundle, reference_dir), env=_env(), cwd=ROOT, check=True, capture_output=True)
    full_run_s = time.monotonic() - started
    reference_states, reference_memories = _library(reference_dir / "library.sqlite3")
    done_kills = cycles = 0
    failures: list[str] = []
    kill_points: list[dict[str, object]] = []
    while done_kills < kills:
        cycles += 1
        data = work / f"cycle-{cycles}"
        stored_before: set[str] = set()
        while True:
            process = subprocess.Popen(
                _command(folder, bundle, data), env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            delay = rng.uniform(0.3, full_run_s * 0.8)
            try:
                process.wait(timeout=delay)
                killed = False
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGKILL)
                process.wait()
                killed = True
            _, stderr = process.communicate()
            if not (data / "library.sqlite3").exists():
                continue  # killed before the library was created: nothing to check
            check, stored = _stored(data / "library.sqlite3")
            encoded = _encoded_in_last_run(data) if (data / "logs" / "dolphin-desk.log").exists() else []
            again = set(encoded) & stored_before
            if check != "ok":
                failures.append(f"cycle {cycles}: integrity_check said {check!r}")
            if again:
                failures.append(f"cycle {cycles}: {len(again)} stored memories were encoded again")
            if not killed:
                if process.returncode != 0:
                    failures.append(f"cycle {cycles}: the finishing run exited {process.returncode}: {stderr[-300:]!r}")
                states, memories = _library(data / "library.sqlite3")
                if set(states.values()) != {"ready"} or len(states) != len(reference_states):
                    failures.append(f"cycle {cycles}: the library is incomplete: {sorted(set(states.values()))}")
                if memories != reference_memories:
                    failures.append(f"cycle {cycles}: memories differ from an index made without kills")
                break
            done_kills += 1
            kill_points.append({"cycle": cycles, "after_s": round(delay, 2), "memories_stored": len(stored)})
            stored_before = stored
            if done_kills >= kills and cycles > 0:
                # finish this cycle without killing, so its library is checked too
                subprocess.run(_command(folder, bundle, data), env=_env(), cwd=ROOT, capture_output=True)
                check, _ = _stored(data / "library.sqlite3")
                encoded = _encoded_in_last_run(data)
                if set(encoded) & stored_before:
                    failures.append(f"cycle {cycles}: stored memories were encoded again by the final run")
                states, memories = _library(data / "library.sqlite3")
                if set(states.values()) != {"ready"} or memories != reference_memories:
                    failures.append(f"cycle {cycles}: the final library differs from the reference")
                break
    return {
        "kills": done_kills,
        "cycles": cycles,
        "documents": documents,
        "memories": len(reference_memories),
        "full_run_s": round(full_run_s, 1),
        "failures": failures,
        "kill_points": kill_points,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dolphin-kill-") as work:
        result = stress(args.bundle, args.kills, Path(work))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    summary = {k: v for k, v in result.items() if k != "kill_points"}
    print(json.dumps(summary, indent=2))
    raise SystemExit(1 if result["failures"] else 0)


if __name__ == "__main__":
    main()
