"""`python -m benchmarks [--quick]`: Dolphin with persisted memories against reading the text.

For a document of N tokens and a question, answering 64 tokens, one run measures side by side,
with the same decoder (see benchmarks/answer.py for the four methods): full context, text RAG,
Dolphin encoding at question time, and Dolphin with memories persisted in the library.

Bundles are built by the project's converter from random-weight checkpoints of real shapes
(encoder Qwen2-0.5B; decoders Qwen2-0.5B, 1.5B and 7B in the full run), int4 like the app, and
cached in benchmarks/.cache. Every measurement runs in a child process of its own, so peak RSS
and CPU-seconds belong to that method alone. Results: <out>/{quick,latest}.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.answer import METHODS
from benchmarks.machine import describe
from benchmarks.report import summarise, write_report

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
QUICK_DECODERS = ["qwen2-0.5b"]
FULL_DECODERS = ["qwen2-0.5b", "qwen2-1.5b", "qwen2-7b"]


def build_bundle(decoder: str, cache: Path) -> Path:
    """A cached int4 bundle: random weights, real shapes, made by the project's converter."""
    from onnx_export.convert import convert
    from onnx_export.random_checkpoint import main as write_random

    bundle = cache / f"bundle-{decoder}-int4"
    if (bundle / "manifest.json").exists():
        return bundle
    checkpoint = cache / f"ckpt-{decoder}"
    if not (checkpoint / "config.json").exists():
        write_random([str(checkpoint), "--decoder", decoder, "--encoder", "qwen2-0.5b"])
    convert(str(checkpoint), bundle, precision="int4", provider="cpu", force=True, progress=lambda m: print("  " + m))
    return bundle


class ChildFailed(RuntimeError):
    """A measurement process failed, timed out or printed no result."""


def run_child(module: str, *args: str, timeout: float = 3600) -> dict:
    """One measurement in a fresh interpreter; its last stdout line is its JSON result."""
    command = f"{module} {' '.join(args)}"
    try:
        result = subprocess.run(
            [sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout,
            check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise ChildFailed(f"{command} took over {timeout:.0f} s") from None
    if result.returncode != 0:
        killed = " (killed: out of memory?)" if result.returncode < 0 else ""
        raise ChildFailed(f"{command} exited with {result.returncode}{killed}:\n{result.stderr[-3000:]}")
    lines = result.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        raise ChildFailed(f"{command} printed no JSON result:\n{result.stdout[-1000:]}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--quick", action="store_true", help="0.5B-shaped decoder, N = 512 and 2048 (under 5 minutes)")
    parser.add_argument("--decoders", nargs="+", help="decoder shapes (qwen2-0.5b, qwen2-1.5b, qwen2-7b)")
    parser.add_argument("--sizes", nargs="+", type=int, help="document lengths N in tokens")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="where results are written")
    parser.add_argument("--cache", type=Path, default=HERE / ".cache", help="where bundles are built and kept")
    parser.add_argument("--llama-python", help="a Python with llama-cpp-python and gguf, for the engine comparison")
    args = parser.parse_args(argv)

    decoders = args.decoders or (QUICK_DECODERS if args.quick else FULL_DECODERS)
    sizes = args.sizes or ([512, 2048] if args.quick else [512, 2048, 8192])
    started = time.perf_counter()
    report: dict[str, object] = {
        "mode": "quick" if args.quick else "full",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": describe(),
        "runs": [],
    }
    bundles = {decoder: build_bundle(decoder, args.cache) for decoder in decoders}
    for decoder, bundle in bundles.items():
        print(f"decoder {decoder}", flush=True)
        rows = []
        with tempfile.TemporaryDirectory() as data_dir:
            for n in sizes:
                for method in METHODS:
                    row = run_child("benchmarks.answer", "--bundle", str(bundle), "--data-dir", data_dir,
                                    "--method", method, "--tokens", str(n))  # fmt: skip
                    rows.append(row)
                    save_partial(report, rows, decoder, args.out)
                    print(f"  N={n:5d} {method:12s} ttft {row['ttft_s']:8.3f} s  cpu {row['cpu_s']:8.2f} s  "
                          f"peak {row['peak_rss_mb']:7.0f} MB", flush=True)  # fmt: skip
        report["runs"].append({"decoder": decoder, "rows": rows})
    first = bundles[decoders[0]]
    print("encoder throughput", flush=True)
    report["encoder"] = run_child("benchmarks.encoder_rate", "--bundle", str(first))
    print("GUI stall while indexing and answering", flush=True)
    report["gui"] = run_child("benchmarks.gui_stall", "--bundle", str(first))
    report["llama_cpp"] = llama_cpp_comparison(args.llama_python, bundles, report)
    report["summary"] = summarise(report)
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    paths = write_report(report, args.out, "quick" if args.quick else "latest")
    (args.out / PARTIAL).unlink(missing_ok=True)
    print(json.dumps(report["summary"], indent=2))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


PARTIAL = "partial.json"


def save_partial(report: dict, rows: list[dict], decoder: str, out: Path) -> None:
    """Every measured row, as it comes: a failure late in a long run keeps what was measured."""
    out.mkdir(parents=True, exist_ok=True)
    snapshot = {**report, "runs": [*report["runs"], {"decoder": decoder, "rows": rows}]}
    (out / PARTIAL).write_text(json.dumps(snapshot, indent=2) + "\n", encoding="utf-8")


def decoder_shape(decoder: str) -> str:
    """The Qwen2 shape of a benchmark decoder, as the llama.cpp script takes it."""
    from dataclasses import asdict

    from onnx_export.random_checkpoint import DECODER_PRESETS

    return json.dumps(asdict(DECODER_PRESETS[decoder]))


def llama_cpp_comparison(python: str | None, bundles: dict[str, Path], report: dict) -> dict:
    """The same decoder shape through llama.cpp (Q4_0), if a Python with llama-cpp-python is given."""
    if not python:
        return {"skipped": "no --llama-python given (llama-cpp-python builds from source; see benchmarks/README.md)"}
    results = []
    for decoder, bundle in bundles.items():
        rows = next(r["rows"] for r in report["runs"] if r["decoder"] == decoder)
        for n in sorted({r["n_tokens"] for r in rows}):
            result = subprocess.run(
                [python, str(HERE / "llama_cpp_compare.py"), "--shape", decoder_shape(decoder), "--name", decoder,
                 "--cache", str(bundle.parent.resolve()), "--tokens", str(n)],
                capture_output=True, text=True, timeout=3600, check=False,
            )  # fmt: skip
            lines = result.stdout.strip().splitlines()
            if result.returncode != 0 or not lines:
                reason = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]
                return {"rows": results, "error": f"llama.cpp {decoder} N={n} failed: {reason}"}
            results.append(json.loads(lines[-1]))
            print(f"  llama.cpp {decoder} N={n}: prefill {results[-1]['prefill_tokens_per_s']:.1f} tok/s, "
                  f"decode {results[-1]['decode_tokens_per_s']:.1f} tok/s", flush=True)  # fmt: skip
    return {"rows": results}


if __name__ == "__main__":
    sys.exit(main())
