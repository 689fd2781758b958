"""SQLite store of folders, documents, chunks, memories and the full-text index.

One writer at a time (the indexer thread or a command); WAL lets readers (status, retrieval, the
UI) read while it writes. Every document's chunks are replaced in one transaction, so a crash
leaves either the old or the new version, never half of one. Memories are keyed by
(chunk text hash, encoder identity): renames, moves and duplicate files never re-run the encoder,
and a different model bundle never mixes its memories in.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.library.states import DocumentState

SCHEMA_VERSION = 5
DB_NAME = "library.sqlite3"


_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE folders (
        id INTEGER PRIMARY KEY,
        path TEXT NOT NULL UNIQUE,
        include_patterns TEXT,
        exclude_patterns TEXT,
        added_at REAL NOT NULL
    );
    CREATE TABLE documents (
        id INTEGER PRIMARY KEY,
        folder_id INTEGER NOT NULL REFERENCES folders(id) ON DELETE CASCADE,
        path TEXT NOT NULL UNIQUE,
        size INTEGER,
        mtime REAL,
        content_hash TEXT,
        state TEXT NOT NULL CHECK (state IN ('pending', 'indexing', 'ready', 'failed', 'skipped')),
        error TEXT,
        chunk_count INTEGER NOT NULL DEFAULT 0,
        priority INTEGER NOT NULL DEFAULT 1,
        updated_at REAL NOT NULL
    );
    CREATE INDEX documents_folder ON documents(folder_id);
    CREATE INDEX documents_state ON documents(state, priority);
    CREATE TABLE chunks (
        id INTEGER PRIMARY KEY,
        document_id INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
        ordinal INTEGER NOT NULL,
        text TEXT NOT NULL,
        char_start INTEGER NOT NULL,
        char_end INTEGER NOT NULL,
        page INTEGER,
        token_count INTEGER NOT NULL,
        text_hash TEXT NOT NULL
    );
    CREATE INDEX chunks_document ON chunks(document_id);
    CREATE INDEX chunks_hash ON chunks(text_hash);
    CREATE TABLE memories (
        text_hash TEXT NOT NULL,
        encoder TEXT NOT NULL,
        states BLOB NOT NULL,
        rows INTEGER NOT NULL,
        cols INTEGER NOT NULL,
        token_count INTEGER NOT NULL,
        PRIMARY KEY (text_hash, encoder)
    ) WITHOUT ROWID;
    CREATE VIRTUAL TABLE chunks_fts USING fts5(text, content='chunks', content_rowid='id', tokenize='porter unicode61');
    CREATE TRIGGER chunks_fts_insert AFTER INSERT ON chunks BEGIN
        INSERT INTO chunks_fts(rowid, text) VALUES (new.id, new.text);
    END;
    CREATE TRIGGER chunks_fts_delete AFTER DELETE ON chunks BEGIN
        INSERT INTO chunks_fts(chunks_fts, rowid, text) VALUES ('delete', old.id, old.text);
    END;
    """,
    # 2: when each document's current chunks were committed, shown in the folders panel and
    # `status`; libraries indexed by schema 1 take it from their last update.
    2: """
    ALTER TABLE documents ADD COLUMN indexed_at REAL;
    UPDATE documents SET indexed_at = updated_at WHERE state = 'ready';
    """,
    # 3: what went wrong outside any one document (a folder that cannot be watched, a broken
    # .gitignore, a reconcile that failed, the indexer itself stopping), so `status` and the
    # folders panel can show it; and a note on a document that was indexed with a caveat
    # ("only the first 8,000,000 characters").
    3: """
    ALTER TABLE documents ADD COLUMN note TEXT;
    CREATE TABLE problems (
        folder_id INTEGER NOT NULL,
        source TEXT NOT NULL,
        subject TEXT NOT NULL,
        message TEXT NOT NULL,
        at REAL NOT NULL,
        PRIMARY KEY (folder_id, source, subject)
    );
    """,
    # 4: the chunker each document's chunks were made with (chunk size and encoder), so a
    # changed chunk size or bundle re-chunks exactly the documents made otherwise; and folders
    # follow the app's include/exclude settings unless given their own (until now every folder
    # kept a copy of the settings of the day it was added, so later edits never reached it).
    4: """
    ALTER TABLE documents ADD COLUMN chunker TEXT;
    UPDATE folders SET include_patterns = NULL, exclude_patterns = NULL;
    """,
    # 5: a dense embedding per chunk text for hybrid retrieval, keyed like memories (text hash,
    # embedder identity): float32 vectors, 1.5 KB each for a 384-wide embedder.
    5: """
    CREATE TABLE embeddings (
        text_hash TEXT NOT NULL,
        embedder TEXT NOT NULL,
        vector BLOB NOT NULL,
        PRIMARY KEY (text_hash, embedder)
    ) WITHOUT ROWID;
    """,
}

