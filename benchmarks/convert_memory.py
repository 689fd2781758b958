"""Peak memory of converting a checkpoint, split into private (anonymous) and file-backed pages.

`ru_maxrss` counts memory-mapped checkpoint pages as if they were private copies; they are not:
the kernel drops them under pressure and re-reads them. What a conversion really needs is its
anonymous memory, so this samples RssAnon and RssFile of the converter and all its children.

    python -m benchmarks.convert_memory CHECKPOINT OUT [converter args...]
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _tree(pid: int) -> list[int]:
    pids, stack = [], [pid]
    while stack:
        current = stack.pop()
        pids.append(current)
        stack.extend(_children(current))
    return pids


def _rss_kb(pid: int) -> tuple[int, int]:
    anon = file = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                anon = int(line.split()[1])
            elif line.startswith("RssFile:"):
                file = int(line.split()[1])
    except OSError:
        pass
    return anon, file


def measure(argv: list[str]) -> dict[str, float]:
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "onnx_export", *argv])
    peak_anon = peak_total = 0
    while process.poll() is None:
        samples = [_rss_kb(pid) for pid in _tree(process.pid)]
        peak_anon = max(peak_anon, sum(a for a, _ in samples))
        peak_total = max(peak_total, sum(a + f for a, f in samples))
        time.sleep(0.1)
    if process.returncode:
        raise SystemExit(process.returncode)
    return {
        "peak_private_mb": round(peak_anon / 1024),
        "peak_rss_including_mapped_files_mb": round(peak_total / 1024),
        "seconds": round(time.monotonic() - started, 1),
    }


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1:])))
