"""Upgrading and downgrading the app over a user's existing data.

`fixtures/library-v1` was written by Dolphin Desk 0.1.0's own Store (schema 1): one folder, one
ready document with a chunk and its memory, one pending document."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from app.chats import ChatStore, ChatStoreError
from app.library.store import SCHEMA_VERSION, Store
from tests.conftest import FIXTURES

V1 = FIXTURES / "library-v1"


def _user_version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA user_version").fetchone()[0]
    finally:
        db.close()


def test_a_schema_1_library_is_migrated_with_everything_kept(tmp_path) -> None:
    shutil.copy(V1 / "library.sqlite3", tmp_path / "library.sqlite3")
    store = Store(tmp_path)
    try:
        assert store.schema_version == SCHEMA_VERSION == 2
        assert store.integrity_check() == "ok"
        ready = store.document(Path("/home/ada/Notes/harbour.txt"))
        pending = store.document(Path("/home/ada/Notes/later.txt"))
        assert ready is not None and ready.state == "ready" and ready.chunk_count == 1
        assert ready.indexed_at is not None and ready.indexed_at > 1.7e9
        assert pending is not None and pending.state == "pending" and pending.indexed_at is None
        hits = store.search("green lamp", 3)
        assert [hit.document_path.name for hit in hits] == ["harbour.txt"]
        states, tokens = store.get_memory(hits[0].text_hash, "tiny-encoder")
        np.testing.assert_array_equal(states.astype(np.float16), np.load(V1 / "memory.npy"))
        assert tokens == 14
    finally:
        store.close()
    backup = tmp_path / "library.sqlite3.schema1.bak"
    assert _user_version(backup) == 1, "the pre-upgrade copy must be the old library, untouched"


def test_a_migrated_library_opens_again_without_a_second_backup(tmp_path) -> None:
    shutil.copy(V1 / "library.sqlite3", tmp_path / "library.sqlite3")
    Store(tmp_path).close()
    backup = tmp_path / "library.sqlite3.schema1.bak"
    stamp = backup.stat().st_mtime_ns
    store = Store(tmp_path)
    assert store.schema_version == SCHEMA_VERSION
    store.close()
    assert backup.stat().st_mtime_ns == stamp


def test_a_new_document_records_when_it_was_indexed(tmp_path) -> None:
    from app.library.store import ChunkRecord

    store = Store(tmp_path)
    folder = store.add_folder(tmp_path / "docs")
    store.upsert_pending(folder.id, tmp_path / "docs" / "a.txt", 1)
    assert store.document(tmp_path / "docs" / "a.txt").indexed_at is None
    store.replace_chunks(tmp_path / "docs" / "a.txt", [ChunkRecord(0, "text", 0, 4, None, 1, "h")], 4, 1.0, "x")
    assert store.document(tmp_path / "docs" / "a.txt").indexed_at is not None
    store.close()


def test_an_older_app_refuses_a_newer_chats_database_without_damage(tmp_path) -> None:
    ChatStore(tmp_path).close()
    db = sqlite3.connect(tmp_path / "chats.sqlite3")
    db.execute("PRAGMA user_version = 7")
    db.commit()
    db.close()
    before = (tmp_path / "chats.sqlite3").read_bytes()
    with pytest.raises(ChatStoreError, match="newer Dolphin Desk"):
        ChatStore(tmp_path)
    assert (tmp_path / "chats.sqlite3").read_bytes() == before


def test_chats_survive_reopening(tmp_path) -> None:
    chats = ChatStore(tmp_path)
    conversation = chats.create("Harbour")
    chats.close()
    again = ChatStore(tmp_path)
    assert [c.title for c in again.conversations()] == [conversation.title]
    again.close()
