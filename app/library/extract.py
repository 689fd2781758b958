"""Document -> text segments (one per PDF page, else one), with readable reasons for failures.

Runs inside the extraction child process (`extractor.py`), never in the app's own process:
parsers of PDF and DOCX files are large attack surfaces and can hang or balloon on bad input.
"""

from __future__ import annotations

import html.parser
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

BINARY_SNIFF_BYTES = 8192
HTML_SUFFIXES = {".html", ".htm", ".xhtml"}


@dataclass(frozen=True)
class Segment:
    text: str
    page: int | None = None


@dataclass(frozen=True)
class Extracted:
    """A document's text, and anything a person should know about how it was read."""

    segments: list[Segment]
    notes: list[str] = field(default_factory=list)


class ExtractionFailed(Exception):
    """The file cannot be read as a document; the message says why (state: failed)."""


class NothingToIndex(Exception):
    """The file is fine but holds no text (state: skipped)."""


def _utf16_without_bom(sample: bytes) -> str | None:
    """'utf-16-le'/'-be' when every other byte is NUL, as in UTF-16 text of a Latin script."""
    even, odd = sample[0::2], sample[1::2]
    if len(sample) >= 16 and odd.count(0) > 0.9 * len(odd) and even.count(0) < 0.1 * len(even):
        return "utf-16-le"
    if len(sample) >= 16 and even.count(0) > 0.9 * len(even) and odd.count(0) < 0.1 * len(odd):
        return "utf-16-be"
    return None


def decode_text(data: bytes) -> str:
    """Text files in any common encoding; binary files are refused, not mangled."""
    if not data.strip():
        raise NothingToIndex("empty file")
    sample = data[:BINARY_SNIFF_BYTES]
    if b"\x00" in sample and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        utf16 = _utf16_without_bom(sample)
        if utf16 is None:
            raise ExtractionFailed("binary file, not text")
        return data.decode(utf16, errors="replace")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    best = from_bytes(data).best()
    if best is None:
        raise ExtractionFailed("not text in any known encoding")
    return str(best)


class _HTMLText(html.parser.HTMLParser):
    BLOCKS: ClassVar[set[str]] = {
        "p",
        "div",
        "br",
        "li",
        "tr",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "section",
        "article",
        "pre",
        "table",
    }

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style", "noscript", "template"):
            self._skip += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "noscript", "template"):
            self._skip = max(0, self._skip - 1)
        elif tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def _all_text(markup: str) -> str:
    """Every word of the page, navigation included: for pages without a main content to find, and
    for markup that lxml cannot parse whole (html.parser streams, so no nesting is too deep)."""
    parser = _HTMLText()
    parser.feed(markup)
    parser.close()
    lines = [" ".join(line.split()) for line in "".join(parser.parts).split("\n")]
    text = "\n".join(lines)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.strip()


def _html(path: Path) -> list[Segment]:
    """The page's main content with its headings (`html_content`), else the whole page's text."""
    from app.library.html_content import main_text

    markup = decode_text(path.read_bytes())
    return [Segment(main_text(markup) or _all_text(markup))]


