"""The `dolphin-desk` command: convert, encode and ask from a terminal.

Every failure a user can cause ends as one `dolphin-desk: error: ...` line and exit status 1;
`--debug` shows the traceback instead. Commands use the settings the app saved in the data folder
(model bundle, provider, answer length, ...); a flag overrides one setting for one run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

from app import __version__
from app.display_text import without_controls
from inference.bundle import PROVIDERS
from onnx_export import cli as convert_cli

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
# Flags that override one saved setting (app/settings.py) for one run; None when not given.
SETTING_FLAGS = ("top_k", "chunk_tokens", "max_new_tokens", "temperature", "top_p", "greedy", "provider", "threads")


def _user_errors() -> tuple[type[BaseException], ...]:
    from app.cluster import ClusterError
    from app.download import DownloadError
    from app.library.library import LibraryError
    from app.library.pack import PackError
    from app.library.store import StoreError
    from app.settings import SettingsError
    from inference.bundle import BundleError
    from inference.errors import InputError

    errors: list[type[BaseException]] = [
        ClusterError,
        PackError,
        BundleError,
        InputError,
        OSError,
        UnicodeDecodeError,
        LibraryError,
        StoreError,
        DownloadError,
        SettingsError,
    ]
    try:
        from onnx_export.checkpoint import CheckpointError

        errors.append(CheckpointError)
        from onnx_export.convert import ConversionError

        errors.append(ConversionError)
        from onnx_export.embedder import EmbedderError

        errors.append(EmbedderError)
    except ImportError:
        pass
    return tuple(errors)


def run_guarded(action: Callable[[], int], debug: bool = False) -> int:
    """Run a command; turn user errors (and, without --debug, anything else) into one line."""
    try:
        code = action()
        sys.stdout.flush()  # a reader that went away shows here, not as "Exception ignored" at exit
        return code
    except KeyboardInterrupt:
        print("\ndolphin-desk: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SystemExit:
        raise
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_ERROR
    except Exception as exc:
        if debug:
            raise
        if isinstance(exc, _user_errors()):
            message = _describe_os_error(exc) if isinstance(exc, OSError) else str(exc)
        else:
            logging.getLogger("dolphin.cli").error("unexpected error", exc_info=exc)
            message = f"unexpected {type(exc).__name__}: {exc} (run with --debug for details)"
        print(f"dolphin-desk: error: {message}", file=sys.stderr)
        return EXIT_ERROR


def _silence_stdout() -> None:
    """The reader of our output went away (`dolphin-desk status | head -1`): that is not an error
    to report. Python flushes stdout again at exit, so it is pointed at devnull, as the Python
    docs recommend (the signal module's note on SIGPIPE), and the command ends quietly."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout without a file descriptor (a test's capture)
        pass


