"""`dolphin-desk` agrees with the window: it uses the settings the app saved in the data folder
(bundle, provider, threads, retrieval and answer settings), and a flag overrides one of them for
one run without changing the saved file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from app.settings import SETTINGS_NAME, Settings, load_settings, save_settings
from tests.conftest import ROOT, run_cli

KJV = ROOT / "benchmarks" / "data" / "kjv"
QUESTION = "In how many days would Nineveh be overthrown?"


@pytest.fixture(scope="module")
def saved_library(fp32_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data folder the app set up: a bundle chosen in its settings, a folder indexed, no flags."""
    root = tmp_path_factory.mktemp("saved")
    folder = root / "docs"
    folder.mkdir()
    for name in ("ruth.txt", "jonah.txt"):
        shutil.copy(KJV / name, folder / name)
    data = root / "data"
    save_settings(data, Settings(bundle_path=str(fp32_bundle), top_k=1, max_new_tokens=4, greedy=True, threads=1))
    indexed = run_cli("index", str(folder), "--data-dir", str(data))
    assert indexed.returncode == 0, indexed.stderr
    return data


def _ask(data: Path, *flags: str) -> dict:
    result = run_cli("ask", "--data-dir", str(data), "--question", QUESTION, "--json", *flags)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_ask_uses_the_saved_bundle_and_answer_settings(saved_library) -> None:
    answer = _ask(saved_library)
    assert len(answer["sources"]) == 1
    assert len(answer["token_ids"]) == 4 and answer["stop_reason"] == "max_tokens"


def test_flags_override_saved_settings_for_one_run(saved_library) -> None:
    before = (saved_library / SETTINGS_NAME).read_bytes()
    greedy = _ask(saved_library, "--top-k", "2", "--max-new-tokens", "6")
    assert len(greedy["sources"]) == 2 and len(greedy["token_ids"]) == 6
    sampled = _ask(
        saved_library, "--top-k", "2", "--max-new-tokens", "6", "--no-greedy", "--temperature", "5", "--seed", "1"
    )
    assert sampled["token_ids"] != greedy["token_ids"]  # --no-greedy overrides the saved greedy decoding
    assert (saved_library / SETTINGS_NAME).read_bytes() == before


def test_ask_with_context_files_uses_the_saved_threads_and_provider(fp32_bundle, tmp_path) -> None:
    context = tmp_path / "context.txt"
    context.write_text("The lighthouse keeper kept a log of every ship.", encoding="utf-8")
    data = tmp_path / "data"
    save_settings(data, Settings(bundle_path=str(fp32_bundle), threads=1, max_new_tokens=3, greedy=True))
    args = ("ask", "--data-dir", str(data), "--context-file", str(context), "--question", "Who?", "--json")
    saved = run_cli(*args)
    assert saved.returncode == 0, saved.stderr
    answer = json.loads(saved.stdout)
    assert answer["threads"] == 1 and len(answer["token_ids"]) == 3
    flagged = run_cli(*args, "--threads", "2", "--max-new-tokens", "2")
    assert flagged.returncode == 0, flagged.stderr
    assert json.loads(flagged.stdout)["threads"] == 2 and len(json.loads(flagged.stdout)["token_ids"]) == 2

    settings, _ = load_settings(data)
    settings.provider = "cuda"  # the tiny bundle was converted for the CPU
    save_settings(data, settings)
    refused = run_cli(*args)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1] == (
        "dolphin-desk: error: this bundle was converted for CPU, not CUDA: convert the model again with --provider cuda"
    )
    assert run_cli(*args, "--provider", "cpu").returncode == 0


def test_no_bundle_saved_or_given_is_one_clear_line(tmp_path) -> None:
    context = tmp_path / "context.txt"
    context.write_text("The lighthouse keeper kept a log of every ship.", encoding="utf-8")
    result = run_cli("ask", "--data-dir", str(tmp_path / "data"), "--context-file", str(context), "--question", "Who?")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "dolphin-desk: error: no model bundle: pass --bundle BUNDLE, or choose one in the app's settings"
    )


def test_bad_saved_settings_file_is_a_note_not_a_failure(saved_library, tmp_path) -> None:
    """As in the window: a damaged file is kept aside, defaults are used and the user is told."""
    data = Path(shutil.copytree(saved_library, tmp_path / "data"))
    bundle = load_settings(data)[0].bundle_path
    (data / SETTINGS_NAME).write_text("{not json", encoding="utf-8")
    result = run_cli(
        "ask", "--data-dir", str(data), "--bundle", bundle, "--question", QUESTION, "--json", "--max-new-tokens", "2"
    )
    assert result.returncode == 0, result.stderr
    assert "dolphin-desk: note: settings could not be read" in result.stderr
    assert (data / "settings.json.bad").exists()
    assert len(json.loads(result.stdout)["sources"]) > 1  # the built-in top-k, not the saved 1
