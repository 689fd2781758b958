"""OCR: character error rate on scanned KJV pages, seconds per page, and OCR's share of indexing.

    python -m benchmarks.ocr [--pages 10] [--json benchmarks/results/ocr.json]

Scans are made, not shipped: KJV text (public domain, benchmarks/data/kjv) is set in Times with
fpdf2, each page rendered by PDFium at the scan's resolution, turned by a fraction of a degree,
given grey noise and saved as JPEG, as a flatbed scanner's output looks; the pictures become an
image-only PDF (no text layer) or image files. The tests (tests/test_ocr.py) use the same
functions on a few pages.

* CER: Levenshtein distance between the OCR text and the page's source text, whitespace runs
  counted as one space, over the source's length; for clean 300-dpi scans, rough ones (200 dpi,
  10 pt, 1.5°, more noise, JPEG quality 35) and poor ones (150 dpi, 9 pt, 2.5°, heavy noise,
  JPEG quality 20).
* Seconds per page: a scanned PDF read by the extraction child as the indexer reads it
  (rendering, OCR and layout; the child's start and the OCR models' load reported apart).
* Share of indexing: a folder of 50 two-page documents, 5 of them scans (10 %: scanned PDFs and
  two-page TIFFs), each read by the child, which reports the time its OCR took. With `--bundle B`
  the folder is then indexed end to end by the library, as the app does it (default settings),
  once with OCR on and once off (the scans skipped): OCR's share is the OCR seconds over the
  indexing time, and the two runs show what turning OCR off saves. B must have the real encoder
  shape and Qwen2's vocabulary, or the chunk count and the encoder's cost are not a real bundle's:

      python -m onnx_export.random_checkpoint CKPT --decoder tiny --encoder qwen2-0.5b --vocabulary qwen2
      python -m onnx_export CKPT B --embedder MINILM_FOLDER

  Without a bundle the share is estimated: chunks at about 1,500 characters each, at the encoder
  time per chunk that results/retrieval-speed.json measured at the real shape (--encoder-ms to
  give another).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from benchmarks.kjv import KJV

RESULTS = Path(__file__).resolve().parent / "results"
CHUNK_CHARS = 1500  # about 384 Qwen2 tokens of English (benchmarks/retrieval_speed.py)


@dataclass(frozen=True)
class Paper:
    """A page size in points, its margin, and how many lines of type it holds."""

    width: float
    height: float
    margin: float
    lines: int


A4 = Paper(595.28, 841.89, 72.0, 38)
A6 = Paper(297.64, 419.53, 30.0, 12)  # a small page: the tests' scans, read in a fraction of A4's time


@dataclass(frozen=True)
class ScanStyle:
    """How a document is set and scanned: type size, resolution, skew, sensor noise, JPEG."""

    dpi: int = 300
    rotation: float = 0.6  # degrees, anticlockwise
    noise: float = 8.0  # standard deviation of the grey-level noise
    jpeg_quality: int = 70
    font_points: float = 11.0
    seed: int = 0


CLEAN = ScanStyle()
ROUGH = ScanStyle(dpi=200, rotation=-1.5, noise=16.0, jpeg_quality=35, font_points=10.0, seed=1)
POOR = ScanStyle(dpi=150, rotation=2.5, noise=28.0, jpeg_quality=20, font_points=9.0, seed=2)


def _pdf(paper: Paper, font_points: float) -> object:
    from fpdf import FPDF

    pdf = FPDF(unit="pt", format=(paper.width, paper.height))
    pdf.set_auto_page_break(False)
    pdf.set_font("Times", size=font_points)
    return pdf


def kjv_pages(book: str, count: int, first_line: int = 0, paper: Paper = A4, style: ScanStyle = CLEAN) -> list[str]:
    """`count` pages of a KJV book as they are set in Times on `paper`, starting at its
    `first_line`-th set line; each page's text is exactly what its picture shows."""
    pdf = _pdf(paper, style.font_points)
    width = paper.width - 2 * paper.margin
    lines: list[str] = []
    line = ""
    for word in (KJV / book).read_text(encoding="utf-8").split():
        candidate = f"{line} {word}" if line else word
        if line and pdf.get_string_width(candidate) > width:  # type: ignore[attr-defined]
            lines.append(line)
            candidate = word
        line = candidate
    lines.append(line)
    lines = lines[first_line:] + lines[:first_line]
    rows = int(paper.lines * 11 / style.font_points)
    return ["\n".join(lines[i * rows : (i + 1) * rows]) for i in range(count)]


