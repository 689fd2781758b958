"""`dolphin-desk encode` and `ask` as a user runs them, checked against the reference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from app.display_text import without_controls
from tests.conftest import run_cli


def _context_file(tmp_path: Path, text: str, name: str = "context.txt") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_encode_writes_the_reference_memory(fp32_bundle, reference, tmp_path) -> None:
    case = reference["cases"][1]
    out = tmp_path / "memory.npy"
    result = run_cli(
        "encode",
        "--bundle",
        str(fp32_bundle),
        "--context-file",
        str(_context_file(tmp_path, case["contexts"][0])),
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    memory = np.load(out)
    assert memory.dtype == np.float32 and memory.shape == (32, 64)
    np.testing.assert_allclose(memory, reference["arrays"]["case1_memory"], atol=1e-4, rtol=0)


def test_ask_json_reports_answer_ids_and_timings(fp32_bundle, reference, tmp_path) -> None:
    case = reference["cases"][0]
    result = run_cli(
        "ask",
        "--bundle",
        str(fp32_bundle),
        "--context-file",
        str(_context_file(tmp_path, case["contexts"][0])),
        "--question",
        case["question"],
        "--greedy",
        "--max-new-tokens",
        "16",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["token_ids"] == case["greedy_tokens"][:16]
    assert answer["stop_reason"] == "max_tokens"
    assert set(answer["timings"]) >= {"encode_s", "first_token_s", "decode_tokens_per_s"}
    assert answer["timings"]["decode_tokens_per_s"] > 0
    assert answer["memories"][0]["tokens"] == len(case["context_ids"]) - 32


def test_ask_streams_text_with_two_context_files(fp32_bundle, reference, tmp_path) -> None:
    first = _context_file(tmp_path, reference["cases"][0]["contexts"][0], "a.txt")
    second = _context_file(tmp_path, reference["cases"][1]["contexts"][0], "b.txt")
    args = [
        "ask",
        "--bundle",
        str(fp32_bundle),
        "--context-file",
        str(first),
        "--context-file",
        str(second),
        "--question",
        "What happened?",
        "--greedy",
        "--max-new-tokens",
        "12",
    ]
    streamed = run_cli(*args)
    as_json = run_cli(*args, "--json")
    assert streamed.returncode == 0 and as_json.returncode == 0, streamed.stderr + as_json.stderr
    answer = json.loads(as_json.stdout)
    assert answer["stats"]["memory_count"] == 2
    # The terminal gets the answer without control characters (app/display_text.py); JSON gets it all.
    assert streamed.stdout == without_controls(answer["answer"]) + "\n"
