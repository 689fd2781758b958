"""`dolphin-desk cluster-index`: encode a shared corpus on a Ray cluster into a memory pack.

The driver (this process) scans the source folders with the desktop's scanner, skips what the
pack already holds, and runs a Ray Data pipeline over the rest:

    from_items(documents) -> map_batches(ReadStage)   extraction child + chunker, per actor
                          -> map_batches(EncodeStage) the bundle's encoder, loaded once per actor
                          -> iter_batches             here: documents reassembled, written to the pack

Ray Data streams it: blocks flow between the stages with backpressure, so the driver writes
documents while others are still being read and encoded, and a killed job keeps every document
written so far (app/library/pack.py). The driver is the pack's only writer, as the indexer
thread is the library's.

Resources: an encoder actor asks for `cpus_per_worker` CPUs and sets ONNX Runtime's threads to
match; on a cluster with GPUs it asks for `gpus_per_worker` GPUs and runs the encoder with the
CUDA provider. Readers reserve no CPU: their work is parsing in a child process, a few percent
of encoding's cost at the real 0.5B shape, and any reservation would leave a whole encoder slot
empty on some node (Ray places an actor on one node, so fractions left over on several do not
add up). Source folders and the bundle must be readable at the same paths on every node (a
shared file system), as for any Ray job over files.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.cluster import ClusterError
from app.cluster.stages import GONE, EncodeStage, ReadStage, encode_texts
from app.library.chunking import DEFAULT_CHUNK_TOKENS
from app.library.filters import DEFAULT_EXCLUDE, DEFAULT_INCLUDE
from app.library.pack import (
    ChunkerSettings,
    EmbedderFacts,
    EncoderFacts,
    PackChunk,
    PackDocument,
    PackHeader,
    PackMemory,
    PackState,
    PackWriter,
    tokenizer_sha256,
)
from app.library.scanner import Scanner
from app.library.states import FINAL_STATES
from app.library.store import Folder, display_path
from app.logs import describe_exception
from inference.bundle import load_manifest

READER_CPUS = 0.0
READ_BATCH = 4  # documents per call of a reader
DEFAULT_ENCODE_BATCH = 4  # chunks per call of an encoder: ~1 s each on a CPU core, so small batches spread well
DEFAULT_CPUS_PER_WORKER = 4  # on CPU clusters: a balance of memory (a model copy per actor) and speed

log = logging.getLogger("dolphin.cluster")


@dataclass(frozen=True)
class ClusterOptions:
    sources: list[Path]
    bundle: Path
    out: Path
    ray_address: str | None = None
    workers: int | None = None  # encoder actors; default from the cluster's CPUs or GPUs
    gpus_per_worker: float | None = None  # default 1 when the cluster has GPUs, else 0
    cpus_per_worker: float | None = None
    readers: int | None = None
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS
    include: list[str] = field(default_factory=lambda: list(DEFAULT_INCLUDE))
    exclude: list[str] = field(default_factory=lambda: list(DEFAULT_EXCLUDE))
    ocr: bool = True
    encode_batch: int = DEFAULT_ENCODE_BATCH
    local_cpus: int | None = None  # the local Ray's CPUs when no address is given (default: all)


@dataclass
class JobProgress:
    documents_done: int
    documents_total: int
    chunks_encoded: int
    chunks_per_second: float
    current: str


@dataclass
class JobReport:
    documents_in_scope: int = 0
    documents_unchanged: int = 0  # already in the pack, file unchanged: not read again
    documents_written: int = 0
    ready: int = 0
    failed: int = 0
    skipped: int = 0
    removed: int = 0
    chunks: int = 0
    encoded: int = 0
    reused: int = 0  # chunks whose memory the pack already had, or another copy in this run made
    repeated: int = 0  # of those, chunks whose text another document (or place) of this run had
    seconds: float = 0.0
    pipeline_seconds: float = 0.0  # from the first document sent to the last written
    workers: int = 0
    readers: int = 0
    cpus_per_worker: float = 0.0
    threads_per_worker: int = 0
    gpus_per_worker: float = 0.0
    provider: str = "cpu"
    actor_peak_rss_mb: dict[str, float] = field(default_factory=dict)
    pack_report: dict[str, Any] = field(default_factory=dict)

    @property
    def chunks_per_second(self) -> float:
        return self.encoded / self.pipeline_seconds if self.pipeline_seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "chunks_per_second": self.chunks_per_second}


def _import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError:
        raise ClusterError(
            "Ray is not installed: pip install 'dolphin-desk[cluster]' (on every node of the cluster)"
        ) from None
    return ray


def _header(options: ClusterOptions) -> PackHeader:
    manifest = load_manifest(options.bundle)
    embedder = manifest.embedder
    return PackHeader(
        EncoderFacts(manifest.encoder_identity, manifest.memory_size, manifest.encoder.hidden_size),
        ChunkerSettings(options.chunk_tokens, tokenizer_sha256(manifest.path("tokenizer"))),
        EmbedderFacts(embedder.identity, embedder.dim) if embedder else None,
        list(options.include),
        list(options.exclude),
        options.ocr,
    )


@dataclass
class _Plan:
    roots: list[Path]
    root_index: list[int]
    work: list[tuple[int, Path]]  # (root position in `roots`, absolute path)


def _scan(options: ClusterOptions, writer: PackWriter, report: JobReport) -> _Plan:
    """Walk the sources as the desktop does; record what is left out and what is gone; return
    the documents to read (new, or changed since the pack last saw them)."""
    roots = []
    for source in options.sources:
        root = Path(source).expanduser().resolve()
        if not root.is_dir():
            raise ClusterError(f"{display_path(root)} is not a folder")
        roots.append(root)
    roots = list(dict.fromkeys(roots))
    scanner = Scanner(options.include, options.exclude)
    plan = _Plan(roots, [writer.root_index(root) for root in roots], [])
    for position, root in enumerate(roots):
        index = plan.root_index[position]
        result = scanner.scan(Folder(-1 - position, root, None, None))
        seen: set[Path] = set()
        for path, reason in sorted(result.left_out.items()):
            relative = path.relative_to(root)
            seen.add(relative)
            known = writer.documents.get((index, relative))
            if known is None or (known.state, known.error) != (PackState.SKIPPED, reason):
                writer.add(PackDocument(index, relative, PackState.SKIPPED, error=reason))
        for path, facts in sorted(result.found.items()):
            relative = path.relative_to(root)
            seen.add(relative)
            report.documents_in_scope += 1
            known = writer.documents.get((index, relative))
            if known is not None and known.state.value in FINAL_STATES and facts == (known.size, known.mtime):
                report.documents_unchanged += 1
                continue
            plan.work.append((position, path))
        for (known_root, relative), known in list(writer.documents.items()):
            if known_root == index and relative not in seen and known.state is not PackState.REMOVED:
                writer.add(PackDocument(index, relative, PackState.REMOVED, content_hash=known.content_hash))
                report.removed += 1
    return plan


class ChunkClaims:
    """The run's ledger of chunk texts taken for encoding, one Ray actor that every encoder actor
    asks before encoding a batch: the first to claim a text encodes it, later copies (a file
    copied into two folders, a page repeated across reports) become repeats. Digests only:
    about 100 bytes a chunk in a Python set, ~100 MB for a million chunks."""

    def __init__(self) -> None:
        self._taken: set[bytes] = set()

    def claim(self, text_hashes: list[str]) -> list[bool]:
        first = []
        for text_hash in text_hashes:
            digest = bytes.fromhex(text_hash)
            first.append(digest not in self._taken)
            self._taken.add(digest)
        return first


class _Claim:
    """What an encoder actor calls: the ledger's answer, through Ray (picklable, unlike a lambda)."""

    def __init__(self, ledger: Any) -> None:
        self._ledger = ledger

    def __call__(self, text_hashes: list[str]) -> list[bool]:
        import ray

        return ray.get(self._ledger.claim.remote(text_hashes))


