"""Document -> text segments (one per PDF page, else one), with readable reasons for failures.

Runs inside the extraction child process (`extractor.py`), never in the app's own process:
parsers of PDF and DOCX files are large attack surfaces and can hang or balloon on bad input.
PDF pages without a text layer and image files are read by OCR (`ocr.py`), page by page, each
announced first through `on_page` so the app can show it and hold the work back.
"""

from __future__ import annotations

import html.parser
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from app.library.ocr import (
    IMAGE_SUFFIXES,
    MIN_TEXT_LAYER_CHARS,
    OCR_OFF,
    NotAScan,
    OcrError,
    OcrOptions,
    OcrStopped,
    OcrUnavailable,
    PageCallback,
    PageProgress,
    PageStep,
)

MISREADINGS = "the text may hold misreadings"
NO_MEMORY = "not enough memory"
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
    ocr_pages: int = 0  # pages read by OCR
    ocr_seconds: float = 0.0  # time the OCR took (rendering and decoding included)
    short_of_memory: bool = False  # a page could not be read for want of memory (a fresh child may)


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


def _pdf(path: Path, ocr: OcrOptions, on_page: PageCallback | None) -> Extracted:
    """One segment per page; a page that cannot be read is named in a note, the rest is kept.
    Pages the text layer leaves empty (or all but empty over a picture) are read by OCR."""
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
    notes = [f"{_count(len(bad_pages), 'page')} could not be read: {_list_numbers(bad_pages)}"] if bad_pages else []
    extracted = Extracted(segments, notes)
    if any(_characters(s.text) < MIN_TEXT_LAYER_CHARS for s in segments):
        extracted = _pdf_ocr(path, extracted, page_count, ocr, on_page)
    if not any(s.text.strip() for s in extracted.segments):
        if not ocr.enabled:
            raise NothingToIndex(f"no text (a scanned PDF: {OCR_OFF})")
        raise NothingToIndex("no text (a scanned PDF, and OCR found no text on its pages)")
    return extracted


def _characters(text: str) -> int:
    return len(text) - sum(1 for c in text if c.isspace())


def _pdf_ocr(
    path: Path, extracted: Extracted, page_count: int, ocr: OcrOptions, on_page: PageCallback | None
) -> Extracted:
    """The text layer where it holds text, OCR where it does not: pages with no text at all,
    and pages with a few characters over a picture (a scanner's stamp or footer), whose OCR
    reading replaces the text layer when it holds more."""
    from app.library.ocr import PdfPages, read_picture

    notes = list(extracted.notes)
    has_text = any(s.text.strip() for s in extracted.segments)
    if not ocr.enabled and not has_text:
        return extracted  # the caller says that OCR is off
    try:
        pages = PdfPages(path)
    except OcrError as exc:
        if not has_text:
            raise ExtractionFailed(f"no text, and {exc}") from None
        return Extracted(extracted.segments, [*notes, f"pages without text were not read: {exc}"])
    at = {s.page: i for i, s in enumerate(extracted.segments)}
    segments = list(extracted.segments)
    try:
        candidates = [
            s.page
            for s in segments
            if s.page is not None
            and s.page <= len(pages)
            and _characters(s.text) < MIN_TEXT_LAYER_CHARS
            and (not s.text.strip() or pages.has_picture(s.page))
        ]
        if not ocr.enabled:
            pictures = [n for n in candidates if not segments[at[n]].text.strip() and pages.has_picture(n)]
            if pictures:
                notes.append(f"{_count(len(pictures), 'page')} without text ({_list_numbers(pictures)}): {OCR_OFF}")
            return Extracted(segments, notes)
        if len(candidates) > ocr.max_pages:
            left = candidates[ocr.max_pages :]
            notes.append(f"OCR reads at most {ocr.max_pages:,} pages of a document: {_list_numbers(left)} were not")
            candidates = candidates[: ocr.max_pages]
        replaced: list[int] = []
        failed: list[int] = []
        first_error = ""
        read, seconds = 0, 0.0
        for index, number in enumerate(candidates):
            _announce(on_page, PageProgress(str(path), number, page_count, index, len(candidates)))
            started = time.perf_counter()
            try:
                picture = pages.render(number)
                if picture is None:
                    continue  # blank: nothing to read
                text = read_picture(picture)
            except (OcrStopped, MemoryError, OcrUnavailable):
                raise
            except Exception as exc:  # noqa: BLE001 - PDFium and the OCR runtime raise many types; one page is lost
                failed.append(number)
                first_error = first_error or _why(exc)
                _log_page_failure(path, number, exc)
                continue
            read, seconds = read + 1, seconds + time.perf_counter() - started
            if _characters(text) > _characters(segments[at[number]].text):
                segments[at[number]] = Segment(text, number)
                replaced.append(number)
        if replaced:
            notes.append(f"{_count(len(replaced), 'page')} read by OCR ({_list_numbers(replaced)}): {MISREADINGS}")
        if failed:
            notes.append(f"OCR could not read {_count(len(failed), 'page')}: {_list_numbers(failed)} ({first_error})")
        return Extracted(segments, notes, read, seconds, short_of_memory=NO_MEMORY in first_error)
    except OcrUnavailable as exc:
        if not has_text:
            raise ExtractionFailed(str(exc)) from None
        return Extracted(extracted.segments, [*notes, f"pages without text were not read: {exc}"])
    finally:
        pages.close()


