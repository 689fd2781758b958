"""Merging a memory pack (app/library/pack.py) into the local library, re-encoding nothing.

A pack is accepted only when its memories fit the library's model and its chunks are what the
library would make: the same encoder identity, the same chunk size and the same tokenizer;
anything else is refused with a message that says which and what to do. Then each shard is
merged in one transaction on the library's writer (docs/ARCHITECTURE.md §5):

* memories and embeddings are added unless the library has them (same text hash and encoder or
  embedder identity), so importing twice, or importing what was indexed locally, adds nothing;
* each document lands at its path on this computer: a source root of the cluster is mapped to a
  local folder (`--map CLUSTER_PATH=LOCAL_PATH`); unmapped, it keeps the cluster's path;
* where the local file has the pack's content (sha256), the document records the local file's
  size and mtime, so watching the folder later finds it unchanged and keeps the imported memories.
  A local copy that differs is indexed from that copy once the folder is watched; a file that is
  not on this computer keeps the imported chunks, and its citations say it is not available.

The source roots become library folders. One that exists here is scanned and watched as usual;
one that does not shows as missing and keeps its imported index (like an unplugged drive).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from app.library.pack import (
    PackDocument,
    PackError,
    PackManifest,
    PackState,
    open_shard,
    read_manifest,
    shard_documents,
    tokenizer_sha256,
)
from app.library.store import SCHEMA_VERSION, Store, db_path, display_path
from inference.bundle import Manifest, file_digest

if TYPE_CHECKING:
    from app.library.library import Library

log = logging.getLogger("dolphin.pack")
T = TypeVar("T")
# The library tables this module writes, as schema 5 has them (app/library/store.py).
STORE_SCHEMA = 5


@dataclass(frozen=True)
class LocalSetup:
    """What a pack must have been made with to be merged into this library."""

    encoder_identity: str
    chunk_tokens: int
    tokenizer_sha256: str

    @classmethod
    def of(cls, bundle: Manifest, chunk_tokens: int) -> LocalSetup:
        return cls(bundle.encoder_identity, chunk_tokens, tokenizer_sha256(bundle.path("tokenizer")))


@dataclass(frozen=True)
class PathMap:
    """`CLUSTER_PATH=LOCAL_PATH` pairs; the longest cluster prefix that matches a root wins."""

    pairs: tuple[tuple[str, Path], ...] = ()

    @classmethod
    def parse(cls, specs: Sequence[str]) -> PathMap:
        pairs = []
        for spec in specs:
            cluster, sep, local = spec.partition("=")
            if not sep or not cluster or not local:
                raise PackError(f"--map {spec!r}: write it as CLUSTER_PATH=LOCAL_PATH")
            pairs.append((os.path.normpath(cluster), Path(local).expanduser().resolve()))
        return cls(tuple(pairs))

    def local(self, cluster_root: str) -> Path:
        root = os.path.normpath(cluster_root)
        matches = [(c, lp) for c, lp in self.pairs if root == c or root.startswith(c.rstrip(os.sep) + os.sep)]
        if not matches:
            return Path(root)
        cluster, local = max(matches, key=lambda pair: len(pair[0]))
        rest = os.path.relpath(root, cluster)
        return local if rest == "." else local / rest


@dataclass(frozen=True)
class RootReport:
    cluster: str
    local: Path
    available: bool  # the local folder exists


@dataclass
class ImportReport:
    pack: Path
    shards: int = 0
    documents: int = 0  # written into the library
    already_present: int = 0  # the library had them, same content and chunker
    removed: int = 0
    chunks: int = 0
    memories_added: int = 0
    memories_present: int = 0  # deduplicated: the library had them
    embeddings_added: int = 0
    local_same: int = 0  # documents whose local file has the pack's content
    local_differs: int = 0  # ... whose local file differs (indexed from it once watched)
    local_absent: int = 0  # ... not on this computer (citations say so)
    missing_memory: int = 0  # ready in the pack but a memory was missing: left to index locally
    seconds: float = 0.0
    roots: list[RootReport] = field(default_factory=list)

    def lines(self) -> list[str]:
        """What the command line prints and the window shows."""
        lines = [
            f"imported {self.documents:,} documents ({self.chunks:,} chunks) from {self.shards} shard(s) "
            f"in {self.seconds:.1f} s; {self.already_present:,} were already in the library",
            f"memories: {self.memories_added:,} added, {self.memories_present:,} already in the library "
            f"(none encoded); {self.embeddings_added:,} embeddings added",
        ]
        for root in self.roots:
            where = "watched as usual" if root.available else "not on this computer: citations say so"
            lines.append(f"{root.cluster} -> {display_path(root.local)} ({where})")
        if self.local_differs:
            lines.append(f"{self.local_differs:,} local file(s) differ from the pack: they are indexed from your copy")
        if self.local_absent:
            lines.append(f"{self.local_absent:,} document(s) are not available locally")
        if self.missing_memory:
            lines.append(f"{self.missing_memory:,} document(s) lacked a memory in the pack and wait to be indexed")
        if self.removed:
            lines.append(f"{self.removed:,} document(s) the source no longer has were removed")
        return lines


def check_pack(manifest: PackManifest, setup: LocalSetup) -> None:
    """Refuse a pack whose memories or chunks would not be what this library makes."""
    header = manifest.header
    if header.encoder.identity != setup.encoder_identity:
        raise PackError(
            f"this pack was made by another model bundle (encoder {header.encoder.identity}; your library "
            f"uses {setup.encoder_identity}): its memories would not fit your model. Import it with the bundle "
            "it was made with, or index the files yourself"
        )
    if header.chunker.chunk_tokens != setup.chunk_tokens:
        raise PackError(
            f"this pack was chunked at {header.chunker.chunk_tokens} tokens per chunk and your library chunks at "
            f"{setup.chunk_tokens}: set the chunk size to {header.chunker.chunk_tokens} (Settings, or "
            "--chunk-tokens) to import it"
        )
    if header.chunker.tokenizer_sha256 != setup.tokenizer_sha256:
        raise PackError(
            "this pack was chunked with another tokenizer than your model bundle's: import it with the bundle "
            "it was made with"
        )


@dataclass(frozen=True)
class _LocalFacts:
    size: int | None
    mtime: float | None
    where: str  # same | differs | absent | none (no file facts: a listed, left-out entry)


class PackImporter:
    """Merges one pack into one store. `import_shard` is one transaction; run the calls on the
    library's writer thread (or, with no library open, on the caller's)."""

    def __init__(self, store: Store, pack: Path, setup: LocalSetup, mapping: PathMap | None = None) -> None:
        if SCHEMA_VERSION != STORE_SCHEMA:
            raise PackError(f"this build's library schema is {SCHEMA_VERSION}; pack import knows {STORE_SCHEMA}")
        self.store = store
        self.pack = Path(pack).expanduser().resolve()
        self.manifest = read_manifest(self.pack)
        check_pack(self.manifest, setup)
        self.setup = setup
        mapping = mapping or PathMap()
        self.local_roots = [mapping.local(root) for root in self.manifest.source_roots]
        self.report = ImportReport(
            self.pack,
            roots=[
                RootReport(c, lp, lp.is_dir())
                for c, lp in zip(self.manifest.source_roots, self.local_roots, strict=True)
            ],
        )
        self._folder_ids: list[int] = []
        self.new_folders: list[Path] = []
        self._chunker = self.manifest.header.chunker.chunker(setup.encoder_identity)
        for info in self.manifest.shards:
            path = self.pack / info.file
            if not path.is_file():
                raise PackError(f"shard {info.file} is missing from the pack: copy the whole pack folder")
            if path.stat().st_size != info.bytes:
                raise PackError(f"shard {info.file} is damaged (its size is wrong): copy the pack again")

    @property
    def shard_count(self) -> int:
        return len(self.manifest.shards)

    def create_folders(self) -> list[Path]:
        """A library folder per source root (kept as it is, with its own patterns, where the
        library already has it: `new_folders` are those it did not)."""
        before = {f.path for f in self.store.folders()}
        self.new_folders = [root for root in dict.fromkeys(self.local_roots) if root not in before]
        now = time.time()
        with self.store.transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO folders(path, include_patterns, exclude_patterns, added_at) "
                "VALUES (?, NULL, NULL, ?)",
                [(db_path(root), now) for root in self.local_roots],
            )
        by_path = {f.path: f.id for f in self.store.folders()}
        self._folder_ids = [by_path[root] for root in self.local_roots]
        return list(self.local_roots)

    def import_shard(self, index: int) -> tuple[list[Path], list[Path]]:
        """Merge shard `index` in one transaction; returns (changed paths, removed paths)."""
        if not self._folder_ids:
            self.create_folders()
        started = time.perf_counter()
        info = self.manifest.shards[index]
        path = self.pack / info.file
        if file_digest(path) != info.sha256:
            raise PackError(f"shard {info.file} is damaged (its checksum does not match): copy the pack again")
        shard = open_shard(path)
        try:
            documents = list(shard_documents(shard))
            facts = {row_id: self._local_facts(document) for row_id, document in documents}
            with self.store.transaction() as db:
                self._merge_memories(shard, db)
                changed, removed = self._merge_documents(shard, db, documents, facts)
        except sqlite3.Error as exc:
            raise PackError(f"shard {info.file} cannot be read ({exc}): copy the pack again") from None
        finally:
            shard.close()
        self.report.shards += 1
        self.report.seconds += time.perf_counter() - started
        return changed, removed

    def _local_path(self, document: PackDocument) -> Path:
        return self.local_roots[document.root] / document.path

    def _local_facts(self, document: PackDocument) -> _LocalFacts:
        """The local file's size and mtime when it holds the pack's content, else the pack's."""
        if document.size is None or document.content_hash is None:
            return _LocalFacts(document.size, document.mtime, "none")
        local = self._local_path(document)
        try:
            stat = local.stat()
            same = stat.st_size == document.size and file_digest(local) == document.content_hash
        except OSError:
            return _LocalFacts(document.size, document.mtime, "absent")
        if same:
            return _LocalFacts(stat.st_size, stat.st_mtime, "same")
        return _LocalFacts(document.size, document.mtime, "differs")

    def _merge_memories(self, shard: sqlite3.Connection, db: sqlite3.Connection) -> None:
        identity = self.setup.encoder_identity
        rows = shard.execute(
            "SELECT text_hash, states, rows, cols, token_count FROM memories WHERE encoder = ?", (identity,)
        )
        while batch := rows.fetchmany(256):
            before = db.total_changes
            db.executemany(
                "INSERT OR IGNORE INTO memories(text_hash, encoder, states, rows, cols, token_count) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [(h, identity, states, r, c, t) for h, states, r, c, t in batch],
            )
            added = db.total_changes - before
            self.report.memories_added += added
            self.report.memories_present += len(batch) - added
        before = db.total_changes
        db.executemany(
            "INSERT OR IGNORE INTO embeddings(text_hash, embedder, vector) VALUES (?, ?, ?)",
            shard.execute("SELECT text_hash, embedder, vector FROM embeddings"),
        )
        self.report.embeddings_added += db.total_changes - before

    def _merge_documents(
        self,
        shard: sqlite3.Connection,
        db: sqlite3.Connection,
        documents: list[tuple[int, PackDocument]],
        facts: dict[int, _LocalFacts],
    ) -> tuple[list[Path], list[Path]]:
        changed: list[Path] = []
        removed: list[Path] = []
        now = time.time()
        for row_id, document in documents:
            local = self._local_path(document)
            key = db_path(local)
            existing = db.execute(
                "SELECT id, state, content_hash, chunker, chunk_count FROM documents WHERE path = ?", (key,)
            ).fetchone()
            if document.state is PackState.REMOVED:
                if existing is not None and existing[2] == document.content_hash:
                    db.execute("DELETE FROM documents WHERE id = ?", (existing[0],))
                    removed.append(local)
                    self.report.removed += 1
                continue
            local_facts = facts[row_id]
            self._count_where(local_facts.where)
            ready = document.state is PackState.READY
            chunker = self._chunker if ready else None
            if existing is not None and (existing[1], existing[2], existing[3]) == (
                document.state.value, document.content_hash, chunker,
            ):  # fmt: skip
                self.report.already_present += 1
                continue
            chunks = shard.execute(
                "SELECT ordinal, text, char_start, char_end, page, token_count, text_hash FROM chunks "
                "WHERE document_id = ? ORDER BY ordinal",
                (row_id,),
            ).fetchall()
            document_id = self._upsert_document(db, key, document, local_facts, chunker, len(chunks), now)
            db.execute("DELETE FROM chunks WHERE document_id = ?", (document_id,))
            db.executemany(
                "INSERT INTO chunks(document_id, ordinal, text, char_start, char_end, page, token_count, text_hash) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(document_id, *chunk) for chunk in chunks],
            )
            if ready and self._lacks_memories(db, document_id):
                db.execute("DELETE FROM chunks WHERE document_id = ?", (document_id,))
                db.execute(
                    "UPDATE documents SET state='pending', chunk_count=0, chunker=NULL, indexed_at=NULL WHERE id=?",
                    (document_id,),
                )
                self.report.missing_memory += 1
            else:
                self.report.chunks += len(chunks)
            self.report.documents += 1
            changed.append(local)
        return changed, removed

    def _count_where(self, where: str) -> None:
        if where == "same":
            self.report.local_same += 1
        elif where == "differs":
            self.report.local_differs += 1
        elif where == "absent":
            self.report.local_absent += 1

    def _upsert_document(
        self,
        db: sqlite3.Connection,
        key: str | bytes,
        document: PackDocument,
        facts: _LocalFacts,
        chunker: str | None,
        chunk_count: int,
        now: float,
    ) -> int:
        folder_id = self._folder_ids[document.root]
        db.execute(
            "INSERT INTO documents(folder_id, path, size, mtime, content_hash, state, error, note, chunk_count, "
            "priority, updated_at, indexed_at, chunker) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?) "
            "ON CONFLICT(path) DO UPDATE SET folder_id=excluded.folder_id, size=excluded.size, "
            "mtime=excluded.mtime, content_hash=excluded.content_hash, state=excluded.state, error=excluded.error, "
            "note=excluded.note, chunk_count=excluded.chunk_count, updated_at=excluded.updated_at, "
            "indexed_at=excluded.indexed_at, chunker=excluded.chunker",
            (
                folder_id,
                key,
                facts.size,
                facts.mtime,
                document.content_hash,
                document.state.value,
                document.error,
                document.note,
                chunk_count,
                now,
                now if document.state is PackState.READY else None,
                chunker,
            ),
        )
        return int(db.execute("SELECT id FROM documents WHERE path = ?", (key,)).fetchone()[0])

    def _lacks_memories(self, db: sqlite3.Connection, document_id: int) -> bool:
        return (
            db.execute(
                "SELECT 1 FROM chunks c WHERE c.document_id = ? AND NOT EXISTS (SELECT 1 FROM memories m "
                "WHERE m.text_hash = c.text_hash AND m.encoder = ?) LIMIT 1",
                (document_id, self.setup.encoder_identity),
            ).fetchone()
            is not None
        )


