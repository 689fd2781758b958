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
from app.library.store import SCHEMA_VERSION, Store, StoreError
from tests.conftest import FIXTURES, set_user_version

V1 = FIXTURES / "library-v1"
V2 = FIXTURES / "library-v2"


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
        assert store.schema_version == SCHEMA_VERSION == 5
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


def test_a_schema_2_library_is_migrated_with_everything_kept(tmp_path) -> None:
    """0.2.0's library (tests/fixtures/make_library_v2.py) gains document notes and problems."""
    shutil.copy(V2 / "library.sqlite3", tmp_path / "library.sqlite3")
    store = Store(tmp_path)
    try:
        assert store.schema_version == 5 and store.integrity_check() == "ok"
        ready = store.document(Path("/home/ada/Notes/harbour.txt"))
        broken = store.document(Path("/home/ada/Notes/broken.pdf"))
        assert ready is not None and ready.state == "ready" and ready.note is None and ready.indexed_at
        assert broken is not None and broken.state == "failed" and "EOF marker" in broken.error
        assert store.problems() == []
        hits = store.search("green lamp", 3)
        states, tokens = store.get_memory(hits[0].text_hash, "tiny-encoder")
        np.testing.assert_array_equal(states.astype(np.float16), np.load(V2 / "memory.npy"))
        assert tokens == 11
        store.set_problem(0, "indexer", "", "the indexer stopped: RuntimeError")
        assert [p.message for p in store.problems()] == ["the indexer stopped: RuntimeError"]
    finally:
        store.close()
    assert _user_version(tmp_path / "library.sqlite3.schema2.bak") == 2


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
    set_user_version(tmp_path / "chats.sqlite3", 7)
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


def test_an_upgrade_after_a_downgrade_refreshes_the_backup(tmp_path) -> None:
    """Upgrade, put the backup back to run the old app, upgrade again: the new backup holds the
    library as the old app left it, not the first one's stale copy."""
    (tmp_path / "library.sqlite3.schema1.bak").write_bytes(b"a stale copy from an earlier upgrade")
    shutil.copy(V1 / "library.sqlite3", tmp_path / "library.sqlite3")
    Store(tmp_path).close()
    assert _user_version(tmp_path / "library.sqlite3.schema1.bak") == 1
    assert not list(tmp_path.glob("*.partial"))


def test_a_newer_library_in_rollback_journal_mode_is_left_byte_for_byte(tmp_path) -> None:
    db = sqlite3.connect(tmp_path / "library.sqlite3")
    db.execute("CREATE TABLE future (x)")
    db.commit()
    db.close()
    set_user_version(tmp_path / "library.sqlite3", SCHEMA_VERSION + 5)
    before = (tmp_path / "library.sqlite3").read_bytes()
    with pytest.raises(StoreError, match="newer Dolphin Desk"):
        Store(tmp_path)
    assert (tmp_path / "library.sqlite3").read_bytes() == before
    assert not (tmp_path / "library.sqlite3-wal").exists()


def test_a_damaged_chats_file_is_a_clear_error_and_is_kept(tmp_path) -> None:
    (tmp_path / "chats.sqlite3").write_bytes(b"this is not a database, but it is the user's file" * 100)
    before = (tmp_path / "chats.sqlite3").read_bytes()
    with pytest.raises(ChatStoreError, match="cannot open the chats"):
        ChatStore(tmp_path)
    assert (tmp_path / "chats.sqlite3").read_bytes() == before
