"""Reading a document into chunks, in a child process with a time and a memory limit.

Parsers of PDF, DOCX and HTML are large attack surfaces, and chunking a pathological text is
work proportional to its size: both run in one long-lived child process, so a hostile or broken
file can crash, hang or exhaust only the child. The app sees a `failed` result with a reason and a
fresh child takes the next file.

The exchange is built so that the parent can never wait forever: the child pickles its whole
answer before it writes a byte (running out of memory while pickling is reported, never a half
written message), and the parent kills the child when the answer does not arrive in time, which
turns any wait on the pipe into an end-of-file.

OCR (scanned PDF pages, image files) is slow, so it is announced page by page: before each page
it reads by OCR the child sends a `PageProgress` and waits for the parent's `PageStep`. The
parent hands the progress to the caller's `on_page` (the indexer shows "reading page 3 of 40
(OCR)" and holds the page back while a question is answered, or stops the document) and answers
GO or STOP. The time limit applies to each stretch between two messages: reading the text
layer, each OCR'd page, chunking; time spent in `on_page` never counts. The memory limit is the
same for all of it.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.library.chunking import DEFAULT_CHUNK_TOKENS, Chunk, chunk_segments
from app.library.extract import ExtractionFailed, NothingToIndex, Segment, extract
from app.library.ocr import OcrOptions, OcrStopped, PageCallback, PageProgress, PageStep
from app.library.states import DocumentState

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MEMORY_LIMIT_MB = 2048
MAX_TEXT_CHARS = 8_000_000  # ~2M tokens, ~5,000 memories: hours of encoding on a laptop
RECEIVE_GRACE_S = 30.0  # once the child has started answering, time to move a large answer
MAX_LOG_LINES = 20
M_ARENA_MAX = -8  # mallopt's parameter number (malloc.h)
# A child past this share of its memory limit is replaced after its answer, before it fails a
# document for want of memory (OCR needs up to ~600 MB on top of the models' ~400 MB).
RECYCLE_AT = 0.7

log = logging.getLogger("dolphin.extract")


@dataclass(frozen=True)
class ExtractResult:
    state: DocumentState = DocumentState.READY  # READY: read and chunked; else FAILED or SKIPPED
    reason: str | None = None
    chunks: list[Chunk] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # caveats shown with a ready document
    log: list[str] = field(default_factory=list)  # what the readers warned about, for the app's log
    seconds: float = 0.0
    ocr_pages: int = 0  # pages read by OCR
    ocr_seconds: float = 0.0  # of `seconds`, the time OCR took
    # STOP answered to a page: nothing was read (state PENDING); the document is to be read again
    stopped: bool = False
    short_of_memory: bool = False  # all or part of it failed for want of memory


@dataclass(frozen=True)
class _Request:
    path: bytes
    chunk_tokens: int
    ocr: OcrOptions = field(default_factory=OcrOptions)


@dataclass(frozen=True)
class _Page:
    """The child is about to read a page by OCR and waits for a PageStep."""

    progress: PageProgress


class _Collect(logging.Handler):
    """The child's warnings (pypdf's, mostly), handed back with the result."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.lines) < MAX_LOG_LINES:
            self.lines.append(f"{record.name}: {record.getMessage()[:300]}")


class _WordCounter:
    """Token counts without a tokenizer (tests of the library that bring no bundle)."""

    def count(self, text: str) -> int:
        return len(text.split())

    def clean(self, text: str) -> tuple[str, list[str]]:
        return text, []


class _TokenizerCounter:
    def __init__(self, path: str) -> None:
        from inference.tokenizer import DolphinTokenizer

        self._tokenizer = DolphinTokenizer(Path(path))

    def count(self, text: str) -> int:
        return len(self._tokenizer.encode(text))

    def clean(self, text: str) -> tuple[str, list[str]]:
        cleaned = self._tokenizer.clean(text)
        return cleaned.text, cleaned.removed


def read_document(
    path: Path,
    counter: _WordCounter | _TokenizerCounter,
    chunk_tokens: int,
    ocr: OcrOptions | None = None,
    on_page: PageCallback | None = None,
) -> ExtractResult:
    """Extract, remove the model's reserved strings, cap the length, chunk. Raises the
    extraction errors (NothingToIndex, ExtractionFailed, OSError, OcrStopped) for the caller
    to describe."""
    extracted = extract(path, ocr, on_page)
    notes = list(extracted.notes)
    segments: list[Segment] = []
    removed: list[str] = []
    budget = MAX_TEXT_CHARS
    for segment in extracted.segments:
        text, gone = counter.clean(segment.text)
        removed += gone
        if len(text) > budget:
            notes.append(f"only the first {MAX_TEXT_CHARS:,} characters were indexed")
            text = text[:budget]
        budget -= len(text)
        segments.append(Segment(text, segment.page))
        if budget <= 0:
            break
    if removed:
        names = ", ".join(sorted(set(removed))[:3])
        notes.append(f"{len(removed):,} string(s) the model reserves were removed ({names})")
    if not any(s.text.strip() for s in segments):
        raise NothingToIndex("no text (only strings the model reserves)" if removed else "no text")
    _, chunks = chunk_segments(segments, counter.count, chunk_tokens)
    if not chunks:
        raise NothingToIndex("no text")
    return ExtractResult(
        DocumentState.READY,
        None,
        chunks,
        notes,
        ocr_pages=extracted.ocr_pages,
        ocr_seconds=extracted.ocr_seconds,
        short_of_memory=extracted.short_of_memory,
    )


