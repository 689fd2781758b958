"""The folders panel's model changes row by row, and settings mean what the schema says."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from app.library.events import DocumentsChanged, DocumentsRemoved, FolderInfo, IndexProgress, ProblemsChanged, Snapshot
from app.library.states import DocumentState, IndexerState
from app.library.store import Document, Problem
from app.settings import SCHEMA, NewerSettingsError, Settings, load_settings, save_settings, spec
from app.ui.dialogs import SettingsDialog
from app.ui.event_pump import EventPump
from app.ui.library_model import LibraryTreeModel
from tests.conftest import ROOT, run_cli
from tests.test_ui import index_folder, open_window, wait_ready  # noqa: F401 - open_window is a fixture

KJV = ROOT / "benchmarks" / "data" / "kjv"


def _document(number: int, folder_id: int = 1, state: DocumentState = DocumentState.PENDING) -> Document:
    path = Path(f"/library/folder-{folder_id}/doc-{number:05}.txt")
    return Document(number, folder_id, path, 1, 1.0, None, state, None, 0)


def test_the_model_changes_rows_in_place_and_inserts_in_runs(qtbot) -> None:
    model = LibraryTreeModel()
    pump = EventPump(model)

    def deliver(*events) -> None:
        """Post as the writer thread does, and wait until the GUI side applied them."""
        before = pump.applied_events
        for event in events:
            pump.post(event)
        qtbot.waitUntil(lambda: pump.applied_events > before and pump.pending == 0, timeout=20000)

    resets, inserts, changes, removals = [], [], [], []
    model.modelReset.connect(lambda: resets.append(1))
    model.rowsInserted.connect(lambda parent, first, last: inserts.append((parent.isValid(), first, last)))
    model.dataChanged.connect(lambda first, last: changes.append(first.row()))
    model.rowsRemoved.connect(lambda parent, first, last: removals.append((first, last)))
    folder = FolderInfo(1, Path("/library/folder-1"), False, None, None)
    pump.expect_snapshot()
    pump.post(DocumentsChanged((_document(1),)))  # before the snapshot: already in it, dropped
    deliver(Snapshot((folder,), tuple(_document(n) for n in range(0, 20000, 2)), (), _progress()))
    assert model.document_count() == 10000
    assert resets == [1]
    # 10,000 new documents between the existing ones: inserted in runs, applied in slices.
    deliver(DocumentsChanged(tuple(_document(n) for n in range(1, 20000, 2))))
    assert model.document_count() == 20000
    assert resets == [1] and all(parent for parent, _, _ in inserts)
    parent = model.index(0, 0)
    assert [model.index(r, 0, parent).data() for r in range(3)] == ["doc-00000.txt", "doc-00001.txt", "doc-00002.txt"]
    changes.clear()
    deliver(DocumentsChanged((_document(7, state=DocumentState.READY),)))
    assert model.index(7, 2, parent).data() == "ready"
    assert 7 in changes and len(changes) <= 3, "one row and its folder's summary, nothing else"
    assert model.folder_summary(0) == "1 ready, 19999 pending"
    deliver(
        ProblemsChanged((Problem(1, "watcher", "", "cannot watch", 0.0),)),
        DocumentsRemoved((_document(3).path, _document(4).path, _document(9).path)),
    )
    assert model.document_count() == 19997 and resets == [1]
    assert model.index(0, 0, parent).data() == "⚠ watcher"
    assert model.index(1 + 3, 0, parent).data() == "doc-00005.txt"


def _progress() -> IndexProgress:
    return IndexProgress(IndexerState.IDLE, 0, 0, 0, 0, None, 0.0, 0, 0)


def test_the_settings_dialog_takes_its_limits_from_the_schema(qtbot) -> None:
    dialog = SettingsDialog(Settings(), "/data")
    qtbot.addWidget(dialog)
    for name, box in (("top_k", dialog.top_k), ("chunk_tokens", dialog.chunk_tokens), ("threads", dialog.threads)):
        assert (box.minimum(), box.maximum()) == (spec(name).minimum, spec(name).maximum), name
    providers = [dialog.provider.itemData(i) for i in range(dialog.provider.count())]
    assert providers == list(spec("provider").choices or ())
    assert [f for f in Settings.__dataclass_fields__ if f != "version"] == [s.name for s in SCHEMA]
    assert all(getattr(Settings(), s.name) == s.default for s in SCHEMA)


def test_a_newer_settings_file_is_refused_and_kept(tmp_path) -> None:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"version": 99, "top_k": 4}))
    before = path.read_bytes()
    with pytest.raises(NewerSettingsError, match="newer Dolphin Desk"):
        load_settings(tmp_path)
    assert path.read_bytes() == before and not (tmp_path / "settings.json.bad").exists()
    result = run_cli("status", "--data-dir", str(tmp_path))
    assert result.returncode == 1


def test_the_cli_uses_saved_settings_and_refuses_bad_flags(fp32_bundle, tmp_path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    shutil.copy(KJV / "jonah.txt", folder / "jonah.txt")
    data = tmp_path / "data"
    save_settings(data, Settings(top_k=1, max_new_tokens=5, greedy=True, chunk_tokens=256))
    assert run_cli("index", str(folder), "--bundle", str(fp32_bundle), "--data-dir", str(data)).returncode == 0
    asked = run_cli(
        "ask", "--bundle", str(fp32_bundle), "--data-dir", str(data), "--question", "Who went to Nineveh?", "--json"
    )
    assert asked.returncode == 0, asked.stderr
    answer = json.loads(asked.stdout)
    assert len(answer["sources"]) == 1 and len(answer["token_ids"]) <= 5
    refused = run_cli(
        "ask", "--bundle", str(fp32_bundle), "--data-dir", str(data), "--question", "Who?", "--top-k", "0"
    )
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "dolphin-desk: error: memory blocks per answer must be at least 1 (flag or saved setting)"
    )


def test_settings_changes_rechunk_or_rescan_without_reloading_the_model(
    qtbot,
    open_window,  # noqa: F811
    fp32_bundle,
    tmp_path,
) -> None:
    folder = tmp_path / "Books"
    folder.mkdir()
    for name in ("ruth.txt", "jonah.txt"):
        shutil.copy(KJV / name, folder / name)
    (folder / "notes.md").write_text("# Notes\n\nThe keeper's notes.")
    window, controller = open_window(settings=Settings(bundle_path=str(fp32_bundle), chunk_tokens=1024))
    wait_ready(qtbot, controller)
    index_folder(qtbot, window, controller, folder)
    qtbot.waitUntil(lambda: window.folders.progress.format().startswith("Up to date"), timeout=30000)
    model_before = controller.model

    def shown_chunks() -> dict[str, str]:
        tree, parent = window.folders.model, window.folders.model.index(0, 0)
        return {tree.index(r, 0, parent).data(): tree.index(r, 1, parent).data() for r in range(tree.rowCount(parent))}

    chunks_before = shown_chunks()
    changed = Settings(**{**controller.settings.__dict__, "chunk_tokens": 256})
    controller.apply_settings(changed)
    qtbot.waitUntil(
        lambda: (
            controller.library.indexer.chunker.startswith("256@")
            and window.folders.progress.format().startswith("Up to date")
            and all(d.chunker == controller.library.indexer.chunker for d in controller.library.store.documents())
        ),
        timeout=60000,
    )
    assert controller.model is model_before, "re-chunking needs no model reload"
    assert load_settings(controller.data_dir)[0].chunk_tokens == 256
    qtbot.waitUntil(lambda: int(shown_chunks()["ruth.txt"]) > int(chunks_before["ruth.txt"]), timeout=10000)
    assert shown_chunks()["notes.md"] == chunks_before["notes.md"] == "1"
    without_md = [p for p in controller.settings.include_patterns if p != "*.md"]
    controller.apply_settings(Settings(**{**controller.settings.__dict__, "include_patterns": without_md}))
    qtbot.waitUntil(
        lambda: (
            window.folders.document_rows(0).get("notes.md")
            == "skipped: not a document type (no include pattern matches it)"
        ),
        timeout=30000,
    )
    assert controller.model is model_before
