"""Text from pictures of pages: scanned PDF pages and image files, read by OCR in the extraction child.

The OCR library is RapidOCR (`rapidocr`, Apache-2.0): PaddleOCR's PP-OCRv6 detection and
recognition models as ONNX, run on ONNX Runtime like the rest of the app, with the models in its
wheel (nothing is downloaded). The candidates, on the same three KJV pages (A4 scanned at
300 dpi, 12-pt sans, 0.6° skew, grey noise, JPEG quality 70; 2 shared CPU cores):

    library                       runtime       models                CER         s/page   why not
    rapidocr 3.10 (PP-OCRv6)      ONNX Runtime  in the wheel, 31 MB   0.0 %       1.6-2.4  (chosen)
    rapidocr-onnxruntime 1.4.4    ONNX Runtime  in the wheel, 15 MB   3.6-4.6 %   1.9-3.1  PP-OCRv4 runs English
                                                                                           words together; Python
                                                                                           < 3.13; GUI opencv-python
                                                                                           (bundles Qt 5); last
                                                                                           release January 2025
    OnnxTR 0.9 (docTR on ORT)     ONNX Runtime  fetched on first use  -           -        no offline install
    Tesseract (pytesseract)       own C++       a system package      -           -        a native binary per OS
    EasyOCR, PaddleOCR            torch, Paddle fetched on first use  -           -        a second ML runtime

benchmarks/ocr.py measures the chosen one through the extraction child (results/ocr.json): on
A4 pages of Times 11 pt (~3,600 characters), CER 0.00 % at 300 dpi, 0.02 % at most at 200 dpi
with heavier noise, 1.3 % mean (6.6 % worst page) at 150 dpi, 9 pt, 2.5° and JPEG quality 20;
2.5-3 s a page on 2 cores, 1.2 s more for the first scan a reader reads (loading the models).

RapidOCR's line classifier (text lines upside down) is left off: on English text it turned
whole lines over and made garbage of them (CER 2.6-13 % with it, 0 % without). A page that reads
badly is read again turned 180° (or 90°, when its text runs up the page) instead.

One model reads Chinese, English, Japanese and about 45 Latin-script languages (French, German,
Spanish, Polish, Turkish, Vietnamese, ...) at once, so there is no language to choose; other
scripts (Cyrillic, Arabic, Korean, Devanagari) need models the app would have to download.

Pages are rendered with PDFium (`pypdfium2`, Apache-2.0/BSD-3), never an AGPL renderer.
Every image is bounded before it is decoded (`MAX_IMAGE_PIXELS`) and scaled to what the OCR
reads (`OCR_MAX_SIDE`): the child's memory limit holds whatever the file claims.
"""

from __future__ import annotations

import itertools
import logging
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp"})
# The include patterns that let image files into a folder's scan (app/library/filters.py).
IMAGE_PATTERNS = ("*.png", "*.jpg", "*.jpeg", "*.tif", "*.tiff", "*.webp")
OCR_MAX_SIDE = 2000  # pixels of a page's longer side that the OCR reads (RapidOCR's default)
RENDER_DPI = 300  # PDF pages are rendered at this, or less where the longer side would pass OCR_MAX_SIDE
MAX_IMAGE_PIXELS = 120_000_000  # 120 MP: a 200-MP phone photo is read through JPEG's draft mode
MAX_OCR_PAGES = 1000  # pages of one document read by OCR (a scanned book); the rest is named in a note
MIN_TEXT_LAYER_CHARS = 32  # a page with less text than this and a picture on it is a scan (a stamp, a footer)
LOW_CONFIDENCE = 0.8  # a page whose lines score less on average is tried turned around
BLANK_RANGE = 24  # a rendered page whose grey levels span less than this holds nothing to read
OCR_OFF = "reading scans and images (OCR) is turned off in Settings"


class OcrError(Exception):
    """Why an image or a page could not be read by OCR (a document-level reason, one line)."""


class OcrUnavailable(OcrError):
    """The OCR library or its models are missing from this installation."""


