"""Reading a document into chunks, in a child process with a time and a memory limit.

Parsers of PDF, DOCX and HTML are large attack surfaces, and chunking a pathological text is
work proportional to its size: both run in one long-lived child process, so a hostile or broken
file can crash, hang or exhaust only the child. The app sees a `failed` result with a reason and a
fresh child takes the next file.

The exchange is built so that the parent can never wait forever: the child pickles its whole
answer before it writes a byte (running out of memory while pickling is reported, never a half
written message), and the parent kills the child when the answer does not arrive in time, which
turns any wait on the pipe into an end-of-file.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
import pickle
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from app.library.chunking import DEFAULT_CHUNK_TOKENS, Chunk, chunk_segments
from app.library.extract import ExtractionFailed, NothingToIndex, Segment, extract
from app.library.states import DocumentState

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MEMORY_LIMIT_MB = 2048
MAX_TEXT_CHARS = 8_000_000  # ~2M tokens, ~5,000 memories: hours of encoding on a laptop
RECEIVE_GRACE_S = 30.0  # once the child has started answering, time to move a large answer
MAX_LOG_LINES = 20

log = logging.getLogger("dolphin.extract")


@dataclass(frozen=True)
class ExtractResult:
    state: DocumentState = DocumentState.READY  # READY: read and chunked; else FAILED or SKIPPED
    reason: str | None = None
    chunks: list[Chunk] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # caveats shown with a ready document
    log: list[str] = field(default_factory=list)  # what the readers warned about, for the app's log
    seconds: float = 0.0


@dataclass(frozen=True)
class _Request:
    path: bytes
    chunk_tokens: int


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


def read_document(path: Path, counter: _WordCounter | _TokenizerCounter, chunk_tokens: int) -> ExtractResult:
    """Extract, remove the model's reserved strings, cap the length, chunk. Raises the
    extraction errors (NothingToIndex, ExtractionFailed, OSError) for the caller to describe."""
    extracted = extract(path)
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
    return ExtractResult(DocumentState.READY, None, chunks, notes)


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


def _serve(connection: multiprocessing.connection.Connection, memory_limit_mb: int, tokenizer: str | None) -> None:
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
            result = read_document(Path(os.fsdecode(request.path)), counter, request.chunk_tokens)
        except BaseException as exc:  # noqa: BLE001 - a reader bug on one file must not stop the others
            if isinstance(exc, KeyboardInterrupt):
                return
            state, reason = _describe(exc, memory_limit_mb)
            result = ExtractResult(state, reason)
        result = ExtractResult(
            result.state, result.reason, result.chunks, result.notes, collect.lines, time.perf_counter() - started
        )
        try:
            payload = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
        except MemoryError:
            result = ExtractResult(DocumentState.FAILED, f"needs more than {memory_limit_mb} MB to read")
            payload = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            connection.send_bytes(payload)
        except (OSError, ValueError):
            return


class Extractor:
    """One long-lived child process; restarted after a crash or a timeout."""

    def __init__(
        self,
        tokenizer: Path | None = None,
        chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        memory_limit_mb: int = DEFAULT_MEMORY_LIMIT_MB,
    ) -> None:
        self.tokenizer = tokenizer
        self.chunk_tokens = chunk_tokens
        self.timeout_s = timeout_s
        self.memory_limit_mb = memory_limit_mb
        self._context = multiprocessing.get_context("spawn")
        self._process: multiprocessing.process.BaseProcess | None = None
        self._connection: multiprocessing.connection.Connection | None = None
        self._lock = threading.Lock()

    @property
    def child_pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def _start(self) -> None:
        parent, child = self._context.Pipe()
        tokenizer = os.fspath(self.tokenizer) if self.tokenizer else None
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

    def _kill_child(self) -> None:
        process = self._process
        if process is not None and process.is_alive():
            process.kill()

    def extract(self, path: Path) -> ExtractResult:
        with self._lock:
            return self._extract(path)

    def _extract(self, path: Path) -> ExtractResult:
        if self._process is None or not self._process.is_alive():
            self._close()
            self._start()
        connection, started = self._connection, time.perf_counter()
        assert connection is not None
        try:
            connection.send(_Request(os.fsencode(path), self.chunk_tokens))
            if connection.poll(self.timeout_s):
                # The answer has begun: a large one may take a moment to move, but never forever.
                watchdog = threading.Timer(RECEIVE_GRACE_S, self._kill_child)
                watchdog.daemon = True
                watchdog.start()
                try:
                    result: ExtractResult = pickle.loads(connection.recv_bytes())
                finally:
                    watchdog.cancel()
                for line in result.log:
                    log.info("%s: %s", path, line)
                return result
            reason = f"reading it took longer than {self.timeout_s:g} s (stopped)"
        except (EOFError, OSError, pickle.UnpicklingError):
            elapsed = time.perf_counter() - started
            if elapsed >= self.timeout_s:
                reason = f"reading it took longer than {self.timeout_s:g} s (stopped)"
            else:
                reason = "the reader crashed on this file (it may be corrupt or too large)"
        self._close()
        return ExtractResult(DocumentState.FAILED, reason, seconds=time.perf_counter() - started)
