"""The `dolphin-desk` command: convert, encode and ask from a terminal.

Every failure a user can cause ends as one `dolphin-desk: error: ...` line and exit status 1;
`--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from onnx_export import cli as convert_cli

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


def _user_errors() -> tuple[type[BaseException], ...]:
    from inference.bundle import BundleError
    from inference.errors import InputError

    errors: list[type[BaseException]] = [BundleError, InputError, OSError, UnicodeDecodeError]
    try:
        from onnx_export.checkpoint import CheckpointError

        errors.append(CheckpointError)
        from onnx_export.convert import ConversionError

        errors.append(ConversionError)
    except ImportError:
        pass
    return tuple(errors)


def run_guarded(action: Callable[[], int], debug: bool = False) -> int:
    """Run a command; turn user errors (and, without --debug, anything else) into one line."""
    try:
        return action()
    except KeyboardInterrupt:
        print("\ndolphin-desk: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SystemExit:
        raise
    except Exception as exc:
        if debug:
            raise
        if isinstance(exc, _user_errors()):
            message = _describe_os_error(exc) if isinstance(exc, OSError) else str(exc)
        else:
            message = f"unexpected {type(exc).__name__}: {exc} (run with --debug for details)"
        print(f"dolphin-desk: error: {message}", file=sys.stderr)
        return EXIT_ERROR


def _describe_os_error(exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    return f"{exc.filename}: {reason}" if exc.filename else reason


def _read_context(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UnicodeDecodeError("utf-8", b"", 0, 1, f"{path} is not UTF-8 text") from None


def _load_model(args: argparse.Namespace):  # noqa: ANN202 - DolphinModel, imported lazily
    from inference import DolphinModel

    return DolphinModel.load(args.bundle, provider=args.provider, threads=args.threads)


def cmd_encode(args: argparse.Namespace) -> int:
    import numpy as np

    text = _read_context(args.context_file)
    model = _load_model(args)
    memory = model.encode(text)
    for note in memory.notes:
        print(f"dolphin-desk: note: {note}", file=sys.stderr)
    projected = model.project([memory])[0].astype(np.float32)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.out, projected)
    print(f"{args.out}: memory {list(projected.shape)} for {memory.token_count} context tokens", file=sys.stderr)
    return 0


def cmd_ask(args: argparse.Namespace) -> int:
    from inference import GenerationSettings

    if not args.context_file:
        raise SystemExit("dolphin-desk: error: give at least one --context-file")
    texts = [(path, _read_context(path)) for path in args.context_file]
    model = _load_model(args)
    encode_started = time.perf_counter()
    memories = [model.encode(text) for _, text in texts]
    encode_s = time.perf_counter() - encode_started
    settings = GenerationSettings(
        max_new_tokens=args.max_new_tokens,
        greedy=args.greedy,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
    )
    stream = model.answer(args.question, memories, settings)
    notes = [
        f"{path}: {note}" for (path, _), memory in zip(texts, memories, strict=True) for note in memory.notes
    ] + stream.notes
    if not args.json:
        for note in notes:
            print(f"dolphin-desk: note: {note}", file=sys.stderr)
    try:
        for piece in stream:
            if not args.json:
                sys.stdout.write(piece)
                sys.stdout.flush()
    except KeyboardInterrupt:
        stream.cancel()
        print("\ndolphin-desk: stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
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
        }
        print(json.dumps(result, ensure_ascii=False))
    else:
        print()
    return 0


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", type=Path, required=True, help="the model bundle folder")
    parser.add_argument("--provider", choices=["auto", "cpu", "dml", "cuda"], default="auto")
    parser.add_argument("--threads", type=int, help="default: every core")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dolphin-desk", description="Chat with your own files, offline.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    convert = commands.add_parser("convert", help="convert a Dolphin checkpoint into a model bundle")
    convert_cli.add_arguments(convert)
    convert.set_defaults(handler=convert_cli.run)

    encode = commands.add_parser("encode", help="compress a text file into a memory (.npy)")
    _add_model_options(encode)
    encode.add_argument("--context-file", type=Path, required=True)
    encode.add_argument("--out", type=Path, required=True)
    encode.set_defaults(handler=cmd_encode)

    ask = commands.add_parser("ask", help="answer a question from one or more context files")
    _add_model_options(ask)
    ask.add_argument("--context-file", type=Path, action="append", default=[], help="repeat for several memories")
    ask.add_argument("--question", required=True)
    ask.add_argument("--greedy", action="store_true", help="greedy decoding, as the reference does")
    ask.add_argument("--temperature", type=float, default=0.7)
    ask.add_argument("--top-p", type=float, default=0.9)
    ask.add_argument("--seed", type=int)
    ask.add_argument("--max-new-tokens", type=int, default=256)
    ask.add_argument("--json", action="store_true", help="print one JSON object instead of streaming text")
    ask.set_defaults(handler=cmd_ask)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return run_guarded(lambda: args.handler(args), debug=args.debug)


if __name__ == "__main__":
    raise SystemExit(main())