def typeset(pages: list[str], path: Path, paper: Paper = A4, style: ScanStyle = CLEAN) -> Path:
    """A PDF with a text layer: each page's lines in Times (a standard font every PDF reader
    has, PDFium included), one line per line."""
    pdf = _pdf(paper, style.font_points)
    for page in pages:
        pdf.add_page()  # type: ignore[attr-defined]
        y = paper.margin
        for line in page.splitlines():
            pdf.text(paper.margin, y, line)  # type: ignore[attr-defined]
            y += style.font_points * 1.45
    pdf.output(str(path))  # type: ignore[attr-defined]
    return path


def scan(text_pdf: Path, style: ScanStyle = CLEAN) -> list[object]:
    """Each page of a PDF as a scanner gives it back: a grey picture at `style.dpi`, slightly
    turned, with noise and JPEG artefacts (PIL images)."""
    import pypdfium2
    from PIL import Image

    rng = np.random.default_rng(style.seed)
    pictures = []
    document = pypdfium2.PdfDocument(text_pdf)
    try:
        for index in range(len(document)):
            page = document[index]
            image = page.render(scale=style.dpi / 72, grayscale=True).to_pil().convert("L")
            page.close()
            image = image.rotate(style.rotation, resample=Image.Resampling.BICUBIC, fillcolor=255)
            noisy = np.asarray(image, dtype=np.float32) + rng.normal(0, style.noise, image.size[::-1])
            image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "L")
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=style.jpeg_quality)
            picture = Image.open(io.BytesIO(buffer.getvalue()))
            picture.load()
            pictures.append(picture)
    finally:
        document.close()
    return pictures


def image_pdf(pictures: list[object], path: Path, dpi: int = 300) -> Path:
    """An image-only PDF (no text layer), each picture one page at its resolution: a scanned PDF."""
    from fpdf import FPDF

    pdf = FPDF(unit="pt")
    pdf.set_auto_page_break(False)
    for picture in pictures:
        width, height = (side * 72 / dpi for side in picture.size)  # type: ignore[attr-defined]
        pdf.add_page(format=(width, height))
        pdf.image(picture, x=0, y=0, w=width, h=height)
    pdf.output(str(path))
    return path


def scan_pages(pages: list[str], paper: Paper = A4, style: ScanStyle = CLEAN) -> list[object]:
    """The pages typeset and scanned (PIL images)."""
    with tempfile.TemporaryDirectory() as work:
        return scan(typeset(pages, Path(work) / "typeset.pdf", paper, style), style)


def scanned_pdf(pages: list[str], path: Path, paper: Paper = A4, style: ScanStyle = CLEAN) -> Path:
    """The pages typeset, scanned and bound again as an image-only PDF."""
    return image_pdf(scan_pages(pages, paper, style), path, style.dpi)


def scanned_image(page: str, path: Path, paper: Paper = A4, style: ScanStyle = CLEAN, **save: object) -> Path:
    """One page typeset, scanned and saved as an image file (its format from the suffix)."""
    (picture,) = scan_pages([page], paper, style)
    picture.save(path, dpi=(style.dpi, style.dpi), **save)  # type: ignore[attr-defined]
    return path


def levenshtein(a: str, b: str) -> int:
    """Edit distance, one row at a time in numpy: an insertion's chain along a row is a running
    minimum of (cost - position) plus position."""
    if not a or not b:
        return len(a) + len(b)
    codes = np.frombuffer(b.encode("utf-32-le"), dtype=np.uint32)
    positions = np.arange(len(b) + 1, dtype=np.int64)
    previous = positions.copy()
    row = np.empty(len(b) + 1, dtype=np.int64)
    for i, character in enumerate(a, start=1):
        row[0] = i
        np.minimum(previous[1:] + 1, previous[:-1] + (codes != ord(character)), out=row[1:])
        previous = np.minimum.accumulate(row - positions) + positions
    return int(previous[-1])


def cer(hypothesis: str, reference: str) -> float:
    """Character error rate, whitespace runs counted as one space."""
    hypothesis, reference = " ".join(hypothesis.split()), " ".join(reference.split())
    return levenshtein(hypothesis, reference) / max(1, len(reference))


def _books() -> list[str]:
    return sorted(p.name for p in KJV.glob("*.txt"))


