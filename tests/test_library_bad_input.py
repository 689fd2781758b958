"""Files and folders that users really have: none may crash the indexer; each gets a state."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli
from tests.test_library_indexing import make_pdf


def index(make_library, folder: Path, **options) -> dict[str, dict]:
    library = make_library(**options)
    library.add_folder(folder)
    library.start()
    assert library.index_until_done(timeout=120)
    assert library.indexer.last_error is None
    return {Path(d["path"]).name: d for d in library.status()["documents"]}


def test_broken_files_each_get_a_readable_state(make_library, tmp_path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "empty.txt").write_bytes(b"")
    (folder / "binary.txt").write_bytes(bytes(range(256)) * 40)
    (folder / "latin1.txt").write_bytes(("Café crème, naïve façade, très cher. " * 5).encode("latin-1"))
    (folder / "broken-utf8.md").write_bytes(b"valid start \xc3\x28 then more words here " * 20)
    (folder / "corrupt.pdf").write_bytes(b"%PDF-1.7\n1 0 obj << /Type /Catalog >>\n garbage \x00\x01")
    make_pdf(folder / "locked.pdf", ["secret text"], password="hunter2")
    make_pdf(folder / "scanned.pdf", [""])
    (folder / "corrupt.docx").write_bytes(b"PK\x03\x04 this is not a real zip")
    (folder / "Résumé 2024 — ünïcode notes.md").write_text("Naïve café owner, three shops.", encoding="utf-8")
    (folder / "good.txt").write_text("The keeper kept the lamp burning.", encoding="utf-8")
    os.symlink(folder / "loop-b.txt", folder / "loop-a.txt")
    os.symlink(folder / "loop-a.txt", folder / "loop-b.txt")
    (folder / "subdir").mkdir()
    os.symlink(folder, folder / "subdir" / "back-to-top")
    huge = folder / "huge.txt"
    with huge.open("wb") as handle:
        handle.truncate(200 * 1024 * 1024)

    documents = index(make_library, folder)
    expected = {
        "empty.txt": ("skipped", "empty file"),
        "binary.txt": ("failed", "binary file"),
        "corrupt.pdf": ("failed", "not a readable PDF"),
        "locked.pdf": ("failed", "password-protected PDF"),
        "scanned.pdf": ("skipped", "no text"),
        "corrupt.docx": ("failed", "not a valid DOCX"),
        "loop-a.txt": ("failed", "symbolic link"),
        "loop-b.txt": ("failed", "symbolic link"),
        "huge.txt": ("skipped", "larger than the 50 MB limit"),
    }
    for name, (state, reason) in expected.items():
        assert documents[name]["state"] == state, (name, documents[name])
        assert reason in documents[name]["error"], (name, documents[name])
    for name in ("latin1.txt", "Résumé 2024 — ünïcode notes.md", "good.txt", "broken-utf8.md"):
        assert documents[name]["state"] == "ready", documents[name]
        assert documents[name]["error"] is None
    # The link that loops back to the top is listed, not followed: nothing is found through it.
    assert documents["back-to-top"]["error"] == "a link to a folder (links to folders are not followed)"
    assert documents["back-to-top"]["state"] == "skipped"
    assert not any("back-to-top/" in d["path"] for d in documents.values())


def test_a_failed_file_is_retried_only_when_it_changes(make_library, tmp_path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    bad = folder / "report.pdf"
    bad.write_bytes(b"%PDF-1.4 truncated")
    library = make_library()
    library.add_folder(folder)
    library.start()
    library.index_until_done(timeout=60)
    assert library.store.document(bad).state == "failed"
    library.reconcile()
    library.index_until_done(timeout=60)
    assert library.store.document(bad).state == "failed"
    make_pdf(bad, ["Now it is a real report about the harbour."])
    library.reconcile()
    library.index_until_done(timeout=60)
    assert library.store.document(bad).state == "ready"


def test_extraction_that_hangs_is_stopped(make_library, tmp_path) -> None:
    """A FIFO named like a text file blocks whoever reads it: the child is killed, not the app."""
    folder = tmp_path / "docs"
    folder.mkdir()
    os.mkfifo(folder / "pipe.txt")
    (folder / "after.txt").write_text("indexing goes on after the stuck file")
    library = make_library(extraction_timeout_s=1.0)
    library.add_folder(folder)
    library.start()
    assert library.index_until_done(timeout=60)
    documents = {Path(d["path"]).name: d for d in library.status()["documents"]}
    assert documents["pipe.txt"]["state"] in ("failed", "skipped")
    assert documents["after.txt"]["state"] == "ready"


def test_file_deleted_before_it_is_read_leaves_the_index(make_library, tmp_path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "stays.txt").write_text("this one stays")
    (folder / "goes.txt").write_text("this one is deleted before the indexer reaches it")
    library = make_library()
    library.indexer.pause()
    library.start()
    library.add_folder(folder)
    (folder / "goes.txt").unlink()
    library.indexer.resume()
    library.index_until_done(timeout=60)
    assert [Path(d["path"]).name for d in library.status()["documents"]] == ["stays.txt"]


@pytest.fixture
def world_writable_dir(fp32_bundle):
    """A folder an unprivileged user can use, holding a readable copy of the bundle."""
    path = Path(tempfile.mkdtemp(prefix="dolphin-nobody-"))
    path.chmod(0o777)
    shutil.copytree(fp32_bundle, path / "bundle")
    for item in (path / "bundle").rglob("*"):
        item.chmod(0o755 if item.is_dir() else 0o644)
    (path / "bundle").chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI as an unprivileged user, so file modes really deny access (tests run as root).

    Only the indexer's own reads happen as that user: this machine's interpreter lives in a
    folder `nobody` cannot enter, so the extraction child could not start; the files used here
    never reach extraction."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HOME": "/tmp"}
    return subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "app.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        check=False,
    )


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_permission_denied_is_a_failed_document(world_writable_dir) -> None:
    folder = world_writable_dir / "docs"
    folder.mkdir(mode=0o777)
    secret = folder / "secret.txt"
    secret.write_text("only root may read this")
    secret.chmod(0o000)
    data = world_writable_dir / "data"
    result = _as_nobody("index", str(folder), "--bundle", str(world_writable_dir / "bundle"), "--data-dir", str(data))
    assert result.returncode == 0, result.stderr
    status = _as_nobody("status", "--data-dir", str(data), "--json")
    import json

    documents = {Path(d["path"]).name: d for d in json.loads(status.stdout)["documents"]}
    assert documents["secret.txt"] == {**documents["secret.txt"], "state": "failed", "error": "permission denied"}


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_unwritable_data_dir_is_a_clear_error(world_writable_dir) -> None:
    folder = world_writable_dir / "docs"
    folder.mkdir(mode=0o777)
    (folder / "a.txt").write_text("text")
    data = world_writable_dir / "data"
    data.mkdir(mode=0o755)
    result = _as_nobody("index", str(folder), "--bundle", str(world_writable_dir / "bundle"), "--data-dir", str(data))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "cannot write the library" in result.stderr or "cannot use the data folder" in result.stderr


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
        ).returncode
        == 0
    )


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small-disk"
    if os.geteuid() != 0 or not _mount_tmpfs(mount, "8m"):
        pytest.skip("cannot mount a small tmpfs here")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_ends_in_a_clear_error_and_nothing_is_corrupted(fp32_bundle, small_disk, tmp_path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(150):
        paragraphs = [
            f"Paragraph {j} of document {i}: the keeper kept the lamp burning through night {j}. " * 6
            for j in range(12)
        ]
        (folder / f"doc{i}.txt").write_text("\n\n".join(paragraphs))
    result = run_cli("index", str(folder), "--bundle", str(fp32_bundle), "--data-dir", str(small_disk))
    assert result.returncode == 1, result.stdout
    assert "Traceback" not in result.stderr
    assert "full" in result.stderr, result.stderr
    import sqlite3

    db = sqlite3.connect(f"file:{small_disk / 'library.sqlite3'}?mode=ro", uri=True)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    ready = db.execute("SELECT COUNT(*) FROM documents WHERE state='ready'").fetchone()[0]
    orphans = db.execute(
        "SELECT COUNT(*) FROM chunks c WHERE NOT EXISTS (SELECT 1 FROM memories m WHERE m.text_hash=c.text_hash)"
    ).fetchone()[0]
    db.close()
    assert ready >= 1 and orphans == 0


def test_read_only_data_dir_is_a_clear_error(fp32_bundle, small_disk, tmp_path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("text")
    assert subprocess.run(["mount", "-o", "remount,ro", str(small_disk)]).returncode == 0
    result = run_cli("index", str(folder), "--bundle", str(fp32_bundle), "--data-dir", str(small_disk / "data"))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "read-only" in result.stderr or "cannot use the data folder" in result.stderr, result.stderr
