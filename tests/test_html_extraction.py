"""HTML is indexed without its navigation, with its headings (issue 16, item 2).

Checked on real pages (tests/fixtures/html, see its README): a Sphinx page, whose chrome ("Navigation",
"Previous topic", the sidebar, the footer) used to be the top hit for 13% of the FAQ questions, and
an SQLite page without any main landmark, where trafilatura judges what the content is.
"""

from __future__ import annotations

from pathlib import Path

import lxml.html
import pytest

from app.library.chunking import chunk_segments
from app.library.extract import extract
from app.library.extractor import Extractor
from app.library.states import DocumentState
from tests.conftest import FIXTURES

SPHINX = FIXTURES / "html" / "jinja-faq.html"
SQLITE = FIXTURES / "html" / "sqlite-gencol.html"


def text_of(path: Path) -> str:
    segments = extract(path).segments
    assert len(segments) == 1
    return segments[0].text


def squeezed(text: str) -> str:
    return " ".join(text.split())


def paragraphs(path: Path, xpath: str) -> list[str]:
    """The page's own paragraphs, list items and code, read with lxml apart from the module."""
    tree = lxml.html.parse(str(path))
    return [squeezed(e.text_content()) for e in tree.xpath(xpath) if e.text_content().strip()]


def test_a_sphinx_page_is_read_without_its_navigation_sidebar_and_footer() -> None:
    text = text_of(SPHINX)
    lines = set(text.splitlines())
    for chrome in ("Navigation", "Contents", "Quick search", "index", "modules |", "next |", "previous |"):
        assert chrome not in lines, chrome
    for chrome in ("Tips and Tricks", "BSD-3-Clause License", "Jinja Documentation (3.1.x)", "Overview"):
        assert chrome not in text, chrome  # the related bar's and the sidebar's links
    assert "Created using" not in text and "Copyright 2025 Pallets" not in text  # the footer
    assert "¶" not in text  # the headings' permalinks


def test_a_sphinx_page_keeps_every_paragraph_and_each_heading_above_its_text() -> None:
    text = text_of(SPHINX)
    flat = squeezed(text)
    main = paragraphs(SPHINX, "//div[@role='main']//p")
    assert len(main) == 10
    for paragraph in main:
        assert paragraph in flat, paragraph
    headings = [h.replace("¶", "") for h in paragraphs(SPHINX, "//div[@role='main']//*[self::h1 or self::h2]")]
    assert headings[0] == "Frequently Asked Questions" and len(headings) == 5
    assert all(h in text.splitlines() for h in headings)
    assert text.startswith("Frequently Asked Questions\nWhy is it called Jinja?\n“Jinja” is a Japanese Shinto shrine")
    assert "\nHow fast is Jinja?\nJinja is relatively fast among template engines" in text


def test_a_page_without_a_main_landmark_is_read_without_its_menu_and_table_of_contents() -> None:
    text = text_of(SQLITE)
    lines = set(text.splitlines())
    for menu in ("Home", "Menu", "About", "Documentation", "Download", "License", "Support", "Purchase", "Search"):
        assert menu not in lines, menu
    assert "Small. Fast. Reliable." not in text and "Choose any three." not in text  # the tagline
    assert "Table Of Contents" not in text
    assert "1. Introduction\n2. Syntax" not in text  # the table of contents' links
    assert "toggle_toc" not in text and "antiRobot" not in text  # scripts


def test_a_page_without_a_main_landmark_keeps_its_text_code_lists_and_headings() -> None:
    text = text_of(SQLITE)
    flat = squeezed(text)
    body = "//body//*[self::p or self::li][not(ancestor::div[@class='nosearch'])][not(.//i)]"
    content = paragraphs(SQLITE, body)
    assert len(content) >= 25
    for paragraph in content:
        assert paragraph in flat, paragraph
    for heading in ("1. Introduction", "2. Syntax", "2.1. VIRTUAL versus STORED columns", "2.3. Limitations"):
        assert heading in text.splitlines(), heading
    assert "\n2. Syntax\nSyntactically, generated columns are designated" in text
    assert text.startswith("Generated Columns\n")  # the page's title
    # code as written: its lines and their indentation
    assert "CREATE TABLE t1(\n   a INTEGER PRIMARY KEY,\n   b INT,\n   c TEXT,\n" in text


