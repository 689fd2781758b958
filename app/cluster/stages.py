"""The two stages of the cluster pipeline, as Ray Data callable classes (one instance per actor).

`ReadStage` is the desktop's reader: the same checks as the indexer (regular file, links out of
the folder, size limit, patterns), the same extraction child process (time and memory limits, a
crash costs only the child) and the same chunker, so a document's chunks are those the desktop
makes. `EncodeStage` loads the bundle's encoder once per actor and runs `DolphinModel.encode`,
the indexer's own call, one chunk at a time, with ONNX Runtime's threads set to the actor's CPUs.

Rows are pyarrow tables. A document becomes one row per chunk (`ordinal` 0..n-1, `chunks` = n),
or one row with `ordinal` -1 when it has no chunks (failed, skipped, gone); the driver puts the
rows of a document back together (app/cluster/job.py). Nothing here raises for one document:
whatever goes wrong ends that document with a reason.

This module is imported by Ray's workers; it imports pyarrow (which Ray brings), never Ray.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from app.library.extractor import Extractor, ExtractResult
from app.library.filters import FolderFilter
from app.library.ocr import OcrOptions
from app.library.states import DocumentState
from app.logs import describe_exception
from inference.bundle import file_digest

if TYPE_CHECKING:
    from inference.encoding_model import EncodingModel

GONE = "gone"  # the file vanished between the scan and the read: nothing to record

READ_SCHEMA = pa.schema(
    [
        ("key", pa.int64()),
        ("size", pa.int64()),
        ("mtime", pa.float64()),
        ("content_hash", pa.string()),
        ("state", pa.string()),
        ("reason", pa.string()),
        ("note", pa.string()),
        ("chunks", pa.int32()),
        ("ordinal", pa.int32()),
        ("text", pa.string()),
        ("char_start", pa.int64()),
        ("char_end", pa.int64()),
        ("page", pa.int32()),
        ("token_count", pa.int32()),
        ("text_hash", pa.string()),
    ]
)
ENCODED_FIELDS = [
    ("states", pa.binary()),  # fp16 bytes; null where the pack already has the memory
    ("rows", pa.int32()),
    ("cols", pa.int32()),
    ("embedding", pa.binary()),  # float32 bytes; null without an embedder or when already known
    ("repeat", pa.bool_()),  # another row of this run encodes the same text: no memory here
    ("error", pa.string()),  # why this chunk could not be encoded (its document fails)
    ("actor", pa.int64()),  # the encoding actor's process id, and its peak RSS so far
    ("actor_peak_rss_kb", pa.int64()),
]


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


class ReadStage:
    """Documents -> chunk rows, through one long-lived extraction child per actor."""

    def __init__(
        self,
        tokenizer: str,
        chunk_tokens: int,
        roots: list[str],
        include: list[str],
        exclude: list[str],
        ocr: bool,
    ) -> None:
        self._extractor = Extractor(Path(tokenizer), chunk_tokens, ocr=OcrOptions(enabled=ocr))
        self._filters = [FolderFilter(Path(root), list(include), list(exclude)) for root in roots]

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows: list[dict[str, object]] = []
        for key, root, raw in zip(
            batch.column("key").to_pylist(), batch.column("root").to_pylist(), batch.column("path").to_pylist(),
            strict=True,
        ):  # fmt: skip
            rows.extend(self._read(int(key), self._filters[int(root)], Path(os.fsdecode(raw))))
        return pa.Table.from_pylist(rows, schema=READ_SCHEMA)

    def _read(self, key: int, folder_filter: FolderFilter, path: Path) -> list[dict[str, object]]:
        """The indexer's steps for one document (app/library/indexer.py, `Indexer._index`)."""
        facts: dict[str, object] = {"key": key}

        def final(state: str, reason: str | None) -> list[dict[str, object]]:
            return [{**facts, "state": state, "reason": reason, "chunks": 0, "ordinal": -1}]

        try:
            if not os.path.lexists(path):
                return final(GONE, None)
            stat = path.stat()
            if not path.is_file():
                return final(DocumentState.SKIPPED.value, "not a regular file")
            if path.is_symlink() and not _inside(path.resolve(), folder_filter.root.resolve()):
                return final(DocumentState.SKIPPED.value, "a link to a file outside this folder")
            facts.update(size=stat.st_size, mtime=stat.st_mtime)
            reason = folder_filter.too_large(stat.st_size) or folder_filter.left_out_reason(path)
            if reason:
                return final(DocumentState.SKIPPED.value, reason)
            facts["content_hash"] = file_digest(path)
        except FileNotFoundError:
            return final(GONE, None)
        except PermissionError:
            return final(DocumentState.FAILED.value, "permission denied")
        except OSError as exc:
            if path.is_symlink():
                return final(DocumentState.FAILED.value, "cannot read: a symbolic link that loops or points nowhere")
            return final(DocumentState.FAILED.value, f"cannot read: {exc.strerror or exc}")
        try:
            result: ExtractResult = self._extractor.extract(path)
        except Exception as exc:  # noqa: BLE001 - one document's problem must not stop the job
            return final(DocumentState.FAILED.value, f"could not be indexed: {describe_exception(exc)}")
        if result.state is not DocumentState.READY or not result.chunks:
            return final(result.state.value, result.reason)
        note = "; ".join(result.notes) or None
        return [
            {
                **facts,
                "state": DocumentState.READY.value,
                "note": note,
                "chunks": len(result.chunks),
                "ordinal": ordinal,
                "text": chunk.text,
                "char_start": chunk.char_start,
                "char_end": chunk.char_end,
                "page": chunk.page,
                "token_count": chunk.token_count,
                "text_hash": chunk.text_hash,
            }
            for ordinal, chunk in enumerate(result.chunks)
        ]

    def __del__(self) -> None:
        self._extractor.close()