def _describe(exc: BaseException, memory_limit_mb: int) -> tuple[DocumentState, str]:
    failed = DocumentState.FAILED
    if isinstance(exc, NothingToIndex):
        return DocumentState.SKIPPED, str(exc)
    if isinstance(exc, ExtractionFailed):
        return failed, str(exc)
    if isinstance(exc, MemoryError):
        return failed, f"needs more than {memory_limit_mb} MB to read"
    if isinstance(exc, PermissionError):
        return failed, "permission denied"
    if isinstance(exc, FileNotFoundError):
        return failed, "the file disappeared while it was being read"
    if isinstance(exc, RecursionError):
        return failed, "cannot parse: nested too deeply"
    if isinstance(exc, OSError):
        return failed, f"cannot read: {exc.strerror or exc}"
    return failed, f"cannot parse: {type(exc).__name__}: {str(exc)[:160]}"


class _ParentGone(BaseException):
    """The pipe closed while the child waited for a PageStep: the parent is gone, so is the work."""


def _ask_parent(connection: multiprocessing.connection.Connection, progress: PageProgress) -> PageStep:
    """Announce a page and wait for the parent's answer (the child's `on_page`)."""
    try:
        connection.send_bytes(pickle.dumps(_Page(progress), protocol=pickle.HIGHEST_PROTOCOL))
        step = connection.recv()
    except (EOFError, OSError) as exc:
        raise _ParentGone from exc
    return step if isinstance(step, PageStep) else PageStep.STOP