def _pdf(path: Path) -> Extracted:
    """One segment per page; a page that cannot be read is named in a note, the rest is kept."""
    from pypdf import PdfReader
    from pypdf.errors import DependencyError, DeprecationError, FileNotDecryptedError, LimitReachedError, PyPdfError

    readable = (PyPdfError, DeprecationError, DependencyError, NotImplementedError, ValueError, KeyError, TypeError)
    readable = (*readable, AssertionError, AttributeError, IndexError)
    try:
        reader = PdfReader(path)
        if reader.is_encrypted and not reader.decrypt(""):
            raise ExtractionFailed("password-protected PDF")
        pages = reader.pages
        page_count = len(pages)
    except FileNotDecryptedError:
        raise ExtractionFailed("password-protected PDF") from None
    except LimitReachedError as exc:
        raise ExtractionFailed(f"not a readable PDF (its structure loops or nests too deeply: {exc})") from None
    except (*readable, RecursionError) as exc:
        raise ExtractionFailed(f"not a readable PDF ({type(exc).__name__}: {str(exc)[:120]})") from None
    segments: list[Segment] = []
    bad_pages: list[int] = []
    first_error: BaseException | None = None
    for number in range(1, page_count + 1):
        try:
            segments.append(Segment(pages[number - 1].extract_text() or "", number))
        except FileNotDecryptedError:
            raise ExtractionFailed("password-protected PDF") from None
        except (*readable, RecursionError, ZeroDivisionError, OverflowError) as exc:
            bad_pages.append(number)
            first_error = first_error or exc
    if bad_pages and not segments and first_error is not None:
        raise ExtractionFailed(f"not a readable PDF ({type(first_error).__name__}: {str(first_error)[:120]})")
    if not any(s.text.strip() for s in segments):
        raise NothingToIndex("no text (a scanned PDF needs OCR first)")
    notes = [f"{_count(len(bad_pages), 'page')} could not be read: {_list_numbers(bad_pages)}"] if bad_pages else []
    return Extracted(segments, notes)


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def _list_numbers(numbers: list[int], most: int = 8) -> str:
    shown = ", ".join(str(n) for n in numbers[:most])
    return shown + (f" and {len(numbers) - most:,} more" if len(numbers) > most else "")


def _docx(path: Path) -> list[Segment]:
    """Paragraphs and table rows in document order, read from the XML once per cell.

    python-docx's `row.cells` repeats a merged cell once per grid column it spans, so a hostile
    `gridSpan` of 10^9 would make a billion-item list; the `w:tc` elements are read instead.
    """
    import zipfile

    import docx
    from docx.oxml.ns import qn

    try:
        document = docx.Document(str(path))
        body = document.element.body
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise ExtractionFailed(f"not a valid DOCX file ({type(exc).__name__})") from None
    except Exception as exc:  # noqa: BLE001 - python-docx raises its own PackageNotFoundError and lxml errors
        raise ExtractionFailed(f"not a valid DOCX file ({type(exc).__name__}: {str(exc)[:120]})") from None
    text_tag, tab_tag, break_tags = qn("w:t"), qn("w:tab"), {qn("w:br"), qn("w:cr")}

    def text_of(element: object) -> str:
        pieces = []
        for node in element.iter(text_tag, tab_tag, *break_tags):  # type: ignore[attr-defined]
            if node.tag == text_tag:
                pieces.append(node.text or "")
            else:
                pieces.append("\t" if node.tag == tab_tag else "\n")
        return "".join(pieces)

    parts: list[str] = []
    for child in body.iterchildren():
        if child.tag == qn("w:p"):
            parts.append(text_of(child))
        elif child.tag == qn("w:tbl"):
            for row in child.iter(qn("w:tr")):
                cells = [" ".join(text_of(p) for p in tc.iter(qn("w:p"))) for tc in row.iterchildren(qn("w:tc"))]
                parts.append(" | ".join(cells))
    return [Segment("\n\n".join(p for p in parts if p.strip()))]


_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


def sanitize(text: str) -> str:
    """Text that every later stage can store and show: lone surrogates (a PDF's ToUnicode map
    can produce them) become U+FFFD, control characters other than tab and newlines go."""
    return _UNSAFE.sub(lambda m: "\ufffd" if m.group() >= "\ud800" else "", text)


def extract(path: Path) -> Extracted:
    suffix = path.suffix.lower()
    notes: list[str] = []
    if suffix == ".pdf":
        extracted = _pdf(path)
        segments, notes = extracted.segments, extracted.notes
    elif suffix == ".docx":
        segments = _docx(path)
    elif suffix in HTML_SUFFIXES:
        segments = _html(path)
    else:
        segments = [Segment(decode_text(path.read_bytes()))]
    segments = [Segment(sanitize(s.text), s.page) for s in segments]
    if not any(s.text.strip() for s in segments):
        raise NothingToIndex("no text")
    return Extracted(segments, notes)
