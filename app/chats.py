"""Conversations and their messages, persisted in the data folder (SQLite). No Qt here."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from app.display_text import without_controls
from app.library.answering import AnswerOutcome, Source, Turn

_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (id INTEGER PRIMARY KEY, title TEXT NOT NULL, created REAL NOT NULL,
                                          updated REAL NOT NULL, scope TEXT);
CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant')), text TEXT NOT NULL, sources TEXT, stats TEXT,
    created REAL NOT NULL);
"""
SCHEMA_VERSION = 2
# Schema 2: a chat's scope (the library folders it searches; NULL: all of them).
_MIGRATIONS = {1: "ALTER TABLE conversations ADD COLUMN scope TEXT;"}


class ChatStoreError(Exception):
    """The chats database cannot be used; one line for the user."""


@dataclass
class Message:
    role: str
    text: str
    sources: list[dict] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    id: int | None = None


def as_markdown(title: str, messages: list[Message]) -> str:
    """A chat as Markdown: the questions, the answers and each answer's sources."""
    lines = [f"# {title}", ""]
    for message in messages:
        text = without_controls(message.text).strip()
        lines += [f"**{'You' if message.role == 'user' else 'Dolphin'}:**", "", text, ""]
        for number, source in enumerate(message.sources, start=1):
            page = f", page {source['page']}" if source.get("page") else ""
            excerpt = source.get("excerpt") or " ".join(str(source.get("text", "")).split())[:140]
            lines.append(f"{number}. `{source.get('path', '')}`{page}: {without_controls(excerpt)}")
        if message.sources:
            lines.append("")
    return "\n".join(lines)


def turns(messages: list[Message]) -> list[Turn]:
    """The conversation so far as the answerer takes it: each question with the answer it got.

    A "nothing matches" reply is not an answer: its question still counts for retrieval.
    """
    result: list[Turn] = []
    for message in messages:
        if message.role == "user":
            result.append(Turn(message.text, ""))
        elif result and not result[-1].answer:
            answered = message.stats.get("outcome") != AnswerOutcome.NOTHING_MATCHES.value
            result[-1] = Turn(
                result[-1].question,
                message.text if answered else "",
                tuple(Source.from_dict(s) for s in message.sources) if answered else (),
            )
    return result


@dataclass
class Conversation:
    id: int
    title: str
    updated: float


class ChatStore:
    def __init__(self, data_dir: Path) -> None:
        path = Path(data_dir) / "chats.sqlite3"
        try:
            Path(data_dir).mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise ChatStoreError(f"cannot open the chats in {data_dir}: {exc}") from None
        try:
            # Checked before anything else touches the file: a newer app's chats stay as they were.
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ChatStoreError(
                    f"the chats in {data_dir} were saved by a newer Dolphin Desk (schema {version}, this version "
                    f"knows {SCHEMA_VERSION}): update the app; the chats were not changed"
                )
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA journal_mode=WAL")
            if version < SCHEMA_VERSION:
                steps = "".join(_MIGRATIONS[v] for v in range(max(version, 1), SCHEMA_VERSION)) if version else ""
                self._db.executescript(f"BEGIN; {steps} {_SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
        except ChatStoreError:
            self._db.close()
            raise
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            self._db.close()
            detail = "the disk is full" if "full" in str(exc) else str(exc)
            raise ChatStoreError(f"cannot open the chats in {path}: {detail}; nothing was changed") from None
        self._lock = threading.Lock()

    def close(self) -> None:
        self._db.close()

    def conversations(self) -> list[Conversation]:
        with self._lock:
            rows = self._db.execute("SELECT id, title, updated FROM conversations ORDER BY updated DESC").fetchall()
        return [Conversation(*row) for row in rows]

    def search(self, text: str) -> list[Conversation]:
        """Chats whose title or any message contains `text` (case-insensitive), newest first."""
        pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        with self._lock:
            rows = self._db.execute(
                "SELECT id, title, updated FROM conversations c WHERE c.title LIKE ?1 ESCAPE '\\' OR EXISTS "
                "(SELECT 1 FROM messages m WHERE m.conversation_id = c.id AND m.text LIKE ?1 ESCAPE '\\') "
                "ORDER BY updated DESC",
                (pattern,),
            ).fetchall()
        return [Conversation(*row) for row in rows]

    def create(self, title: str = "New chat") -> Conversation:
        now = time.time()
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO conversations(title, created, updated) VALUES (?, ?, ?)", (title, now, now)
            )
        return Conversation(int(cursor.lastrowid), title, now)

    def rename(self, conversation_id: int, title: str) -> None:
        title = title.strip() or "Untitled"
        with self._lock:
            self._db.execute("UPDATE conversations SET title=? WHERE id=?", (title, conversation_id))

    def delete(self, conversation_id: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM conversations WHERE id=?", (conversation_id,))

    def messages(self, conversation_id: int) -> list[Message]:
        with self._lock:
            rows = self._db.execute(
                "SELECT role, text, sources, stats, id FROM messages WHERE conversation_id=? ORDER BY id",
                (conversation_id,),
            ).fetchall()
        return [Message(r[0], r[1], json.loads(r[2] or "[]"), json.loads(r[3] or "{}"), r[4]) for r in rows]

    def scope(self, conversation_id: int) -> list[Path] | None:
        """The library folders this chat searches; None: the whole library."""
        with self._lock:
            row = self._db.execute("SELECT scope FROM conversations WHERE id=?", (conversation_id,)).fetchone()
        if not row or row[0] is None:
            return None
        try:
            return [Path(p) for p in json.loads(row[0])]
        except (ValueError, TypeError):
            return None

    def set_scope(self, conversation_id: int, folders: list[Path] | None) -> None:
        value = None if folders is None else json.dumps([str(f) for f in folders])
        with self._lock:
            self._db.execute("UPDATE conversations SET scope=? WHERE id=?", (value, conversation_id))

    def delete_messages(self, message_ids: list[int]) -> None:
        with self._lock:
            self._db.executemany("DELETE FROM messages WHERE id=?", [(i,) for i in message_ids])

    def add(self, conversation_id: int, message: Message) -> Message:
        now = time.time()
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO messages(conversation_id, role, text, sources, stats, created) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    conversation_id,
                    message.role,
                    message.text,
                    json.dumps(message.sources),
                    json.dumps(message.stats),
                    now,
                ),
            )
            self._db.execute("UPDATE conversations SET updated=? WHERE id=?", (now, conversation_id))
        message.id = int(cursor.lastrowid)
        return message