def measure_cer(pages: int, work: Path) -> dict[str, object]:
    """CER per page for clean and rough scans, read by the extraction child."""
    from app.library.extractor import Extractor

    results: dict[str, object] = {}
    extractor = Extractor(timeout_s=120)
    try:
        for name, style in (("clean_300dpi", CLEAN), ("rough_200dpi", ROUGH), ("poor_150dpi", POOR)):
            books = _books()
            sources = [kjv_pages(books[i % len(books)], 1, 40 + 7 * i, style=style)[0] for i in range(pages)]
            path = scanned_pdf(sources, work / f"{name}.pdf", style=style)
            started = time.perf_counter()
            result = extractor.extract(path)
            wall = time.perf_counter() - started
            if result.state.value != "ready":
                raise RuntimeError(f"{name}: {result.state}: {result.reason}")
            texts = _page_texts(result)
            rates = [cer(texts.get(i + 1, ""), source) for i, source in enumerate(sources)]
            results[name] = {
                "style": asdict(style),
                "pages": pages,
                "cer_mean": round(statistics.fmean(rates), 4),
                "cer_max": round(max(rates), 4),
                "cer_per_page": [round(r, 4) for r in rates],
                "ocr_s_per_page": round(result.ocr_seconds / max(1, result.ocr_pages), 2),
                "wall_s_per_page": round(wall / pages, 2),
            }
            print(
                f"{name}: CER mean {statistics.fmean(rates):.2%}, max {max(rates):.2%}; "
                f"{result.ocr_seconds / max(1, result.ocr_pages):.2f} s/page of OCR",
                flush=True,
            )
    finally:
        extractor.close()
    return results


def _page_texts(result: object) -> dict[int, str]:
    """The chunks' text put back together by page (chunks never cross a page)."""
    texts: dict[int, list[str]] = {}
    for chunk in result.chunks:  # type: ignore[attr-defined]
        texts.setdefault(chunk.page or 1, []).append(chunk.text)
    return {page: " ".join(parts) for page, parts in texts.items()}


def first_document(work: Path) -> dict[str, float]:
    """What the first scan costs on top: starting the child, importing the OCR stack and
    loading its models (once per child: the child is long-lived)."""
    from app.library.extractor import Extractor

    path = scanned_image(kjv_pages("ruth.txt", 1)[0], work / "first.png")
    extractor = Extractor(timeout_s=120)
    try:
        started = time.perf_counter()
        first = extractor.extract(path)
        first_s = time.perf_counter() - started
        started = time.perf_counter()
        extractor.extract(path)
        second_s = time.perf_counter() - started
    finally:
        extractor.close()
    return {
        "first_image_s": round(first_s, 2),
        "same_image_again_s": round(second_s, 2),
        "start_and_model_load_s": round(first_s - second_s, 2),
        "ocr_s": round(first.ocr_seconds, 2),
    }


