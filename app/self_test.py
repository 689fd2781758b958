"""`dolphin-desk --self-test BUNDLE`: prove an installed copy works, end to end, in seconds.

Built for the packaged app, where a missing native library or Qt plugin only shows up when the
binary runs: it loads a bundle, encodes a text, answers a question, opens the main window
offscreen on a throwaway data folder, and checks that no conversion-only package (torch,
transformers, ORT GenAI) was pulled in. Exit status 0 only if every step passed.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

CONVERSION_ONLY = ("torch", "transformers", "onnxruntime_genai", "safetensors", "onnx_export.convert")
CONTEXT = "The harbour keeper of Ostend lights the green lamp at dusk and logs every ship that passes."
QUESTION = "What does the harbour keeper do at dusk?"


def run_self_test(bundle: Path, write: Callable[[str], None] = print, window: bool = True) -> int:
    from app import __version__

    write(f"Dolphin Desk {__version__} self-test, Python {sys.version.split()[0]}, frozen={is_frozen()}")
    failures = 0

    def step(name: str, action: Callable[[], str]) -> None:
        nonlocal failures
        started = time.perf_counter()
        try:
            detail = action()
        except Exception as exc:  # noqa: BLE001 - every failure becomes a FAIL line, then exit 1
            failures += 1
            write(f"FAIL {name}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            return
        write(f"ok   {name} ({time.perf_counter() - started:.2f} s){': ' + detail if detail else ''}")

    loaded: dict[str, object] = {}

    def load() -> str:
        from inference import DolphinModel

        loaded["model"] = model = DolphinModel.load(bundle)
        return f"{model.manifest.precision} bundle on {model.provider}, {model.threads} threads"

    def encode() -> str:
        loaded["memory"] = memory = loaded["model"].encode(CONTEXT)  # type: ignore[attr-defined]
        return f"{memory.token_count} tokens -> memory {tuple(memory.states.shape)}"

    def answer() -> str:
        from inference.sampling import GenerationSettings

        stream = loaded["model"].answer(  # type: ignore[attr-defined]
            QUESTION, [loaded["memory"]], GenerationSettings(max_new_tokens=8)
        )
        stream.run()
        if not stream.token_ids:
            raise RuntimeError("the decoder produced no tokens")
        return f"{len(stream.token_ids)} tokens, first after {stream.stats.first_token_s:.2f} s"

    def embed() -> str:
        embedder = loaded["model"].embedder  # type: ignore[attr-defined]
        if embedder is None:
            return "the bundle has no embedder: retrieval is BM25 only"
        vectors = embedder.embed([QUESTION, CONTEXT])
        similarity = float(vectors[0] @ vectors[1])
        return f"{embedder.identity}: {vectors.shape[1]} dimensions, question/context cosine {similarity:.2f}"

    def readers_and_downloader() -> str:
        import charset_normalizer
        import docx
        import pathspec
        import pypdf
        import watchdog.observers
        from huggingface_hub import snapshot_download

        from app.library import extract

        loaded_modules = (charset_normalizer, docx, pathspec, pypdf, watchdog.observers, snapshot_download, extract)
        return f"{len(loaded_modules)} modules: PDF, DOCX, encodings, ignore files, folder watching, hub download"

    def read_in_child() -> str:
        from app.library.extractor import Extractor
        from app.library.states import DocumentState
        from inference.bundle import load_manifest

        with tempfile.TemporaryDirectory(prefix="dolphin-desk-self-test-") as folder:
            text = Path(folder) / "notes.txt"
            text.write_text(CONTEXT, encoding="utf-8")
            pdf = Path(folder) / "page.pdf"
            pdf.write_bytes(_one_page_pdf(CONTEXT))
            extractor = Extractor(load_manifest(bundle).path("tokenizer"), timeout_s=60)
            try:
                results = [extractor.extract(path) for path in (text, pdf)]
            finally:
                extractor.close()
        for result in results:
            if result.state is not DocumentState.READY or not result.chunks:
                raise RuntimeError(f"the extraction child failed: {result.state}: {result.reason}")
        pages = results[1].chunks[0].page
        return f"text and PDF (page {pages}) read and chunked in a child process"

    def no_conversion_packages() -> str:
        loaded_names = [name for name in CONVERSION_ONLY if name in sys.modules]
        if loaded_names:
            raise RuntimeError("conversion-only packages were imported: " + ", ".join(loaded_names))
        return "torch, transformers and ORT GenAI not imported"

    step("load bundle", load)
    if "model" in loaded:
        step("encode a text", encode)
    if "memory" in loaded:
        step("answer a question", answer)
        step("embed for retrieval", embed)
    step("document readers and downloader", readers_and_downloader)
    step("read documents in the extraction child", read_in_child)
    if window:
        step("open the main window", lambda: open_window(bundle))
    step("runtime imports", no_conversion_packages)
    write("self-test passed" if not failures else f"self-test FAILED ({failures} step(s))")
    return 0 if not failures else 1


def open_window(bundle: Path) -> str:
    from app.ui.self_test import open_main_window

    with tempfile.TemporaryDirectory(prefix="dolphin-desk-self-test-") as data_dir:
        return open_main_window(bundle, Path(data_dir))


def _one_page_pdf(text: str) -> bytes:
    """A minimal valid PDF with one line of text (Helvetica), without any PDF-writing package."""
    escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    content = f"BT /F1 11 Tf 40 760 Td ({escaped}) Tj ET"
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 4 0 R >> >> "
        "/Contents 5 0 R >>",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        f"<< /Length {len(content)} >>\nstream\n{content}\nendstream",
    ]
    data = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(data))
        data += f"{number} 0 obj\n{body}\nendobj\n".encode("latin-1")
    xref = len(data)
    data += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    data += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    return data + f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()


def is_frozen() -> bool:
    return bool(getattr(sys, "frozen", False))