def import_into_store(
    store: Store,
    pack: Path,
    setup: LocalSetup,
    mapping: PathMap | None = None,
    on_shard: Callable[[int, int], None] | None = None,
) -> ImportReport:
    """Import with no library open (the command line, when no window has this data folder)."""
    importer = PackImporter(store, pack, setup, mapping)
    importer.create_folders()
    for index in range(importer.shard_count):
        importer.import_shard(index)
        if on_shard is not None:
            on_shard(index + 1, importer.shard_count)
    return importer.report


def import_into_library(
    library: Library,
    pack: Path,
    mapping: PathMap | None = None,
    on_shard: Callable[[int, int], None] | None = None,
) -> ImportReport:
    """Import into a running library: each shard on its writer thread, listeners told of every
    change (the folders panel shows the documents arrive); then the folders that exist here are
    scanned and watched like any other, and the indexer embeds what the pack did not."""
    chunk_tokens = int(library.indexer.chunker.split("@", 1)[0])
    importer = PackImporter(library.store, pack, LocalSetup.of(library.model.manifest, chunk_tokens), mapping)

    def folders() -> None:
        importer.create_folders()
        library.indexer.note_folders()

    library.indexer.run(folders)
    for index in range(importer.shard_count):

        def shard(index: int = index) -> None:
            changed, removed = importer.import_shard(index)
            library.indexer.note_changed(changed)
            library.indexer.note_removed(removed)

        library.indexer.run(shard)
        if on_shard is not None:
            on_shard(index + 1, importer.shard_count)
    library.indexer.expect_unembedded()
    for root in importer.report.roots:
        if root.available and root.local in importer.new_folders:
            library.add_folder(root.local)  # scanned and watched like any folder the user adds
    return importer.report