def make_folder(folder: Path, documents: int = 50, scans: int = 5) -> dict[str, str]:
    """`documents` two-page documents of KJV text, `scans` of them scanned (a scanned PDF and a
    two-page TIFF, as scanners save them, alternately), the others text (.txt and text-layer
    PDFs, alternately). Returns name -> kind."""
    books = _books()
    kinds: dict[str, str] = {}
    every = documents // scans
    for index in range(documents):
        pages = kjv_pages(books[index % len(books)], 2, 11 * index)
        if index % every == every - 1:
            style = ScanStyle(seed=index)
            if (index // every) % 2 == 0:
                name = f"scan-{index:02}.pdf"
                scanned_pdf(pages, folder / name, style=style)
            else:
                name = f"scan-{index:02}.tiff"
                first, second = scan_pages(pages, style=style)
                first.save(folder / name, save_all=True, append_images=[second], compression="tiff_lzw")  # type: ignore[attr-defined]
            kinds[name] = "scan"
        elif index % 2:
            name = f"text-{index:02}.pdf"
            typeset(pages, folder / name)
            kinds[name] = "text"
        else:
            name = f"text-{index:02}.txt"
            (folder / name).write_text("\n\n".join(pages), encoding="utf-8")
            kinds[name] = "text"
    return kinds


def encoder_ms_per_chunk() -> float | None:
    path = RESULTS / "retrieval-speed.json"
    try:
        return float(json.loads(path.read_text(encoding="utf-8"))["indexing"]["encoder_ms_per_chunk"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def measure_share(work: Path, encoder_ms: float | None) -> dict[str, object]:
    """Read every document of a folder with 10 % scans in the child, as the indexer does."""
    from app.library.extractor import Extractor

    folder = work / "folder"
    folder.mkdir()
    kinds = make_folder(folder)
    extractor = Extractor(timeout_s=120)
    rows = []
    try:
        extractor.extract(folder / "text-00.txt")  # the child's start is not a document's cost
        for name in sorted(kinds):
            started = time.perf_counter()
            result = extractor.extract(folder / name)
            wall = time.perf_counter() - started
            if result.state.value != "ready":
                raise RuntimeError(f"{name}: {result.state}: {result.reason}")
            characters = sum(len(c.text) for c in result.chunks)
            rows.append((kinds[name], wall, result.ocr_seconds, result.ocr_pages, characters))
    finally:
        extractor.close()
    reading_s = sum(r[1] for r in rows)
    ocr_s = sum(r[2] for r in rows)
    scan_read_s = sum(r[1] for r in rows if r[0] == "scan")
    chunks = sum(max(1, round(r[4] / CHUNK_CHARS)) for r in rows)
    result: dict[str, object] = {
        "documents": len(rows),
        "scanned_documents": sum(1 for r in rows if r[0] == "scan"),
        "ocr_pages": sum(r[3] for r in rows),
        "reading_s": round(reading_s, 2),
        "reading_scans_s": round(scan_read_s, 2),
        "reading_text_s": round(reading_s - scan_read_s, 2),
        "ocr_s": round(ocr_s, 2),
        "ocr_share_of_reading": round(ocr_s / reading_s, 3),
        "chunks_estimated": chunks,
    }
    if encoder_ms is not None:
        encoding_s = chunks * encoder_ms / 1000
        result.update(
            {
                "encoder_ms_per_chunk": encoder_ms,
                "encoding_s_estimated": round(encoding_s, 1),
                "ocr_share_of_indexing": round(ocr_s / (reading_s + encoding_s), 3),
            }
        )
    return result


def measure_indexing(work: Path, bundle: Path, reading: dict[str, object]) -> dict[str, object]:
    """The folder indexed by the library end to end, with OCR on and off, as the app indexes it."""
    from app.library.library import Library
    from inference import DolphinModel

    folder = work / "folder"
    model = DolphinModel.load(bundle)
    runs: dict[str, dict[str, float]] = {}
    for ocr in (True, False):
        library = Library(work / f"data-ocr-{'on' if ocr else 'off'}", model, ocr=ocr)
        library.add_folder(folder)
        started = time.perf_counter()
        library.start()
        if not library.index_until_done(timeout=3600):
            raise RuntimeError("indexing did not finish in an hour")
        seconds = time.perf_counter() - started
        chunks = sum(d.chunk_count for d in library.store.documents())
        library.stop()
        runs["ocr_on" if ocr else "ocr_off"] = {
            "indexing_s": round(seconds, 1),
            "chunks": chunks,
            "load_average_after": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        }
        print(f"indexed with OCR {'on' if ocr else 'off'}: {runs['ocr_on' if ocr else 'ocr_off']}", flush=True)
    on, off = runs["ocr_on"]["indexing_s"], runs["ocr_off"]["indexing_s"]
    # OCR's time inside the indexing run itself: what turning it on added, less encoding the
    # scans' chunks at the run's own seconds per chunk.
    extra_chunks = runs["ocr_on"]["chunks"] - runs["ocr_off"]["chunks"]
    ocr_in_run_s = on - off - extra_chunks * off / max(runs["ocr_off"]["chunks"], 1)
    return {
        "bundle_encoder": f"{model.manifest.encoder.hidden_size}-wide, {model.manifest.encoder.num_layers} layers, "
        f"{model.manifest.encoder.precision}",
        "bundle_vocabulary": model.tokenizer.vocab_size,
        **runs,
        "ocr_s": reading["ocr_s"],
        "ocr_share_of_indexing": round(float(reading["ocr_s"]) / on, 3),  # type: ignore[arg-type]
        "ocr_in_run_s": round(ocr_in_run_s, 1),
        "ocr_in_run_share_of_indexing": round(ocr_in_run_s / on, 3),
        "ocr_on_over_off": round(on / off, 3),
    }


def machine() -> dict[str, object]:
    import onnxruntime

    return {
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "onnxruntime": onnxruntime.__version__,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ocr", description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=10, help="scanned pages per CER set (default 10)")
    parser.add_argument("--encoder-ms", type=float, default=None, help="Dolphin encoder ms per chunk")
    parser.add_argument("--bundle", type=Path, help="index the folder end to end with this bundle")
    parser.add_argument("--only-share", action="store_true", help="skip the CER sets (a run for --bundle)")
    parser.add_argument("--json", type=Path, default=RESULTS / "ocr.json")
    args = parser.parse_args(argv)
    from importlib.metadata import version

    report: dict[str, object] = {
        "machine": machine(),
        "rapidocr": version("rapidocr"),
        "pypdfium2": version("pypdfium2"),
    }
    with tempfile.TemporaryDirectory() as work:
        if not args.only_share:
            report["first_document"] = first_document(Path(work))
            print(f"first document: {report['first_document']}", flush=True)
            report["cer"] = measure_cer(args.pages, Path(work))
        reading = measure_share(Path(work), args.encoder_ms or encoder_ms_per_chunk())
        report["folder_with_10_percent_scans"] = reading
        print(f"folder: {reading}", flush=True)
        if args.bundle:
            report["folder_indexed_end_to_end"] = measure_indexing(Path(work), args.bundle, reading)
    if args.only_share and args.json.exists():  # the CER figures already there stay
        report = {**json.loads(args.json.read_text(encoding="utf-8")), **report}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
