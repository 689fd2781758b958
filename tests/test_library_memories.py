"""Memories are computed once: renames, moves, duplicates and restarts never re-run the encoder."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np

from app.library.store import SCHEMA_VERSION, Store, StoreError
from tests.conftest import ROOT, set_user_version, wait_for

KJV = ROOT / "benchmarks" / "data" / "kjv"


def _indexed(make_library, folder: Path, data_dir: Path | None = None):
    library = make_library(data_dir=data_dir) if data_dir else make_library()
    library.add_folder(folder)
    library.start()
    assert library.index_until_done(timeout=120)
    return library


def test_duplicates_renames_and_moves_reuse_memories(make_library, tmp_path) -> None:
    folder = tmp_path / "docs"
    (folder / "a").mkdir(parents=True)
    shutil.copy(KJV / "jonah.txt", folder / "a" / "jonah.txt")
    library = _indexed(make_library, folder)
    first_encoded = library.indexer.encoded
    assert first_encoded > 0 and library.indexer.reused == 0

    shutil.copy(folder / "a" / "jonah.txt", folder / "copy of jonah.txt")
    (folder / "a" / "jonah.txt").rename(folder / "a" / "renamed.txt")
    (folder / "b").mkdir()
    shutil.move(folder / "a", folder / "b" / "a")
    library.reconcile()
    library.index_until_done(timeout=60)
    names = sorted(Path(d["path"]).relative_to(folder).as_posix() for d in library.status()["documents"])
    assert names == ["b/a/renamed.txt", "copy of jonah.txt"]
    assert library.indexer.encoded == first_encoded
    assert library.indexer.reused == 2 * first_encoded


def test_another_model_never_mixes_in(make_library, fp32_model, tmp_path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("The keeper kept a log of every ship.")
    library = _indexed(make_library, folder)
    chunk = library.retrieve("keeper log", k=1)[0]
    assert library.store.get_memory(chunk.text_hash, "some-other-encoder") is None
    library.store.put_memory(chunk.text_hash, "some-other-encoder", np.ones((32, 8), dtype=np.float32), 3)
    states, _ = library.store.get_memory(chunk.text_hash, fp32_model.encoder_identity)
    assert states.shape == (32, fp32_model.manifest.encoder.hidden_size)


def test_deleting_documents_and_folders_reclaims_memories(make_library, tmp_path) -> None:
    folder, other = tmp_path / "docs", tmp_path / "other"
    folder.mkdir()
    other.mkdir()
    shutil.copy(KJV / "jonah.txt", folder / "jonah.txt")
    shutil.copy(KJV / "ruth.txt", folder / "ruth.txt")
    shutil.copy(KJV / "ruth.txt", other / "ruth.txt")
    library = make_library()
    library.add_folder(folder)
    library.add_folder(other)
    library.start()
    library.index_until_done(timeout=120)
    before = library.store.memory_stats()["memories"]
    (folder / "jonah.txt").unlink()
    library.reconcile()
    library.index_until_done(timeout=60)
    after_delete = library.store.memory_stats()["memories"]
    assert 0 < after_delete < before
    library.remove_folder(folder)
    library.index_until_done(timeout=60)
    assert library.store.memory_stats()["memories"] == after_delete, "ruth.txt in the other folder still uses them"
    library.remove_folder(other)
    library.index_until_done(timeout=60)
    assert library.store.memory_stats()["memories"] == 0
    assert library.status()["documents"] == []


def test_kill_9_loses_nothing_that_was_stored(fp32_bundle, tmp_path, report) -> None:
    """A real indexing process is killed mid-way; the database is intact and a restart
    encodes only what had not been stored."""
    folder = tmp_path / "docs"
    folder.mkdir()
    for name in sorted(os.listdir(KJV)):
        text = (KJV / name).read_text()
        for copy in range(3):
            (folder / f"{copy}-{name}").write_text(f"Copy {copy}.\n\n" + text.replace("LORD", f"LORD{copy}"))
    data = tmp_path / "data"
    command = [
        sys.executable,
        "-m",
        "app.cli",
        "index",
        str(folder),
        "--bundle",
        str(fp32_bundle),
        "--data-dir",
        str(data),
        "--chunk-tokens",
        "96",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def some_documents_ready() -> bool:
        if not (data / "library.sqlite3").exists():
            return False
        try:
            db = sqlite3.connect(f"file:{data / 'library.sqlite3'}?mode=ro", uri=True, timeout=5)
            ready = db.execute("SELECT COUNT(*) FROM documents WHERE state='ready'").fetchone()[0]
            db.close()
            return ready >= 3
        except sqlite3.Error:
            return False

    wait_for(some_documents_ready, timeout=120)
    process.send_signal(signal.SIGKILL)
    process.wait()
    db = sqlite3.connect(data / "library.sqlite3")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = {row[0] for row in db.execute("SELECT text_hash FROM memories")}
    states = dict(db.execute("SELECT state, COUNT(*) FROM documents GROUP BY state").fetchall())
    db.close()
    assert states.get("ready", 0) < 18, "the kill came too late to test anything"

    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    db = sqlite3.connect(data / "library.sqlite3")
    all_hashes = {row[0] for row in db.execute("SELECT DISTINCT text_hash FROM chunks")}
    ready = db.execute("SELECT COUNT(*) FROM documents WHERE state='ready'").fetchone()[0]
    db.close()
    encoded = int(result.stdout.split(" chunks encoded")[0].split()[-1])
    assert ready == 18
    assert encoded == len(all_hashes - stored), result.stdout
    report(
        f"kill -9 after {states.get('ready', 0)} of 18 documents: {len(stored)} memories survived, "
        f"restart encoded {encoded} and reused the rest"
    )


def test_newer_schema_is_refused_without_damage(tmp_path) -> None:
    store = Store(tmp_path)
    store.close()
    set_user_version(tmp_path / "library.sqlite3", SCHEMA_VERSION + 1)
    before = (tmp_path / "library.sqlite3").read_bytes()
    try:
        Store(tmp_path)
    except StoreError as exc:
        assert "newer Dolphin Desk" in str(exc)
    else:
        raise AssertionError("a newer schema was opened")
    assert (tmp_path / "library.sqlite3").read_bytes() == before


def test_new_store_has_the_schema_and_wal(tmp_path) -> None:
    store = Store(tmp_path)
    assert store.schema_version == SCHEMA_VERSION
    assert store._query("PRAGMA journal_mode")[0][0] == "wal"
    assert store.integrity_check() == "ok"
    store.close()


def test_repeated_kill_9_never_corrupts_or_re_encodes(fp32_bundle, tmp_path, report) -> None:
    """benchmarks/kill_stress.py with three kills (the committed run has 100): after each, the
    database is intact; no stored memory is encoded again; the finished library equals one made
    without kills, memory for memory."""
    from benchmarks.kill_stress import stress

    result = stress(fp32_bundle, kills=3, work=tmp_path, copies=1)
    report(f"kill -9 stress: {result['kills']} kills in {result['cycles']} cycle(s), {result['kill_points']}")
    assert result["kills"] == 3
    assert result["failures"] == []
