"""Encoder precision as a measured choice: each variant's chunks/s against the fp32 and the int8
GEMM ceilings measured in the same run, where its time goes, and how far its memory is from fp32.

    python -m benchmarks.encoder_precision [--cache DIR] [--rounds 8] [--out benchmarks/results]

The 0.5B-shaped encoder (random weights, the benchmark checkpoint of benchmarks/__main__.py)
encodes distinct 384-token chunks plus the 32 [memory_i] tokens, as the indexer does. Contention
from other processes slows both sides alike: every round runs the fp32 and the int8 product
(best of three) and one new chunk per variant, interleaved, and the figures are each one's best
round; the load average before and after is recorded with the busiest processes. Deviation:
benchmarks/encoder_deviation.py. Writes `<out>/encoder-precision.json` and `.md`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from statistics import median

import numpy as np
import onnxruntime as ort

from benchmarks.encoder_deviation import MEMORY_SLOTS, deviation, fixtures, trained_model
from benchmarks.encoder_rate import linear_flops_per_token
from benchmarks.encoder_variants import VARIANTS, build_variants, encoder_checkpoint
from benchmarks.gemm_peak import fp32_product, int8_product
from benchmarks.machine import describe
from benchmarks.profile_prefill import kernel_seconds_by_op
from inference.providers import default_threads, session_options

HERE = Path(__file__).resolve().parent
CHUNK_TOKENS = 384
PEAK_SIZE = 2048
PRODUCTS_PER_ROUND = 3  # a product takes ~1/30 of a chunk: three per round give it as many quiet moments
DEFAULT = "int8"
PROJECTIONS = ("qkv_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def load_now() -> dict[str, object]:
    """What else the machine was doing: the load average and the busiest processes."""
    top = subprocess.run(["ps", "aux", "--sort=-%cpu"], capture_output=True, text=True, check=False).stdout
    return {
        "loadavg": Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None,
        "busiest": [" ".join(line.split()[2:3] + line.split()[10:])[:120] for line in top.splitlines()[1:5]],
    }


def _encode_runner(path: Path, config: dict, threads: int) -> Callable[[list[int]], np.ndarray]:
    """Runs one chunk as inference/encoder.py does (empty KV cache), returns the memory slots."""
    session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
    past = [i.name for i in session.get_inputs() if i.name.startswith("past_key_values.")]
    heads, hidden = config["num_attention_heads"], config["hidden_size"]
    empty = np.zeros((1, config["num_key_value_heads"], 0, hidden // heads), dtype=np.float32)

    def run(ids: list[int]) -> np.ndarray:
        array = np.asarray([ids], dtype=np.int64)
        feeds = {"input_ids": array, "attention_mask": np.ones_like(array), **dict.fromkeys(past, empty)}
        return session.run(["hidden_states"], feeds)[0][0, -MEMORY_SLOTS:]

    return run


def _timed(run: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    value = run()
    return time.perf_counter() - started, value


def speed(variants: dict[str, Path], config: dict, memory_ids: list[int], rounds: int, threads: int) -> dict:
    """Interleaved rounds: fp32 product, int8 product, then one new chunk per variant.

    Each variant's session is loaded, warmed up on another chunk and timed within its round, then
    released: seven 0.5B encoders at once (~7 GB) do not fit beside other work on a shared machine."""
    products = {"fp32": fp32_product(PEAK_SIZE, threads), "int8": int8_product(PEAK_SIZE, threads)}
    rng = np.random.default_rng(1)
    chunks = [rng.integers(10, min(memory_ids), CHUNK_TOKENS).tolist() + memory_ids for _ in range(rounds + 1)]
    for product in products.values():
        product()
    product_s: dict[str, list[float]] = {name: [] for name in products}
    chunk_s: dict[str, list[float]] = {name: [] for name in variants}
    states: dict[str, list[np.ndarray]] = {name: [] for name in variants}
    for chunk in chunks[1:]:
        for name, product in products.items():
            product_s[name].append(min(_timed(product)[0] for _ in range(PRODUCTS_PER_ROUND)))
        for name, path in variants.items():
            run = _encode_runner(path, config, threads)
            run(chunks[0])
            seconds, memory = _timed(partial(run, chunk))
            chunk_s[name].append(seconds)
            states[name].append(memory)
            del run
    ops = 2 * PEAK_SIZE**3 / 1e9
    peaks = {
        "fp32_gflops": ops / min(product_s["fp32"]),
        "int8_gops": ops / min(product_s["int8"]),
        "fp32_gflops_median": ops / median(product_s["fp32"]),
        "int8_gops_median": ops / median(product_s["int8"]),
        "size": PEAK_SIZE,
    }
    flops = linear_flops_per_token(config) * len(chunks[0])
    rows = {}
    for name, seconds in chunk_s.items():
        best = min(seconds)
        gops = flops / best / 1e9
        rows[name] = {
            "description": VARIANTS[name],
            "chunks_per_s": 1 / best,
            "chunks_per_s_median": 1 / median(seconds),
            "gops": gops,
            "fraction_of_fp32_peak": gops / peaks["fp32_gflops"],
            "fraction_of_int8_peak": gops / peaks["int8_gops"],
            "speedup_vs_int4": min(chunk_s["int4"]) / best if "int4" in chunk_s else None,
            "file_mb": round(sum(p.stat().st_size for p in variants[name].parent.iterdir()) / 2**20, 1),
        }
    reference = np.stack(states["fp32"])
    random_deviation = {name: deviation(np.stack(memories), reference) for name, memories in states.items()}
    return {"peaks": peaks, "variants": rows, "random_weights_deviation": random_deviation, "rounds": rounds}


def _op_label(event: dict) -> str:
    """Operator type, with the projection for the MatMul-like ones (the builder names nodes by layer)."""
    label = event["args"]["op_name"]
    projection = next((p for p in PROJECTIONS if f"/{p}/" in event["name"]), None)
    return f"{label} ({projection})" if projection else label


def profile(variants: dict[str, Path], config: dict, memory_ids: list[int], threads: int) -> dict[str, dict]:
    """ONNX Runtime's profiler over one chunk per variant: kernel time by operator (and projection)."""
    chunk = np.random.default_rng(2).integers(10, min(memory_ids), CHUNK_TOKENS).tolist() + memory_ids
    out = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, path in variants.items():
            options = session_options(threads)
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(folder) / name)
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            past = [i.name for i in session.get_inputs() if i.name.startswith("past_key_values.")]
            head_size = config["hidden_size"] // config["num_attention_heads"]
            empty = np.zeros((1, config["num_key_value_heads"], 0, head_size), dtype=np.float32)
            ids = np.asarray([chunk], dtype=np.int64)
            feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), **dict.fromkeys(past, empty)}
            for _ in range(2):
                session.run(["hidden_states"], feeds)
            by_op, run_s = kernel_seconds_by_op(Path(session.end_profiling()), _op_label)
            total = sum(by_op.values())
            top = sorted(by_op.items(), key=lambda item: -item[1])[:8]
            out[name] = {
                "run_s": round(run_s, 4),
                "ops": {op: {"s": round(s, 4), "share": round(s / total, 3)} for op, s in top},
            }
            del session
    return out


