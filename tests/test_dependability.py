"""Never crash, never hang: one file cannot stop the indexer, a dying indexer is noticed, and
what went wrong is written down where a person can find it."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli
from tests.test_library_indexing import make_docx


def index(make_library, folder: Path, **options) -> tuple[dict[str, dict], dict]:
    library = make_library(**options)
    library.add_folder(folder)
    library.start()
    assert library.index_until_done(timeout=120)
    status = library.status()
    return {Path(d["path"]).name: d for d in status["documents"]}, status


def test_a_file_of_reserved_strings_is_skipped_and_the_rest_indexed(make_library, tmp_path) -> None:
    """It used to raise InputError in the indexer thread and leave everything else pending."""
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a-memory.txt").write_text("[memory_0]")
    (folder / "b-endoftext.md").write_text("<|endoftext|> [memory_3]<context>\n\n[memory_31]")
    (folder / "c-good.txt").write_text("The keeper kept the lamp burning through the storm.")
    (folder / "d-mixed.txt").write_text("Before [memory_1] the storm, <|endoftext|> after it.")
    documents, _ = index(make_library, folder)
    assert documents["a-memory.txt"]["state"] == "skipped"
    assert "only strings the model reserves" in documents["a-memory.txt"]["error"]
    assert documents["b-endoftext.md"]["state"] == "skipped"
    assert documents["c-good.txt"]["state"] == "ready"
    assert documents["d-mixed.txt"]["state"] == "ready"
    assert "reserves were removed" in documents["d-mixed.txt"]["note"]


def test_any_exception_in_one_document_fails_only_that_document(make_library, tmp_path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    for name in ("one.txt", "two.txt", "three.txt"):
        (folder / name).write_text(f"The {name} document talks about lighthouses and keepers.")
    library = make_library()
    encoder = library.indexer._encoder
    real = encoder.encode_states

    def encode_states(text: str):
        if "two.txt" in text:
            raise RuntimeError("the encoder broke on this text")
        return real(text)

    encoder.encode_states = encode_states
    library.add_folder(folder)
    library.start()
    assert library.index_until_done(timeout=60)
    states = {Path(d["path"]).name: (d["state"], d["error"]) for d in library.status()["documents"]}
    assert states["one.txt"] == ("ready", None) and states["three.txt"] == ("ready", None)
    assert states["two.txt"] == ("failed", "could not be indexed: RuntimeError: the encoder broke on this text")
    assert library.indexer.alive


# A bug outside any one document (here: garbage collection raising) kills the indexer thread.
_DYING_INDEXER = """
import sys
import app.library.store as store
def broken(self):
    raise RuntimeError("simulated bug in the indexer loop")