def test_a_chunk_carries_its_section_heading() -> None:
    _, chunks = chunk_segments(extract(SPHINX).segments, lambda s: len(s.split()), 60)
    answer = next(c for c in chunks if "Japanese Shinto shrine" in c.text)
    assert "Why is it called Jinja?" in answer.text
    assert not any("Navigation" in c.text or "Quick search" in c.text for c in chunks)


def test_the_isolated_extraction_child_reads_html_the_same_way(tmp_path: Path) -> None:
    extractor = Extractor(timeout_s=60)
    try:
        result = extractor.extract(SQLITE)
    finally:
        extractor.close()
    assert result.state == DocumentState.READY, result.reason
    text = "\n\n".join(c.text for c in result.chunks)
    assert "2.2. Capabilities" in text and "Purchase" not in text
    assert not result.log, result.log


@pytest.mark.parametrize(
    ("markup", "expected"),
    [
        # all navigation: nothing is judged content, so the whole page is read as before
        (
            "<html><body><nav><ul><li><a href='a.html'>Alpha guide</a></li><li><a href='b.html'>Beta guide</a>"
            "</li></ul></nav><footer>Site map</footer></body></html>",
            ["Alpha guide", "Beta guide", "Site map"],
        ),
        # a page too small for trafilatura
        ("<html><body><h1>Lighthouse</h1><p>The keeper climbed the tower.</p></body></html>", ["Lighthouse", "keeper"]),
        # nested deeper than libxml2 parses (256): html.parser reads it all
        ("<html><body>" + "<div>" * 300 + "deep text" + "</div>" * 300 + "<p>after</p></body></html>", ["deep text"]),
        # a <main> with nothing in it
        ("<html><body><main></main><div><p>Outside the landmark, the only text.</p></div></body></html>", ["Outside"]),
    ],
)
def test_a_page_with_no_main_content_to_find_still_yields_its_text(tmp_path: Path, markup: str, expected: list[str]):
    page = tmp_path / "page.html"
    page.write_text(markup, encoding="utf-8")
    text = text_of(page)
    for words in expected:
        assert words in text


def test_a_section_named_like_boilerplate_is_kept(tmp_path: Path) -> None:
    """trafilatura drops any section whose id contains "share", "nav", "related" or "footer"; ids
    that only repeat the section's heading are hidden from it (the Python FAQ lost two answers)."""
    answer = "Create a special module, often called config, and import it in every module of the program. " * 3
    other = "Default values are evaluated once, when the function is defined, and shared by every call. " * 3
    page = tmp_path / "faq.html"
    page.write_text(
        "<html><head><title>FAQ</title></head><body><div class='menu'><a href='/'>Home</a> <a href='/x'>Blog</a></div>"
        f"<div class='content'><h1>Programming FAQ</h1><p>{other}</p>"
        "<section id='how-do-i-share-global-variables-across-modules'>"
        f"<h2>How do I share global variables across modules?</h2><p>{answer}</p></section>"
        "<section id='related-modules'><h2>Related modules</h2>"
        f"<p>{other.replace('Default', 'Related')}</p></section></div></body></html>",
        encoding="utf-8",
    )
    text = text_of(page)
    assert f"How do I share global variables across modules?\n{answer.strip()}" in text
    assert "Related modules\nRelated values" in text


def test_tables_definition_lists_and_code_in_a_main_landmark(tmp_path: Path) -> None:
    page = tmp_path / "api.html"
    page.write_text(
        "<html><body><nav>Home | API</nav><main><h1>API</h1><nav>On this page: open</nav>"
        "<table><tr><th>mode</th><th>meaning</th></tr><tr><td>r</td><td>read</td></tr></table>"
        "<dl><dt>open(path)</dt><dd><p>Opens <em>path</em>.</p><pre>with open(p) as f:\n    f.read()</pre></dd></dl>"
        "<footer>Previous: Intro</footer></main><footer>© Example</footer></body></html>",
        encoding="utf-8",
    )
    text = text_of(page)
    assert text == "API\nmode | meaning\n\nr | read\n\nopen(path)\nOpens path.\n\nwith open(p) as f:\n    f.read()"
