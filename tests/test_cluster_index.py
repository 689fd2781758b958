"""`cluster-index` on a real Ray cluster and `import-pack` into real libraries (issue 13).

One local Ray cluster on 127.0.0.1 serves the module: a head (the driver's node, no CPUs for
work) and two worker nodes of one CPU each, so the job's two encoder actors run in two other
raylets' worker processes. The commands run as a user runs them, in child processes.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import run_cli, wait_for
from tests.test_library_indexing import KJV, make_docx, make_pdf
from tests.test_ui import open_window, wait_ready  # noqa: F401 - open_window is a fixture

# Ray replaces a loopback address with the machine's own IP unless clusters are confined to this
# machine; set before Ray is imported (it reads it once), and inherited by the commands' processes.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ray_cluster_utils = pytest.importorskip("ray.cluster_utils", reason="pip install -e '.[cluster]' installs Ray")


@pytest.fixture(scope="module")
def ray_address() -> str:
    cluster = ray_cluster_utils.Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "node_ip_address": "127.0.0.1", "object_store_memory": 80 * 1024**2},
    )
    for _ in range(2):
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1", object_store_memory=80 * 1024**2)
    cluster.wait_for_nodes()
    yield cluster.address
    cluster.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real text of several kinds, a duplicate, and a damaged PDF."""
    folder = tmp_path_factory.mktemp("corpus") / "team share"
    (folder / "books").mkdir(parents=True)
    for name in ("ruth.txt", "jonah.txt", "esther.txt"):
        shutil.copy(KJV / name, folder / "books" / name)
    shutil.copy(KJV / "ruth.txt", folder / "ruth again.txt")  # every chunk a duplicate
    make_pdf(folder / "log.pdf", ["The first page is about the lamp.", "The second page is about the winter storm."])
    make_docx(folder / "letter.docx", ["Dear keeper,", "The winter was long."])
    (folder / "damaged.pdf").write_bytes(b"%PDF-1.7\n1 0 obj << /Type /Catalog /Pages 2 0 R >>\nendobj\ntrailer")
    (folder / "notes.log").write_text("a log the default patterns include", encoding="utf-8")
    return folder


def cluster_index(ray_address: str, bundle: Path, out: Path, *sources: Path) -> tuple[int, str, str]:
    result = run_cli(
        "cluster-index", *map(str, sources), "--bundle", str(bundle), "--out", str(out),
        "--ray", ray_address, "--workers", "2", "--data-dir", str(out.parent / "cluster-settings"),
    )  # fmt: skip
    return result.returncode, result.stdout, result.stderr


