"""`dolphin-desk --version` and `--self-test`, as the packaged binary runs them (here from source)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
        check=False,
    )


def test_version() -> None:
    from app import __version__

    result = _run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"dolphin-desk {__version__}"


def test_self_test_passes_on_a_good_bundle_without_importing_torch(int4_bundle) -> None:
    result = _run("--self-test", str(int4_bundle))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    steps = (
        "load bundle",
        "encode a text",
        "answer a question",
        "document readers",
        "open the main window",
        "runtime imports",
    )
    for step in steps:
        assert any(line.startswith(f"ok   {step}") for line in lines), result.stdout
    assert lines[-1] == "self-test passed"


def test_self_test_fails_on_a_damaged_bundle(bundle_copy) -> None:
    (bundle_copy / "decoder" / "model.onnx").write_bytes(b"not an onnx model")
    result = _run("--self-test", str(bundle_copy))
    assert result.returncode == 1
    assert any(line.startswith("FAIL load bundle") for line in result.stdout.splitlines()), result.stdout
    assert "self-test FAILED" in result.stdout


def test_self_test_fails_on_a_missing_bundle(tmp_path) -> None:
    result = _run("--self-test", str(tmp_path / "nowhere"))
    assert result.returncode == 1
    assert "FAIL load bundle" in result.stdout
