"""`dolphin-desk index / status / ask` over a library, as scripts rely on them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from subprocess import CompletedProcess

import pytest

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
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"dolphin-desk: error: no library in {(tmp_path / 'none').resolve()}: "
        f"index a folder first with `dolphin-desk index FOLDER --data-dir {(tmp_path / 'none').resolve()}`"
    )


def test_ask_without_a_library_says_so_and_creates_nothing(fp32_bundle, tmp_path) -> None:
    """A mistyped --data-dir must not leave an empty library (and a log) behind."""
    empty = tmp_path / "empty"
    empty.mkdir()
    for data in (empty.resolve(), (tmp_path / "missing").resolve()):
        result = run_cli("ask", "--bundle", str(fp32_bundle), "--data-dir", str(data), "--question", "Who?")
        assert result.returncode == 1
        assert result.stderr.strip() == (
            f"dolphin-desk: error: no library in {data}: "
            f"index a folder first with `dolphin-desk index FOLDER --data-dir {data}`"
        )
        assert result.stdout == ""
    assert list(empty.iterdir()) == []
    assert not (tmp_path / "missing").exists()


def damaged_pdf(text: str) -> bytes:
    """A one-page PDF whose cross-reference offsets are all wrong: pypdf reads it, warning
    (through its logger) that it had to repair it."""
    content = f"BT /F1 12 Tf 72 712 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    pdf, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(pdf))
        pdf += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(pdf)
    pdf += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    pdf += b"".join(b"%010d 00000 n \n" % (offset + 7) for offset in offsets)
    return pdf + b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref + 3)


@pytest.fixture(scope="module")
def relative_library(fp32_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, CompletedProcess]:
    """`cd ROOT && dolphin-desk index docs --data-dir data`: a folder and a data folder given
    relative to the working directory; docs holds a damaged PDF that pypdf warns about."""
    root = tmp_path_factory.mktemp("relative")
    (root / "docs").mkdir()
    shutil.copy(KJV / "ruth.txt", root / "docs" / "ruth.txt")
    (root / "docs" / "damaged.pdf").write_bytes(damaged_pdf("The keeper of the lighthouse wrote a log."))
    indexed = run_cli("index", "docs", "--bundle", str(fp32_bundle), "--data-dir", "data", cwd=root)
    assert indexed.returncode == 0, indexed.stderr
    return root, indexed


def test_status_json_paths_are_absolute_when_given_relative(relative_library) -> None:
    root, _ = relative_library
    result = run_cli("status", "--data-dir", "data", "--json", cwd=root)
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["data_dir"] == str((root / "data").resolve())
    assert [f["path"] for f in status["folders"]] == [str((root / "docs").resolve())]
    paths = [Path(d["path"]) for d in status["documents"]]
    assert sorted(p.name for p in paths) == ["damaged.pdf", "ruth.txt"]
    assert all(p.is_absolute() and p.parent == (root / "docs").resolve() for p in paths)


def test_pypdf_warnings_go_to_the_log_not_the_terminal(relative_library) -> None:
    root, indexed = relative_library
    assert indexed.stderr == ""
    assert "pypdf" not in indexed.stdout
    log = (root / "data" / "logs" / "dolphin-desk.log").read_text(encoding="utf-8")
    assert "damaged.pdf: pypdf" in log and "startxref" in log


def test_index_reports_the_totals_of_its_own_folder(relative_library, fp32_bundle, tmp_path) -> None:
    root, _ = relative_library
    data = Path(shutil.copytree(root / "data", tmp_path / "data"))
    more = tmp_path / "more"
    more.mkdir()
    more = more.resolve()
    shutil.copy(KJV / "jonah.txt", more / "jonah.txt")
    (more / "broken.pdf").write_bytes(b"%PDF-1.4 nope")
    indexed = run_cli("index", str(more), "--bundle", str(fp32_bundle), "--data-dir", str(data))
    assert indexed.returncode == 0, indexed.stderr
    status = json.loads(run_cli("status", "--data-dir", str(data), "--json").stdout)
    assert len(status["folders"]) == 2 and len(status["documents"]) == 4  # the library holds docs too
    chunks = sum(d["chunks"] for d in status["documents"] if Path(d["path"]).parent == more)
    assert chunks > 0
    lines = indexed.stdout.splitlines()
    assert lines[0] == f"{more}: 1 ready, 1 failed, 0 skipped; {chunks} chunks"
    assert lines[1].startswith("this run: ") and len(lines) == 2


def test_status_into_a_closed_pipe_is_quiet(relative_library) -> None:
    """`dolphin-desk status | head -1`: the reader goes away; no "Broken pipe", no traceback.
    The read end is closed before the command writes, so every write meets a closed pipe."""
    root, _ = relative_library
    for extra in ((), ("--json",)):
        read, write = os.pipe()
        os.close(read)
        try:
            result = subprocess.run(
                [sys.executable, "-m", "app.cli", "status", "--data-dir", "data", *extra],
                stdout=write,
                stderr=subprocess.PIPE,
                text=True,
                cwd=root,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                check=False,
            )
        finally:
            os.close(write)
        assert result.stderr == ""
        assert result.returncode == 1


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


def test_ask_lists_each_source_with_its_sentence_and_no_escape_sequences(fp32_bundle, tmp_path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    shutil.copy(KJV / "jonah.txt", folder / "jonah.txt")
    (folder / "keeper.txt").write_text("The lighthouse keeper \x1b[2J\x1b[31mrowed out at dawn.\nThe sea was calm.\n")
    data = tmp_path / "data"
    assert run_cli("index", str(folder), "--bundle", str(fp32_bundle), "--data-dir", str(data)).returncode == 0
    question = "Who rowed out at dawn, the lighthouse keeper?"
    asked = run_cli("ask", "--data-dir", str(data), "--bundle", str(fp32_bundle), "--question", question,
                    "--max-new-tokens", "2", "--top-k", "5")  # fmt: skip
    assert asked.returncode == 0, asked.stderr
    lines = [line for line in asked.stderr.splitlines() if line.startswith("[")]
    assert any("keeper.txt — The lighthouse keeper" in line and "rowed out at dawn." in line for line in lines)
    assert "\x1b" not in asked.stderr + asked.stdout
