"""Which files of a folder are read, and why the others are not (issue 16, item 1).

Settings patterns reach folders added earlier; a folder's own patterns are edited in the window,
kept in the library and applied by a new scan; patterns ignore case; files without an extension
are read when their content is text (real licence texts, as Debian ships them); and every file
that is left out is listed with its reason, an excluded directory as one entry.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMenu

from app.library.filters import (
    COUNT_LIMIT,
    DEFAULT_EXCLUDE,
    DEFAULT_INCLUDE,
    NOT_INCLUDED,
    NOT_TEXT,
    FolderFilter,
    has_no_extension,
    is_left_out,
    looks_like_text,
    pattern_problems,
)
from app.library.states import DocumentState
from app.settings import Settings
from app.ui.dialogs import FolderPatternsDialog
from tests.conftest import wait_for
from tests.test_ui import open_window, wait_ready  # noqa: F401 - open_window is a fixture

LICENCES = Path("/usr/share/common-licenses")
LICENCE_NAMES = ("GPL-3", "Apache-2.0", "BSD", "LGPL-2.1")
needs_licences = pytest.mark.skipif(
    not all((LICENCES / name).is_file() for name in (*LICENCE_NAMES, "MPL-2.0")),
    reason="needs the licence texts Debian ships in /usr/share/common-licenses",
)
BINARY = Path("/bin/true")


def _licence_folder(tmp_path: Path) -> Path:
    """Licence texts without extensions, read from the system at test time, and a program."""
    folder = tmp_path / "licences"
    folder.mkdir()
    for name in LICENCE_NAMES:
        shutil.copy(LICENCES / name, folder / name)
    shutil.copy(BINARY, folder / "tool")
    return folder


def _rows(library) -> dict[str, tuple[DocumentState, str | None, int]]:
    """Relative path -> (state, reason, chunks) of every row, as the folders panel lists them."""
    folder = library.store.folders()[0].path
    return {d.path.relative_to(folder).as_posix(): (d.state, d.error, d.chunk_count) for d in library.store.documents()}


# patterns ignore case, and mistakes are named --------------------------------------------------


def test_patterns_ignore_case(tmp_path) -> None:
    for name in ("gpl-2", "GPL-3", "readme.md", "README.txt", "makefile", "Report.pdf", "notes.TXT"):
        (tmp_path / name).write_text("text")
    own = FolderFilter(tmp_path, include=["GPL*", "README*", "Makefile", "*.PDF"], exclude=["*.txt"])
    walk = own.walk()
    assert sorted(p.name for p in walk.found) == ["GPL-3", "Report.pdf", "gpl-2", "makefile", "readme.md"]
    assert walk.left_out[tmp_path / "README.txt"] == "excluded by pattern *.txt"
    assert walk.left_out[tmp_path / "notes.TXT"] == "excluded by pattern *.txt"


def test_an_exclude_pattern_ending_in_a_slash_matches_folders_only(tmp_path) -> None:
    (tmp_path / "drafts").mkdir()
    (tmp_path / "drafts" / "one.md").write_text("a draft")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "drafts").write_text("a file named like the folder")
    walk = FolderFilter(tmp_path, exclude=["Drafts/"]).walk()
    assert walk.found == [tmp_path / "notes" / "drafts"]
    assert walk.left_out == {tmp_path / "drafts": "excluded by pattern Drafts/ (1 file)"}


def test_bad_patterns_are_named_in_a_sentence() -> None:
    assert pattern_problems(["*.md", "GPL*", ".git/", "[ab]*"], "exclude") == []
    problems = pattern_problems(["*.md,", "docs/*.md", "[abc", "build/"], "include")
    assert problems == [
        "“*.md,” has a comma: separate patterns with spaces or new lines",
        "“docs/*.md” is a path: a pattern matches one file or folder name, such as “*.md” or “drafts”",
        "“[abc” opens a [ that is never closed",
        "“build/” names a folder: include patterns name files (a trailing / is for exclude)",
    ]


def test_text_is_told_from_binary_by_content() -> None:
    assert has_no_extension("LICENSE") and has_no_extension("GPL-3") and has_no_extension("Apache-2.0")
    assert not has_no_extension("photo.png") and not has_no_extension("notes.txt")
    assert looks_like_text(b"") and looks_like_text("Café crème".encode("latin-1"))
    assert looks_like_text(("naïve " * 2000).encode("utf-8")[:8191])  # a character cut at the end
    assert not looks_like_text(BINARY.read_bytes()[:8192])
    assert not looks_like_text(bytes(range(1, 32)) * 100)


# files without an extension -------------------------------------------------------------------


@needs_licences
def test_licence_texts_without_extension_are_indexed_and_a_program_is_not(make_library, tmp_path) -> None:
    folder = _licence_folder(tmp_path)
    library = make_library()
    library.add_folder(folder)
    library.start(watch=True)
    assert library.index_until_done(timeout=180)
    rows = _rows(library)
    for name in LICENCE_NAMES:
        assert rows[name][0] is DocumentState.READY and rows[name][2] >= 1, (name, rows[name])
    assert rows["tool"] == (DocumentState.SKIPPED, NOT_TEXT, 0)
    assert any(c.document_path.name == "GPL-3" for c in library.retrieve("GNU General Public License", k=5))

    # Real watchdog events: another licence and another program arrive while watching.
    shutil.copy(LICENCES / "MPL-2.0", folder / "MPL-2.0")
    shutil.copy(BINARY, folder / "tool2")
    wait_for(lambda: _rows(library).get("MPL-2.0", (None,))[0] is DocumentState.READY, timeout=60)
    wait_for(lambda: _rows(library).get("tool2") == (DocumentState.SKIPPED, NOT_TEXT, 0), timeout=30)
    # Re-indexing the folder never reads what is left out.
    library.reindex(folder)
    assert library.index_until_done(timeout=120)
    assert _rows(library)["tool"] == (DocumentState.SKIPPED, NOT_TEXT, 0)


# every file left out is listed with its reason --------------------------------------------------


def _mixed_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("The keeper lit the lamp at dusk.")
    (folder / "debug.log").write_text("a log the exclude patterns leave out")
    (folder / "song.mp3").write_bytes(b"ID3\x03\x00\x00\x00\x00\x0f\x76")
    (folder / ".env").write_text("SECRET=1")
    (folder / "sub" / ".gitignore").write_text("*.tmp\n")
    (folder / "sub" / "scratch.tmp").write_text("ignored by git")
    (folder / "sub" / "kept.md").write_text("# Kept\n\nA note in a subfolder.")
    (folder / "build").mkdir()  # excluded, but holds no files: nothing is left out
    git = folder / ".git" / "objects"
    git.mkdir(parents=True)
    for name in ("a", "b", "c"):
        (git / name).write_bytes(b"\x78\x01 object")
    # More files than are ever counted: one entry, and a scan that stops counting.
    for package in range(12):
        directory = folder / "node_modules" / f"pkg{package}"
        directory.mkdir(parents=True)
        for number in range(COUNT_LIMIT // 10):
            (directory / f"f{number}.js").touch()
    return folder


def test_every_file_left_out_is_listed_with_its_reason(make_library, tmp_path) -> None:
    folder = _mixed_folder(tmp_path)
    library = make_library(include=list(DEFAULT_INCLUDE), exclude=[*DEFAULT_EXCLUDE, "*.log"])
    library.add_folder(folder)
    library.start(watch=True)
    assert library.index_until_done(timeout=120)
    rows = _rows(library)
    reasons = {name: reason for name, (state, reason, _) in rows.items() if state is DocumentState.SKIPPED}
    assert {name: state for name, (state, _, _) in rows.items() if state is not DocumentState.SKIPPED} == {
        "notes.txt": DocumentState.READY,
        "sub/kept.md": DocumentState.READY,
    }
    node_modules = reasons.pop("node_modules")
    assert re.fullmatch(r"excluded by pattern node_modules \([\d,]+\+ files\)", node_modules), node_modules
    assert reasons == {
        ".env": "excluded by pattern .*",
        ".git": "excluded by pattern .* (3 files)",
        "debug.log": "excluded by pattern *.log",
        "song.mp3": NOT_INCLUDED,
        "sub/.gitignore": "excluded by pattern .*",
        "sub/scratch.tmp": "excluded by pattern *.tmp in sub/.gitignore",
    }
    assert all(is_left_out(reason) for reason in reasons.values())

    # While watching: a new file left out is listed; one in an excluded directory adds no row.
    (folder / "diagram.svgz").write_bytes(b"\x1f\x8b compressed")
    (folder / "node_modules" / "pkg0" / "new.js").write_text("module.exports = 2")
    wait_for(lambda: _rows(library).get("diagram.svgz") == (DocumentState.SKIPPED, NOT_INCLUDED, 0), timeout=30)
    assert not any(name.startswith("node_modules/") for name in _rows(library))
    # An excluded directory that goes takes its entry along.
    shutil.rmtree(folder / ".git")
    wait_for(lambda: ".git" not in _rows(library), timeout=30)


def test_newly_excluded_files_leave_the_index_but_stay_listed(make_library, tmp_path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "keeper.txt").write_text("The lighthouse keeper trimmed the wick every evening.")
    (folder / "table.dat").write_text("harbour,tide\nnorth,high\n")
    data = tmp_path / "data"
    library = make_library(data)
    library.add_folder(folder)
    library.start()
    assert library.index_until_done(timeout=60)
    assert _rows(library)["table.dat"] == (DocumentState.SKIPPED, NOT_INCLUDED, 0)

    library.set_folder_patterns(folder, [*DEFAULT_INCLUDE, "*.DAT"], ["*.TXT"])
    assert library.index_until_done(timeout=60)
    rows = _rows(library)
    assert rows["keeper.txt"] == (DocumentState.SKIPPED, "excluded by pattern *.TXT", 0)
    assert rows["table.dat"][0] is DocumentState.READY
    assert not any(c.document_path.name == "keeper.txt" for c in library.retrieve("lighthouse keeper wick", k=5))
    library.stop()

    # The folder's own patterns are kept in the library; following the Settings again lets it back in.
    reopened = make_library(data)
    assert reopened.store.folders()[0].exclude_patterns == ["*.TXT"]
    reopened.start()
    reopened.set_folder_patterns(folder, None, None)
    assert reopened.index_until_done(timeout=60)
    assert _rows(reopened)["keeper.txt"][0] is DocumentState.READY
    assert _rows(reopened)["table.dat"] == (DocumentState.SKIPPED, NOT_INCLUDED, 0)


def test_bad_folder_patterns_are_refused(make_library, tmp_path) -> None:
    from app.library.library import LibraryError

    folder = tmp_path / "docs"
    folder.mkdir()
    library = make_library()
    library.add_folder(folder)
    with pytest.raises(LibraryError, match="is a path"):
        library.set_folder_patterns(folder, ["docs/*.md"], None)
    assert library.store.folders()[0].include_patterns is None


# the window ----------------------------------------------------------------------------------


def _shown(window) -> dict[str, str]:
    return window.folders.document_rows(0)


@needs_licences
def test_the_window_lists_left_out_files_and_edits_a_folders_patterns(
    qtbot,
    open_window,  # noqa: F811
    fp32_bundle,
    tmp_path,
    monkeypatch,
) -> None:
    folder = _licence_folder(tmp_path)
    (folder / "notes.txt").write_text("The keeper's notes about the licences.")
    (folder / "table.dat").write_text("licence,year\nGPL-3,2007\nApache-2.0,2004\n")
    only_left_out = tmp_path / "pictures"
    only_left_out.mkdir()
    shutil.copy(BINARY, only_left_out / "tool")
    (only_left_out / "song.mp3").write_bytes(b"ID3\x03\x00\x00\x00\x00\x0f\x76")
    data = tmp_path / "data"
    window, controller = open_window(data, settings=Settings(bundle_path=str(fp32_bundle)))
    wait_ready(qtbot, controller)
    controller.add_folder(str(folder))
    controller.add_folder(str(only_left_out))
    qtbot.waitUntil(
        lambda: (
            len(window.folders.folder_rows()) == 2
            and all(_shown(window).get(name) == "ready" for name in (*LICENCE_NAMES, "notes.txt"))
        ),
        timeout=120000,
    )
    rows = _shown(window)
    assert rows["tool"] == f"skipped: {NOT_TEXT}"
    assert rows["table.dat"] == f"skipped: {NOT_INCLUDED}"
    # A folder of files that are all left out says so, and why, instead of "empty".
    assert dict(window.folders.folder_rows())["pictures"] == "2 skipped"
    assert window.folders.document_rows(1) == {"song.mp3": f"skipped: {NOT_INCLUDED}", "tool": f"skipped: {NOT_TEXT}"}

    # Right-click a folder: "Patterns…" opens its patterns, showing the Settings ones it follows.
    menus: list[QMenu] = []
    monkeypatch.setattr(QMenu, "popup", lambda menu, *_: menus.append(menu))
    view = window.folders.folder_list
    window.folders._menu(view, view.visualRect(window.folders.model.index(0, 0)).center())
    patterns = next(a for a in menus[-1].actions() if a.text() == "Patterns…")
    patterns.trigger()
    dialog = window.findChild(FolderPatternsDialog, "folderPatterns")
    qtbot.waitUntil(dialog.isVisible, timeout=5000)
    include, exclude = controller.settings.include_patterns, controller.settings.exclude_patterns
    assert dialog.include.same.isChecked() and not dialog.include.editor.isEnabled()
    assert dialog.include.editor.toPlainText().split() == include
    assert dialog.exclude.editor.toPlainText().split() == exclude

    # A bad pattern is named in the dialog, which stays open; a good one is saved and applied.
    dialog.exclude.same.setChecked(False)
    assert dialog.exclude.editor.isEnabled() and dialog.exclude.editor.toPlainText().split() == exclude
    dialog.exclude.editor.setPlainText(" ".join([*exclude, "licences/GPL*"]))
    dialog.include.same.setChecked(False)
    dialog.include.editor.setPlainText(" ".join([*include, "*.DAT"]))
    dialog._accept()
    assert dialog.isVisible() and not dialog.error.isHidden()
    assert "“licences/GPL*” is a path" in dialog.error.text()
    dialog.exclude.editor.setPlainText(" ".join([*exclude, "gpl*", "*.TXT"]))
    with qtbot.waitSignal(controller.tree.patterns_edited, timeout=5000):
        dialog._accept()
    assert not dialog.isVisible()
    qtbot.waitUntil(
        lambda: (
            _shown(window).get("GPL-3") == "skipped: excluded by pattern gpl*"
            and _shown(window).get("notes.txt") == "skipped: excluded by pattern *.TXT"
            and _shown(window).get("table.dat") == "ready"
        ),
        timeout=60000,
    )
    assert _shown(window)["Apache-2.0"] == "ready"
    own = controller.library.store.folders()[0]
    assert own.include_patterns == [*include, "*.DAT"] and own.exclude_patterns == [*exclude, "gpl*", "*.TXT"]
    assert "Patterns of its own" in window.folders.model.index(0, 0).data(Qt.ItemDataRole.ToolTipRole)

    # Kept in the library: the next start shows them in the dialog.
    window.close()
    controller.shutdown()
    window, controller = open_window(data)
    wait_ready(qtbot, controller)
    qtbot.waitUntil(lambda: len(window.folders.folder_rows()) == 2, timeout=10000)
    dialog = window.folders.edit_patterns(str(folder))
    assert not dialog.exclude.same.isChecked()
    assert dialog.exclude.editor.toPlainText().split() == [*exclude, "gpl*", "*.TXT"]
    dialog.reject()


def test_the_settings_dialog_names_a_bad_pattern(qtbot, monkeypatch) -> None:
    from PySide6.QtWidgets import QMessageBox

    from app.ui.dialogs import SettingsDialog

    warnings: list[str] = []
    monkeypatch.setattr(QMessageBox, "warning", lambda _parent, _title, text: warnings.append(text))
    dialog = SettingsDialog(Settings(), "/data")
    qtbot.addWidget(dialog)
    dialog.exclude.setPlainText(".* node_modules, dist")
    dialog._accept()
    assert dialog.result_settings is None
    assert warnings == ["“node_modules,” has a comma: separate patterns with spaces or new lines"]


def test_settings_patterns_reach_folders_added_before(
    qtbot,
    open_window,  # noqa: F811
    fp32_bundle,
    tmp_path,
) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "keeper.txt").write_text("The keeper kept the lamp burning.")
    (folder / "server.log").write_text("12:00 the lamp was lit")
    window, controller = open_window(settings=Settings(bundle_path=str(fp32_bundle)))
    wait_ready(qtbot, controller)
    controller.add_folder(str(folder))
    qtbot.waitUntil(lambda: _shown(window) == {"keeper.txt": "ready", "server.log": "ready"}, timeout=60000)
    changed = Settings(**{**controller.settings.__dict__, "exclude_patterns": [*DEFAULT_EXCLUDE, "*.LOG"]})
    controller.apply_settings(changed)
    qtbot.waitUntil(
        lambda: _shown(window) == {"keeper.txt": "ready", "server.log": "skipped: excluded by pattern *.LOG"},
        timeout=30000,
    )
    assert controller.library.store.folders()[0].exclude_patterns is None, "the folder follows the Settings"
    assert window.folders.model.inherited_patterns[1] == [*DEFAULT_EXCLUDE, "*.LOG"]