class NotAScan(OcrError):
    """A fine image that is no page to read (an animation): skipped, not failed."""


@dataclass(frozen=True)
class OcrOptions:
    """What the extraction child may do with pictures of text (from the `ocr` setting)."""

    enabled: bool = True
    max_pages: int = MAX_OCR_PAGES


@dataclass(frozen=True)
class PageProgress:
    """Sent before each page the child reads by OCR, so the app can show it and hold it back.

    `page` is the page's number in the document (1-based, as citations give it); `index` counts
    the pages read by OCR so far in this document, out of `total` to read this way.
    """

    path: str
    page: int
    pages: int
    index: int
    total: int

    def describe(self) -> str:
        """'reading page 3 of 40 (OCR)', as the folders panel says it."""
        return f"reading page {self.page:,} of {self.pages:,} (OCR)"


class PageStep(Enum):
    """The parent's answer to a `PageProgress`: read the page, or stop reading the document."""

    GO = "go"
    STOP = "stop"


PageCallback = Callable[[PageProgress], PageStep]


class OcrStopped(Exception):
    """The parent answered STOP before page `page`: the document is left to be read again."""

    def __init__(self, page: int) -> None:
        super().__init__(f"stopped before page {page} (OCR)")
        self.page = page


class _Reader:
    """RapidOCR with the models of its wheel, made once per extraction child (about 1 s and
    400 MB with its imports) and kept for the documents after."""

    def __init__(self) -> None:
        self._engine: Any = None

    def _load(self) -> Any:
        if self._engine is not None:
            return self._engine
        try:
            import rapidocr
        except ImportError as exc:
            raise OcrUnavailable(f"OCR is not installed ({exc.name or 'rapidocr'} is missing)") from None
        models = Path(rapidocr.__file__).resolve().parent / "models"
        paths = {
            "Det.model_path": models / "PP-OCRv6_det_small.onnx",
            "Rec.model_path": models / "PP-OCRv6_rec_small.onnx",
        }
        missing = [p.name for p in paths.values() if not p.is_file()]
        if missing:
            # Never let RapidOCR fetch them: the app works offline, and a download would hang the child.
            raise OcrUnavailable(f"OCR models are missing from this installation ({', '.join(missing)})")
        logging.getLogger("RapidOCR").setLevel(logging.ERROR)  # "nothing detected" on every blank page
        from rapidocr.main import RapidOCR  # not `from rapidocr`: its lazy import hides the module from PyInstaller

        params: dict[str, Any] = {str(k): os.fspath(v) for k, v in paths.items()}
        params.update({"Global.use_cls": False, "Global.log_level": "error", "Global.max_side_len": OCR_MAX_SIDE})
        self._engine = RapidOCR(params=params)
        return self._engine

    def read(self, image: Image.Image) -> str:
        """The text of one page picture, lines in reading order, paragraphs apart."""
        import numpy as np

        engine = self._load()
        pixels = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])  # RapidOCR takes BGR
        lines = self._best_orientation(engine, pixels)
        return _layout(lines)

    def _best_orientation(self, engine: Any, pixels: np.ndarray) -> list[_Line]:
        """Upright pages are read once; one that reads badly, or whose text runs up the page
        (a landscape scan), is read turned too, and the reading with the most confidently
        read characters is kept."""
        import numpy as np

        lines = _lines(engine(pixels))
        tall = sum(1 for line in lines if line.height > 1.5 * line.width) > len(lines) / 2
        if not lines or (not tall and _quality(lines) >= LOW_CONFIDENCE):
            return lines
        best, best_score = lines, _weight(lines)
        for turn in (1, 3, 2) if tall else (2,):
            turned = _lines(engine(np.ascontiguousarray(np.rot90(pixels, turn))))
            if _weight(turned) > best_score:
                best, best_score = turned, _weight(turned)
        return best


@dataclass(frozen=True)
class _Line:
    text: str
    score: float
    left: float
    top: float
    width: float
    height: float