def _announce(on_page: PageCallback | None, progress: PageProgress) -> None:
    """Tell the parent which page comes next; it may hold us here, or stop the document."""
    if on_page is not None and on_page(progress) is PageStep.STOP:
        raise OcrStopped(progress.page)


def _why(exc: BaseException) -> str:
    """One line: RapidOCR wraps ONNX Runtime's errors in a traceback whose last line says it."""
    lines = str(exc).strip().splitlines() or [""]
    if "bad_alloc" in lines[-1]:
        return NO_MEMORY
    return f"{type(exc).__name__}: {lines[-1][:160]}"


def _log_page_failure(path: Path, page: int, exc: BaseException) -> None:
    logging.getLogger("dolphin.extract.ocr").warning("page %d: %s", page, _why(exc))


def _image(path: Path, ocr: OcrOptions, on_page: PageCallback | None) -> Extracted:
    """An image file read by OCR: one page, or each page of a multi-page TIFF (numbered)."""
    from app.library.ocr import image_pages, read_picture

    if not ocr.enabled:
        raise NothingToIndex(f"an image: {OCR_OFF}")
    if path.stat().st_size == 0:
        raise NothingToIndex("empty file")
    try:
        frames, page = image_pages(path)
    except NotAScan as exc:
        raise NothingToIndex(str(exc)) from None
    except OcrError as exc:
        raise ExtractionFailed(str(exc)) from None
    notes: list[str] = []
    numbers = list(range(1, min(frames, ocr.max_pages) + 1))
    if frames > ocr.max_pages:
        notes.append(
            f"OCR reads at most {ocr.max_pages:,} pages of a document: {frames - ocr.max_pages:,} were not read"
        )
    segments: list[Segment] = []
    failed: list[int] = []
    first_error: str | None = None
    seconds = 0.0
    for index, number in enumerate(numbers):
        _announce(on_page, PageProgress(str(path), number, frames, index, len(numbers)))
        started = time.perf_counter()
        try:
            text = read_picture(page(number))
        except OcrUnavailable as exc:
            raise ExtractionFailed(str(exc)) from None
        except OcrError as exc:
            if frames == 1:
                raise ExtractionFailed(str(exc)) from None
            failed.append(number)
            first_error = first_error or str(exc)
            continue
        except (OcrStopped, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - the OCR runtime raises many types; one page is lost
            if frames == 1 and _why(exc) == NO_MEMORY:
                raise MemoryError from None
            if frames == 1:
                raise ExtractionFailed(f"OCR could not read it ({_why(exc)})") from None
            failed.append(number)
            first_error = first_error or _why(exc)
            _log_page_failure(path, number, exc)
            continue
        seconds += time.perf_counter() - started
        segments.append(Segment(text, number if frames > 1 else None))
    if failed and not segments:
        if first_error == NO_MEMORY:
            raise MemoryError
        raise ExtractionFailed(first_error or "OCR could not read it")
    if failed:
        notes.append(f"OCR could not read {_count(len(failed), 'page')}: {_list_numbers(failed)} ({first_error})")
    if not any(s.text.strip() for s in segments):
        raise NothingToIndex("no text found by OCR")
    notes.insert(0, f"read by OCR: {MISREADINGS}")
    return Extracted(segments, notes, len(segments), seconds, short_of_memory=first_error == NO_MEMORY)


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


def extract(path: Path, ocr: OcrOptions | None = None, on_page: PageCallback | None = None) -> Extracted:
    """The document's text. `on_page` is called before each page read by OCR (see
    `ocr.PageProgress`); its STOP raises OcrStopped."""
    suffix = path.suffix.lower()
    ocr = ocr or OcrOptions()
    notes: list[str] = []
    ocr_pages, ocr_seconds, short_of_memory = 0, 0.0, False
    if suffix == ".pdf" or suffix in IMAGE_SUFFIXES:
        extracted = _pdf(path, ocr, on_page) if suffix == ".pdf" else _image(path, ocr, on_page)
        segments, notes = extracted.segments, extracted.notes
        ocr_pages, ocr_seconds, short_of_memory = extracted.ocr_pages, extracted.ocr_seconds, extracted.short_of_memory
    elif suffix == ".docx":
        segments = _docx(path)
    elif suffix in HTML_SUFFIXES:
        segments = _html(path)
    else:
        segments = [Segment(decode_text(path.read_bytes()))]
    segments = [Segment(sanitize(s.text), s.page) for s in segments]
    if not any(s.text.strip() for s in segments):
        raise NothingToIndex("no text")
    return Extracted(segments, notes, ocr_pages, ocr_seconds, short_of_memory)
