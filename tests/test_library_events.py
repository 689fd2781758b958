"""The library pushes its changes (never polled), through one writer; settings changes re-chunk
and re-scan; an idle library does nothing at all."""

from __future__ import annotations

import resource
import shutil
import sqlite3
import threading
import time
from pathlib import Path

from app.library.events import DocumentsChanged, DocumentsRemoved, IndexProgress, Snapshot
from app.library.states import FINAL_STATES, DocumentState
from tests.conftest import ROOT, wait_for

KJV = ROOT / "benchmarks" / "data" / "kjv"
SHORT = {
    "note-1.txt": "The keeper lit the lamp at dusk.",
    "note-2.txt": "The storm broke the northern window.",
    "note-3.txt": "Supplies arrive on the first Monday of the month.",
}


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    shutil.copy(KJV / "ruth.txt", folder / "ruth.txt")
    for name, text in SHORT.items():
        (folder / name).write_text(text)
    return folder


def _chunk_hashes(library, path: Path) -> list[str]:
    db = sqlite3.connect(library.store.path)
    try:
        return [
            row[0]
            for row in db.execute(
                "SELECT c.text_hash FROM chunks c JOIN documents d ON d.id = c.document_id "
                "WHERE d.path = ? ORDER BY c.ordinal",
                (str(path),),
            )
        ]
    finally:
        db.close()


def test_a_new_chunk_size_rechunks_in_the_background_and_reuses_memories(make_library, tmp_path) -> None:
    folder = _folder(tmp_path)
    library = make_library(chunk_tokens=1024)
    library.add_folder(folder)
    library.start()
    assert library.index_until_done(timeout=120)
    ruth_before = _chunk_hashes(library, folder / "ruth.txt")
    short_before = {name: _chunk_hashes(library, folder / name) for name in SHORT}
    stored_before = {h for d in library.store.documents() for h in _chunk_hashes(library, d.path)}
    encoded_before = library.indexer.encoded

    library.set_chunk_tokens(256)
    assert library.index_until_done(timeout=120)
    ruth_after = _chunk_hashes(library, folder / "ruth.txt")
    assert len(ruth_after) > len(ruth_before), "smaller chunks, more of them"
    # One chunk each, the same text at either size: re-chunked, and their memories serve as they are.
    assert {name: _chunk_hashes(library, folder / name) for name in SHORT} == short_before
    new_hashes = set(ruth_after) - stored_before
    assert library.indexer.encoded - encoded_before == len(new_hashes)
    assert {d.chunker for d in library.store.documents()} == {library.indexer.chunker}
    assert library.indexer.chunker.startswith("256@")


def test_reopening_with_another_chunk_size_rechunks_only_what_differs(make_library, tmp_path) -> None:
    folder = _folder(tmp_path)
    data = tmp_path / "data"
    first = make_library(data, chunk_tokens=1024)
    first.add_folder(folder)
    first.start()
    assert first.index_until_done(timeout=120)
    first.stop()
    second = make_library(data, chunk_tokens=1024)
    second.start()
    assert second.index_until_done(timeout=60)
    assert second.indexer.encoded == 0 and second.indexer.reused == 0, "same chunker: nothing read again"
    second.stop()
    third = make_library(data, chunk_tokens=128)
    third.start()
    assert third.index_until_done(timeout=120)
    assert third.indexer.reused >= len(SHORT), "the short notes' chunks are unchanged: their memories serve"
    assert all(d.state is DocumentState.READY for d in third.store.documents())