@pytest.fixture(scope="module")
def pack(ray_address: str, int4_bundle: Path, corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("packs") / "team.pack"
    code, _, stderr = cluster_index(ray_address, int4_bundle, out, corpus)
    assert code == 0, stderr
    return out


def library_rows(data_dir: Path) -> dict[str, object]:
    db = sqlite3.connect(data_dir / "library.sqlite3")
    try:
        return {
            "documents": sorted(
                db.execute("SELECT path, state, error, chunk_count, content_hash, chunker FROM documents")
            ),
            "chunks": sorted(
                db.execute(
                    "SELECT d.path, c.ordinal, c.text, c.char_start, c.char_end, c.page, c.token_count, c.text_hash "
                    "FROM chunks c JOIN documents d ON d.id = c.document_id"
                )
            ),
            "memories": {(h, e): (s, r, c, t) for h, e, s, r, c, t in db.execute("SELECT * FROM memories")},
            "embeddings": {(h, e): v for h, e, v in db.execute("SELECT * FROM embeddings")},
        }
    finally:
        db.close()


def last_run(pack: Path) -> dict:
    return json.loads((pack / "report.json").read_text(encoding="utf-8"))["last_run"]


def test_a_pack_is_what_local_indexing_stores(pack: Path, corpus: Path, int4_bundle: Path, tmp_path: Path) -> None:
    report = json.loads((pack / "report.json").read_text(encoding="utf-8"))
    assert report["last_run"]["workers"] == 2 and report["last_run"]["encoded"] > 0
    # The damaged file failed, in the report, and the job went on.
    assert [Path(f["path"]).name for f in report["failed"]] == ["damaged.pdf"]
    assert "not a readable PDF" in report["failed"][0]["reason"]
    assert report["documents"] == {"ready": 7, "failed": 1, "skipped": 0}

    imported, local = tmp_path / "imported", tmp_path / "local"
    result = run_cli("import-pack", str(pack), "--bundle", str(int4_bundle), "--data-dir", str(imported))
    assert result.returncode == 0, result.stderr
    assert "none encoded" in result.stdout
    result = run_cli("index", str(corpus), "--bundle", str(int4_bundle), "--data-dir", str(local))
    assert result.returncode == 0, result.stderr

    mine, theirs = library_rows(imported), library_rows(local)
    # "ruth again.txt" repeats every chunk of books/ruth.txt: the run encoded each text once.
    run = report["last_run"]
    assert run["encoded"] == len(mine["memories"])
    assert run["repeated"] == run["reused"] == run["chunks"] - run["encoded"] > 10
    assert mine["documents"] == theirs["documents"]
    assert mine["chunks"] == theirs["chunks"] and len(mine["chunks"]) > 50
    assert mine["memories"] == theirs["memories"]  # byte for byte, fp16
    assert mine["embeddings"].keys() == theirs["embeddings"].keys()
    for key, vector in mine["embeddings"].items():
        other = theirs["embeddings"][key]
        np.testing.assert_allclose(np.frombuffer(vector, np.float32), np.frombuffer(other, np.float32), atol=1e-6)

    # Importing again adds nothing; indexing the folder afterwards reads and encodes nothing.
    again = run_cli("import-pack", str(pack), "--bundle", str(int4_bundle), "--data-dir", str(imported))
    assert again.returncode == 0 and "imported 0 documents" in again.stdout and "; 0 embeddings added" in again.stdout
    index = run_cli("index", str(corpus), "--bundle", str(int4_bundle), "--data-dir", str(imported))
    assert index.returncode == 0, index.stderr
    assert "this run: 0 chunks encoded, 0 reused" in index.stdout


def test_a_rerun_encodes_only_what_changed(
    pack: Path, corpus: Path, ray_address: str, int4_bundle: Path, tmp_path: Path
) -> None:
    mine = Path(shutil.copytree(pack, tmp_path / "copy.pack"))
    source = Path(shutil.copytree(corpus, tmp_path / "team share"))
    # The same folder again (at another path: a new root, every file already encoded by content).
    code, stdout, stderr = cluster_index(ray_address, int4_bundle, mine, source)
    assert code == 0, stderr
    assert last_run(mine)["encoded"] == 0 and last_run(mine)["reused"] > 50
    code, stdout, stderr = cluster_index(ray_address, int4_bundle, mine, source)
    assert code == 0, stderr
    assert last_run(mine)["documents_written"] == 0 and last_run(mine)["documents_unchanged"] == 8
    assert "0 chunks encoded" in stdout

    (source / "new.txt").write_text("The keeper of the Bell Rock lit the lamp at dusk.", encoding="utf-8")
    (source / "books" / "jonah.txt").unlink()
    code, stdout, stderr = cluster_index(ray_address, int4_bundle, mine, source)
    assert code == 0, stderr
    run = last_run(mine)
    assert (run["documents_written"], run["encoded"], run["removed"]) == (1, 1, 1)

    # Imported in order, the later shard's view wins: jonah.txt is gone, new.txt is there.
    data = tmp_path / "data"
    result = run_cli("import-pack", str(mine), "--bundle", str(int4_bundle), "--data-dir", str(data))
    assert result.returncode == 0, result.stderr
    names = {Path(row[0]).name for row in library_rows(data)["documents"] if str(source) in row[0]}
    assert "new.txt" in names and "jonah.txt" not in names


def test_a_pack_from_another_bundle_is_refused(
    pack: Path, corpus: Path, ray_address: str, fp32_bundle: Path, tmp_path: Path
) -> None:
    result = run_cli("import-pack", str(pack), "--bundle", str(fp32_bundle), "--data-dir", str(tmp_path / "d"))
    assert result.returncode == 1
    assert "this pack was made by another model bundle" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "d" / "library.sqlite3").exists()  # refused before a library is made
    # Nor does a job with another bundle add to the pack.
    code, _, stderr = cluster_index(ray_address, fp32_bundle, Path(shutil.copytree(pack, tmp_path / "p")), corpus)
    assert code == 1 and "was made by another encoder" in stderr and "Traceback" not in stderr