def dolphin_checkpoint(cache: Path) -> Path:
    """The benchmark's random checkpoint with the 0.5B encoder: the full run's if it is cached,
    else one with a tiny decoder (only its encoder is used here)."""
    from onnx_export.random_checkpoint import main as write_random

    for name in ("ckpt-qwen2-0.5b", "ckpt-encoder-qwen2-0.5b"):
        if (cache / name / "config.json").exists():
            return cache / name
    checkpoint = cache / "ckpt-encoder-qwen2-0.5b"
    write_random([str(checkpoint), "--decoder", "tiny", "--encoder", "qwen2-0.5b"])
    return checkpoint


def measure(cache: Path, rounds: int, threads: int) -> dict:
    from benchmarks.smollm2 import write_qwen2_checkpoint
    from onnx_export.convert import memory_token_ids

    work = cache / "encoder-precision"
    hf_dir = encoder_checkpoint(dolphin_checkpoint(cache), work / "encoder-hf")
    config = json.loads((hf_dir / "config.json").read_text())
    memory_ids = memory_token_ids(hf_dir / "tokenizer.json")
    print("building the 0.5B encoder variants", flush=True)
    variants = build_variants(hf_dir, work / "qwen2-0.5b", memory_ids)
    load_before = load_now()
    print(f"timing {len(variants)} variants, {rounds} rounds (load {load_before['loadavg']})", flush=True)
    measured = speed(variants, config, memory_ids, rounds, threads)
    load_after = load_now()
    print("profiling", flush=True)
    ops = profile(variants, config, memory_ids, threads)
    print("SmolLM2-135M deviation", flush=True)
    smol_dir = write_qwen2_checkpoint(work / "smollm2-hf")
    trained = trained_model(build_variants(smol_dir, work / "smollm2", []), smol_dir)
    print("fixture bundles", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        fixture = fixtures(Path(folder))
    for name, row in measured["variants"].items():
        row["profile"] = ops[name]
    default = measured["variants"][DEFAULT]
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": describe(),
        "threads": threads,
        "load_before": load_before,
        "load_after": load_after,
        "encoder": "qwen2-0.5b shape, random weights",
        "chunk_tokens": CHUNK_TOKENS,
        "positions": CHUNK_TOKENS + len(memory_ids),
        "gops_counts": "linear layers only (attention adds ~5% at 416 positions), 2 ops per multiply-add",
        **measured,
        "deviation": {
            "random_weights_0.5b": measured.pop("random_weights_deviation"),
            "smollm2_135m_trained": trained,
            "fixtures": fixture,
        },
        "default": DEFAULT,
        "summary": {
            "encoder_precision": DEFAULT,
            "encoder_fraction_of_int8_peak": round(default["fraction_of_int8_peak"], 3),
            "encoder_fraction_of_fp32_peak": round(default["fraction_of_fp32_peak"], 3),
            "encoder_chunks_per_s": round(default["chunks_per_s"], 2),
            "encoder_speedup_vs_int4": round(default["speedup_vs_int4"], 2),
            "int8_matmul_peak_gops": round(measured["peaks"]["int8_gops"], 1),
            "fp32_matmul_peak_gflops": round(measured["peaks"]["fp32_gflops"], 1),
        },
    }


