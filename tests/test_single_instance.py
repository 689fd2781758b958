"""One library, one app: the lock in the data folder and the channel to the app that holds it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.instance import AlreadyRunning, InstanceLock, ask_running_app, is_locked
from app.library.states import DocumentState
from app.library.store import Store
from app.settings import Settings, save_settings
from tests.conftest import ROOT

KJV = ROOT / "benchmarks" / "data" / "kjv"


def _until(condition, timeout: float, what: str) -> None:
    """Wait on another process (no Qt event loop to wait on here)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_the_lock_is_exclusive_and_dies_with_its_process(tmp_path: Path) -> None:
    first = InstanceLock(tmp_path)
    info = first.acquire()
    assert info.pid == os.getpid() and is_locked(tmp_path)
    with pytest.raises(AlreadyRunning, match=f"process {os.getpid()}"):
        InstanceLock(tmp_path).acquire()
    first.release()
    assert not is_locked(tmp_path)
    # A holder killed outright leaves no stale lock: the OS drops it with the process.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from app.instance import InstanceLock;"
         f"InstanceLock(Path({str(tmp_path)!r})).acquire(); print('held', flush=True); time.sleep(60)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    assert is_locked(tmp_path)
    holder.kill()
    holder.wait()
    InstanceLock(tmp_path).acquire()


def test_a_second_app_on_the_library_hands_over_to_the_first(fp32_bundle: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    save_settings(data, Settings(bundle_path=str(fp32_bundle)))
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    command = [sys.executable, "-m", "app", "gui", "--data-dir", str(data)]
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _until(lambda: (ask_running_app(data, {"op": "show"}) or {}).get("ok"), 60, "the first app's channel")
        second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert second.returncode == 0
        assert "already running" in second.stderr and "brought its window to the front" in second.stderr
        # `index` on a running app's library hands the folder over: the app indexes and watches it.
        folder = tmp_path / "books"
        folder.mkdir()
        shutil.copy(KJV / "jonah.txt", folder / "jonah.txt")
        indexed = subprocess.run(
            [sys.executable, "-m", "app", "index", str(folder), "--data-dir", str(data)],
            cwd=ROOT, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert indexed.returncode == 0, indexed.stderr
        assert f"the open Dolphin Desk window indexes and watches {folder}" in indexed.stderr
        assert f"{folder}: 1 ready, 0 failed, 0 skipped" in indexed.stdout
        store = Store(data)

        def ready(name: str) -> bool:
            return any(d.path.name == name and d.state == DocumentState.READY for d in store.documents())

        _until(lambda: ready("jonah.txt"), 120, "the handed-over folder to be indexed")
        shutil.copy(KJV / "ruth.txt", folder / "ruth.txt")
        _until(lambda: ready("ruth.txt"), 120, "the running app's watcher to index a new file")
        store.close()
    finally:
        first.terminate()
        first.wait(timeout=60)
    assert not is_locked(data)
