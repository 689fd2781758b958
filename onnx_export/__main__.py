"""`python -m onnx_export SRC OUT ...`: the same converter as `dolphin-desk convert`.

It reports errors itself (one line, exit 1) rather than through the app's CLI: the converter is
a layer below the app and never imports it (the import contracts in pyproject.toml).
"""

from __future__ import annotations

import argparse
import sys

from onnx_export.cli import add_arguments, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m onnx_export", description="Convert a Dolphin checkpoint to a model bundle."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("\npython -m onnx_export: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        from inference.bundle import BundleError
        from onnx_export.checkpoint import CheckpointError
        from onnx_export.convert import ConversionError
        from onnx_export.embedder import EmbedderError

        known = (BundleError, CheckpointError, ConversionError, EmbedderError, OSError)
        message = str(exc) if isinstance(exc, known) else f"unexpected {type(exc).__name__}: {exc}"
        print(f"python -m onnx_export: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
