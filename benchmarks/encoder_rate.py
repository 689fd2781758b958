"""Encoder throughput as the indexer runs it, against the machine's fp32 and int8 GEMM limits.

    python -m benchmarks.encoder_rate --bundle B [--update-latest]

Encodes distinct full-size chunks one after another (what indexing a folder does), and stores
them in a real library store to report bytes per memory and the time to load k of them back.
Between chunks it runs a 2048^3 fp32 and int8 product (benchmarks/gemm_peak.py), so both limits
are measured under the same load as the encoder, and the fractions compare best with best: other
processes on the machine slow a chunk and a product alike, but their mean would favour the
shorter product. Prints one JSON object; `--update-latest`
puts it into results/latest.json (the encoder row and its summary figures) without re-running
the answer benchmarks."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from app.library.store import Store
from benchmarks.answer import CHUNK_TOKENS, TOP_K, document_ids
from benchmarks.gemm_peak import best_rate, fp32_product, int8_product
from inference import DolphinModel

PEAK_SIZE = 2048
RESULTS = Path(__file__).resolve().parent / "results"


def linear_flops_per_token(config: dict) -> float:
    """Linear-layer FLOPs per token of a Qwen2 stack from its config.json (attention adds < 5%
    at 416 positions)."""
    hidden = config["hidden_size"]
    kv = config["num_key_value_heads"] * hidden // config["num_attention_heads"]
    return config["num_hidden_layers"] * 2 * (hidden * (2 * hidden + 2 * kv) + 3 * hidden * config["intermediate_size"])


def flops_per_token(model: DolphinModel) -> float:
    """The same for a bundle's encoder; the manifest has no FFN width, so it is Qwen2's for the width."""
    stack = model.manifest.encoder
    hidden = stack.hidden_size
    return linear_flops_per_token(
        {
            "hidden_size": hidden,
            "num_key_value_heads": stack.num_kv_heads,
            "num_attention_heads": hidden // stack.head_size,
            "num_hidden_layers": stack.num_layers,
            "intermediate_size": {896: 4864, 1536: 8960, 3584: 18944}.get(hidden, hidden * 3),
        }
    )


def measure(bundle: Path, chunks: int) -> dict[str, float]:
    model = DolphinModel.load(bundle)
    ids = document_ids(model, CHUNK_TOKENS * (chunks + 1), seed=1)
    pieces = [ids[i * CHUNK_TOKENS : (i + 1) * CHUNK_TOKENS] for i in range(chunks + 1)]
    model.encoder.encode_ids(pieces[0])
    products = {"fp32": fp32_product(PEAK_SIZE, model.threads), "int8": int8_product(PEAK_SIZE, model.threads)}
    rates: dict[str, list[float]] = {name: [] for name in products}
    with tempfile.TemporaryDirectory() as data_dir:
        store = Store(Path(data_dir))
        seconds = []
        for index, piece in enumerate(pieces[1:]):
            started = time.perf_counter()
            store.put_memory(f"c{index}", model.encoder_identity, model.encoder.encode_ids(piece), len(piece))
            seconds.append(time.perf_counter() - started)
            for name, product in products.items():
                rates[name].append(best_rate(product, PEAK_SIZE, repeats=5))
        loads = []
        for _ in range(5):
            begun = time.perf_counter()
            for index in range(TOP_K):
                store.get_memory(f"c{index}", model.encoder_identity)
            loads.append(time.perf_counter() - begun)
        bytes_per_memory = store.memory_stats()["bytes_per_memory"]
        store.close()
    positions = CHUNK_TOKENS + model.manifest.memory_size
    elapsed = sum(seconds)
    gflops = flops_per_token(model) * positions / min(seconds) / 1e9
    peak, int8_peak = max(rates["fp32"]), max(rates["int8"])
    return {
        "chunks": chunks,
        "chunk_tokens": CHUNK_TOKENS,
        "tokens_per_s": chunks * positions / elapsed,
        "chunks_per_s": chunks / elapsed,
        "chunks_per_s_best": 1 / min(seconds),
        "gflops": gflops,
        "matmul_peak_gflops": peak,
        "fraction_of_peak": gflops / peak,
        "int8_matmul_peak_gops": int8_peak,
        "fraction_of_int8_peak": gflops / int8_peak,
        "peak_size": PEAK_SIZE,
        "rates_are": "GOP/s and the fractions: the best chunk against the best products (each of those 5 in a "
        "row) between the chunks; chunks/s and tokens/s: the mean over all chunks",
        "loadavg": Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None,
        "precision": model.manifest.encoder.precision,
        "bytes_per_memory": bytes_per_memory,
        "load_k_memories_ms": min(loads) * 1000,
        "k": TOP_K,
    }


def update_latest(path: Path, encoder: dict) -> None:
    """Replace the encoder row of a committed report and the summary figures made from it."""
    from benchmarks.report import markdown, merge_encoder

    report = json.loads(path.read_text(encoding="utf-8"))
    merge_encoder(report, encoder)
    path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    path.with_suffix(".md").write_text(markdown(report, path.with_suffix(".png").name), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.encoder_rate")
    parser.add_argument("--bundle", type=Path, nargs="+", required=True, help="several: measured in turn, each run")
    parser.add_argument("--chunks", type=int, default=6)
    parser.add_argument("--runs", type=int, default=1, help="repeat the whole measurement (a spread, not one draw)")
    parser.add_argument("--json", type=Path, help="every run of every bundle, as a list")
    parser.add_argument("--update-latest", type=Path, nargs="?", const=RESULTS / "latest.json", metavar="JSON")
    args = parser.parse_args(argv)
    runs = []
    for run in range(args.runs):
        for bundle in args.bundle:
            result = measure(bundle, args.chunks)
            runs.append({"run": run, "bundle": str(bundle), **result})
            print(json.dumps(result), flush=True)
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1) + "\n", encoding="utf-8")
    if args.update_latest:
        last = next(r for r in reversed(runs) if r["bundle"] == str(args.bundle[0]))
        update_latest(args.update_latest, {k: v for k, v in last.items() if k not in ("run", "bundle")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
