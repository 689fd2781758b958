"""Memory packs: a corpus encoded elsewhere (a Ray cluster, app/cluster/), handed to desktops.

A pack is a folder (the format is documented in docs/PACK_FORMAT.md):

    manifest.json              what made it: encoder identity, chunker settings, tokenizer hash,
                               source roots, the list of sealed shards (with sizes and sha256)
    report.json                per document state: how many are ready, failed, skipped; why each failed
    shards/shard-000000.sqlite3   documents, chunks, fp16 memories and embeddings

Shards are SQLite files because the desktop reads them with nothing but the standard library:
the app gains no dependency (Parquet would bring pyarrow, 100 MB, into the packaged app), and a
shard is merged into the library in one transaction. Memories are keyed like the library's, by
(chunk text hash, encoder identity). A memory is stored once per pack, in the first shard whose
documents need it, so every chunk's memory lives in its own shard or an earlier one: shards are
merged in order, and after each one every imported chunk has its memory.

The writer commits each document in one transaction, so a killed job loses at most the documents
in flight; the next run seals the shard it left and goes on. Nothing here imports Ray or Qt.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from app import __version__
from app.library.store import ChunkRecord, db_path, display_path, path_from_db
from inference.bundle import file_digest

PACK_FORMAT_VERSION = 1
PACK_KIND = "dolphin-desk-memory-pack"
MANIFEST_NAME = "manifest.json"
REPORT_NAME = "report.json"
SHARDS_DIR = "shards"
SHARD_SCHEMA_VERSION = 1
SHARD_MAX_CHUNKS = 2048  # ~115 MB of memories: one import transaction, one unit of resumption

_SHARD_SCHEMA = """
CREATE TABLE documents (
    id INTEGER PRIMARY KEY,
    root INTEGER NOT NULL,           -- index into the manifest's source_roots
    path TEXT NOT NULL,              -- relative to that root (a BLOB when the name is not UTF-8)
    size INTEGER,
    mtime REAL,
    content_hash TEXT,               -- sha256 of the file's bytes
    state TEXT NOT NULL CHECK (state IN ('ready', 'failed', 'skipped', 'removed')),
    error TEXT,
    note TEXT,
    chunk_count INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE chunks (
    document_id INTEGER NOT NULL REFERENCES documents(id),
    ordinal INTEGER NOT NULL,
    text TEXT NOT NULL,
    char_start INTEGER NOT NULL,
    char_end INTEGER NOT NULL,
    page INTEGER,
    token_count INTEGER NOT NULL,
    text_hash TEXT NOT NULL,
    PRIMARY KEY (document_id, ordinal)
) WITHOUT ROWID;
CREATE TABLE memories (
    text_hash TEXT NOT NULL,
    encoder TEXT NOT NULL,
    states BLOB NOT NULL,            -- fp16, rows x cols, C order
    rows INTEGER NOT NULL,
    cols INTEGER NOT NULL,
    token_count INTEGER NOT NULL,
    PRIMARY KEY (text_hash, encoder)
) WITHOUT ROWID;
CREATE TABLE embeddings (
    text_hash TEXT NOT NULL,
    embedder TEXT NOT NULL,
    vector BLOB NOT NULL,            -- float32
    PRIMARY KEY (text_hash, embedder)
) WITHOUT ROWID;
"""


class PackError(Exception):
    """A pack that cannot be written, read or imported; one line a user can act on."""


class PackState(str, Enum):
    """A document's state in a pack: the library's final states, and `removed` (a file the
    source no longer has since an earlier run; importing it forgets the library's copy)."""

    READY = "ready"
    FAILED = "failed"
    SKIPPED = "skipped"
    REMOVED = "removed"


@dataclass(frozen=True)
class ChunkerSettings:
    """What decides a document's chunks besides its text: a pack made otherwise is refused."""

    chunk_tokens: int
    tokenizer_sha256: str

    def chunker(self, encoder_identity: str) -> str:
        """The library's name for it (documents.chunker, app/library/indexer.py)."""
        return f"{self.chunk_tokens}@{encoder_identity}"


@dataclass(frozen=True)
class EncoderFacts:
    identity: str
    rows: int  # memory tokens (32)
    cols: int  # encoder width (896 for the 0.5B)


@dataclass(frozen=True)
class EmbedderFacts:
    identity: str
    dim: int


@dataclass(frozen=True)
class ShardInfo:
    file: str  # relative to the pack
    documents: int
    chunks: int
    memories: int
    embeddings: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class PackHeader:
    """Everything that must match between the runs that fill one pack, and between a pack and
    the library that imports it."""

    encoder: EncoderFacts
    chunker: ChunkerSettings
    embedder: EmbedderFacts | None
    include: list[str]
    exclude: list[str]
    ocr: bool


@dataclass
class PackManifest:
    header: PackHeader
    source_roots: list[str] = field(default_factory=list)
    shards: list[ShardInfo] = field(default_factory=list)
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    app_version: str = __version__
    format_version: int = PACK_FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        header = self.header
        return {
            "kind": PACK_KIND,
            "format_version": self.format_version,
            "app_version": self.app_version,
            "created": self.created,
            "updated": self.updated,
            "encoder": asdict(header.encoder),
            "chunker": asdict(header.chunker),
            "embedder": asdict(header.embedder) if header.embedder else None,
            "filters": {"include": header.include, "exclude": header.exclude, "ocr": header.ocr},
            "source_roots": self.source_roots,
            "shards": [asdict(s) for s in self.shards],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PackManifest:
        """Raises KeyError, TypeError or ValueError for a manifest that lacks or mistypes a field."""
        filters = data["filters"]
        header = PackHeader(
            EncoderFacts(**data["encoder"]),
            ChunkerSettings(**data["chunker"]),
            EmbedderFacts(**data["embedder"]) if data.get("embedder") else None,
            [str(p) for p in filters["include"]],
            [str(p) for p in filters["exclude"]],
            bool(filters["ocr"]),
        )
        return cls(
            header,
            [str(r) for r in data["source_roots"]],
            [ShardInfo(**s) for s in data["shards"]],
            float(data["created"]),
            float(data["updated"]),
            str(data["app_version"]),
            int(data["format_version"]),
        )


# A pack's chunk is what the library stores for one: the same record, so the two cannot drift.
PackChunk = ChunkRecord


@dataclass(frozen=True)
class PackMemory:
    states: bytes  # fp16, as the library stores it
    rows: int
    cols: int
    token_count: int


@dataclass(frozen=True)
class PackDocument:
    root: int
    path: Path  # relative to its root
    state: PackState
    size: int | None = None
    mtime: float | None = None
    content_hash: str | None = None
    error: str | None = None
    note: str | None = None
    chunks: tuple[PackChunk, ...] = ()


@dataclass(frozen=True)
class KnownDocument:
    """A document as the pack's latest shard that mentions it has it."""

    state: PackState
    size: int | None
    mtime: float | None
    error: str | None
    content_hash: str | None


def tokenizer_sha256(tokenizer: Path) -> str:
    """The chunker's tokenizer, by content: chunk boundaries and token counts depend on it."""
    return file_digest(tokenizer)


def read_manifest(pack: Path) -> PackManifest:
    """The pack's manifest, or a PackError saying what is wrong with it."""
    pack = Path(pack).expanduser()
    path = pack / MANIFEST_NAME
    if not path.is_file():
        what = "does not exist" if not pack.exists() else f"is not a memory pack (no {MANIFEST_NAME})"
        raise PackError(f"{display_path(pack)} {what}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("kind") != PACK_KIND:
            raise PackError(f"{display_path(pack)} is not a memory pack ({MANIFEST_NAME} is of another kind)")
        version = int(data["format_version"])
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise PackError(f"{display_path(path)} is damaged ({type(exc).__name__}): copy the pack again") from None
    if version > PACK_FORMAT_VERSION:
        raise PackError(
            f"the pack is format {version}, newer than this app reads (up to {PACK_FORMAT_VERSION}): "
            "update Dolphin Desk"
        )
    try:
        return PackManifest.from_json(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise PackError(f"{display_path(path)} is incomplete (missing {exc}): copy the pack again") from None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically: a reader (or a killed writer) never sees half a manifest."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    partial.replace(path)


def open_shard(path: Path) -> sqlite3.Connection:
    """A shard for reading; refuses one of a newer shard schema."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        version = db.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.Error as exc:
        raise PackError(f"shard {display_path(path)} cannot be read ({exc}): copy the pack again") from None
    if version > SHARD_SCHEMA_VERSION:
        db.close()
        raise PackError(f"shard {display_path(path)} is of a newer format ({version}): update Dolphin Desk")
    return db


def shard_documents(db: sqlite3.Connection) -> Iterator[tuple[int, PackDocument]]:
    """(shard row id, document without chunks) in the order they were written."""
    for row in db.execute(
        "SELECT id, root, path, size, mtime, content_hash, state, error, note FROM documents ORDER BY id"
    ):
        yield (
            row[0],
            PackDocument(
                root=row[1],
                path=path_from_db(row[2]),
                state=PackState(row[6]),
                size=row[3],
                mtime=row[4],
                content_hash=row[5],
                error=row[7],
                note=row[8],
            ),
        )


class PackWriter:
    """Fills a pack, document by document; the cluster job's driver is its only user.

    Opening an existing pack checks that it was made the same way (`header`), seals a shard a
    killed run left, and reads what the pack already holds, so a rerun skips it.
    """

    def __init__(self, root: Path, header: PackHeader) -> None:
        self.root = Path(root).expanduser().resolve()
        self.header = header
        if (self.root / MANIFEST_NAME).exists():
            self.manifest = read_manifest(self.root)
            _refuse_other_header(self.manifest.header, header, self.root)
            self.manifest.header = header  # this run's patterns
            (self.root / SHARDS_DIR).mkdir(exist_ok=True)
        else:
            if self.root.exists() and (not self.root.is_dir() or any(self.root.iterdir())):
                raise PackError(f"{display_path(self.root)} is not empty and not a memory pack: choose another --out")
            (self.root / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
            self.manifest = PackManifest(header)
            self._save_manifest()
        self._seal_leftovers()
        self.memories: set[str] = set()  # text hashes of every memory in the pack
        self.documents: dict[tuple[int, Path], KnownDocument] = {}
        for info in self.manifest.shards:
            self._learn(self.root / info.file)
        self._db: sqlite3.Connection | None = None
        self._shard_path: Path | None = None
        self._shard_chunks = 0

    # what the pack holds -------------------------------------------------------------------

    def _learn(self, path: Path) -> None:
        db = open_shard(path)
        try:
            self.memories.update(r[0] for r in db.execute("SELECT text_hash FROM memories"))
            for _, document in shard_documents(db):
                self.documents[(document.root, document.path)] = KnownDocument(
                    document.state, document.size, document.mtime, document.error, document.content_hash
                )
        finally:
            db.close()

    def root_index(self, root: Path) -> int:
        """The index of a source root, added to the manifest the first time it is seen."""
        key = os.fspath(root)
        if key not in self.manifest.source_roots:
            self.manifest.source_roots.append(key)
            self._save_manifest()
        return self.manifest.source_roots.index(key)

    # writing -------------------------------------------------------------------------------

    def add(
        self,
        document: PackDocument,
        memories: dict[str, PackMemory] | None = None,
        embeddings: dict[str, bytes] | None = None,
    ) -> None:
        """One document, its chunks and the memories and embeddings the pack lacks, in one
        transaction. Every chunk of a ready document must have its memory here or in the pack."""
        memories = memories or {}
        embeddings = embeddings or {}
        if document.state is PackState.READY:
            lacking = {c.text_hash for c in document.chunks} - self.memories - set(memories)
            if lacking:
                raise PackError(f"{display_path(document.path)}: {len(lacking)} chunk(s) have no memory")
        db = self._shard()
        new_memories = {h: m for h, m in memories.items() if h not in self.memories}
        identity = self.header.encoder.identity
        embedder = self.header.embedder.identity if self.header.embedder else ""
        with db:
            cursor = db.execute(
                "INSERT INTO documents(root, path, size, mtime, content_hash, state, error, note, chunk_count) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    document.root,
                    db_path(document.path),
                    document.size,
                    document.mtime,
                    document.content_hash,
                    document.state.value,
                    document.error,
                    document.note,
                    len(document.chunks),
                ),
            )
            db.executemany(
                "INSERT INTO chunks(document_id, ordinal, text, char_start, char_end, page, token_count, text_hash) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (cursor.lastrowid, c.ordinal, c.text, c.char_start, c.char_end, c.page, c.token_count, c.text_hash)
                    for c in document.chunks
                ],
            )
            db.executemany(
                "INSERT OR IGNORE INTO memories(text_hash, encoder, states, rows, cols, token_count) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(h, identity, m.states, m.rows, m.cols, m.token_count) for h, m in new_memories.items()],
            )
            if embedder:
                db.executemany(
                    "INSERT OR IGNORE INTO embeddings(text_hash, embedder, vector) VALUES (?, ?, ?)",
                    [(h, embedder, v) for h, v in embeddings.items() if h in new_memories],
                )
        self.memories.update(new_memories)
        self.documents[(document.root, document.path)] = KnownDocument(
            document.state, document.size, document.mtime, document.error, document.content_hash
        )
        self._shard_chunks += len(document.chunks)
        if self._shard_chunks >= SHARD_MAX_CHUNKS:
            self.seal()

    def _shard(self) -> sqlite3.Connection:
        if self._db is None:
            path = self.root / SHARDS_DIR / f"shard-{self._next_shard_number():06d}.sqlite3"
            db = sqlite3.connect(path)
            db.executescript(f"{_SHARD_SCHEMA}; PRAGMA user_version = {SHARD_SCHEMA_VERSION};")
            self._db, self._shard_path, self._shard_chunks = db, path, 0
        return self._db

    def _next_shard_number(self) -> int:
        numbers = [int(p.name[6:12]) for p in (self.root / SHARDS_DIR).glob("shard-??????.sqlite3")]
        return max(numbers, default=-1) + 1

    def seal(self) -> None:
        """Close the shard being written and list it in the manifest (it is then complete)."""
        if self._db is None or self._shard_path is None:
            return
        self._db.close()
        path = self._shard_path
        self._db = self._shard_path = None
        self._shard_chunks = 0
        self._list_shard(path)

    def _list_shard(self, path: Path) -> None:
        db = open_shard(path)
        try:
            counts = [db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("documents", "chunks")]
            counts += [db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("memories", "embeddings")]
        finally:
            db.close()
        if counts[0] == 0:
            path.unlink()
            return
        info = ShardInfo(
            os.fspath(path.relative_to(self.root)), *counts, path.stat().st_size, file_digest(path)
        )  # fmt: skip
        self.manifest.shards.append(info)
        self._save_manifest()

    def _seal_leftovers(self) -> None:
        """A shard a killed run was writing: every document in it was committed whole, so it is
        sealed as it is (its last, unfinished document was rolled back by SQLite)."""
        listed = {s.file for s in self.manifest.shards}
        for path in sorted((self.root / SHARDS_DIR).glob("shard-??????.sqlite3")):
            if os.fspath(path.relative_to(self.root)) not in listed:
                with contextlib.closing(sqlite3.connect(path)) as db:  # replays or drops its journal
                    db.execute("PRAGMA user_version").fetchone()
                self._list_shard(path)

    def _save_manifest(self) -> None:
        self.manifest.updated = time.time()
        _write_json(self.root / MANIFEST_NAME, self.manifest.to_json())

    def close(self, run: dict[str, Any] | None = None) -> dict[str, Any]:
        """Seal the current shard and write report.json; returns the report."""
        self.seal()
        report = self.report(run or {})
        _write_json(self.root / REPORT_NAME, report)
        return report

    def report(self, run: dict[str, Any]) -> dict[str, Any]:
        """Every document's latest state in the pack; failed ones with their reasons."""
        counts = {state.value: 0 for state in PackState if state is not PackState.REMOVED}
        failed = []
        for (root, path), known in sorted(self.documents.items(), key=lambda item: (item[0][0], str(item[0][1]))):
            if known.state is PackState.REMOVED:
                continue
            counts[known.state.value] += 1
            if known.state is PackState.FAILED:
                full = Path(self.manifest.source_roots[root]) / path
                failed.append({"path": display_path(full), "reason": known.error})
        return {
            "kind": "dolphin-desk-memory-pack-report",
            "documents": counts,
            "memories": len(self.memories),
            "shards": len(self.manifest.shards),
            "failed": failed,
            "last_run": run,
        }


def _refuse_other_header(found: PackHeader, wanted: PackHeader, root: Path) -> None:
    """A pack holds one encoder's memories, chunked one way: a run made otherwise must not add to it."""
    if found.encoder.identity != wanted.encoder.identity:
        raise PackError(
            f"the pack at {display_path(root)} was made by another encoder ({found.encoder.identity}, this bundle "
            f"has {wanted.encoder.identity}): choose another --out"
        )
    if found.chunker != wanted.chunker:
        raise PackError(
            f"the pack at {display_path(root)} was chunked otherwise ({found.chunker.chunk_tokens} tokens per chunk, "
            f"tokenizer {found.chunker.tokenizer_sha256[:12]}): choose another --out, or the same chunk size"
        )
    if found.embedder != wanted.embedder:
        raise PackError(f"the pack at {display_path(root)} was embedded by another embedder: choose another --out")