class EncodeStage:
    """Chunk rows -> the same rows with their memory (fp16) and embedding (float32) as bytes.

    The encoder is loaded once, when the actor starts. Chunks whose memory the pack already holds
    (`known`: sorted sha256 digests, shared read-only through Ray's object store) are passed on
    without encoding: that is what makes a rerun resume instead of starting over. `claim` (the
    run's ledger of chunk texts taken, app/cluster/job.py) says which of the rest this actor
    encodes first; a text another row of the run has taken (a copied file, a repeated page) is
    passed on as a repeat, and the driver writes its document once that memory is in the pack.
    """

    def __init__(
        self,
        bundle: str,
        threads: int,
        provider: str,
        known: np.ndarray,
        claim: Callable[[list[str]], list[bool]] | None = None,
    ) -> None:
        from inference.encoding_model import EncodingModel

        self._model = EncodingModel.load(bundle, provider=provider, threads=threads)
        self._known = known
        self._claim = claim

    def _is_known(self, text_hash: str) -> bool:
        if not len(self._known):
            return False
        digest = np.frombuffer(bytes.fromhex(text_hash), dtype="S32")[0]
        at = int(np.searchsorted(self._known, digest))
        return at < len(self._known) and self._known[at] == digest

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = batch.column("text").to_pylist()
        hashes = batch.column("text_hash").to_pylist()
        count = len(texts)
        states: list[bytes | None] = [None] * count
        shapes: list[tuple[int | None, int | None]] = [(None, None)] * count
        errors: list[str | None] = [None] * count
        todo = [i for i in range(count) if texts[i] is not None and not self._is_known(hashes[i])]
        repeat = [False] * count
        if todo and self._claim is not None:
            first = self._claim([hashes[i] for i in todo])
            for i, taken_here in zip(todo, first, strict=True):
                repeat[i] = not taken_here
            todo = [i for i in todo if not repeat[i]]
        for i in todo:
            try:
                states[i], *shape = memory_bytes(self._model, texts[i])
                shapes[i] = (shape[0], shape[1])
            except Exception as exc:  # noqa: BLE001 - the chunk's document fails, not the job
                errors[i] = f"could not be indexed: {describe_exception(exc)}"
        embeddings: list[bytes | None] = [None] * count
        embedder = self._model.embedder
        ready = [i for i in todo if states[i] is not None]
        if embedder is not None and ready:
            try:
                vectors = embedder.embed([texts[i] for i in ready])
                for i, vector in zip(ready, vectors, strict=True):
                    embeddings[i] = np.ascontiguousarray(vector, dtype=np.float32).tobytes()
            except Exception as exc:  # noqa: BLE001 - as above
                for i in ready:
                    errors[i] = f"could not be embedded: {describe_exception(exc)}"
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        columns = {
            "states": states,
            "rows": [s[0] for s in shapes],
            "cols": [s[1] for s in shapes],
            "embedding": embeddings,
            "repeat": repeat,
            "error": errors,
            "actor": [os.getpid()] * count,
            "actor_peak_rss_kb": [peak] * count,
        }
        for name, kind in ENCODED_FIELDS:
            batch = batch.append_column(pa.field(name, kind), pa.array(columns[name], type=kind))
        return batch


def memory_bytes(model: EncodingModel, text: str) -> tuple[bytes, int, int]:
    """A chunk's memory as Store.put_memory writes it (fp16), so the pack's bytes are the library's."""
    memory = model.encode(text).states
    return np.ascontiguousarray(memory, dtype=np.float16).tobytes(), memory.shape[0], memory.shape[1]


def encode_texts(
    bundle: str, threads: int, provider: str, texts: list[str]
) -> list[tuple[bytes, int, int, bytes | None] | str]:
    """Memory bytes, shape and embedding of each text, or why it could not be encoded: the
    job's last step, for repeats whose claimed copy never reached the pack. Run where an encoder
    actor would run (a Ray task with its resources), since the bundle may need a GPU."""
    from inference.encoding_model import EncodingModel

    model = EncodingModel.load(bundle, provider=provider, threads=threads)
    results: list[tuple[bytes, int, int, bytes | None] | str] = []
    for text in texts:
        try:
            states, rows, cols = memory_bytes(model, text)
            vector = None
            if model.embedder is not None:
                vector = np.ascontiguousarray(model.embedder.embed([text])[0], dtype=np.float32).tobytes()
            results.append((states, rows, cols, vector))
        except Exception as exc:  # noqa: BLE001 - that document fails, not the job
            results.append(f"could not be indexed: {describe_exception(exc)}")
    return results