def _glibc() -> Any:
    """The C library where it is glibc (Linux), for the two calls below; else None."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except (OSError, AttributeError, ImportError):
        return None


def _serve(connection: multiprocessing.connection.Connection, memory_limit_mb: int, tokenizer: str | None) -> None:
    libc = _glibc()
    if libc is not None:
        # glibc reserves an arena of 64 MB of address space for each thread that allocates, and
        # the memory limit is on address space: ONNX Runtime's and OpenCV's threads (OCR) would
        # spend it on reservations and fail with bad_alloc long before using the memory.
        libc.mallopt(M_ARENA_MAX, 2)
    try:
        import resource

        limit = memory_limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):
        pass
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # no thread pool in a process with a memory limit
    collect = _Collect()
    logging.getLogger().addHandler(collect)
    logging.captureWarnings(True)
    counter: _WordCounter | _TokenizerCounter | None = None
    while True:
        try:
            request: _Request = connection.recv()
        except (EOFError, OSError):
            return
        started = time.perf_counter()
        collect.lines = []
        try:
            if counter is None:
                counter = _TokenizerCounter(tokenizer) if tokenizer else _WordCounter()
            path = Path(os.fsdecode(request.path))
            result = read_document(
                path, counter, request.chunk_tokens, request.ocr, lambda progress: _ask_parent(connection, progress)
            )
        except OcrStopped as exc:
            result = ExtractResult(DocumentState.PENDING, str(exc), stopped=True)
        except BaseException as exc:  # noqa: BLE001 - a reader bug on one file must not stop the others
            if isinstance(exc, (KeyboardInterrupt, _ParentGone)):
                return
            state, reason = _describe(exc, memory_limit_mb)
            result = ExtractResult(state, reason, short_of_memory=isinstance(exc, MemoryError))
        result = dataclasses.replace(result, log=collect.lines, seconds=time.perf_counter() - started)
        try:
            payload = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
        except MemoryError:
            result = ExtractResult(DocumentState.FAILED, f"needs more than {memory_limit_mb} MB to read")
            payload = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            connection.send_bytes(payload)
        except (OSError, ValueError):
            return
        del result, payload
        if libc is not None:
            libc.malloc_trim(0)  # a page picture's buffers go back to the system between documents


class Extractor:
    """One long-lived child process; restarted after a crash or a timeout."""

    def __init__(
        self,
        tokenizer: Path | None = None,
        chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        memory_limit_mb: int = DEFAULT_MEMORY_LIMIT_MB,
        ocr: OcrOptions | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.chunk_tokens = chunk_tokens
        self.timeout_s = timeout_s
        self.memory_limit_mb = memory_limit_mb
        # Sent with every request: set it (from the `ocr` setting) and the next document follows.
        self.ocr = ocr or OcrOptions()
        self._context = multiprocessing.get_context("spawn")
        self._process: multiprocessing.process.BaseProcess | None = None
        self._connection: multiprocessing.connection.Connection | None = None
        self._lock = threading.Lock()
        self._served = 0  # documents the current child has answered

    @property
    def child_pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _start(self) -> None:
        parent, child = self._context.Pipe()
        tokenizer = os.fspath(self.tokenizer) if self.tokenizer else None
        self._served = 0
        self._process = self._context.Process(
            target=_serve, args=(child, self.memory_limit_mb, tokenizer), daemon=True, name="dolphin-extract"
        )
        self._process.start()
        child.close()
        self._connection = parent

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._process is not None:
            if self._connection is not None:
                self._connection.close()
            try:
                self._process.kill()
                self._process.join(5)
            except (AttributeError, OSError, ValueError):
                pass  # it never started (a failed spawn), or is already gone
        self._process = self._connection = None

    def _child_address_space(self) -> int:
        """Bytes of address space the child holds (Linux; 0 elsewhere). It only grows: the heap
        fragments over thousands of documents, and an OCR'd page can need a few hundred MB."""
        try:
            with open(f"/proc/{self.child_pid}/statm", encoding="ascii") as statm:
                return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError, AttributeError):
            return 0

    def _kill_child(self) -> None:
        process = self._process
        if process is not None and process.is_alive():
            process.kill()

    def extract(self, path: Path, on_page: PageCallback | None = None) -> ExtractResult:
        """Read one document in the child. `on_page(progress)` runs on this thread before each
        page the child reads by OCR and answers GO or STOP; it may block (to let a question be
        answered first) and that time is not counted against the time limit. An exception from
        it stops the document and is raised here once the child has answered."""
        with self._lock:
            seasoned = self._served > 0 and self._process is not None and self._process.is_alive()
            result = self._extract(path, on_page)
            if result.short_of_memory and seasoned:
                # A child that has read many documents holds a fragmented heap: a fresh one has its
                # whole memory limit for this document.
                log.info("%s: short of memory after %d documents: read again in a fresh reader", path, self._served)
                self._close()
                result = self._extract(path, on_page)
            return result

    def _extract(self, path: Path, on_page: PageCallback | None) -> ExtractResult:
        if self._process is None or not self._process.is_alive():
            self._close()
            self._start()
        connection, started = self._connection, time.perf_counter()
        assert connection is not None
        waiting_since = started  # the time limit counts from the last message
        page: PageProgress | None = None  # the page being read by OCR, if any
        raised: BaseException | None = None  # from on_page: raised once the child has answered
        result: ExtractResult | None = None
        try:
            connection.send(_Request(os.fsencode(path), self.chunk_tokens, self.ocr))
            while result is None and connection.poll(max(0.0, self.timeout_s - (time.perf_counter() - waiting_since))):
                # The answer has begun: a large one may take a moment to move, but never forever.
                watchdog = threading.Timer(RECEIVE_GRACE_S, self._kill_child)
                watchdog.daemon = True
                watchdog.start()
                try:
                    message: ExtractResult | _Page = pickle.loads(connection.recv_bytes())
                finally:
                    watchdog.cancel()
                if isinstance(message, ExtractResult):
                    result = message
                    break
                page, step = message.progress, PageStep.STOP
                if raised is None:
                    try:
                        step = on_page(page) if on_page is not None else PageStep.GO
                    except BaseException as exc:  # noqa: BLE001 - the child is stopped first, then it is raised
                        raised = exc
                connection.send(step if isinstance(step, PageStep) else PageStep.GO)
                waiting_since = time.perf_counter()
        except (EOFError, OSError, pickle.UnpicklingError):
            pass
        if result is not None:
            self._served += 1
            for line in result.log:
                log.info("%s: %s", path, line)
            if self._child_address_space() > RECYCLE_AT * self.memory_limit_mb * 1024 * 1024:
                self._close()  # idle now; a fresh child takes the next document with all its memory
            if raised is not None:
                raise raised
            return result
        if time.perf_counter() - waiting_since >= self.timeout_s:
            what = f"reading page {page.page:,} by OCR" if page is not None else "reading it"
            reason = f"{what} took longer than {self.timeout_s:g} s (stopped)"
        elif page is not None:
            reason = (
                f"the reader crashed on page {page.page:,} (OCR): the page may be corrupt, "
                f"or need more than {self.memory_limit_mb} MB"
            )
        else:
            reason = "the reader crashed on this file (it may be corrupt or too large)"
        self._close()
        if raised is not None:
            raise raised
        return ExtractResult(DocumentState.FAILED, reason, seconds=time.perf_counter() - started)
