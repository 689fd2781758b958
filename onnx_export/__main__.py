"""`python -m onnx_export SRC OUT ...`: the same converter as `dolphin-desk convert`."""

from __future__ import annotations

import argparse
import sys

from app.cli import run_guarded
from onnx_export.cli import add_arguments, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m onnx_export", description="Convert a Dolphin checkpoint to a model bundle."
    )
    add_arguments(parser)
    return run_guarded(lambda: run(parser.parse_args(argv)), debug="--debug" in sys.argv)


if __name__ == "__main__":
    raise SystemExit(main())