def _describe_os_error(exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    return f"{exc.filename}: {reason}" if exc.filename else reason


def _read_context(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UnicodeDecodeError("utf-8", b"", 0, 1, f"{path} is not UTF-8 text") from None


def _bundle(args: argparse.Namespace, settings) -> Path:  # noqa: ANN001 - Settings, imported lazily
    """--bundle, else the bundle the app was set to use, as the window would load it."""
    from inference.bundle import BundleError

    if args.bundle is not None:
        return args.bundle.expanduser()
    if settings.bundle_path:
        return Path(settings.bundle_path).expanduser()
    raise BundleError("no model bundle: pass --bundle BUNDLE, or choose one in the app's settings")


def _load_model(args: argparse.Namespace, settings):  # noqa: ANN001, ANN202 - Settings, DolphinModel: lazy
    """The model as the app loads it: the saved provider and threads unless flags say otherwise
    (0 threads means every core)."""
    from inference import DolphinModel

    return DolphinModel.load(_bundle(args, settings), provider=settings.provider, threads=settings.threads or None)


def cmd_encode(args: argparse.Namespace) -> int:
    import numpy as np

    text = _read_context(args.context_file)
    model = _load_model(args, _settings(args))
    memory = model.encode(text)
    for note in memory.notes:
        print(f"dolphin-desk: note: {note}", file=sys.stderr)
    projected = model.project([memory])[0].astype(np.float32)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, projected)
    print(f"{args.out}: memory {list(projected.shape)} for {memory.token_count} context tokens", file=sys.stderr)
    return 0


def _data_dir(args: argparse.Namespace) -> Path:
    """Absolute, so what the commands report (status --json, error lines) names the same folder
    from wherever it is read, as the library's own folder paths do."""
    from app.library.paths import default_data_dir

    given = getattr(args, "data_dir", None)
    return (Path(given).expanduser() if given else default_data_dir()).resolve()


def _require_library(args: argparse.Namespace) -> Path:
    """The data folder, when it holds a library. Reading one must not create one: a mistyped
    --data-dir would otherwise leave an empty library (and a log folder) behind and answer from
    nothing."""
    from app.library.library import LibraryError
    from app.library.store import DB_NAME

    data_dir = _data_dir(args)
    if not (data_dir / DB_NAME).exists():
        flag = f" --data-dir {shlex.quote(str(data_dir))}" if getattr(args, "data_dir", None) else ""
        raise LibraryError(f"no library in {data_dir}: index a folder first with `dolphin-desk index FOLDER{flag}`")
    return data_dir


def _settings(args: argparse.Namespace):  # noqa: ANN202 - Settings, imported lazily
    """The saved settings of the data folder, with this command's flags over them (a flag
    that was not given is None and leaves the saved value); checked against the settings schema."""
    import dataclasses

    from app.settings import SettingsError, load_settings

    settings, note = load_settings(_data_dir(args))
    if note:
        print(f"dolphin-desk: note: {note}", file=sys.stderr)
    overrides = {name: getattr(args, name) for name in SETTING_FLAGS if getattr(args, name, None) is not None}
    settings = dataclasses.replace(settings, **overrides)
    try:
        settings.validate()
    except SettingsError as exc:
        raise SettingsError(f"{exc} (flag or saved setting)") from None
    return settings


def _open_library(args: argparse.Namespace, settings, on_progress: Callable | None = None):  # noqa: ANN001, ANN202
    from app.library.library import Library
    from app.logs import setup_logging

    data_dir = _data_dir(args)
    _bundle(args, settings)  # none: said before the data folder gets a log
    setup_logging(data_dir)
    return Library(
        data_dir,
        _load_model(args, settings),
        chunk_tokens=settings.chunk_tokens,
        on_progress=on_progress,
        include=settings.include_patterns,
        exclude=settings.exclude_patterns,
        ocr=settings.ocr,
    )


class _ProgressLine:
    """One self-rewriting progress line on a terminal; silent when stderr is not a terminal."""

    def __init__(self) -> None:
        self._tty = sys.stderr.isatty()
        self._last = 0.0

    def __call__(self, progress) -> None:  # noqa: ANN001 - IndexProgress
        now = time.monotonic()
        if not self._tty or now - self._last < 0.1:
            return
        self._last = now
        done, total = progress.documents_done, max(progress.documents_total, 1)
        bar = "#" * int(24 * done / total)
        current = Path(progress.current_file).name if progress.current_file else ""
        line = (
            f"\r[{bar:<24}] {done}/{progress.documents_total} documents  "
            f"{progress.chunks_per_second:4.1f} chunks/s  {current[:40]}"
        )
        sys.stderr.write(line.ljust(110))
        sys.stderr.flush()

    def finish(self) -> None:
        if self._tty:
            sys.stderr.write("\n")


def _folder_totals(store, folder: Path) -> str:  # noqa: ANN001 - Store, imported lazily
    """One folder's documents by state and its chunks: what `index FOLDER` was asked about,
    whatever else the library holds. Counted by path, so a folder inside another counts too."""
    from app.library.states import DocumentState
    from app.library.store import display_path

    documents = [d for d in store.documents() if d.path.is_relative_to(folder)]
    counts = {state: sum(d.state is state for d in documents) for state in DocumentState}
    waiting = counts[DocumentState.PENDING] + counts[DocumentState.INDEXING]
    return (
        f"{display_path(folder)}: {counts[DocumentState.READY]} ready, {counts[DocumentState.FAILED]} failed, "
        f"{counts[DocumentState.SKIPPED]} skipped{f', {waiting} waiting' if waiting else ''}; "
        f"{sum(d.chunk_count for d in documents)} chunks"
    )


def _hand_to_running_app(data_dir: Path, folders: list[str], wait: bool) -> int:
    """The desktop app has this library open: it indexes and watches the folders, not a second
    indexer behind its back (app/instance.py). `wait`: report the folders' totals once done."""
    from app.instance import InstanceInfo, ask_running_app
    from app.library.library import LibraryError
    from app.library.states import DocumentState
    from app.library.store import Store

    paths = [Path(folder).expanduser().resolve() for folder in folders]
    for path in paths:
        if not path.is_dir():
            raise LibraryError(f"{path} is not a folder")
    owner = InstanceInfo.read(data_dir)
    for path in paths:
        # Answered once the window has added and scanned the folder (a big one takes a while).
        reply = ask_running_app(data_dir, {"op": "add_folder", "path": str(path)}, timeout=150)
        if not reply or not reply.get("ok"):
            pid = f" (process {owner.pid})" if owner else ""
            why = f" ({reply['error']})" if reply and reply.get("error") else ""
            raise LibraryError(
                f"the Dolphin Desk window that has {data_dir} open{pid} did not take the folder{why}: "
                "add it in the window, or close the window and run this again"
            )
        print(f"dolphin-desk: the open Dolphin Desk window indexes and watches {path}", file=sys.stderr)
    if not wait:
        return 0
    store = Store(data_dir)
    try:
        busy = (DocumentState.PENDING, DocumentState.INDEXING)
        deadline = time.monotonic() + 60
        while True:
            known = {f.path for f in store.folders()}
            documents = store.documents()
            if all(p in known for p in paths) and not any(
                d.state in busy and any(d.path.is_relative_to(p) for p in paths) for d in documents
            ):
                break
            if not all(p in known for p in paths) and time.monotonic() > deadline:
                raise LibraryError("the open Dolphin Desk window has not added the folder: see its folders panel")
            time.sleep(0.5)  # another process does the work: its database is all there is to watch
        for path in dict.fromkeys(paths):
            print(_folder_totals(store, path))
    finally:
        store.close()
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from app.instance import is_locked
    from app.library.store import StoreError

    if is_locked(_data_dir(args)):
        return _hand_to_running_app(_data_dir(args), args.folders, wait=True)
    progress = _ProgressLine()
    library = _open_library(args, _settings(args), progress)
    try:
        folders = [library.add_folder(folder).path for folder in args.folders]
        library.start()
        while not library.index_until_done(timeout=0.5):
            if library.indexer.last_error:
                progress.finish()
                raise StoreError(library.indexer.last_error)
        progress.finish()
        for folder in dict.fromkeys(folders):
            print(_folder_totals(library.store, folder))
        print(f"this run: {library.indexer.encoded} chunks encoded, {library.indexer.reused} reused")
    finally:
        library.stop()
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    from app.instance import is_locked

    if is_locked(_data_dir(args)):
        return _hand_to_running_app(_data_dir(args), args.folders, wait=False)
    library = _open_library(args, _settings(args), _ProgressLine())
    try:
        for folder in args.folders:
            library.add_folder(folder)
        library.start(watch=True)
        print(f"watching {len(library.store.folders())} folder(s); Ctrl-C stops", file=sys.stderr)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("\ndolphin-desk: stopped watching (everything indexed so far is saved)", file=sys.stderr)
        return 0
    finally:
        library.stop()


def cmd_status(args: argparse.Namespace) -> int:
    from app.library.library import library_status
    from app.library.store import Store

    store = Store(_require_library(args))
    try:
        status = library_status(store)
    finally:
        store.close()
    if args.json:
        print(json.dumps(status, ensure_ascii=False))
        return 0
    if status["indexer"]["state"] == "stopped":
        print(f"indexer: {status['indexer']['reason']}")
    for problem in status["problems"]:
        print(f"problem: {problem['message']}")
    for folder in status["folders"]:
        counts = ", ".join(f"{n} {state}" for state, n in sorted(folder["counts"].items())) or "empty"
        print(f"{folder['path']}{' (missing)' if folder['missing'] else ''}: {counts}")
        for problem in folder["problems"]:
            subject = f"{problem['subject']}: " if problem["subject"] else ""
            print(f"  problem ({problem['source']}): {subject}{problem['message']}")
    for document in status["documents"]:
        reason = document["error"] or document["note"]
        reason = f"  ({reason})" if reason else ""
        print(f"  {document['state']:<8} {document['chunks']:>4} chunks  {document['path']}{reason}")
    return 0


class _JobProgressLine:
    """The cluster job's progress on one self-rewriting line; silent when stderr is not a terminal."""

    def __init__(self) -> None:
        self._tty = sys.stderr.isatty()
        self._last = 0.0

    def __call__(self, progress) -> None:  # noqa: ANN001 - JobProgress, imported lazily
        now = time.monotonic()
        if not self._tty or now - self._last < 0.2:
            return
        self._last = now
        done, total = progress.documents_done, max(progress.documents_total, 1)
        bar = "#" * int(24 * done / total)
        line = (
            f"\r[{bar:<24}] {done}/{progress.documents_total} documents  {progress.chunks_encoded} chunks encoded  "
            f"{progress.chunks_per_second:5.1f} chunks/s  {Path(progress.current).name[:30]}"
        )
        sys.stderr.write(line.ljust(110))
        sys.stderr.flush()

    def finish(self) -> None:
        if self._tty:
            sys.stderr.write("\n")


def cmd_cluster_index(args: argparse.Namespace) -> int:
    from app.cluster import ClusterError

    try:
        from app.cluster.job import ClusterOptions, run_job
    except ImportError:  # pyarrow, which Ray brings, is what the pipeline's stages import first
        raise ClusterError("Ray is not installed: pip install 'dolphin-desk[cluster]' (on every node)") from None
    settings = _settings(args)
    options = ClusterOptions(
        sources=list(args.sources),
        bundle=_bundle(args, settings),
        out=args.out.expanduser(),
        ray_address=args.ray,
        workers=args.workers,
        gpus_per_worker=args.gpus_per_worker,
        cpus_per_worker=args.cpus_per_worker,
        readers=args.readers,
        chunk_tokens=settings.chunk_tokens,
        include=list(settings.include_patterns),
        exclude=list(settings.exclude_patterns),
        ocr=settings.ocr,
    )
    for name, value in (("--workers", args.workers), ("--readers", args.readers)):
        if value is not None and value < 1:
            raise ClusterError(f"{name} must be at least 1")
    progress = _JobProgressLine()
    try:
        report = run_job(options, progress)
    finally:
        progress.finish()
    pack = report.pack_report
    counts = pack["documents"]
    print(
        f"{options.out}: {counts['ready']} ready, {counts['failed']} failed, {counts['skipped']} skipped; "
        f"{pack['memories']} memories in {pack['shards']} shard(s)"
    )
    actors = (
        f"{report.workers} workers x {report.cpus_per_worker:g} CPUs"
        + (f" x {report.gpus_per_worker:g} GPUs" if report.gpus_per_worker else "")
        + f", {report.chunks_per_second:.2f} chunks/s"
        if report.workers
        else "nothing to read"
    )
    print(
        f"this run: {report.documents_written} documents read ({report.documents_unchanged} unchanged, not read), "
        f"{report.encoded} chunks encoded, {report.reused} reused ({report.repeated} repeated in this run), "
        f"{report.removed} removed; "
        f"{actors}, {report.seconds:.1f} s"
    )
    for failed in pack["failed"][:10]:
        print(f"  failed: {failed['path']} ({failed['reason']})")
    if len(pack["failed"]) > 10:
        print(f"  ... and {len(pack['failed']) - 10} more in {options.out / 'report.json'}")
    return 0


def cmd_import_pack(args: argparse.Namespace) -> int:
    from app.instance import is_locked
    from app.library.library import LibraryError
    from app.library.pack import read_manifest
    from app.library.pack_import import LocalSetup, PathMap, check_pack, import_into_store
    from app.library.store import Store
    from app.logs import setup_logging
    from inference.bundle import load_manifest

    data_dir = _data_dir(args)
    if is_locked(data_dir):
        raise LibraryError(
            f"the Dolphin Desk window has {data_dir} open: import the pack there (File → Import pack), "
            "or close the window and run this again"
        )
    settings = _settings(args)
    setup = LocalSetup.of(load_manifest(_bundle(args, settings)), settings.chunk_tokens)
    mapping = PathMap.parse(args.map)
    check_pack(read_manifest(args.pack), setup)  # refused before a library is made for it
    setup_logging(data_dir)
    store = Store(data_dir)
    try:
        report = import_into_store(
            store, args.pack, setup, mapping, lambda done, total: print(f"shard {done}/{total}", file=sys.stderr)
        )
    finally:
        store.close()
    for line in report.lines():
        print(line)
    return 0


def _generation_settings(settings, seed: int | None):  # noqa: ANN001, ANN202 - Settings, GenerationSettings: lazy
    from inference import GenerationSettings

    return GenerationSettings(
        max_new_tokens=settings.max_new_tokens,
        greedy=settings.greedy,
        temperature=settings.temperature,
        top_p=settings.top_p,
        seed=seed,
    )


def cmd_ask_library(args: argparse.Namespace) -> int:
    from app.library.answering import AnswerOutcome

    _require_library(args)
    settings = _settings(args)
    library = _open_library(args, settings)
    try:
        answer = library.ask(
            args.question,
            k=settings.top_k,
            settings=_generation_settings(settings, args.seed),
            without_sources=args.without_sources,
        )
        nothing = answer.outcome is AnswerOutcome.NOTHING_MATCHES
        if not args.json:
            for note in answer.notes if not nothing else answer.notes[:-1]:
                print(f"dolphin-desk: note: {note}", file=sys.stderr)
            if nothing:
                print(answer.notes[-1])
                print("Ask again with --without-sources to answer without sources.", file=sys.stderr)
        for piece in answer:
            if not args.json:
                # Model output, written from documents: no escape sequences reach the terminal.
                sys.stdout.write(without_controls(piece))
                sys.stdout.flush()
        stream = answer.stream
        if args.json:
            stats = stream.stats if stream is not None else None
            print(
                json.dumps(
                    {
                        "answer": stream.text if stream is not None else None,
                        "outcome": answer.outcome.value,
                        "best_similarity": answer.best_similarity,
                        "token_ids": stream.token_ids if stream is not None else [],
                        "stop_reason": stats.stop_reason if stats is not None else None,
                        "timings": {
                            "first_token_s": stats.first_token_s,
                            "decode_tokens_per_s": stats.decode_tokens_per_s,
                            "total_s": stats.total_s,
                        }
                        if stats is not None
                        else None,
                        "stats": answer.stats(),
                        "sources": [s.as_dict() for s in answer.sources],
                        "notes": answer.notes,
                    },
                    ensure_ascii=False,
                )
            )
        elif not nothing:
            print()
            for number, source in enumerate(answer.sources, start=1):
                page = f", page {source.page}" if source.page else ""
                excerpt = f" — {without_controls(source.excerpt)}" if source.excerpt else ""
                print(f"[{number}] {source.path}{page}{excerpt}", file=sys.stderr)
    finally:
        library.stop()
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
    if not args.context_file:
        return cmd_ask_library(args)
    texts = [(path, _read_context(path)) for path in args.context_file]
    settings = _settings(args)
    model = _load_model(args, settings)
    encode_started = time.perf_counter()
    memories = [model.encode(text) for _, text in texts]
    encode_s = time.perf_counter() - encode_started
    stream = model.answer(args.question, memories, _generation_settings(settings, args.seed))
    notes = [
        f"{path}: {note}" for (path, _), memory in zip(texts, memories, strict=True) for note in memory.notes
    ] + stream.notes
    if not args.json:
        for note in notes:
            print(f"dolphin-desk: note: {note}", file=sys.stderr)
    try:
        for piece in stream:
            if not args.json:
                sys.stdout.write(without_controls(piece))
                sys.stdout.flush()
    except KeyboardInterrupt:
        stream.cancel()
        print("\ndolphin-desk: stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        stream.cancel()
        raise
    stats = stream.stats
    if args.json:
        result = {
            "answer": stream.text,
            "token_ids": stream.token_ids,
            "stop_reason": stats.stop_reason,
            "timings": {
                "encode_s": encode_s,
                "first_token_s": stats.first_token_s,
                "decode_tokens_per_s": stats.decode_tokens_per_s,
                "total_s": stats.total_s,
            },
            "stats": stats.as_dict(),
            "memories": [{"file": str(p), "tokens": m.token_count} for (p, _), m in zip(texts, memories, strict=True)],
            "notes": notes,
            "provider": model.provider,
            "threads": model.threads,
        }
        print(json.dumps(result, ensure_ascii=False))
    else:
        print()
    return 0


def _default_help(name: str) -> str:
    from app.settings import spec

    setting = spec(name)
    limits = f", {setting.minimum:g} to {setting.maximum:g}" if setting.minimum is not None else ""
    return f"default: the saved setting, else {setting.default}{limits}"


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", type=Path, help="the model bundle folder; default: the one the app was set to use")
    parser.add_argument(
        "--provider", choices=PROVIDERS, help="default: the saved setting, else auto (the bundle's own)"
    )
    parser.add_argument("--threads", type=int, help="default: the saved setting, else every core (0)")


def cmd_download(args: argparse.Namespace) -> int:
    from app.download import download

    print(download(args.repo, args.dest.expanduser()))
    return 0


def cmd_gui(args: argparse.Namespace) -> int:
    from app.ui.main import run_app

    return run_app(Path(args.data_dir).expanduser() if getattr(args, "data_dir", None) else None)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dolphin-desk", description="Chat with your own files, offline.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--self-test", metavar="BUNDLE", type=Path,
        help="load BUNDLE, encode a text, answer a question, open the window offscreen; exit 1 on any failure",
    )  # fmt: skip
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    convert = commands.add_parser("convert", help="convert a Dolphin checkpoint into a model bundle")
    convert_cli.add_arguments(convert)
    convert.set_defaults(handler=convert_cli.run)

    add_embedder = commands.add_parser(
        "add-embedder", help="give a model bundle the dense retrieval embedder (keyword search is used without)"
    )
    convert_cli.add_embedder_arguments(add_embedder)
    add_embedder.set_defaults(handler=convert_cli.run_add_embedder)

    encode = commands.add_parser("encode", help="compress a text file into a memory (.npy)")
    _add_model_options(encode)
    encode.add_argument("--context-file", type=Path, required=True)
    encode.add_argument("--out", type=Path, required=True)
    encode.set_defaults(handler=cmd_encode)

    ask = commands.add_parser("ask", help="answer a question from one or more context files")
    _add_model_options(ask)
    ask.add_argument("--context-file", type=Path, action="append", default=[], help="repeat for several memories")
    ask.add_argument("--question", required=True)
    ask.add_argument(
        "--greedy",
        action=argparse.BooleanOptionalAction,
        help="greedy decoding, as the reference does; " + _default_help("greedy"),
    )
    ask.add_argument("--temperature", type=float, help=_default_help("temperature"))
    ask.add_argument("--top-p", type=float, help=_default_help("top_p"))
    ask.add_argument("--seed", type=int)
    ask.add_argument("--max-new-tokens", type=int, help=_default_help("max_new_tokens"))
    ask.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")
    ask.add_argument(
        "--data-dir",
        help="the data folder whose library answers (without --context-file) and whose saved settings are used; "
        "default: the platform's per-user data folder",
    )
    ask.add_argument("--top-k", type=int, help="memories per answer, from the library; " + _default_help("top_k"))
    ask.add_argument("--chunk-tokens", type=int, help=_default_help("chunk_tokens"))
    ask.add_argument(
        "--without-sources",
        action="store_true",
        help="answer even when nothing in the library matches (from the model alone, no sources)",
    )
    ask.set_defaults(handler=cmd_ask)

    for name, handler, text in (
        ("index", cmd_index, "add folders to the library and index them; exits when done"),
        ("watch", cmd_watch, "index and keep following changes until Ctrl-C"),
    ):
        command = commands.add_parser(name, help=text)
        _add_model_options(command)
        command.add_argument("folders", nargs="*" if name == "watch" else "+", type=Path)
        command.add_argument("--data-dir", help="default: the platform's per-user data folder")
        command.add_argument("--chunk-tokens", type=int, help="tokens per memory; " + _default_help("chunk_tokens"))
        command.set_defaults(handler=handler)

    cluster = commands.add_parser(
        "cluster-index", help="encode folders on a Ray cluster into a memory pack (needs the cluster extra)"
    )
    cluster.add_argument("sources", nargs="+", type=Path, help="folders, at the same path on every node")
    cluster.add_argument("--bundle", type=Path, help="the model bundle; default: the one the app was set to use")
    cluster.add_argument("--out", type=Path, required=True, help="the pack folder; a rerun resumes it")
    cluster.add_argument("--ray", metavar="ADDRESS", help="a running Ray cluster; default: start a local one")
    cluster.add_argument("--workers", type=int, help="encoder actors; default: one per GPU, else one per 4 CPUs")
    cluster.add_argument(
        "--gpus-per-worker", type=float, help="GPUs per encoder actor; default: 1 when the cluster has GPUs, else 0"
    )
    cluster.add_argument("--cpus-per-worker", type=float, help="default: the cluster's CPUs shared among workers")
    cluster.add_argument("--readers", type=int, help="extraction actors; default: a quarter of the workers")
    cluster.add_argument("--chunk-tokens", type=int, help="tokens per memory; " + _default_help("chunk_tokens"))
    cluster.add_argument("--data-dir", help="whose saved settings (chunk size, patterns, OCR) the pack follows")
    cluster.set_defaults(handler=cmd_cluster_index)

    import_pack = commands.add_parser("import-pack", help="merge a memory pack into the library; encodes nothing")
    import_pack.add_argument("pack", type=Path)
    import_pack.add_argument("--data-dir", help="default: the platform's per-user data folder")
    import_pack.add_argument(
        "--map", action="append", default=[], metavar="CLUSTER_PATH=LOCAL_PATH",
        help="where a source folder of the cluster is on this computer (repeat for several)",
    )  # fmt: skip
    import_pack.add_argument("--bundle", type=Path, help="default: the one the app was set to use")
    import_pack.add_argument("--chunk-tokens", type=int, help=_default_help("chunk_tokens"))
    import_pack.set_defaults(handler=cmd_import_pack)

    download = commands.add_parser("download", help="download a Dolphin checkpoint from the Hugging Face hub")
    download.add_argument("repo", nargs="?", default="NexaAIDev/Squid")
    download.add_argument("dest", type=Path)
    download.set_defaults(handler=cmd_download)

    gui = commands.add_parser("gui", help="start the desktop app (the default with no command)")
    gui.add_argument("--data-dir")
    gui.set_defaults(handler=cmd_gui)

    status = commands.add_parser("status", help="what is indexed, per folder and document")
    status.add_argument("--data-dir")
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=cmd_status)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.self_test is not None:
        from app.self_test import run_self_test

        return run_self_test(args.self_test.expanduser())
    if args.command is None:
        args = parser.parse_args(["gui"])
    return run_guarded(lambda: args.handler(args), debug=args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
