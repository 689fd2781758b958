"""Extraction in a child process with a time and memory limit.

A hostile or broken file can crash, hang or exhaust the child; the app sees a `failed` result
with a reason and a fresh child takes the next file.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
from dataclasses import dataclass
from pathlib import Path

from app.library.extract import ExtractionFailed, NothingToIndex, Segment, extract

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MEMORY_LIMIT_MB = 2048


@dataclass(frozen=True)
class ExtractResult:
    segments: list[Segment]
    state: str = "ok"  # ok | failed | skipped
    reason: str | None = None


def _serve(connection: multiprocessing.connection.Connection, memory_limit_mb: int) -> None:
    try:
        import resource

        limit = memory_limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError):
        pass
    while True:
        try:
            path = connection.recv()
        except EOFError:
            return
        try:
            connection.send(ExtractResult(extract(Path(path))))
        except NothingToIndex as exc:
            connection.send(ExtractResult([], "skipped", str(exc)))
        except ExtractionFailed as exc:
            connection.send(ExtractResult([], "failed", str(exc)))
        except MemoryError:
            connection.send(ExtractResult([], "failed", f"needs more than {memory_limit_mb} MB to read"))
        except PermissionError:
            connection.send(ExtractResult([], "failed", "permission denied"))
        except FileNotFoundError:
            connection.send(ExtractResult([], "failed", "the file disappeared while it was being read"))
        except OSError as exc:
            connection.send(ExtractResult([], "failed", f"cannot read: {exc.strerror or exc}"))
        except Exception as exc:  # noqa: BLE001 - a parser bug on one file must not stop the others
            connection.send(ExtractResult([], "failed", f"cannot parse: {type(exc).__name__}: {str(exc)[:160]}"))


class Extractor:
    """One long-lived child process; restarted after a crash or a timeout."""

    def __init__(self, timeout_s: float = DEFAULT_TIMEOUT_S, memory_limit_mb: int = DEFAULT_MEMORY_LIMIT_MB) -> None:
        self.timeout_s = timeout_s
        self.memory_limit_mb = memory_limit_mb
        self._context = multiprocessing.get_context("spawn")
        self._process: multiprocessing.process.BaseProcess | None = None
        self._connection: multiprocessing.connection.Connection | None = None

    def _start(self) -> None:
        parent, child = self._context.Pipe()
        self._process = self._context.Process(target=_serve, args=(child, self.memory_limit_mb), daemon=True)
        self._process.start()
        child.close()
        self._connection = parent

    def close(self) -> None:
        if self._process is not None:
            if self._connection is not None:
                self._connection.close()
            self._process.kill()
            self._process.join(5)
        self._process = self._connection = None

    def extract(self, path: Path) -> ExtractResult:
        if self._process is None or not self._process.is_alive():
            self._start()
        assert self._connection is not None and self._process is not None
        try:
            self._connection.send(os.fspath(path))
            if self._connection.poll(self.timeout_s):
                return self._connection.recv()
            reason = f"reading it took longer than {self.timeout_s:g} s (stopped)"
        except (EOFError, BrokenPipeError, ConnectionResetError):
            reason = "the reader crashed on this file (it may be corrupt or too large)"
        self.close()
        return ExtractResult([], "failed", reason)
