"""`python -m benchmarks --quick` runs end to end and writes valid results. Timings are not
asserted: they are measured and committed by the benchmark itself, never tested."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT

SUMMARY_KEYS = (
    "ttft_ratio_full_vs_persisted_2048",
    "cpu_ratio_full_vs_persisted_2048",
    "ttft_ratio_rag_vs_persisted",
    "encoder_fraction_of_peak",
    "encoder_fraction_of_int8_peak",
    "max_gui_stall_ms",
    "bytes_per_memory",
)


def test_quick_benchmark_writes_valid_results(tmp_path, report) -> None:
    out, cache = tmp_path / "results", tmp_path / "cache"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out), "--cache", str(cache)],
        capture_output=True, text=True, cwd=ROOT, timeout=1200, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    data = json.loads((out / "quick.json").read_text())
    assert data["mode"] == "quick"
    assert data["machine"]["cores"] and data["machine"]["libraries"]["onnxruntime"]
    rows = data["runs"][0]["rows"]
    assert {(r["n_tokens"], r["method"]) for r in rows} == {
        (n, m) for n in (512, 2048) for m in ("a_full", "b_rag", "c_encode", "d_persisted")
    }
    for row in rows:
        assert row["ttft_s"] > 0 and row["total_s"] >= row["ttft_s"] and row["cpu_s"] > 0
        assert row["peak_rss_mb"] > 0 and row["decode_tokens_per_s"] > 0
    by = {(r["n_tokens"], r["method"]): r for r in rows}
    assert by[(2048, "d_persisted")]["prompt_positions"] < by[(2048, "a_full")]["prompt_positions"]
    for key in SUMMARY_KEYS:
        assert isinstance(data["summary"][key], (int, float)), key
    assert data["summary"]["bytes_per_memory"] == 32 * 896 * 2
    markdown = (out / "quick.md").read_text()
    assert "| qwen2-0.5b | 2048 | d_persisted |" in markdown and "quick.png" in markdown
    assert (out / "quick.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "partial.json").exists(), "a finished run leaves no partial results behind"
    report("quick benchmark summary: " + json.dumps({k: data["summary"][k] for k in SUMMARY_KEYS}))