store.Store.collect_garbage = broken
import app.cli
raise SystemExit(app.cli.main(sys.argv[1:]))
"""


def test_index_exits_with_the_reason_when_the_indexer_dies(fp32_bundle, tmp_path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("The keeper kept the lamp burning.")
    data = tmp_path / "data"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    arguments = ["index", str(folder), "--bundle", str(fp32_bundle), "--data-dir", str(data)]
    result = subprocess.run(
        [sys.executable, "-c", _DYING_INDEXER, *arguments],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert time.monotonic() - started < 60
    assert "the indexer stopped: RuntimeError: simulated bug in the indexer loop" in result.stderr
    assert "Traceback" not in result.stderr
    status = run_cli("status", "--data-dir", str(data))
    assert "indexer: the indexer stopped: RuntimeError: simulated bug" in status.stdout
    status_json = json.loads(run_cli("status", "--data-dir", str(data), "--json").stdout)
    assert status_json["indexer"]["state"] == "stopped"
    log = (data / "logs" / "dolphin-desk.log").read_text()
    assert "the indexer stopped" in log and "Traceback" in log and "simulated bug" in log
    # The next run starts a healthy indexer, which clears the record.
    rerun = run_cli("index", str(folder), "--bundle", str(fp32_bundle), "--data-dir", str(data))
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(run_cli("status", "--data-dir", str(data), "--json").stdout)["indexer"]["state"] == "running"


def test_bad_gitignores_are_reported_not_fatal(make_library, tmp_path) -> None:
    folder = tmp_path / "repo"
    (folder / "sub").mkdir(parents=True)
    (folder / ".gitignore").write_text("*.log\n!\nfoo\\\n")
    os.mkfifo(folder / "sub" / ".gitignore")  # reading it would block forever
    (folder / "kept.txt").write_text("kept")
    (folder / "gone.log").write_text("ignored")
    (folder / "sub" / "inner.txt").write_text("inner")
    documents, status = index(make_library, folder)
    assert {name for name, d in documents.items() if d["state"] == "ready"} == {"kept.txt", "inner.txt"}
    assert documents["gone.log"]["error"] == "excluded by pattern *.log in .gitignore", "the good lines apply"
    problems = {p["subject"]: p["message"] for p in status["folders"][0]["problems"]}
    assert "invalid pattern(s) ignored: line 2 ('!'), line 3" in problems[str(folder / ".gitignore")]
    assert problems[str(folder / "sub" / ".gitignore")] == "not a regular file: its patterns are not used"


def test_names_that_are_not_utf8_are_indexed(make_library, tmp_path) -> None:
    folder = tmp_path / "docs"
    weird_dir = Path(os.fsdecode(os.fsencode(str(folder)) + b"/caf\xe9"))
    weird_dir.mkdir(parents=True)
    weird_file = Path(os.fsdecode(os.fsencode(str(weird_dir)) + b"/r\xe9sum\xe9.txt"))
    weird_file.write_text("The keeper's notes from the Latin-1 era.")
    (folder / "line\nbreak.txt").write_text("A name with a newline in it.")
    documents, status = index(make_library, folder)
    assert {d["state"] for d in status["documents"]} == {"ready"}
    assert "r\ufffdsum\ufffd.txt" in documents and "line\\nbreak.txt" in documents
    json.dumps(status, ensure_ascii=False).encode("utf-8")  # printable as JSON on any terminal
    library = make_library()
    assert library.store.document(weird_file).state == "ready"
    library.store.remove_under(weird_dir)
    assert library.store.document(weird_file) is None


def test_a_link_out_of_the_folder_is_skipped(make_library, tmp_path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("secret notes outside the folder")
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "inside.txt").write_text("inside")
    os.symlink(outside, folder / "link.txt")
    os.symlink(folder / "inside.txt", folder / "alias.txt")
    documents, _ = index(make_library, folder)
    assert documents["link.txt"] == {**documents["link.txt"], "state": "skipped"}
    assert documents["link.txt"]["error"] == "a link to a file outside this folder"
    assert documents["alias.txt"]["state"] == "ready"


def test_future_mtime_and_a_file_that_never_settles(make_library, tmp_path, monkeypatch) -> None:
    import app.library.indexer as indexer

    monkeypatch.setattr(indexer, "UNSETTLED_GIVE_UP_S", 4.0)
    monkeypatch.setattr(indexer, "UNSETTLED_RETRY_S", 0.5)
    folder = tmp_path / "docs"
    folder.mkdir()
    future = folder / "from-2030.txt"
    future.write_text("Written on a machine whose clock was years ahead.")
    os.utime(future, (1.9e9, 1.9e9))
    live = folder / "live.log"
    live.write_text("line 0\n")
    (folder / "plain.txt").write_text("An ordinary file.")
    stop = threading.Event()

    def append() -> None:
        n = 1
        while not stop.wait(0.2):
            with live.open("a") as handle:
                handle.write(f"line {n}: the service is still running\n")
            n += 1

    writer = threading.Thread(target=append)
    writer.start()
    try:
        started = time.monotonic()
        documents, _ = index(make_library, folder)
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        writer.join()
    assert documents["from-2030.txt"]["state"] == "ready"
    assert documents["plain.txt"]["state"] == "ready"
    assert documents["live.log"]["state"] == "ready"
    assert "kept changing" in documents["live.log"]["note"]
    assert elapsed < 30


def test_hostile_docx_and_html_are_bounded(make_library, tmp_path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    make_docx(folder / "span.docx", ["A table whose one cell claims to span a billion columns."])
    with zipfile.ZipFile(folder / "span.docx") as source:
        parts = {name: source.read(name) for name in source.namelist()}
    xml = parts["word/document.xml"].decode()
    parts["word/document.xml"] = xml.replace("<w:tcPr>", '<w:tcPr><w:gridSpan w:val="1000000000"/>', 1).encode()
    with zipfile.ZipFile(folder / "span.docx", "w") as target:
        for name, data in parts.items():
            target.writestr(name, data)
    (folder / "unclosed.html").write_text("<html><body>" + "<div><p>text <b>bold <i>" * 20000 + "<!-- never closed")
    (folder / "no-spaces.txt").write_text("x" * 3_000_000)
    started = time.monotonic()
    documents, _ = index(make_library, folder)
    assert time.monotonic() - started < 90
    assert documents["span.docx"]["state"] == "ready"
    assert documents["unclosed.html"]["state"] in ("ready", "failed")
    assert documents["no-spaces.txt"]["state"] == "ready"


def test_extraction_past_its_deadline_is_stopped(make_library, tmp_path) -> None:
    """A file that takes the child too long: the child is killed, the next file is read."""
    folder = tmp_path / "docs"
    folder.mkdir()
    with (folder / "a-huge.txt").open("w") as handle:
        for _ in range(400_000):
            handle.write("the keeper wrote another line in the long log of the lighthouse\n")
    (folder / "b-after.txt").write_text("indexing goes on after the slow file")
    documents, _ = index(make_library, folder, extraction_timeout_s=0.5)
    assert documents["a-huge.txt"]["state"] == "failed"
    assert "took longer than 0.5 s" in documents["a-huge.txt"]["error"]
    assert documents["b-after.txt"]["state"] == "ready"


def test_watcher_errors_are_recorded_and_shown(make_library, tmp_path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    library = make_library()
    library.add_folder(folder)
    library.start(watch=True)

    def broken(kind, target) -> None:
        raise OSError(5, "Input/output error")

    library._queue = broken
    (folder / "new.txt").write_text("a new file the watcher sees")
    deadline = time.monotonic() + 20
    while not library.status()["folders"][0]["problems"] and time.monotonic() < deadline:
        time.sleep(0.1)
    problems = library.status()["folders"][0]["problems"]
    assert problems and problems[0]["source"] == "watcher"
    assert "a change could not be applied (OSError" in problems[0]["message"]


def test_the_log_file_records_documents_and_unhandled_thread_errors(tmp_path) -> None:
    from app.logs import install_exception_hooks, log_path, setup_logging, uninstall_exception_hooks

    data = tmp_path / "data"
    path = setup_logging(data)
    assert path == log_path(data)
    install_exception_hooks()
    try:
        thread = threading.Thread(target=lambda: 1 / 0, name="worker-x")
        thread.start()
        thread.join()
    finally:
        uninstall_exception_hooks()
        for handler in list(logging.getLogger().handlers):
            if getattr(handler, "baseFilename", None) == str(path):
                logging.getLogger().removeHandler(handler)
                handler.close()
    text = path.read_text()
    assert "unhandled exception in thread worker-x" in text and "ZeroDivisionError" in text


@pytest.mark.parametrize("rotations", [3])
def test_the_log_rotates_and_keeps_faulthandler_on_the_current_file(tmp_path, rotations) -> None:
    code = (
        "import faulthandler, logging, sys\n"
        "import app.logs as logs\n"
        "logs.MAX_BYTES = 4096\n"
        "path = logs.setup_logging(sys.argv[1])\n"
        f"for i in range({rotations} * 60): logging.getLogger('x').info('line %d %s', i, 'y' * 60)\n"
        "faulthandler._sigsegv()\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, cwd=ROOT, check=False)
    assert result.returncode != 0
    logs = tmp_path / "logs"
    assert (logs / "dolphin-desk.log.1").exists()
    assert "Fatal Python error: Segmentation fault" in (logs / "dolphin-desk.log").read_text()