def test_another_chunk_size_and_a_damaged_shard_are_refused(pack: Path, int4_bundle: Path, tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    result = run_cli(
        "import-pack", str(pack), "--bundle", str(int4_bundle), "--chunk-tokens", "128", "--data-dir", data
    )
    assert result.returncode == 1
    assert "chunked at 384 tokens per chunk and your library chunks at 128" in result.stderr
    damaged = Path(shutil.copytree(pack, tmp_path / "damaged.pack"))
    shard = next((damaged / "shards").glob("*.sqlite3"))
    raw = bytearray(shard.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    result = run_cli("import-pack", str(damaged), "--bundle", str(int4_bundle), "--data-dir", data)
    assert result.returncode == 1 and "is damaged (its checksum does not match)" in result.stderr
    result = run_cli("import-pack", str(pack), "--bundle", str(int4_bundle), "--map", "nonsense", "--data-dir", data)
    assert result.returncode == 1 and "CLUSTER_PATH=LOCAL_PATH" in result.stderr


def test_a_mapped_folder_is_watched_and_keeps_the_imported_memories(
    pack: Path, corpus: Path, hybrid_model, make_library, tmp_path: Path
) -> None:
    """The user's copy of the share, elsewhere and with other mtimes, mapped at import: citations
    open it, and watching it encodes nothing until a file really changes."""
    from app.library.pack_import import PathMap, import_into_library

    copy = tmp_path / "my copy"
    for path in corpus.rglob("*"):
        if path.is_file():
            (copy / path.relative_to(corpus)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, copy / path.relative_to(corpus))  # content only: new mtimes
    (copy / "books" / "esther.txt").unlink()  # a file this user does not have
    library = make_library(model=hybrid_model)
    library.start(watch=True)
    report = import_into_library(library, pack, PathMap.parse([f"{corpus}={copy}"]))
    assert report.memories_added > 50 and report.local_same == 7 and report.local_absent == 1
    assert library.index_until_done(timeout=60)
    assert library.indexer.encoded == 0
    documents = {d.path: d for d in library.store.documents()}
    assert all(copy in path.parents for path in documents)
    assert copy / "books" / "esther.txt" not in documents  # the watched folder is what the user has
    assert documents[copy / "books" / "ruth.txt"].state.value == "ready"
    sources = library.retrieve("Naomi and Ruth in the fields of Boaz")
    assert sources and all(copy in s.document_path.parents for s in sources)

    (copy / "books" / "jonah.txt").write_text("Jonah was a keeper of lighthouses.", encoding="utf-8")
    wait_for(lambda: library.indexer.encoded == 1, timeout=30)
    assert library.index_until_done(timeout=60)
    assert library.indexer.encoded == 1


def test_an_unmapped_pack_keeps_its_index_where_the_files_are_not_local(
    pack: Path, make_library, hybrid_model, tmp_path: Path
) -> None:
    """Imported under the cluster's paths, on a computer without them: the folder is missing,
    its documents stay searchable, and their citations say the file is not available."""
    from app.library.pack_import import PathMap, import_into_library

    elsewhere = tmp_path / "not here"
    library = make_library(model=hybrid_model)
    library.start(watch=True)
    cluster_root = json.loads((pack / "manifest.json").read_text(encoding="utf-8"))["source_roots"][0]
    report = import_into_library(library, pack, PathMap.parse([f"{cluster_root}={elsewhere}"]))
    assert report.local_absent == 8 and not report.roots[0].available
    assert "not on this computer" in "\n".join(report.lines())
    library.reconcile()
    time.sleep(0.2)
    status = library.status()
    assert status["folders"][0]["missing"] and len([d for d in status["documents"] if d["state"] == "ready"]) == 7
    sources = library.retrieve("the winter storm")
    assert sources and not any(os.path.exists(s.document_path) for s in sources)


def test_file_import_pack_in_the_window(qtbot, open_window, pack, corpus, int4_bundle, tmp_path) -> None:  # noqa: F811
    """File → Import pack: the work runs off the GUI thread, the folders panel fills in from the
    library's events, a summary says what happened; a pack of another chunk size is refused in a
    banner, and the window stays usable."""
    from app.settings import Settings

    window, controller = open_window(tmp_path / "refusing", Settings(bundle_path=str(int4_bundle), chunk_tokens=128))
    wait_ready(qtbot, controller)
    window.import_pack(pack, [])
    qtbot.waitUntil(lambda: "this pack was chunked at 384 tokens" in window.chat.banner.text(), timeout=30000)
    assert window.pack_summary is None and window.import_pack_action.isEnabled()

    window, controller = open_window(tmp_path / "data", Settings(bundle_path=str(int4_bundle)))
    wait_ready(qtbot, controller)
    shards = []
    controller.pack_progress.connect(lambda done, total: shards.append((done, total)))
    window.import_pack(pack, [])
    qtbot.waitUntil(lambda: window.pack_summary is not None, timeout=60000)
    assert "imported 8 documents" in window.pack_summary.text() and shards[-1][0] == shards[-1][1]
    qtbot.waitUntil(lambda: len(window.folders.document_rows(0)) >= 8, timeout=10000)
    assert window.folders.folder_rows()[0][0] == corpus.name
    assert controller.library.indexer.encoded == 0
    window.pack_summary.close()


def test_the_desktop_never_imports_ray() -> None:
    """The window and every command but cluster-index start without Ray (the import contract in
    pyproject.toml checks the code; this checks what a start really loads)."""
    from tests.test_layering import _imported_by

    modules = _imported_by("import app.cli; app.cli.build_parser(); import app.ui.main_window, app.library.pack_import")
    assert not modules & {"ray", "pyarrow", "pandas"}, modules & {"ray", "pyarrow", "pandas"}


def test_the_job_will_not_write_into_a_folder_that_is_not_a_pack(corpus: Path, int4_bundle: Path, tmp_path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "thesis.tex").write_text("mine", encoding="utf-8")
    code, _, stderr = cluster_index("127.0.0.1:1", int4_bundle, tmp_path / "out", corpus)
    assert code == 1 and "is not empty and not a memory pack: choose another --out" in stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["thesis.tex"]


@dataclass
class _TwoCopies:
    """Two copies of one KJV book as the job's driver meets them, without Ray: the scan, the
    reader's rows of each copy (`first` is a.txt's, `second` b.txt's), and an assembler."""

    writer: Any
    report: Any
    model: Any
    first: list[dict]
    second: list[dict]
    assembler: Any


def _two_copies(book: str, bundle: Path, tmp_path: Path) -> _TwoCopies:
    import pyarrow as pa

    from app.cluster.job import ClusterOptions, JobReport, _Assembler, _header, _scan
    from app.cluster.stages import ReadStage
    from app.library.pack import PackWriter
    from inference.encoding_model import EncodingModel

    folder = tmp_path / "share"
    folder.mkdir()
    for name in ("a.txt", "b.txt"):
        shutil.copy(KJV / book, folder / name)
    options = ClusterOptions(sources=[folder], bundle=bundle, out=tmp_path / "out.pack")
    report = JobReport()
    writer = PackWriter(options.out, _header(options))
    plan = _scan(options, writer, report)
    reader = ReadStage(str(bundle / "tokenizer.json"), options.chunk_tokens, [str(folder)], options.include,
                       options.exclude, ocr=False)  # fmt: skip
    items = [{"key": key, "root": 0, "path": os.fsencode(path)} for key, (_, path) in enumerate(plan.work)]
    rows = reader(pa.Table.from_pylist(items)).to_pylist()
    first, second = ([r for r in rows if r["key"] == key] for key in (0, 1))
    model = EncodingModel.load(bundle, provider="cpu")
    return _TwoCopies(writer, report, model, first, second, _Assembler(writer, plan, report))


def _encoded(row: dict, model, *, repeat: bool = False, error: str | None = None) -> dict:
    """A reader row as an encoder actor returns it: its memory, or a repeat, or an error."""
    from app.cluster.stages import memory_bytes

    states = rows = cols = vector = None
    if not repeat and error is None:
        states, rows, cols = memory_bytes(model, row["text"])
        vector = np.ascontiguousarray(model.embedder.embed([row["text"]])[0], np.float32).tobytes()
    extra = {"states": states, "rows": rows, "cols": cols, "embedding": vector, "repeat": repeat, "error": error}
    return {**row, **extra, "actor": 1, "actor_peak_rss_kb": 1}


def test_a_repeat_waits_for_the_copy_that_carries_its_memory(int4_bundle: Path, tmp_path: Path) -> None:
    job = _two_copies("jonah.txt", int4_bundle, tmp_path)
    # The copy's rows come first, every chunk a repeat: it waits, written only with the original.
    assert [job.assembler.add(_encoded(r, job.model, repeat=True)) for r in job.second] == [[]] * len(job.second)
    written = [path for r in job.first for path in job.assembler.add(_encoded(r, job.model))]
    assert [Path(p).name for p in written] == ["a.txt", "b.txt"]
    assert job.assembler.finish(lambda texts: pytest.fail("nothing is left to encode at the end")) == []
    assert (job.report.ready, job.report.encoded, job.report.repeated) == (2, len(job.first), len(job.second))
    job.writer.close({})


def test_two_copies_that_each_claimed_what_the_other_repeats_release_each_other(
    int4_bundle: Path, tmp_path: Path
) -> None:
    """Batches of one document can go to different actors: a.txt claimed the first chunk's text,
    b.txt all the others. a.txt waits for them; b.txt borrows a.txt's first memory, and writing
    b.txt releases a.txt. Every text is encoded once, nothing is left for the end."""
    job = _two_copies("ruth.txt", int4_bundle, tmp_path)
    assert [p for r in job.first for p in job.assembler.add(_encoded(r, job.model, repeat=r["ordinal"] > 0))] == []
    written = [p for r in job.second for p in job.assembler.add(_encoded(r, job.model, repeat=r["ordinal"] == 0))]
    assert sorted(Path(p).name for p in written) == ["a.txt", "b.txt"]
    assert job.assembler.finish(lambda texts: pytest.fail("nothing is left to encode at the end")) == []
    assert (job.report.ready, job.report.encoded, job.report.repeated) == (2, len(job.first), len(job.first))
    assert len(job.writer.memories) == len(job.first)
    job.writer.close({})


def test_a_repeat_whose_original_failed_is_encoded_at_the_end(int4_bundle: Path, tmp_path: Path) -> None:
    from app.cluster.stages import encode_texts, memory_bytes
    from app.library.chunking import text_hash
    from app.library.pack import PackState

    job = _two_copies("ruth.txt", int4_bundle, tmp_path)
    for row in job.second:
        assert job.assembler.add(_encoded(row, job.model, repeat=True)) == []
    # The original claimed every text, then failed on its last chunk: none of its memories is written.
    last = len(job.first) - 1
    written = [
        path
        for index, row in enumerate(job.first)
        for path in job.assembler.add(
            _encoded(row, job.model, error="could not be indexed: out of memory" if index == last else None)
        )
    ]
    assert [Path(p).name for p in written] == ["a.txt"]
    left = job.assembler.finish(lambda texts: encode_texts(str(int4_bundle), 2, "cpu", texts))
    assert [Path(p).name for p in left] == ["b.txt"]
    assert (job.report.ready, job.report.failed, job.report.repeated) == (1, 1, 0)
    job.writer.close({})

    documents, memories = {}, {}
    for shard in sorted((tmp_path / "out.pack" / "shards").glob("*.sqlite3")):
        db = sqlite3.connect(shard)
        for name, state, texts in db.execute(
            "SELECT d.path, d.state, group_concat(c.text, char(0)) FROM documents d "
            "LEFT JOIN chunks c ON c.document_id = d.id GROUP BY d.id"
        ):
            documents[Path(name).name] = (state, texts.split("\0") if texts else [])
        memories.update(db.execute("SELECT text_hash, states FROM memories"))
        db.close()
    assert documents["a.txt"][0] == PackState.FAILED.value and documents["b.txt"][0] == PackState.READY.value
    assert len(documents["b.txt"][1]) == len(job.second) and len(memories) == len(job.second)
    for text in documents["b.txt"][1]:
        assert memories[text_hash(text)] == memory_bytes(job.model, text)[0]


def test_the_last_step_encodes_on_the_cluster_as_an_actor_would(ray_address: str, int4_bundle: Path) -> None:
    """The end-of-run fallback is a Ray task with an encoder actor's resources: its memories are
    the bytes an actor (and the desktop) makes."""
    import ray

    from app.cluster.job import ClusterOptions, JobReport, _encoder_on_cluster
    from app.cluster.stages import memory_bytes
    from inference.encoding_model import EncodingModel

    report = JobReport(cpus_per_worker=1, threads_per_worker=1, provider="cpu")
    texts = ["The keeper of the Bell Rock lit the lamp at dusk.", "Ruth gleaned in the field of Boaz."]
    ray.init(address=ray_address, log_to_driver=False)
    try:
        made = _encoder_on_cluster(ray, ClusterOptions([], int4_bundle, Path("unused")), report)(texts)
    finally:
        ray.shutdown()
    model = EncodingModel.load(int4_bundle, provider="cpu", threads=1)
    for text, (states, rows, cols, vector) in zip(texts, made, strict=True):
        assert (states, rows, cols) == memory_bytes(model, text)
        np.testing.assert_allclose(np.frombuffer(vector, np.float32), model.embedder.embed([text])[0], atol=1e-6)
