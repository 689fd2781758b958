"""Indexing real files of every supported kind, with the include/exclude rules."""

from __future__ import annotations

import os
from pathlib import Path

import docx
import numpy as np
from fpdf import FPDF

from app.library.store import Store

KJV = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "kjv"


def make_pdf(path: Path, pages: list[str], password: str | None = None) -> None:
    pdf = FPDF()
    pdf.set_font("helvetica", size=11)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 5, text)
    if password:
        pdf.set_encryption(owner_password="owner", user_password=password)
    pdf.output(str(path))


def make_docx(path: Path, paragraphs: list[str]) -> None:
    document = docx.Document()
    for text in paragraphs:
        document.add_paragraph(text)
    table = document.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text = "keeper"
    table.rows[0].cells[1].text = "lantern"
    document.save(str(path))


def by_name(status: dict) -> dict[str, dict]:
    return {Path(d["path"]).name: d for d in status["documents"]}


def test_every_kind_is_indexed_with_pages_and_exclusions(make_library, tmp_path) -> None:
    folder = tmp_path / "My Files"
    (folder / "notes").mkdir(parents=True)
    (folder / ".git").mkdir()
    (folder / "node_modules" / "pkg").mkdir(parents=True)
    (folder / "build").mkdir()
    (folder / "notes" / "ruth.md").write_text((KJV / "ruth.txt").read_text(), encoding="utf-8")
    (folder / "page.html").write_text(
        "<html><head><style>p{}</style><script>var x=1</script></head>"
        "<body><h1>Lighthouse</h1><p>The keeper climbed the tower.</p></body></html>"
    )
    (folder / "code.py").write_text("def keeper():\n    return 'lantern'\n")
    make_pdf(folder / "log.pdf", ["The first page is about the lamp.", "The second page is about the winter storm."])
    make_docx(folder / "letter.docx", ["Dear keeper,", "The winter was long."])
    (folder / ".git" / "config").write_text("[core]")
    (folder / "node_modules" / "pkg" / "index.js").write_text("module.exports = 1")
    (folder / "build" / "out.txt").write_text("generated")
    (folder / "ignored.log").write_text("secret log")
    (folder / ".gitignore").write_text("*.log\n")
    (folder / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0 not indexed")

    library = make_library()
    library.add_folder(folder)
    library.start()
    assert library.index_until_done(timeout=120)
    listed = by_name(library.status())
    # What is left out is listed with its reason (an excluded directory as one entry), unread.
    left_out = {name: d["error"] for name, d in listed.items() if d["state"] == "skipped"}
    assert left_out == {
        ".git": "excluded by pattern .* (1 file)",
        "node_modules": "excluded by pattern node_modules (1 file)",
        "build": "excluded by pattern build (1 file)",
        "ignored.log": "excluded by pattern *.log in .gitignore",
        ".gitignore": "excluded by pattern .*",
    }
    assert all(listed[name]["chunks"] == 0 for name in left_out)
    # An image is a document now (read by OCR); this one is damaged, and says so.
    assert listed["photo.jpg"]["state"] == "failed" and "not a readable image" in listed["photo.jpg"]["error"]
    documents = {name: d for name, d in listed.items() if name not in left_out and name != "photo.jpg"}
    assert set(documents) == {"ruth.md", "page.html", "code.py", "log.pdf", "letter.docx"}
    assert all(d["state"] == "ready" and d["chunks"] >= 1 and d["error"] is None for d in documents.values())
    assert documents["ruth.md"]["chunks"] > 5

    pdf_chunks = library.retrieve("winter storm", k=5)
    pdf_hits = [c for c in pdf_chunks if c.document_path.name == "log.pdf"]
    assert pdf_hits and pdf_hits[0].page == 2
    html = library.retrieve("keeper climbed tower", k=5)
    html_text = next(c.text for c in html if c.document_path.name == "page.html")
    assert "var x" not in html_text and "Lighthouse" in html_text
    docx_text = next(c.text for c in library.retrieve("lantern keeper", k=5) if c.document_path.name == "letter.docx")
    assert "keeper | lantern" in docx_text


def test_chunks_keep_spans_into_the_text(make_library, tmp_path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    text = (KJV / "jonah.txt").read_text()
    (folder / "jonah.txt").write_text(text, encoding="utf-8")
    library = make_library(chunk_tokens=120)
    library.add_folder(folder)
    library.start()
    library.index_until_done(timeout=60)
    store: Store = library.store
    rows = store._query("SELECT text, char_start, char_end, token_count FROM chunks ORDER BY ordinal")
    assert len(rows) > 5
    for row in rows:
        assert text[row["char_start"] : row["char_end"]] == row["text"]
        assert row["token_count"] <= 120
    assert rows[0]["char_start"] == 0


def test_memories_are_compact_and_match_the_model(make_library, fp32_model, tmp_path, report) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("The keeper kept a log of every ship that passed.", encoding="utf-8")
    library = make_library()
    library.add_folder(folder)
    library.start()
    library.index_until_done(timeout=60)
    chunk = library.retrieve("keeper log ship", k=1)[0]
    states, _ = library.store.get_memory(chunk.text_hash, fp32_model.encoder_identity)
    fresh = fp32_model.encode(chunk.text).states
    np.testing.assert_allclose(states, fresh, atol=2e-3 * np.abs(fresh).max())
    stats = library.store.memory_stats()
    hidden = fp32_model.manifest.encoder.hidden_size
    assert stats["bytes_per_memory"] == 32 * hidden * 2
    report(
        f"stored memory: {stats['bytes_per_memory']:.0f} B per chunk for a {hidden}-wide encoder; "
        f"{32 * 896 * 2:,} B for the real 896-wide encoder (fp16, budget 61,440 B)"
    )


def test_include_and_exclude_are_per_folder(make_library, tmp_path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    for folder in (first, second):
        folder.mkdir()
        (folder / "a.txt").write_text("alpha text")
        (folder / "b.md").write_text("beta text")
    library = make_library()
    library.add_folder(first, include=["*.md"])
    library.add_folder(second, exclude=["b.*"])
    library.start()
    library.index_until_done(timeout=60)
    paths = {
        Path(d["path"]).relative_to(tmp_path).as_posix() for d in library.status()["documents"] if d["state"] == "ready"
    }
    assert paths == {"first/b.md", "second/a.txt"}
    reasons = {Path(d["path"]).name: d["error"] for d in library.status()["documents"] if d["state"] == "skipped"}
    assert reasons == {
        "a.txt": "not a document type (no include pattern matches it)",
        "b.md": "excluded by pattern b.*",
    }


def test_data_dir_is_never_inside_a_watched_folder(make_library, tmp_path) -> None:
    import pytest

    from app.library.library import LibraryError

    library = make_library(data_dir=tmp_path / "docs" / "data")
    with pytest.raises(LibraryError, match="contains the app's data folder"):
        library.add_folder(tmp_path / "docs")
    assert not (tmp_path / "other").exists()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "a.txt").write_text("hello there")
    library.add_folder(tmp_path / "other")
    library.start()
    library.index_until_done(timeout=60)
    assert sorted(os.listdir(tmp_path / "other")) == ["a.txt"]