@dataclass
class _Waiting:
    parts: list[dict[str, Any]]
    missing: set[str]  # text hashes of repeats whose memory is not in the pack yet


class _Assembler:
    """Puts a document's chunk rows back together and writes it once all have arrived and every
    repeat's memory (made for another copy of its text) is in the pack or held here.

    A document waits only for texts whose first copy has not arrived yet: a memory that a waiting
    document carries is lent to the others (`_held`), so two documents that each claimed a text
    the other repeats release each other as soon as the second arrives."""

    def __init__(self, writer: PackWriter, plan: _Plan, report: JobReport) -> None:
        self._writer = writer
        self._plan = plan
        self._report = report
        self._parts: dict[int, list[dict[str, Any]]] = {}
        self._waiting: dict[int, _Waiting] = {}
        self._waiting_on: dict[str, set[int]] = {}
        self._held: dict[str, dict[str, Any]] = {}  # text hash -> a waiting document's part with its memory

    def add(self, row: dict[str, Any]) -> list[str]:
        """Returns the paths of the documents this row let be written (its own, and those that
        waited for a memory it carried)."""
        key = int(row["key"])
        self._report.actor_peak_rss_mb[str(row["actor"])] = max(
            self._report.actor_peak_rss_mb.get(str(row["actor"]), 0.0), row["actor_peak_rss_kb"] / 1024
        )
        parts = self._parts.setdefault(key, [])
        parts.append(row)
        if len(parts) < max(1, int(row["chunks"])):
            return []
        del self._parts[key]
        missing = self._missing(parts)
        if missing and parts[0]["state"] == PackState.READY.value and not any(p.get("error") for p in parts):
            self._waiting[key] = _Waiting(parts, missing)
            for text_hash in missing:
                self._waiting_on.setdefault(text_hash, set()).add(key)
            for part in parts:
                if part["states"] is not None:
                    self._held.setdefault(part["text_hash"], part)
            return []
        return self._write_and_release(key, parts)

    def _missing(self, parts: list[dict[str, Any]]) -> set[str]:
        """The repeats' texts whose memory is neither in the pack, in these parts, nor held."""
        carried = {p["text_hash"] for p in parts if p["states"] is not None}
        repeats = {p["text_hash"] for p in parts if p.get("repeat")}
        return repeats - self._writer.memories - carried - self._held.keys()

    def finish(self, encode: Callable[[list[str]], list[tuple[bytes, int, int, bytes | None] | str]]) -> list[str]:
        """Documents still waiting once every row is in: the copy that claimed their text was not
        written with its memory (its document failed on another chunk, or an actor died after
        claiming it). `encode` makes those memories (or says why not, as a string), on the
        cluster, from the texts the repeat rows carry."""
        texts: dict[str, str] = {}
        for waiting in self._waiting.values():
            for part in waiting.parts:
                if part["text_hash"] in waiting.missing:
                    texts.setdefault(part["text_hash"], part["text"])
        made: dict[str, tuple[bytes, int, int, bytes | None] | str] = {}
        if texts:
            try:
                made = dict(zip(texts, encode(list(texts.values())), strict=True))
            except Exception as exc:  # noqa: BLE001 - those documents fail, not the job
                made = dict.fromkeys(texts, f"could not be indexed: {describe_exception(exc)}")
        written: list[str] = []
        while self._waiting:
            key, waiting = next(iter(self._waiting.items()))
            for part in waiting.parts:
                text_hash = part["text_hash"]
                if text_hash not in waiting.missing or text_hash in self._writer.memories:
                    continue
                result = made[text_hash]
                if isinstance(result, str):
                    part["error"] = result
                else:
                    part["states"], part["rows"], part["cols"], part["embedding"] = result
                waiting.missing.discard(text_hash)
            self._forget(key)
            written += self._write_and_release(key, waiting.parts)
        return written

    def _forget(self, key: int) -> None:
        waiting = self._waiting.pop(key)
        for text_hash in waiting.missing:
            self._waiting_on.get(text_hash, set()).discard(key)
        for part in waiting.parts:
            if self._held.get(part["text_hash"]) is part:
                del self._held[part["text_hash"]]

    def _write_and_release(self, key: int, parts: list[dict[str, Any]]) -> list[str]:
        """Write the document, then every waiting one whose last missing memory it carried."""
        written = []
        pending = [(key, parts)]
        while pending:
            key, parts = pending.pop()
            position, path = self._plan.work[key]
            self._write(self._plan.root_index[position], path.relative_to(self._plan.roots[position]), parts)
            written.append(os.fspath(path))
            for text_hash in {p["text_hash"] for p in parts} & self._writer.memories:
                for other in self._waiting_on.pop(text_hash, set()):
                    waiting = self._waiting.get(other)
                    if waiting is None:
                        continue
                    waiting.missing.discard(text_hash)
                    if not waiting.missing:
                        self._forget(other)
                        pending.append((other, waiting.parts))
        return written

    def _write(self, root: int, relative: Path, parts: list[dict[str, Any]]) -> None:
        first = parts[0]
        if first["state"] == GONE:
            return
        facts = {"size": first["size"], "mtime": first["mtime"], "content_hash": first["content_hash"]}
        errors = [p["error"] for p in parts if p.get("error")]
        state = PackState(first["state"])
        if errors:
            state = PackState.FAILED
        report = self._report
        report.documents_written += 1
        if state is not PackState.READY:
            reason = errors[0] if errors else first["reason"]
            self._writer.add(PackDocument(root, relative, state, error=reason, **facts))
            report.failed += state is PackState.FAILED
            report.skipped += state is PackState.SKIPPED
            return
        parts.sort(key=lambda p: p["ordinal"])
        chunks = tuple(
            PackChunk(
                p["ordinal"], p["text"], p["char_start"], p["char_end"], p["page"], p["token_count"], p["text_hash"]
            )
            for p in parts
        )
        # A repeat whose first copy waits here (it waits for another text) borrows that copy's memory.
        lent = [self._held[h] for h in {p["text_hash"] for p in parts} - self._writer.memories if h in self._held]
        sources = [p for p in parts if p["states"] is not None] + lent
        memories = {p["text_hash"]: PackMemory(p["states"], p["rows"], p["cols"], p["token_count"]) for p in sources}
        embeddings = {p["text_hash"]: p["embedding"] for p in sources if p["embedding"] is not None}
        self._writer.add(
            PackDocument(root, relative, state, note=first["note"], chunks=chunks, **facts), memories, embeddings
        )
        report.ready += 1
        report.chunks += len(chunks)
        report.encoded += sum(p["states"] is not None for p in parts)
        report.reused += sum(p["states"] is None for p in parts)
        report.repeated += sum(bool(p.get("repeat")) and p["states"] is None for p in parts)


