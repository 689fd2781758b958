"""Real watchdog events reach the index: create, modify, delete, rename, move, half-copied files."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from tests.conftest import wait_for


def _names(library, root: Path) -> set[str]:
    return {
        Path(d["path"]).relative_to(root).as_posix() for d in library.status()["documents"] if d["state"] == "ready"
    }


def test_changes_while_watching_reach_the_index(make_library, tmp_path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "first.txt").write_text("The first note is about the harbour.")
    library = make_library()
    library.add_folder(folder)
    library.start(watch=True)
    wait_for(lambda: _names(library, folder) == {"first.txt"})

    (folder / "second.md").write_text("A second note about the lighthouse keeper.")
    wait_for(lambda: _names(library, folder) == {"first.txt", "second.md"})

    (folder / "first.txt").write_text("The first note now talks about whales instead.")
    wait_for(lambda: any("whales" in c.text for c in library.retrieve("whales", k=3)))

    (folder / "second.md").rename(folder / "renamed.md")
    wait_for(lambda: _names(library, folder) == {"first.txt", "renamed.md"})

    (folder / "sub" / "deep").mkdir(parents=True)
    (folder / "sub" / "deep" / "inner.txt").write_text("Deep inside the folder tree.")
    wait_for(lambda: "sub/deep/inner.txt" in _names(library, folder))
    shutil.move(folder / "sub", folder / "moved")
    wait_for(lambda: _names(library, folder) == {"first.txt", "renamed.md", "moved/deep/inner.txt"})

    (folder / "renamed.md").unlink()
    shutil.rmtree(folder / "moved")
    wait_for(lambda: _names(library, folder) == {"first.txt"})
    assert library.indexer.last_error is None


def test_a_half_copied_file_is_indexed_once_complete(make_library, tmp_path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    library = make_library()
    library.add_folder(folder)
    library.start(watch=True)
    text = (Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "kjv" / "jonah.txt").read_text()
    target = folder / "jonah.txt"
    with target.open("w") as handle:
        handle.write(text[: len(text) // 2])
        handle.flush()
        time.sleep(1.5)  # a slow copy: longer than the debounce, the file sits half-written
        handle.write(text[len(text) // 2 :])
    from inference.bundle import file_digest

    complete = file_digest(target)

    def indexed_complete() -> bool:
        document = library.store.document(target)
        return document is not None and document.state == "ready" and document.content_hash == complete

    wait_for(indexed_complete)
    stored = library.store._query("SELECT text FROM chunks ORDER BY ordinal")
    assert "Jonah4:11" in stored[-1]["text"]


def test_a_watched_folder_that_disappears(make_library, tmp_path) -> None:
    folder, other = tmp_path / "docs", tmp_path / "other"
    folder.mkdir()
    other.mkdir()
    (folder / "a.txt").write_text("this folder will vanish")
    library = make_library()
    library.add_folder(folder)
    library.start(watch=True)
    wait_for(lambda: _names(library, folder) == {"a.txt"})
    shutil.rmtree(folder)
    wait_for(lambda: library.status()["folders"][0]["missing"])
    (other / "b.txt").write_text("the library still works")
    library.add_folder(other)
    wait_for(lambda: "b.txt" in {Path(d["path"]).name for d in library.status()["documents"] if d["state"] == "ready"})
    library.reconcile()
    assert library.indexer.last_error is None