LIBRARY_WIDE = 0  # problems.folder_id of a problem that belongs to no one folder


class StoreError(Exception):
    """The library database cannot be used (newer schema, unwritable, disk full); one line.

    `environmental` errors come from the machine (full disk, read-only folder, a lock held too
    long) and go away when the machine changes, so work is retried; the others are about the
    data being written, so the document at hand fails and the rest goes on.
    """

    def __init__(self, message: str, environmental: bool = True) -> None:
        super().__init__(message)
        self.environmental = environmental


def db_path(path: Path | str) -> str | bytes:
    """A path as the database keeps it: text, or the raw bytes of a name that is not UTF-8.

    Linux allows any bytes in a file name; SQLite text must be UTF-8. Such names are stored as
    BLOBs (compared byte for byte), so those files are indexed like any other.
    """
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(text)
    return text


def path_from_db(value: str | bytes) -> Path:
    return Path(os.fsdecode(value) if isinstance(value, bytes) else value)


def display_path(path: Path | str) -> str:
    """A path a person (and a JSON or terminal encoder) can read: bytes that are not UTF-8 as
    U+FFFD, control characters (newlines in names) as visible escapes."""
    text = os.fspath(path).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return "".join(c if c.isprintable() or c == " " else repr(c)[1:-1] for c in text)


@dataclass(frozen=True)
class Problem:
    folder_id: int  # LIBRARY_WIDE for the whole library
    source: str  # watcher | reconcile | gitignore | indexer
    subject: str
    message: str
    at: float


@dataclass(frozen=True)
class Folder:
    id: int
    path: Path
    include_patterns: list[str] | None
    exclude_patterns: list[str] | None


@dataclass(frozen=True)
class Document:
    id: int
    folder_id: int
    path: Path
    size: int | None
    mtime: float | None
    content_hash: str | None
    state: DocumentState
    error: str | None
    chunk_count: int
    indexed_at: float | None = None
    note: str | None = None
    chunker: str | None = None


@dataclass(frozen=True)
class ChunkRecord:
    ordinal: int
    text: str
    char_start: int
    char_end: int
    page: int | None
    token_count: int
    text_hash: str


@dataclass(frozen=True)
class StoredChunk:
    id: int
    document_path: Path
    text: str
    char_start: int
    char_end: int
    page: int | None
    token_count: int
    text_hash: str
    score: float = 0.0
    similarity: float | None = None  # cosine to the question, where an embedder ranked it


def _split_patterns(value: str | None) -> list[str] | None:
    return None if value is None else [p for p in value.split("\n") if p]


def _join_patterns(patterns: Iterable[str] | None) -> str | None:
    return None if patterns is None else "\n".join(patterns)


def describe_sqlite_error(exc: sqlite3.Error, db_file: Path) -> str:
    text = str(exc)
    if "full" in text:
        return f"the disk holding {db_file.parent} is full: free some space, nothing was lost"
    if "readonly" in text or "read-only" in text or "unable to open" in text:
        return f"cannot write the library at {db_file}: the folder is read-only or not accessible"
    return f"library database error: {text}"