def _encoder_on_cluster(
    ray: Any, options: ClusterOptions, report: JobReport
) -> Callable[[list[str]], list[tuple[bytes, int, int, bytes | None] | str]]:
    """`encode_texts` as one Ray task with an encoder actor's resources: the job's last step,
    where the bundle runs as the actors run it (a GPU bundle cannot load in a CPU-only driver)."""
    task = ray.remote(num_cpus=report.cpus_per_worker, num_gpus=report.gpus_per_worker or 0)(encode_texts)
    bundle = os.fspath(Path(options.bundle).expanduser().resolve())
    return lambda texts: ray.get(task.remote(bundle, report.threads_per_worker, report.provider, texts))


def _resources(ray: Any, options: ClusterOptions, report: JobReport) -> None:
    """How many encoder actors, of what size, on what device."""
    resources = ray.cluster_resources()
    cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    gpus_per_worker = options.gpus_per_worker if options.gpus_per_worker is not None else (1.0 if gpus >= 1 else 0.0)
    if gpus_per_worker > 0:
        if gpus < gpus_per_worker:
            raise ClusterError(f"the cluster has {gpus:g} GPUs, fewer than --gpus-per-worker {gpus_per_worker:g}")
        workers = options.workers or max(1, int(gpus // gpus_per_worker))
        readers = options.readers or max(1, min(2 * workers, int(cpus) - workers))
        per_worker = options.cpus_per_worker or 1.0
        report.provider = "cuda"
    else:
        workers = options.workers or max(1, int(cpus // DEFAULT_CPUS_PER_WORKER))
        readers = options.readers or max(1, workers // 4)
        # Whole CPUs where there are enough: an actor must fit on one node.
        per_worker = options.cpus_per_worker or (cpus // workers if cpus >= workers else cpus / workers)
    if per_worker * workers > cpus + 1e-6 or per_worker < 0.1:
        raise ClusterError(
            f"{workers} workers of {per_worker:g} CPUs do not fit in the cluster's {cpus:g} CPUs: "
            "ask for fewer --workers"
        )
    report.workers, report.readers, report.gpus_per_worker = workers, readers, gpus_per_worker
    report.cpus_per_worker = per_worker
    report.threads_per_worker = max(1, round(per_worker))


def run_job(options: ClusterOptions, on_progress: Callable[[JobProgress], None] | None = None) -> JobReport:
    """Fill the pack at `options.out` from the sources; returns what was done. Raises
    ClusterError or PackError (one line each) for what the user can fix."""
    started = time.perf_counter()
    report = JobReport()
    header = _header(options)
    writer = PackWriter(options.out, header)
    plan = _scan(options, writer, report)
    if plan.work:
        _run_pipeline(options, writer, plan, report, on_progress)
    report.seconds = time.perf_counter() - started
    report.pack_report = writer.close({k: v for k, v in report.as_dict().items() if k != "pack_report"})
    return report


def _run_pipeline(
    options: ClusterOptions,
    writer: PackWriter,
    plan: _Plan,
    report: JobReport,
    on_progress: Callable[[JobProgress], None] | None,
) -> None:
    ray = _import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        try:
            if options.ray_address:
                ray.init(address=options.ray_address, log_to_driver=False, logging_level=logging.WARNING)
            else:
                ray.init(
                    address="local",  # a new instance, never a cluster that happens to run here
                    num_cpus=options.local_cpus,
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=logging.WARNING,
                )
        except ConnectionError as exc:
            raise ClusterError(f"cannot reach the Ray cluster at {options.ray_address}: {exc}") from None
    try:
        _resources(ray, options, report)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.enable_auto_log_stats = False
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        manifest = load_manifest(options.bundle)
        known = np.array(sorted(bytes.fromhex(h) for h in writer.memories), dtype="S32")
        items = [
            {"key": key, "root": position, "path": os.fsencode(path)} for key, (position, path) in enumerate(plan.work)
        ]
        blocks = min(len(items), max(4 * report.readers, len(items) // (4 * READ_BATCH)))
        dataset = (
            ray.data.from_items(items, override_num_blocks=blocks)
            .map_batches(
                ReadStage,
                fn_constructor_kwargs={
                    "tokenizer": os.fspath(manifest.path("tokenizer")),
                    "chunk_tokens": options.chunk_tokens,
                    "roots": [os.fspath(root) for root in plan.roots],
                    "include": list(options.include),
                    "exclude": list(options.exclude),
                    "ocr": options.ocr,
                },
                batch_size=READ_BATCH,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=report.readers),
                num_cpus=READER_CPUS,
            )
            .map_batches(
                EncodeStage,
                fn_constructor_kwargs={
                    "bundle": os.fspath(Path(options.bundle).expanduser().resolve()),
                    "threads": report.threads_per_worker,
                    "provider": report.provider,
                    "known": known,
                    "claim": _Claim(ray.remote(num_cpus=0)(ChunkClaims).remote()),
                },
                batch_size=options.encode_batch,
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=report.workers),
                num_cpus=report.cpus_per_worker,
                num_gpus=report.gpus_per_worker or None,
            )
        )
        assembler = _Assembler(writer, plan, report)
        pipeline_started = time.perf_counter()
        done = 0

        def written(paths: list[str]) -> None:
            nonlocal done
            for path in paths:
                done += 1
                if on_progress is not None:
                    elapsed = time.perf_counter() - pipeline_started
                    on_progress(
                        JobProgress(done, len(plan.work), report.encoded, report.encoded / max(elapsed, 1e-9), path)
                    )

        for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
            for row in batch.to_pylist():
                written(assembler.add(row))
        written(assembler.finish(_encoder_on_cluster(ray, options, report)))
        report.pipeline_seconds = time.perf_counter() - pipeline_started
    finally:
        if started_here:
            ray.shutdown()
