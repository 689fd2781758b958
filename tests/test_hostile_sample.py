"""A sample of the hostile corpus, indexed by `dolphin-desk index` as the full run does
(benchmarks/hostile_corpus.py): real damaged PDFs from qpdf's test suite, mutations of them, and
the crafted files and file-system oddities (without the few hundred MB ones)."""

from __future__ import annotations

import shutil

from benchmarks.hostile_corpus import build, run
from tests.conftest import FIXTURES


def test_a_hostile_sample_ends_in_final_states_with_reasons(fp32_bundle, tmp_path, report) -> None:
    sources = tmp_path / "sources"
    shutil.copytree(FIXTURES / "hostile" / "qpdf", sources / "qpdf")
    corpus = tmp_path / "corpus"
    counts = build(corpus, [sources / "qpdf"], mutations=6, large=False)
    result = run(corpus, fp32_bundle, None)
    report(
        f"hostile sample: {result['documents']} documents, {result['states']}, peak RSS {result['peak_rss_mb']} MB, "
        f"slowest {result['slowest_files_s'][:1]}, {result['elapsed_s']} s"
    )
    assert counts["real"] == 15 and counts["total"] >= 75
    assert result["exit_status"] == 0, result["stderr_tail"]
    assert not result["hang"] and not result["undecided"]
    assert result["failed_or_skipped_without_reason"] == 0
    assert result["internal_errors"] == [], result["internal_errors"]
    assert result["changed_in_watched_folder"] == []
    assert result["log_tracebacks"] == 0
    assert result["peak_rss_mb"]["total"] < 1500
    assert result["slowest_files_s"][0][0] < 60
    documents = result["by_name"]
    assert "password-protected PDF" in result["reasons"]
    assert documents["tounicode-endoftext.pdf"]["state"] == "skipped"
    assert documents["tounicode-endoftext.pdf"]["error"] == "no text (only strings the model reserves)"
    assert documents["tounicode-surrogate.pdf"]["state"] == "ready"
    assert documents["V4-aes.pdf"]["state"] == "ready", "AES, no user password: opens without one"
    assert documents["reserved-only.txt"]["state"] == "skipped"
    assert "page could not be read" in documents["content-stream-errors.pdf"]["note"]
    assert "loops or nests too deeply" in documents["deep-pages.pdf"]["error"]
    assert documents["fifo.txt"]["error"] == "not a regular file"
    assert documents["outside-link.txt"]["error"] == "a link to a file outside this folder"
