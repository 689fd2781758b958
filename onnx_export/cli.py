"""`dolphin-desk convert` / `python -m onnx_export`: arguments here, torch only once it runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from inference.bundle import PROVIDERS

DEFAULT_EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"  # see onnx_export/embedder.py

CONVERTER_MISSING = (
    "converting needs the converter's packages (torch, transformers, onnx, onnxruntime-genai): "
    "run  pip install torch==2.13.0 -e '.[convert]'  in the app's environment"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="a Dolphin checkpoint folder, or a hub id (NexaAIDev/Dolphin, NexaAIDev/Squid)")
    parser.add_argument("out", type=Path, help="the bundle folder to write")
    parser.add_argument("--precision", choices=["int4", "fp16", "fp32"], default="int4")
    parser.add_argument(
        "--encoder-precision",
        choices=["int8", "int4", "fp16", "fp32"],
        help="the memory encoder's weights: default int8 for CPU int4 bundles (about 2x the chunks/s of int4 "
        "and much closer to fp32; CPU only), otherwise --precision. A bundle's memories are keyed by it",
    )
    parser.add_argument("--provider", choices=PROVIDERS, default="auto")
    parser.add_argument("--max-context-tokens", type=int, default=2048, help="text tokens one memory may hold")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    parser.add_argument(
        "--embedder",
        default=DEFAULT_EMBEDDER,
        help=f"the dense retrieval embedder: a sentence-transformers folder or hub id (default {DEFAULT_EMBEDDER}), "
        "or 'none' for keyword search only",
    )


def run(args: argparse.Namespace) -> int:
    try:
        from onnx_export.convert import convert
    except ImportError as exc:
        raise SystemExit(f"dolphin-desk: error: {CONVERTER_MISSING} ({exc.name} is missing)") from None
    from inference.providers import default_provider

    provider = default_provider() if args.provider == "auto" else args.provider
    convert(
        args.source,
        args.out,
        precision=args.precision,
        provider=provider,
        encoder_precision=args.encoder_precision,
        max_context_tokens=args.max_context_tokens,
        force=args.force,
        progress=lambda message: print(f"convert: {message}", file=sys.stderr, flush=True),
        embedder=None if args.embedder.lower() == "none" else args.embedder,
    )
    print(args.out.resolve())
    return 0


def add_embedder_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path, help="an existing model bundle")
    parser.add_argument("embedder", nargs="?", default=DEFAULT_EMBEDDER, help="sentence-transformers folder or hub id")


def run_add_embedder(args: argparse.Namespace) -> int:
    """Give an existing bundle a retrieval embedder, without converting the 16 GB checkpoint again."""
    try:
        from onnx_export.embedder import add_embedder
    except ImportError as exc:
        raise SystemExit(f"dolphin-desk: error: {CONVERTER_MISSING} ({exc.name} is missing)") from None
    info = add_embedder(args.bundle, args.embedder, lambda m: print(f"add-embedder: {m}", file=sys.stderr, flush=True))
    print(f"{args.bundle}: embedder {info.identity} ({info.dim} dimensions, {info.pooling} pooling)")
    return 0
