"""Document -> text segments (one per PDF page, else one), with readable reasons for failures.

Runs inside the extraction child process (`extractor.py`), never in the app's own process:
parsers of PDF and DOCX files are large attack surfaces and can hang or balloon on bad input.
"""

from __future__ import annotations

import html.parser
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

BINARY_SNIFF_BYTES = 8192
HTML_SUFFIXES = {".html", ".htm", ".xhtml"}


@dataclass(frozen=True)
class Segment:
    text: str
    page: int | None = None


class ExtractionFailed(Exception):
    """The file cannot be read as a document; the message says why (state: failed)."""


class NothingToIndex(Exception):
    """The file is fine but holds no text (state: skipped)."""


def decode_text(data: bytes) -> str:
    """Text files in any common encoding; binary files are refused, not mangled."""
    if not data.strip():
        raise NothingToIndex("empty file")
    if b"\x00" in data[:BINARY_SNIFF_BYTES] and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ExtractionFailed("binary file, not text")
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


def _html(path: Path) -> list[Segment]:
    parser = _HTMLText()
    parser.feed(decode_text(path.read_bytes()))
    parser.close()
    lines = [" ".join(line.split()) for line in "".join(parser.parts).split("\n")]
    text = "\n".join(lines)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return [Segment(text.strip())]


def _pdf(path: Path) -> list[Segment]:
    from pypdf import PdfReader
    from pypdf.errors import FileNotDecryptedError, PdfReadError

    try:
        reader = PdfReader(path)
        if reader.is_encrypted and not reader.decrypt(""):
            raise ExtractionFailed("password-protected PDF")
        segments = [Segment(page.extract_text() or "", number) for number, page in enumerate(reader.pages, start=1)]
    except FileNotDecryptedError:
        raise ExtractionFailed("password-protected PDF") from None
    except (PdfReadError, ValueError, KeyError, TypeError, AssertionError) as exc:
        raise ExtractionFailed(f"not a readable PDF ({type(exc).__name__}: {str(exc)[:120]})") from None
    if not any(s.text.strip() for s in segments):
        raise NothingToIndex("no text (a scanned PDF needs OCR first)")
    return segments


def _docx(path: Path) -> list[Segment]:
    import zipfile

    import docx

    try:
        document = docx.Document(str(path))
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise ExtractionFailed(f"not a valid DOCX file ({type(exc).__name__})") from None
    except Exception as exc:  # noqa: BLE001 - python-docx raises its own PackageNotFoundError and lxml errors
        raise ExtractionFailed(f"not a valid DOCX file ({type(exc).__name__}: {str(exc)[:120]})") from None
    parts = [p.text for p in document.paragraphs]
    for table in document.tables:
        for row in table.rows:
            parts.append(" | ".join(cell.text for cell in row.cells))
    return [Segment("\n\n".join(p for p in parts if p.strip()))]


def extract(path: Path) -> list[Segment]:
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        segments = _pdf(path)
    elif suffix == ".docx":
        segments = _docx(path)
    elif suffix in HTML_SUFFIXES:
        segments = _html(path)
    else:
        segments = [Segment(decode_text(path.read_bytes()))]
    if not any(s.text.strip() for s in segments):
        raise NothingToIndex("no text")
    return segments