def test_new_patterns_rescan_every_folder_that_follows_them(make_library, tmp_path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a.txt").write_text("plain text about the lighthouse")
    (folder / "b.md").write_text("# notes about the harbour")
    (folder / "c.py").write_text("def keeper():\n    return 'lamp'\n")
    (folder / "README").write_text("no extension")
    library = make_library(include=["*.txt", "*.md"], exclude=[".*", "README"])
    library.add_folder(folder)
    library.start()
    assert library.index_until_done(timeout=60)

    def indexed() -> list[str]:
        return sorted(d.path.name for d in library.store.documents() if d.state is DocumentState.READY)

    assert indexed() == ["a.txt", "b.md"]
    library.set_patterns(["*.txt", "*.py"], [".*", "README"])
    assert library.index_until_done(timeout=60)
    assert indexed() == ["a.txt", "c.py"]
    # Newly excluded files leave the index and stay listed, with the reason.
    documents = {d.path.name: (d.state, d.error, d.chunk_count) for d in library.store.documents()}
    assert documents["b.md"] == (DocumentState.SKIPPED, "not a document type (no include pattern matches it)", 0)
    assert documents["README"] == (DocumentState.SKIPPED, "excluded by pattern README", 0)
    # A folder with patterns of its own ignores the app's.
    library.set_folder_patterns(folder, ["*.md"], [])
    assert library.index_until_done(timeout=60)
    assert indexed() == ["README", "b.md"], "README: no extension, and text"
    assert library.store.folders()[0].include_patterns == ["*.md"]


def test_events_replayed_in_order_agree_with_the_database(make_library, tmp_path) -> None:
    folder = _folder(tmp_path)
    library = make_library(chunk_tokens=256)
    events: list = []
    library.subscribe(events.append)
    library.request_snapshot().result(10)
    library.add_folder(folder)
    library.start()
    assert library.index_until_done(timeout=120)
    (folder / "note-1.txt").unlink()
    library.reconcile()
    assert library.index_until_done(timeout=60)
    # Replay: a snapshot, then every change in order; each progress event's counts must equal
    # the counts of the rows received before it.
    assert isinstance(events[0], Snapshot)
    rows: dict[Path, DocumentState] = {d.path: d.state for d in events[0].documents}
    checked = 0
    for event in events[1:]:
        if isinstance(event, DocumentsChanged):
            rows.update({d.path: d.state for d in event.documents})
        elif isinstance(event, DocumentsRemoved):
            for path in event.paths:
                rows.pop(path, None)
        elif isinstance(event, IndexProgress) and event.counts is not None:
            expected = {state: sum(1 for s in rows.values() if s is state) for state in DocumentState}
            assert event.counts == expected
            assert event.documents_done == sum(expected[s] for s in FINAL_STATES)
            checked += 1
    assert checked >= 5
    assert rows == {d.path: d.state for d in library.store.documents()}


def test_an_idle_library_writes_nothing_and_sleeps(make_library, tmp_path) -> None:
    """Idle means idle: no database write, no thread waking to poll (the old window re-read the
    whole library every 700 ms and collected garbage every second)."""
    folder = _folder(tmp_path)
    library = make_library(chunk_tokens=256)
    library.add_folder(folder)
    library.start(watch=True)
    assert library.index_until_done(timeout=120)
    time.sleep(1.0)  # the watcher's last debounce
    watcher_db = sqlite3.connect(library.store.path)
    version = watcher_db.execute("PRAGMA data_version").fetchone()[0]
    wal = library.store.path.with_name(library.store.path.name + "-wal")
    wal_before = wal.stat().st_mtime_ns if wal.exists() else None
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    threads_before = {t.name for t in threading.enumerate()}
    time.sleep(5.0)
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    assert watcher_db.execute("PRAGMA data_version").fetchone()[0] == version, "a write while idle"
    watcher_db.close()
    assert (wal.stat().st_mtime_ns if wal.exists() else None) == wal_before
    busy = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    assert busy < 0.05, f"{busy:.3f} CPU-seconds in 5 idle seconds"
    assert {t.name for t in threading.enumerate()} == threads_before


def test_commands_from_many_threads_go_through_one_writer(make_library, tmp_path) -> None:
    folders = []
    for index in range(4):
        folder = tmp_path / f"f{index}"
        folder.mkdir()
        for n in range(5):
            (folder / f"doc{n}.txt").write_text(f"folder {index} document {n} about keepers and lamps")
        folders.append(folder)
    library = make_library()
    library.start()
    writers: set[str] = set()
    real = library.store.queue_documents

    def spy(*args, **kwargs):
        writers.add(threading.current_thread().name)
        return real(*args, **kwargs)

    library.store.queue_documents = spy
    threads = [threading.Thread(target=library.add_folder, args=(f,)) for f in folders]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert library.index_until_done(timeout=120)
    assert writers == {"dolphin-indexer"}
    assert library.store.count_states()[DocumentState.READY] == 20
    wait_for(lambda: library.indexer.wait_idle(0))


def test_a_folder_that_went_away_is_reported_missing_and_keeps_its_index(make_library, tmp_path) -> None:
    from app.library.events import FoldersChanged

    folder = tmp_path / "usb"
    folder.mkdir()
    shutil.copy(ROOT / "benchmarks" / "data" / "kjv" / "ruth.txt", folder / "ruth.txt")
    library = make_library()
    library.add_folder(folder)
    library.start()
    assert library.index_until_done(timeout=60)
    seen: list[FoldersChanged] = []
    library.subscribe(lambda e: seen.append(e) if isinstance(e, FoldersChanged) else None)
    shutil.move(str(folder), str(tmp_path / "elsewhere"))  # a drive unplugged, a folder moved away
    library.reconcile()
    wait_for(lambda: any(f.missing for e in seen for f in e.folders), timeout=10)
    assert library.store.count_states()["ready"] == 1  # nothing the user had is lost
    shutil.move(str(tmp_path / "elsewhere"), str(folder))
    library.reconcile()
    wait_for(lambda: not any(f.missing for f in seen[-1].folders), timeout=10)