def store_error(exc: sqlite3.Error, db_file: Path) -> StoreError:
    """Environmental (retry later) unless SQLite refused the data itself."""
    data_problem = isinstance(exc, (sqlite3.DataError, sqlite3.IntegrityError, sqlite3.ProgrammingError)) or (
        "too big" in str(exc)
    )
    return StoreError(describe_sqlite_error(exc, db_file), environmental=not data_problem)


class _Connection:
    """A thread's connection; when the thread ends, its thread-local holder goes, and with it the
    connection (sqlite3 connections cannot be weakly referenced themselves)."""

    __slots__ = ("__weakref__", "db")

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __del__(self) -> None:
        self.db.close()


class Store:
    """The library database, usable from any thread.

    Every thread gets its own connection, so with WAL readers (status, retrieval, the UI's
    snapshot) never wait for the writer and never see half a transaction. Writes are serialised
    by a lock; the library sends all of them through its one writer thread (docs/ARCHITECTURE.md
    §5), the lock only keeps direct users (tests, tools) safe.
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / DB_NAME
        self._local = threading.local()
        self._connections: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._connections_lock = threading.Lock()
        self._write_lock = threading.RLock()
        self._watch: sqlite3.Connection | None = None  # data_version's own connection
        self._watch_lock = threading.Lock()
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        except sqlite3.Error as exc:
            raise StoreError(describe_sqlite_error(exc, self.path)) from None
        except OSError as exc:
            raise StoreError(f"cannot use the data folder {self.path.parent}: {exc.strerror or exc}") from None
        try:
            db.row_factory = sqlite3.Row
            # The version is checked before anything else touches the file: a newer app's
            # library must stay byte-for-byte as it was.
            self._refuse_newer(db)
            db.execute("PRAGMA journal_mode=WAL")
            self._configure(db)
            self._migrate(db)
        except StoreError:
            db.close()
            raise
        except sqlite3.Error as exc:
            db.close()
            raise StoreError(describe_sqlite_error(exc, self.path)) from None
        self._adopt(db)

    @staticmethod
    def _configure(db: sqlite3.Connection) -> None:
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA foreign_keys=ON")

    def _adopt(self, db: sqlite3.Connection) -> None:
        holder = _Connection(db)
        self._local.connection = holder
        with self._connections_lock:
            self._connections.add(holder)

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use, closed when the thread ends)."""
        holder = getattr(self._local, "connection", None)
        if holder is None:
            if self._closed:
                raise StoreError("the library is closed")
            try:
                db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
                self._configure(db)
            except sqlite3.Error as exc:
                raise store_error(exc, self.path) from None
            self._adopt(db)
            return db
        return holder.db

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    def close(self) -> None:
        with self._write_lock, self._connections_lock, self._watch_lock:
            self._closed = True
            for holder in list(self._connections):
                holder.db.close()
            self._connections = weakref.WeakSet()
            if self._watch is not None:
                self._watch.close()
                self._watch = None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._write_lock:
            db = self._connection()
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise store_error(exc, self.path) from None

    def _query(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        try:
            return self._connection().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise store_error(exc, self.path) from None

    def _refuse_newer(self, db: sqlite3.Connection) -> None:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the library at {self.path} was written by a newer Dolphin Desk (schema {version}, "
                f"this version knows {SCHEMA_VERSION}): update the app; the library was not changed"
            )

    def _migrate(self, db: sqlite3.Connection) -> None:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if 0 < version < SCHEMA_VERSION:
            self._back_up(db, version)
        for target in range(version + 1, SCHEMA_VERSION + 1):
            try:
                db.executescript(f"BEGIN IMMEDIATE; {_MIGRATIONS[target]}; PRAGMA user_version = {target}; COMMIT;")
            except sqlite3.Error:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def _back_up(self, db: sqlite3.Connection, version: int) -> None:
        """A copy of the library as it was, before an upgrade changes it: downgrading the app
        then means putting this file back, and a failed migration loses nothing."""
        backup = self.path.with_name(f"{self.path.name}.schema{version}.bak")
        partial = backup.with_name(backup.name + ".partial")
        partial.unlink(missing_ok=True)
        target = sqlite3.connect(partial)
        try:
            db.backup(target)
        except BaseException:
            target.close()
            partial.unlink(missing_ok=True)
            raise
        target.close()
        # A library at this version is always its newest state at this version, so an older
        # backup (say from an upgrade, downgrade and upgrade again) is replaced.
        partial.replace(backup)

    @property
    def schema_version(self) -> int:
        return int(self._query("PRAGMA user_version")[0][0])

    def integrity_check(self) -> str:
        return str(self._query("PRAGMA integrity_check")[0][0])

    # folders -------------------------------------------------------------------------------

    def add_folder(self, path: Path, include: list[str] | None = None, exclude: list[str] | None = None) -> Folder:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO folders(path, include_patterns, exclude_patterns, added_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(path) DO UPDATE SET include_patterns=excluded.include_patterns, "
                "exclude_patterns=excluded.exclude_patterns",
                (db_path(path), _join_patterns(include), _join_patterns(exclude), time.time()),
            )
        return next(f for f in self.folders() if f.path == path)

    def folders(self) -> list[Folder]:
        return [
            Folder(
                r["id"],
                path_from_db(r["path"]),
                _split_patterns(r["include_patterns"]),
                _split_patterns(r["exclude_patterns"]),
            )
            for r in self._query("SELECT * FROM folders ORDER BY path")
        ]

    def set_folder_patterns(self, folder_id: int, include: list[str] | None, exclude: list[str] | None) -> None:
        """A folder's own patterns; None follows the app's settings."""
        with self.transaction() as db:
            db.execute(
                "UPDATE folders SET include_patterns=?, exclude_patterns=? WHERE id=?",
                (_join_patterns(include), _join_patterns(exclude), folder_id),
            )

    def remove_folder(self, folder_id: int) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM folders WHERE id = ?", (folder_id,))
            db.execute("DELETE FROM problems WHERE folder_id = ?", (folder_id,))

    # problems ------------------------------------------------------------------------------

    def problems(self) -> list[Problem]:
        return [
            Problem(r["folder_id"], r["source"], r["subject"], r["message"], r["at"])
            for r in self._query("SELECT * FROM problems ORDER BY folder_id, source, subject")
        ]

    def set_problem(self, folder_id: int, source: str, subject: str, message: str) -> None:
        """Record (or update) a problem; no write when it is already recorded as it is."""
        known = self._query(
            "SELECT message FROM problems WHERE folder_id=? AND source=? AND subject=?", (folder_id, source, subject)
        )
        if known and known[0]["message"] == message:
            return
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO problems(folder_id, source, subject, message, at) VALUES (?, ?, ?, ?, ?)",
                (folder_id, source, subject, message, time.time()),
            )

    def clear_problem(self, folder_id: int, source: str, subject: str) -> None:
        if self._query(
            "SELECT 1 FROM problems WHERE folder_id=? AND source=? AND subject=?", (folder_id, source, subject)
        ):
            with self.transaction() as db:
                db.execute(
                    "DELETE FROM problems WHERE folder_id=? AND source=? AND subject=?", (folder_id, source, subject)
                )

    def clear_problems(self, folder_id: int, source: str, keep_subjects: Iterable[str] = ()) -> None:
        """Forget a source's problems for a folder, except those about `keep_subjects`; no write
        when there is nothing to forget."""
        keep = set(keep_subjects)
        stale = [
            r["subject"]
            for r in self._query("SELECT subject FROM problems WHERE folder_id=? AND source=?", (folder_id, source))
            if r["subject"] not in keep
        ]
        if not stale:
            return
        with self.transaction() as db:
            db.executemany(
                "DELETE FROM problems WHERE folder_id=? AND source=? AND subject=?",
                [(folder_id, source, subject) for subject in stale],
            )

    # documents -----------------------------------------------------------------------------

    @staticmethod
    def _document(row: sqlite3.Row) -> Document:
        return Document(
            row["id"],
            row["folder_id"],
            path_from_db(row["path"]),
            row["size"],
            row["mtime"],
            row["content_hash"],
            DocumentState(row["state"]),
            row["error"],
            row["chunk_count"],
            row["indexed_at"],
            row["note"],
            row["chunker"],
        )

    def documents(self, folder_id: int | None = None) -> list[Document]:
        if folder_id is None:
            rows = self._query("SELECT * FROM documents ORDER BY path")
        else:
            rows = self._query("SELECT * FROM documents WHERE folder_id = ? ORDER BY path", (folder_id,))
        return [self._document(r) for r in rows]

    def document(self, path: Path) -> Document | None:
        rows = self._query("SELECT * FROM documents WHERE path = ?", (db_path(path),))
        return self._document(rows[0]) if rows else None

    def upsert_pending(self, folder_id: int, path: Path, priority: int) -> None:
        """Mark a document as needing (re-)indexing; keeps its chunks until new ones replace them."""
        self.queue_documents(folder_id, [path], priority)

    def queue_documents(self, folder_id: int, paths: Iterable[Path], priority: int) -> None:
        """Mark documents as needing (re-)indexing, in one transaction."""
        now = time.time()
        with self.transaction() as db:
            db.executemany(
                "INSERT INTO documents(folder_id, path, state, priority, updated_at) VALUES (?, ?, 'pending', ?, ?) "
                "ON CONFLICT(path) DO UPDATE SET state='pending', error=NULL, folder_id=excluded.folder_id, "
                "priority=MIN(priority, excluded.priority), updated_at=excluded.updated_at",
                [(folder_id, db_path(path), priority, now) for path in paths],
            )

    def documents_at(self, paths: Iterable[Path]) -> list[Document]:
        """The rows of these paths (those that exist), for telling listeners what changed."""
        keys = [db_path(p) for p in paths]
        found: list[Document] = []
        for start in range(0, len(keys), 500):
            batch = keys[start : start + 500]
            rows = self._query(f"SELECT * FROM documents WHERE path IN ({', '.join('?' * len(batch))})", tuple(batch))
            found.extend(self._document(r) for r in rows)
        return found

    def requeue_skipped_because(self, reason_part: str, priority: int) -> list[Path]:
        """Skipped documents whose reason contains `reason_part` go back to pending (turning OCR
        on reads the scans it had skipped)."""
        pattern = "%" + reason_part.replace("%", "").replace("_", "") + "%"
        rows = self._query("SELECT path FROM documents WHERE state='skipped' AND error LIKE ?", (pattern,))
        if not rows:
            return []
        with self.transaction() as db:
            db.execute(
                "UPDATE documents SET state='pending', error=NULL, priority=MIN(priority, ?) "
                "WHERE state='skipped' AND error LIKE ?",
                (priority, pattern),
            )
        return [path_from_db(r["path"]) for r in rows]

    def requeue_other_chunkers(self, chunker: str, priority: int) -> list[Path]:
        """Documents chunked otherwise than `chunker` go back to pending (their old chunks serve
        until new ones replace them; memories of unchanged chunk text are reused)."""
        rows = self._query(
            "SELECT path FROM documents WHERE state IN ('ready', 'indexing') AND (chunker IS NULL OR chunker != ?)",
            (chunker,),
        )
        if not rows:
            return []
        with self.transaction() as db:
            db.execute(
                "UPDATE documents SET state='pending', priority=MIN(priority, ?) "
                "WHERE state IN ('ready', 'indexing') AND (chunker IS NULL OR chunker != ?)",
                (priority, chunker),
            )
        return [path_from_db(r["path"]) for r in rows]

    def set_state(
        self,
        path: Path,
        state: DocumentState,
        error: str | None = None,
        size: int | None = None,
        mtime: float | None = None,
        content_hash: str | None = None,
        note: str | None = None,
    ) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE documents SET state=?, error=?, size=COALESCE(?, size), mtime=COALESCE(?, mtime), "
                "content_hash=COALESCE(?, content_hash), note=?, updated_at=? WHERE path=?",
                (state.value, error, size, mtime, content_hash, note, time.time(), db_path(path)),
            )
            if state.has_reason:
                db.execute(
                    "DELETE FROM chunks WHERE document_id = (SELECT id FROM documents WHERE path=?)", (db_path(path),)
                )
                db.execute("UPDATE documents SET chunk_count=0 WHERE path=?", (db_path(path),))

    def next_pending(self, exclude: Iterable[int] = ()) -> Document | None:
        """The most urgent document waiting to be indexed, other than those in `exclude`."""
        skip = sorted(set(exclude))
        rows = self._query(
            "SELECT * FROM documents WHERE state IN ('pending', 'indexing') "
            f"AND id NOT IN ({', '.join('?' * len(skip))}) ORDER BY priority, id LIMIT 1",
            tuple(skip),
        )
        return self._document(rows[0]) if rows else None

    def count_states(self) -> dict[DocumentState, int]:
        counts = dict.fromkeys(DocumentState, 0)
        for row in self._query("SELECT state, COUNT(*) AS n FROM documents GROUP BY state"):
            counts[DocumentState(row["state"])] = row["n"]
        return counts

    def remove_documents(self, paths: Iterable[Path]) -> int:
        removed = 0
        with self.transaction() as db:
            for path in paths:
                removed += db.execute("DELETE FROM documents WHERE path = ?", (db_path(path),)).rowcount
        return removed

    def remove_under(self, directory: Path) -> list[Path]:
        """Every document inside `directory` (a folder that was deleted or moved away); returns
        the paths removed."""
        prefix = os.fsencode(os.path.join(os.fspath(directory), ""))
        paths = [
            path_from_db(r["path"])
            for r in self._query(
                "SELECT path FROM documents WHERE substr(CAST(path AS BLOB), 1, ?) = ?", (len(prefix), prefix)
            )
        ]
        self.remove_documents(paths)
        return paths

    def replace_chunks(
        self,
        path: Path,
        chunks: list[ChunkRecord],
        size: int,
        mtime: float,
        content_hash: str,
        state: DocumentState = DocumentState.READY,
        note: str | None = None,
        chunker: str | None = None,
    ) -> None:
        """The one commit per document: new chunks, state and file facts together."""
        with self.transaction() as db:
            row = db.execute("SELECT id FROM documents WHERE path=?", (db_path(path),)).fetchone()
            if row is None:
                return
            db.execute("DELETE FROM chunks WHERE document_id=?", (row["id"],))
            now = time.time()
            indexed_at = now if state is DocumentState.READY else None
            db.executemany(
                "INSERT INTO chunks(document_id, ordinal, text, char_start, char_end, page, token_count, text_hash) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (row["id"], c.ordinal, c.text, c.char_start, c.char_end, c.page, c.token_count, c.text_hash)
                    for c in chunks
                ],
            )
            db.execute(
                "UPDATE documents SET state=?, error=NULL, note=?, chunk_count=?, size=?, mtime=?, content_hash=?, "
                "updated_at=?, indexed_at=?, chunker=? WHERE id=?",
                (state.value, note, len(chunks), size, mtime, content_hash, now, indexed_at, chunker, row["id"]),
            )

    # memories ------------------------------------------------------------------------------

    def has_memory(self, text_hash: str, encoder: str) -> bool:
        return bool(self._query("SELECT 1 FROM memories WHERE text_hash=? AND encoder=?", (text_hash, encoder)))

    def put_memory(self, text_hash: str, encoder: str, states: np.ndarray, token_count: int) -> None:
        """fp16 (57 KB for 32 x 896): under the 60 KB budget, and ~1e-3 relative error at most."""
        blob = np.ascontiguousarray(states, dtype=np.float16).tobytes()
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO memories(text_hash, encoder, states, rows, cols, token_count) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (text_hash, encoder, blob, states.shape[0], states.shape[1], token_count),
            )

    def get_memory(self, text_hash: str, encoder: str) -> tuple[np.ndarray, int] | None:
        rows = self._query(
            "SELECT states, rows, cols, token_count FROM memories WHERE text_hash=? AND encoder=?", (text_hash, encoder)
        )
        if not rows:
            return None
        r = rows[0]
        return np.frombuffer(r["states"], dtype=np.float16).reshape(r["rows"], r["cols"]).astype(np.float32), r[
            "token_count"
        ]

    def memory_stats(self) -> dict[str, float]:
        row = self._query("SELECT COUNT(*) AS n, COALESCE(AVG(LENGTH(states)), 0) AS avg FROM memories")[0]
        return {"memories": row["n"], "bytes_per_memory": float(row["avg"])}

    # embeddings ----------------------------------------------------------------------------

    def missing_embeddings(self, text_hashes: Iterable[str], embedder: str) -> list[str]:
        hashes = list(dict.fromkeys(text_hashes))
        have: set[str] = set()
        for start in range(0, len(hashes), 500):
            batch = hashes[start : start + 500]
            rows = self._query(
                f"SELECT text_hash FROM embeddings WHERE embedder=? AND text_hash IN ({', '.join('?' * len(batch))})",
                (embedder, *batch),
            )
            have.update(r["text_hash"] for r in rows)
        return [h for h in hashes if h not in have]

    def put_embeddings(self, embedder: str, vectors: dict[str, np.ndarray]) -> None:
        with self.transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO embeddings(text_hash, embedder, vector) VALUES (?, ?, ?)",
                [(h, embedder, np.ascontiguousarray(v, dtype=np.float32).tobytes()) for h, v in vectors.items()],
            )

    def chunks_without_embedding(self, embedder: str, limit: int) -> list[tuple[str, str]]:
        """(text hash, text) of chunks whose embedding is missing (a library from before the
        bundle had an embedder): the indexer fills them in, in the background."""
        rows = self._query(
            "SELECT c.text_hash, MIN(c.text) AS text FROM chunks c WHERE NOT EXISTS "
            "(SELECT 1 FROM embeddings e WHERE e.text_hash = c.text_hash AND e.embedder = ?) "
            "GROUP BY c.text_hash LIMIT ?",
            (embedder, limit),
        )
        return [(r["text_hash"], r["text"]) for r in rows]

    def chunk_embeddings(self, embedder: str, after_id: int = 0) -> list[tuple[int, bytes]]:
        """(chunk id, float32 vector bytes) of every chunk with an embedding, ids above `after_id`."""
        rows = self._query(
            "SELECT c.id, e.vector FROM chunks c JOIN embeddings e ON e.text_hash = c.text_hash AND e.embedder = ? "
            "WHERE c.id > ? ORDER BY c.id",
            (embedder, after_id),
        )
        return [(r[0], r[1]) for r in rows]

    def embedded_chunk_count(self, embedder: str) -> int:
        return int(
            self._query(
                "SELECT COUNT(*) FROM chunks c JOIN embeddings e ON e.text_hash = c.text_hash AND e.embedder = ?",
                (embedder,),
            )[0][0]
        )

    def data_version(self) -> int:
        """Changes whenever anything was committed, by any thread or process.

        Asked on a connection kept for this alone, which never writes: `PRAGMA data_version` is
        per connection and moves only for other connections' commits, so a thread's own
        connection could not tell (each answer runs on a new worker thread with a new connection,
        which saw the same number before and after the indexer's commits)."""
        with self._watch_lock:
            if self._watch is None:
                if self._closed:
                    raise StoreError("the library is closed")
                try:
                    self._watch = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
                except sqlite3.Error as exc:
                    raise store_error(exc, self.path) from None
            try:
                return int(self._watch.execute("PRAGMA data_version").fetchone()[0])
            except sqlite3.Error as exc:
                raise store_error(exc, self.path) from None

    def chunk_ids(self) -> list[int]:
        return [r[0] for r in self._query("SELECT id FROM chunks ORDER BY id")]

    def chunk_ids_in_folders(self, folder_ids: Sequence[int]) -> list[int]:
        if not folder_ids:
            return []
        return [
            r[0]
            for r in self._query(
                "SELECT c.id FROM chunks c JOIN documents d ON d.id = c.document_id "
                f"WHERE d.folder_id IN ({', '.join('?' * len(folder_ids))}) ORDER BY c.id",
                tuple(folder_ids),
            )
        ]

    def chunks_by_id(self, ids: list[int]) -> dict[int, StoredChunk]:
        found: dict[int, StoredChunk] = {}
        for start in range(0, len(ids), 500):
            batch = ids[start : start + 500]
            rows = self._query(
                "SELECT c.id, d.path, c.text, c.char_start, c.char_end, c.page, c.token_count, c.text_hash "
                f"FROM chunks c JOIN documents d ON d.id = c.document_id WHERE c.id IN ({', '.join('?' * len(batch))})",
                tuple(batch),
            )
            for r in rows:
                found[r["id"]] = StoredChunk(
                    r["id"], path_from_db(r["path"]), r["text"], r["char_start"], r["char_end"], r["page"],
                    r["token_count"], r["text_hash"],
                )  # fmt: skip
        return found

    def collect_garbage(self) -> int:
        """Delete memories no chunk refers to any more, and only while no document waits to be
        indexed: a pending document may be a moved or copied file whose memories it will reuse,
        and one in flight has memories but no chunks yet. Checked in the same transaction."""
        with self.transaction() as db:
            idle = "NOT EXISTS (SELECT 1 FROM documents WHERE state IN ('pending', 'indexing'))"
            db.execute(f"DELETE FROM embeddings WHERE text_hash NOT IN (SELECT text_hash FROM chunks) AND {idle}")
            return db.execute(
                f"DELETE FROM memories WHERE text_hash NOT IN (SELECT text_hash FROM chunks) AND {idle}"
            ).rowcount

    # retrieval -----------------------------------------------------------------------------

    def search(self, match: str, limit: int, folder_ids: Sequence[int] | None = None) -> list[StoredChunk]:
        """BM25 over chunk texts; `folder_ids` limits it to those library folders (a chat's scope).

        FTS5 ranks the matches by itself first and only the best `limit` are joined to their chunk
        and document rows: joining every match (thousands, for a question with common words in a
        20,000-chunk library) before sorting read every matching text and took most of a search.
        """
        scope, scope_args = "", ()
        if folder_ids is not None:
            scope = (
                " AND rowid IN (SELECT c.id FROM chunks c JOIN documents d ON d.id = c.document_id "
                f"WHERE d.folder_id IN ({', '.join('?' * len(folder_ids))}))"
                if folder_ids
                else " AND 0"
            )
            scope_args = tuple(folder_ids)
        rows = self._query(
            "SELECT c.id, d.path, c.text, c.char_start, c.char_end, c.page, c.token_count, c.text_hash, best.score "
            "FROM (SELECT rowid, bm25(chunks_fts) AS score FROM chunks_fts "
            f"WHERE chunks_fts MATCH ?{scope} ORDER BY score LIMIT ?) AS best "
            "JOIN chunks c ON c.id = best.rowid JOIN documents d ON d.id = c.document_id ORDER BY best.score",
            (match, *scope_args, limit),
        )
        return [
            StoredChunk(
                r["id"],
                path_from_db(r["path"]),
                r["text"],
                r["char_start"],
                r["char_end"],
                r["page"],
                r["token_count"],
                r["text_hash"],
                -float(r["score"]),
            )
            for r in rows
        ]
