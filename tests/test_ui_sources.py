"""Sources under an answer: where the file is, why it was cited, and opening it (at its page)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from PySide6.QtWidgets import QApplication

from app.chats import Message
from app.library.excerpts import matching_sentence
from app.ui.chat import ChatPanel
from app.ui.open_file import Opened, open_document
from tests.conftest import FIXTURES


def _script(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _answer(panel: ChatPanel, sources: list[dict]):
    panel.transcript.add(Message("user", "Where?"))
    view = panel.begin_answer()
    panel.finish_answer("There.", sources, {})
    return view


def test_a_source_shows_its_path_in_the_folder_the_sentence_and_the_full_path(qtbot, tmp_path) -> None:
    folder = tmp_path / "Docs"
    (folder / "guide").mkdir(parents=True)
    install = folder / "guide" / "index.html"
    install.write_text("x")
    gone = folder / "old.txt"
    panel = ChatPanel()
    qtbot.addWidget(panel)
    view = _answer(panel, [
        {"path": str(install), "folder": str(folder), "page": None, "text": "Navigation. Install it with pip.",
         "excerpt": "Install it with pip."},
        {"path": str(gone), "folder": str(folder), "page": 4, "text": "Old notes."},
    ])  # fmt: skip
    first, second = view.source_labels()
    assert "[1] guide/index.html</a>" in first.text() and "— Install it with pip." in first.text()
    assert first.toolTip() == str(install)
    assert "[2] old.txt, page 4</a>" in second.text() and "(not available)" in second.text()
    assert second.toolTip().startswith(f"{gone}, page 4\nNot available")
    with qtbot.waitSignal(panel.source_activated) as opened:
        second.linkActivated.emit("source:2")
    assert opened.args == [str(gone), 4]


def test_the_matched_sentence_is_found_by_meaning(hybrid_model) -> None:
    text = (FIXTURES / "landmarks" / "bell-rock.txt").read_text()
    # No word in common with the sentence that answers: the embedder finds it, word overlap cannot.
    for question, answer in (
        ("Who designed and erected it?", "built between 1807 and 1810 by the engineer Robert Stevenson"),
        ("How often is the reef under water?", "The reef is covered by the tide twice a day"),
    ):
        assert answer in matching_sentence(question, text, hybrid_model.embedder)
        assert answer not in matching_sentence(question, text)
    # Without an embedder, the sentence that shares most of the question's words.
    assert "built between 1807" in matching_sentence("Which engineer built the lighthouse?", text)


def test_a_pdf_opens_at_the_cited_page_where_the_viewer_takes_one(qtbot, tmp_path, monkeypatch) -> None:
    QApplication.instance()
    tools = tmp_path / "bin"
    tools.mkdir()
    calls = tmp_path / "calls.txt"
    _script(tools, "xdg-mime", 'echo "org.gnome.Evince.desktop"')
    _script(tools, "evince", f'echo "$@" >> "{calls}"')
    monkeypatch.setenv("PATH", f"{tools}{os.pathsep}{os.environ['PATH']}")
    pdf = tmp_path / "manual.pdf"
    pdf.write_bytes(b"%PDF-1.4\n")
    result = open_document(pdf, 7)
    assert result.outcome == Opened.AT_PAGE and result.message == ""
    qtbot.waitUntil(calls.exists, timeout=5000)
    assert calls.read_text().split() == ["--page-index=7", str(pdf)]


@pytest.mark.qt_log_ignore("does not support QPlatformServices::openDocument")  # Qt's own "no opener"
def test_a_missing_file_or_one_nothing_opens_is_said_in_the_window(qtbot, tmp_path, monkeypatch) -> None:
    from app.ui.main_window import MainWindow

    assert open_document(tmp_path / "gone.txt").outcome == Opened.MISSING
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no xdg-open, no viewer: nothing can open it
    odd = tmp_path / "notes.xyz"
    odd.write_text("x")
    result = open_document(odd)
    assert result.outcome == Opened.NO_APPLICATION and "No application is set up to open .xyz files" in result.message
    banner = ChatPanel()
    qtbot.addWidget(banner)
    window = MainWindow.__new__(MainWindow)  # only open_source's reporting is exercised here
    window.chat = banner
    MainWindow.open_source(window, str(tmp_path / "gone.txt"), 0)
    assert "is not available" in banner.banner.text() and banner.banner.isVisibleTo(banner)


def test_a_heading_is_not_taken_for_the_matched_sentence() -> None:
    text = "Chapter 1\n\nJonah1:17 Now the LORD had prepared a great fish to swallow up Jonah. And then he prayed."
    assert matching_sentence("Chapter about the fish", text).startswith("Jonah1:17 Now the LORD")
