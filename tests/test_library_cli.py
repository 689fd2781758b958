"""`dolphin-desk index / status / ask` over a library, as scripts rely on them."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

from app.library.events import IndexProgress
from tests.conftest import ROOT, run_cli, wait_for

KJV = ROOT / "benchmarks" / "data" / "kjv"


def test_index_status_and_ask_with_sources(fp32_bundle, tmp_path) -> None:
    folder = tmp_path / "library docs"
    folder.mkdir()
    for name in ("ruth.txt", "jonah.txt"):
        shutil.copy(KJV / name, folder / name)
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4 nope")
    data = tmp_path / "data"
    indexed = run_cli("index", str(folder), "--bundle", str(fp32_bundle), "--data-dir", str(data))
    assert indexed.returncode == 0, indexed.stderr
    assert "2 ready, 1 failed, 0 skipped" in indexed.stdout

    status = run_cli("status", "--data-dir", str(data), "--json")
    assert status.returncode == 0, status.stderr
    documents = {Path(d["path"]).name: d for d in json.loads(status.stdout)["documents"]}
    assert set(documents["ruth.txt"]) >= {"path", "state", "chunks", "error"}
    assert documents["ruth.txt"]["state"] == "ready" and documents["ruth.txt"]["error"] is None
    assert documents["broken.pdf"]["state"] == "failed" and "PDF" in documents["broken.pdf"]["error"]

    text = run_cli("status", "--data-dir", str(data))
    assert "failed" in text.stdout and "broken.pdf" in text.stdout

    asked = run_cli(
        "ask",
        "--bundle",
        str(fp32_bundle),
        "--data-dir",
        str(data),
        "--question",
        "In how many days would Nineveh be overthrown?",
        "--json",
        "--max-new-tokens",
        "8",
        "--greedy",
    )
    assert asked.returncode == 0, asked.stderr
    answer = json.loads(asked.stdout)
    assert len(answer["token_ids"]) == 8
    sources = answer["sources"]
    assert 1 <= len(sources) <= 3
    assert Path(sources[0]["path"]).name == "jonah.txt"
    assert "Jonah3:4" in sources[0]["text"]
    original = (folder / "jonah.txt").read_text()
    assert original[sources[0]["char_start"] : sources[0]["char_end"]] == sources[0]["text"]
    assert answer["stats"]["memory_count"] == len(sources)


def test_status_without_a_library_is_a_clear_error(tmp_path) -> None:
    result = run_cli("status", "--data-dir", str(tmp_path / "none"))
    assert result.returncode == 1 and "no library here yet" in result.stderr


def test_retrieval_recall_on_public_domain_text(fp32_model, report) -> None:
    """Recall@k on the KJV QA set (benchmarks/data); chunk size in tiny-tokenizer tokens that
    match the real tokenizer's ~300 words per 384-token chunk."""
    from benchmarks.retrieval_recall import measure

    result = measure(fp32_model.manifest.root, chunk_tokens=1024)
    recall = result["recall_at_k"]
    report(f"retrieval recall@1/2/3 on {result['questions']} KJV questions: {recall['1']}/{recall['2']}/{recall['3']}")
    assert recall["3"] >= 0.9


def test_pause_resume_and_answering_hold_the_indexer(make_library, tmp_path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    for name in ("ruth.txt", "jonah.txt", "esther.txt"):
        shutil.copy(KJV / name, folder / name)
    library = make_library(chunk_tokens=64)
    library.indexer.pause()
    library.start()
    library.add_folder(folder)
    assert not library.indexer.wait_idle(0.5)
    assert library.indexer.encoded == 0
    with library.indexer.answering():
        library.indexer.resume()
        assert not library.indexer.wait_idle(0.5)
        assert library.indexer.encoded <= 1
    assert library.index_until_done(timeout=120)
    assert library.store.count_states()["ready"] == 3


def test_changed_files_are_indexed_before_the_backlog(make_library, tmp_path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    for index in range(12):
        (folder / f"backlog{index:02d}.txt").write_text(f"backlog document {index} " * 50)
    library = make_library()
    order: list[str] = []
    done = threading.Event()

    def record(progress) -> None:
        if progress.current_file and (not order or order[-1] != progress.current_file):
            order.append(Path(progress.current_file).name)
        if progress.state == "idle" and order:
            done.set()

    library.subscribe(lambda event: record(event) if isinstance(event, IndexProgress) else None)
    library.indexer.pause()
    library.start(watch=True)
    library.add_folder(folder)
    (folder / "urgent.txt").write_text("the user just saved this")
    wait_for(lambda: library.store.document(folder / "urgent.txt") is not None)
    library.indexer.resume()
    assert done.wait(60)
    assert order[0] == "urgent.txt"