def _lines(result: Any) -> list[_Line]:
    if result is None or result.boxes is None or not result.txts:
        return []
    lines = []
    for box, text, score in zip(result.boxes, result.txts, result.scores, strict=False):
        xs, ys = [float(p[0]) for p in box], [float(p[1]) for p in box]
        if text.strip():
            lines.append(_Line(text.strip(), float(score), min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)))
    return lines


def _quality(lines: list[_Line]) -> float:
    """Mean confidence, weighted by characters."""
    characters = sum(len(line.text) for line in lines)
    return sum(line.score * len(line.text) for line in lines) / characters if characters else 0.0


def _weight(lines: list[_Line]) -> float:
    """Characters read, weighted by confidence: how much a reading holds."""
    return sum(line.score * len(line.text) for line in lines)


def _layout(lines: list[_Line]) -> str:
    """Boxes to text: boxes on one row (their middles within half a line) join with spaces,
    rows follow top to bottom, and a gap of more than 1.6 usual line steps starts a paragraph,
    so chunking cuts where the page does."""
    if not lines:
        return ""
    ordered = sorted(lines, key=lambda line: line.top + line.height / 2)
    heights = sorted(line.height for line in ordered)
    typical = heights[len(heights) // 2] or 1.0
    rows: list[list[_Line]] = []
    for line in ordered:
        middle = line.top + line.height / 2
        if rows and abs(middle - (rows[-1][0].top + rows[-1][0].height / 2)) < typical / 2:
            rows[-1].append(line)
        else:
            rows.append([line])
    tops = [min(line.top for line in row) for row in rows]
    steps = sorted(b - a for a, b in itertools.pairwise(tops)) or [typical]
    step = steps[len(steps) // 2] or typical
    parts: list[str] = []
    for number, row in enumerate(rows):
        if number:
            parts.append("\n\n" if tops[number] - tops[number - 1] > 1.6 * step else "\n")
        parts.append(" ".join(line.text for line in sorted(row, key=lambda line: line.left)))
    return "".join(parts)


_READER = _Reader()


def read_picture(image: Image.Image) -> str:
    """The text of one page picture (bounded by `fit` or `PdfPages.render`)."""
    return _READER.read(image)


# Images ---------------------------------------------------------------------------------------


def fit(image: Image.Image) -> Image.Image:
    """A page picture the OCR reads as it is: 8-bit, no transparency (onto white), upright by
    its EXIF orientation, its longer side at most OCR_MAX_SIDE."""
    from PIL import Image, ImageOps

    try:
        image = ImageOps.exif_transpose(image) or image
    except Exception:  # noqa: BLE001 - a broken EXIF block only loses the orientation
        pass
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        import numpy as np

        values = np.asarray(image, dtype=np.float32)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.full_like(values, 255.0)
        image = Image.fromarray(scaled.astype(np.uint8), "L")
    elif image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba).convert("RGB")
    elif image.mode not in ("L", "RGB"):
        image = image.convert("RGB")  # CMYK, YCbCr, LAB, 1 (fax), P
    if max(image.size) > OCR_MAX_SIDE:
        image = image.copy()
        image.thumbnail((OCR_MAX_SIDE, OCR_MAX_SIDE), Image.Resampling.LANCZOS, reducing_gap=3.0)
    return image


def _describe_image_error(exc: BaseException) -> str:
    message = str(exc)
    if "truncated" in message.lower() or isinstance(exc, EOFError):
        return "not a readable image (the file is truncated)"
    return f"not a readable image ({type(exc).__name__}: {message[:120]})"


# What Pillow may take a file for, whatever its name (MPO, a camera's JPEG with a preview, is a
# format of its own in older Pillows and opened by the JPEG plugin in newer ones).
IMAGE_FORMATS = ("PNG", "JPEG", "MPO", "TIFF", "WEBP")


def image_pages(path: Path) -> tuple[int, Callable[[int], Image.Image]]:
    """(pages, page(n)) of an image file: one page, or each frame of a multi-page TIFF (a fax, a
    scanner's multi-page output). Sizes are checked before any pixel is decoded; an animation is
    not a scan and is skipped. Raises OcrError with the reason."""
    from PIL import Image, UnidentifiedImageError

    # The size is checked here, frame by frame, before decoding (Pillow's own check would refuse
    # a large JPEG at open, which its draft mode reads at a fraction of the memory).
    Image.MAX_IMAGE_PIXELS = None
    Image.init()  # registers every format plugin: open() with `formats` looks them up by name
    try:
        image = Image.open(path, formats=[f for f in IMAGE_FORMATS if f in Image.OPEN])
    except UnidentifiedImageError:
        raise OcrError("not a readable image (not a PNG, JPEG, TIFF or WebP, or damaged)") from None
    except (OSError, ValueError, SyntaxError, EOFError, struct.error) as exc:
        if isinstance(exc, (PermissionError, FileNotFoundError)):
            raise
        raise OcrError(_describe_image_error(exc)) from None
    frames = 1 if image.format == "MPO" else getattr(image, "n_frames", 1)  # MPO: a camera's JPEG with a preview
    if image.format != "TIFF" and getattr(image, "is_animated", False):
        image.close()
        raise NotAScan(f"an animated image ({frames:,} frames), not a scan: animations are not read")

    def page(number: int) -> Image.Image:
        try:
            if frames > 1:
                image.seek(number - 1)
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                if image.format not in ("JPEG", "MPO"):
                    raise OcrError(_too_large(image.size))
                image.draft("RGB", (OCR_MAX_SIDE, OCR_MAX_SIDE))  # decoded at 1/2 to 1/8 scale
                if image.size[0] * image.size[1] > MAX_IMAGE_PIXELS:
                    raise OcrError(_too_large((width, height)))
            if min(image.size) < 8:
                raise OcrError(f"too small to hold text ({width} × {height} pixels)")
            image.load()
            return fit(image)
        except (OcrError, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - Pillow's decoders raise many types on damaged data
            raise OcrError(_describe_image_error(exc)) from None

    return frames, page


def _too_large(size: tuple[int, int]) -> str:
    limit = f"the limit is {MAX_IMAGE_PIXELS / 1e6:,.0f} megapixels"
    return f"too large to read ({size[0]:,} × {size[1]:,} pixels; {limit})"


# PDF pages ------------------------------------------------------------------------------------


class PdfPages:
    """A PDF opened with PDFium for rendering pages the text layer left empty."""

    def __init__(self, path: Path) -> None:
        try:
            import pypdfium2
        except ImportError as exc:
            raise OcrUnavailable(f"OCR is not installed ({exc.name or 'pypdfium2'} is missing)") from None
        try:
            self._pdf = pypdfium2.PdfDocument(path)
        except pypdfium2.PdfiumError as exc:
            raise OcrError(f"its pages could not be rendered for OCR ({str(exc)[:120]})") from None

    def __len__(self) -> int:
        return len(self._pdf)

    def has_picture(self, number: int) -> bool:
        """Whether page `number` (1-based) draws an image: a page with a line of text over a
        picture (a scanner's stamp, 'Scanned with ...') is still a scan."""
        import pypdfium2.raw as pdfium_c

        page = self._pdf[number - 1]
        try:
            objects = page.get_objects(filter=[pdfium_c.FPDF_PAGEOBJ_IMAGE], max_depth=3)
            return next(iter(objects), None) is not None
        finally:
            page.close()

    def render(self, number: int) -> Image.Image | None:
        """Page `number` (1-based) in grey, at RENDER_DPI or less so that its longer side fits
        OCR_MAX_SIDE; None for a blank page (nothing to read, no OCR spent on it)."""
        page = self._pdf[number - 1]
        try:
            width, height = page.get_size()
            if width <= 0 or height <= 0:
                return None
            scale = min(RENDER_DPI / 72, OCR_MAX_SIDE / max(width, height))
            bitmap = page.render(scale=scale, grayscale=True, may_draw_forms=True)
            image = bitmap.to_pil()
            bitmap.close()
        finally:
            page.close()
        low, high = image.convert("L").getextrema()
        return None if high - low < BLANK_RANGE else image

    def close(self) -> None:
        self._pdf.close()
