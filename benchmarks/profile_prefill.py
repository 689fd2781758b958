"""Where a decoder prefill (or the decode step after it) spends its time, by ONNX operator type,
from ONNX Runtime's own profiler.

    python -m benchmarks.profile_prefill --bundle B --positions 132 2081 [--decode-step]

Answers "what limits time to first token": if MatMulNBits dominates at every length, prefill
is compute-bound and its time grows with the number of positions, whatever feeds them."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort

from inference import DolphinModel
from inference.decoder import Decoder
from inference.providers import session_options


def kernel_seconds_by_op(
    trace_path: Path, label: Callable[[dict], str] = lambda event: event["args"]["op_name"]
) -> tuple[dict[str, float], float]:
    """Kernel seconds of the last `run` in an ONNX Runtime profile, summed by `label(event)`
    (the operator type by default), and that run's wall time."""
    trace = json.loads(trace_path.read_text())
    runs = [e for e in trace if e.get("cat") == "Session" and e["name"] == "model_run"]
    last_run = runs[-1]
    begin, end = last_run["ts"], last_run["ts"] + last_run["dur"]
    by_op: dict[str, float] = defaultdict(float)
    for event in trace:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and begin <= event["ts"] <= end:
            by_op[label(event)] += event["dur"] / 1e6
    return dict(by_op), last_run["dur"] / 1e6


def profile(bundle: Path, positions: int, decode_step: bool = False) -> dict[str, object]:
    model = DolphinModel.load(bundle)
    with tempfile.TemporaryDirectory() as folder:
        options = session_options(model.threads)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "prefill")
        session = ort.InferenceSession(str(model.manifest.path("decoder")), options, providers=["CPUExecutionProvider"])
        decoder = Decoder(session, "cpu", model.manifest.decoder.head_size)
        ids = np.random.default_rng(0).integers(10, 500, positions)
        embeds = model.embeddings(ids)
        decoder.forward(embeds[:16], decoder.new_state())
        state = decoder.new_state()
        decoder.forward(embeds, state)
        if decode_step:
            decoder.forward(embeds[-1:], state)
        by_op, run_s = kernel_seconds_by_op(Path(session.end_profiling()))
    total = sum(by_op.values())
    top = sorted(by_op.items(), key=lambda item: -item[1])[:6]
    return {
        "positions": positions,
        "measured": "one decode step after the prefill" if decode_step else "the prefill",
        "run_s": run_s,
        "kernel_s": total,
        "ops": {name: {"s": round(seconds, 4), "share": round(seconds / total, 3)} for name, seconds in top},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_prefill")
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--positions", type=int, nargs="+", default=[132, 2081])
    parser.add_argument("--decode-step", action="store_true", help="profile the decode step after the prefill")
    args = parser.parse_args(argv)
    print(json.dumps([profile(args.bundle, p, args.decode_step) for p in args.positions]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
