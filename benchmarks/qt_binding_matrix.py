"""Which Qt binding and which Python the app can run on: the refcount drive of the test suite
(tests/refcount_drive.py, real widgets, thousands of updates) under several interpreters.

PySide6-Essentials 6.12.0 loses a reference to None, True or False on every void- or
bool-returning call on CPython 3.11, and the process aborts; from CPython 3.12 on those objects
are immortal (PEP 683), so the same defect cannot free them. This records the evidence behind the
pin in pyproject.toml and the choice of Python for the packaged app.

    python -m benchmarks.qt_binding_matrix PYTHON [PYTHON ...] [--rounds 1200] [--json OUT]

Each PYTHON is an interpreter of a virtual environment with the app installed (`pip install -e .`,
then, to test another binding, `pip install --no-deps PySide6-Essentials==X shiboken6==X`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def probe(python: str, rounds: int) -> dict[str, object]:
    versions = subprocess.run(
        [python, "-c", "import sys, PySide6; print(sys.version.split()[0], PySide6.__version__)"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    with tempfile.TemporaryDirectory() as data:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "QT_QPA_PLATFORM": "offscreen"}
        result = subprocess.run(
            [python, "-m", "tests.refcount_drive", data, str(rounds)],
            capture_output=True, text=True, cwd=ROOT, env=env, check=False, timeout=1800,
        )  # fmt: skip
    fatal = next((line for line in result.stderr.splitlines() if line.startswith("Fatal Python error")), None)
    measured = json.loads(result.stdout.splitlines()[-1]) if result.returncode == 0 and result.stdout else {}
    return {
        "python": versions[0],
        "pyside6": versions[1],
        "rounds": rounds,
        "survived": result.returncode == 0,
        "exit_status": result.returncode,
        "fatal_error": fatal,
        "updates": measured.get("updates"),
        "refcount_drift_none_true_false": measured.get("drift"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pythons", nargs="+")
    parser.add_argument("--rounds", type=int, default=1200)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = [probe(python, args.rounds) for python in args.pythons]
    for row in rows:
        print(json.dumps(row))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