def _f(value: object, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown(result: dict) -> str:
    peaks = result["peaks"]
    lines = [
        f"# Encoder precision, {result['date']}",
        "",
        f"{result['encoder']}, {result['chunk_tokens']}-token chunks + 32 memory tokens, {result['threads']} threads; "
        f"{result['rounds']} interleaved rounds, best round. Load average before {result['load_before']['loadavg']}, "
        f"after {result['load_after']['loadavg']}. GOP/s count {result['gops_counts']}.",
        "",
        f"Limits measured in the same rounds ({peaks['size']}³ product through ONNX Runtime): "
        f"fp32 {peaks['fp32_gflops']:.0f} GFLOP/s, int8 (MatMulInteger u8×s8) {peaks['int8_gops']:.0f} GOP/s.",
        "",
        "| variant | chunks/s | GOP/s | of fp32 limit | of int8 limit | vs int4 | MB | what |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in result["variants"].items():
        lines.append(
            f"| {name} | {row['chunks_per_s']:.2f} | {row['gops']:.0f} | {row['fraction_of_fp32_peak']:.0%} | "
            f"{row['fraction_of_int8_peak']:.0%} | {row['speedup_vs_int4']:.2f}x | {row['file_mb']:.0f} | "
            f"{row['description']} |"
        )
    trained = result["deviation"]["smollm2_135m_trained"]
    random_weights = result["deviation"]["random_weights_0.5b"]
    lines += [
        "",
        "## Deviation from the fp32 memory",
        "",
        "| variant | SmolLM2 max abs delta | SmolLM2 cosine mean / min | SmolLM2 LM top-1 agreement | "
        "SmolLM2 next-token acc. | random 0.5B max abs delta | random 0.5B cosine mean / min |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in result["variants"]:
        t, r = trained[name], random_weights[name]
        lines.append(
            f"| {name} | {t['max_abs_delta']:.3f} | {t['cosine_mean']:.4f} / {t['cosine_min']:.4f} | "
            f"{t['lm_top1_agreement']:.1%} | {t['next_token_accuracy']:.1%} | {r['max_abs_delta']:.3f} | "
            f"{r['cosine_mean']:.4f} / {r['cosine_min']:.4f} |"
        )
    lines += [
        "",
        "Fixtures (tests/fixtures, fp32 decoder, against Nexa's reference):",
        "",
        "| encoder | max abs delta | cosine mean / min | decoder top-1 agreement |",
        "|---|---|---|---|",
    ]
    for name, row in result["deviation"]["fixtures"].items():
        lines.append(
            f"| {name} | {row['max_abs_delta']:.2e} | {row['cosine_mean']:.4f} / {row['cosine_min']:.4f} | "
            f"{row['decoder_top1_agreement']:.0%} of {row['steps']} |"
        )
    lines += ["", "## Where the time goes (kernel share, one chunk)", ""]
    for name, row in result["variants"].items():
        ops = ", ".join(f"{op} {v['share']:.0%}" for op, v in row["profile"]["ops"].items())
        lines.append(f"- **{name}** ({row['profile']['run_s']:.3f} s): {ops}")
    lines += ["", f"Default: **{result['default']}**. Summary: `{json.dumps(result['summary'])}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.encoder_precision")
    parser.add_argument("--cache", type=Path, default=HERE / ".cache", help="where checkpoints and exports are kept")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--threads", type=int, default=default_threads())
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)
    result = measure(args.cache, args.rounds, args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "encoder-precision.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    (args.out / "encoder-precision.md").write_text(markdown(result), encoding="utf-8")
    print(json.dumps(result["summary"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
