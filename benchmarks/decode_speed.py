"""Decode tokens/s at the 7B shape: ONNX Runtime variants and llama.cpp, interleaved in one run.

    python -m benchmarks.decode_speed --ort shipped                 # results/decode-speed.json
    python -m benchmarks.decode_speed --ort blocks-128 --json results/decode-speed-blocks-128.json
    python -m benchmarks.decode_speed --layers 4 --ort shipped blocks-128 no-spinning accuracy-1 \
        --json results/decode-speed-4-layers.json

Needs llama-cpp-python and gguf in the environment (llama.cpp builds from source; benchmark only).
Both engines run the Qwen2-7B decoder shape with all 28 layers (3584 wide, 28 heads, 4 KV heads,
FFN 18,944, vocabulary 152,064), made from a converted 4-layer int4 bundle and a llama.cpp-quantized
4-layer Q4_0 GGUF by repeating layers (benchmarks/deeper_decoder.py: a full random 7B checkpoint and
its fp32 export do not fit this disk). Random weights: decode cost depends on shapes and formats.
At 28 layers one ONNX Runtime session holds ~9 GB (the weights and their pre-packed copy) and
llama.cpp ~4.4 GB, so one ONNX Runtime variant runs beside llama.cpp per process on a 24 GB machine.

Each engine prefills the same 545 positions once (512 context tokens and a 33-token question, the
llama_cpp rows of results/latest.json); every repetition then decodes `--steps` tokens from there
with each engine in turn, so load from other processes falls on all alike; the load average is
recorded before each repetition.

* ONNX Runtime: the shipped path (inference/decoder.py with the app's embedding lookup and
  sampler, each part timed), spinning off, MatMulNBits accuracy level 1 (fp32 compute), and the
  int4 weights in blocks of 128 instead of 32 (requantized from the bundle's).
* llama.cpp, one context (weights read into memory: memory-mapped ones were paged out under the
  other engineers' load): token ids through its own embedding table (the reference), and the app's
  embedding rows through `llama_batch.embd` (benchmarks/llama_cpp_decoder.py, the Decoder interface).
* Nine decode steps of each ONNX Runtime variant through its profiler: kernel time by operator and
  projection, and `what_is_left`: the step's shares by kind of work.

`decode_ratio_vs_llama_cpp_7b` (shipped ONNX Runtime / llama.cpp token ids, each engine's least
disturbed repetition: see `ratio_to`) is merged into the summary of results/latest.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from benchmarks.deeper_decoder import deepen_gguf, deepen_onnx
from benchmarks.followup import build_bundle, loadavg, merge_summary
from benchmarks.llama_cpp_decoder import LlamaCppDecoder, LlamaCppState
from benchmarks.machine import describe
from inference.decoder import Decoder, DecoderState
from inference.embeddings import EmbeddingTable
from inference.providers import session_options
from inference.sampling import GenerationSettings, TokenSampler

HERE = Path(__file__).resolve().parent
SHALLOW = 4
SHIPPED = "ort, shipped (inference/decoder.py)"
EMBD = "llama.cpp, llama_batch.embd (benchmarks/llama_cpp_decoder.py)"
TOKENS = "llama.cpp, token ids (llama_batch.token)"
VARIANTS = {
    "shipped": SHIPPED,
    "no-spinning": "ort, no spinning",
    "accuracy-1": "ort, accuracy_level 1 (fp32 compute)",
    "blocks-128": "ort, int4 blocks of 128",
}
POSITIONS = 545


def shape(layers: int) -> dict:
    from onnx_export.random_checkpoint import DECODER_PRESETS

    return {**asdict(DECODER_PRESETS["qwen2-7b"]), "num_hidden_layers": layers}


def ort_model(cache: Path, layers: int, block_size: int) -> tuple[Path, Path]:
    """(the deep decoder's path, the shallow bundle): the converter's int4 bundle, deepened."""
    bundle = build_bundle(cache, "qwen2-7b", SHALLOW)
    source = bundle / "decoder" / "model.onnx"
    folder = cache / "decode"
    folder.mkdir(exist_ok=True)
    if block_size != 32:
        shallow = folder / f"decoder-7b-l{SHALLOW}-b{block_size}.onnx"
        if not shallow.exists():
            requantize(source, shallow, block_size)
        source = shallow
    target = folder / f"decoder-7b-l{layers}-b{block_size}.onnx"
    if layers == SHALLOW:
        return source, bundle
    if not target.exists():
        deepen_onnx(source, target, layers)
    return target, bundle


def requantize(source: Path, target: Path, block_size: int) -> None:
    """The int4 weights of every MatMulNBits dequantized and quantized again in blocks of `block_size`
    (symmetric, zero point 8, as the builder writes them): the cost of another block size."""
    model = onnx.load(str(source))
    weights = {w.name: w for w in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        attrs = {a.name: a for a in node.attribute}
        n, k, old = attrs["N"].i, attrs["K"].i, attrs["block_size"].i
        packed = onnx.numpy_helper.to_array(weights[node.input[1]]).reshape(n, k // 2)
        scales = onnx.numpy_helper.to_array(weights[node.input[2]]).reshape(n, k // old)
        repacked = np.empty((n, k // block_size, block_size // 2), dtype=np.uint8)
        new_scales = np.empty((n, k // block_size), dtype=scales.dtype)
        for rows in range(0, n, 4096):  # in slices: the lm_head alone is 545M weights
            part = slice(rows, rows + 4096)
            repacked[part], new_scales[part] = _requantized(
                packed[part], scales[part].astype(np.float32), old, block_size
            )
        weights[node.input[1]].CopyFrom(onnx.numpy_helper.from_array(repacked, node.input[1]))
        weights[node.input[2]].CopyFrom(onnx.numpy_helper.from_array(new_scales, node.input[2]))
        attrs["block_size"].i = block_size
    onnx.save(model, str(target), save_as_external_data=True, location=target.name + ".data", size_threshold=1024)


def _requantized(packed: np.ndarray, scales: np.ndarray, old: int, new: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of 4-bit codes in blocks of `old` as codes and scales in blocks of `new`."""
    n, k = packed.shape[0], packed.shape[1] * 2
    codes = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(n, k).astype(np.float32) - 8
    values = (codes.reshape(n, k // old, old) * scales[..., None]).reshape(n, k // new, new)
    new_scales = np.abs(values).max(axis=-1) / 7 + 1e-12
    new_codes = np.clip(np.rint(values / new_scales[..., None]) + 8, 0, 15).astype(np.uint8).reshape(n, k)
    return (new_codes[:, 0::2] | (new_codes[:, 1::2] << 4)).reshape(n, k // new, new // 2), new_scales


def with_accuracy_level(source: Path, level: int) -> Path:
    """A graph next to `source`, reading its data file, with every MatMulNBits at `level`."""
    target = source.with_name(f"{source.stem}-acc{level}.onnx")
    if not target.exists():
        model = onnx.load(str(source), load_external_data=False)
        for node in model.graph.node:
            for attr in node.attribute:
                if node.op_type == "MatMulNBits" and attr.name == "accuracy_level":
                    attr.i = level
        onnx.save(model, str(target))
    return target


def gguf_model(cache: Path, layers: int) -> Path:
    """llama.cpp's own Q4_0 quantization of a 4-layer model of the shape, deepened."""
    from benchmarks.llama_cpp_compare import q4_model

    folder = cache / "decode"
    folder.mkdir(exist_ok=True)
    target = folder / f"llama-7b-l{layers}-q4_0.gguf"
    shallow = q4_model(folder, f"qwen2-7b-l{SHALLOW}", shape(SHALLOW))
    if layers == SHALLOW:
        return shallow
    if not target.exists():
        deepen_gguf(shallow, target, layers)
    return target


class AppLoop:
    """The answer loop's decode step (inference/model.py): embedding row, decoder, sampler, each part timed."""

    def __init__(self, decoder: Decoder | LlamaCppDecoder, embeddings: EmbeddingTable) -> None:
        self.decoder = decoder
        self.embeddings = embeddings
        self.parts = {"embed": 0.0, "forward": 0.0, "sample": 0.0}
        self.steps = 0

    def decode(self, state: DecoderState | LlamaCppState, steps: int, first: int) -> tuple[float, list[int]]:
        """`steps` tokens after `state` (a copy is run: `state` stays as it is); seconds per token."""
        state = state.copy()
        sampler = TokenSampler(GenerationSettings(max_new_tokens=steps))
        token, tokens = first, []
        started = time.perf_counter()
        for _ in range(steps):
            a = time.perf_counter()
            embeds = self.embeddings(np.asarray([token]))
            b = time.perf_counter()
            logits = self.decoder.forward(embeds, state)
            c = time.perf_counter()
            token = sampler(logits, tokens)
            d = time.perf_counter()
            tokens.append(token)
            self.parts["embed"] += b - a
            self.parts["forward"] += c - b
            self.parts["sample"] += d - c
        self.steps += steps
        return (time.perf_counter() - started) / steps, tokens

    def ms_per_token(self) -> dict[str, float]:
        return {part: round(seconds / self.steps * 1e3, 3) for part, seconds in self.parts.items()}


def ort_loop(path: Path, threads: int, config: dict[str, str], embeddings: EmbeddingTable) -> AppLoop:
    options = session_options(threads)
    for key, value in config.items():
        options.add_session_config_entry(key, value)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return AppLoop(Decoder(session, "cpu", 128), embeddings)


class LlamaTokens:
    """llama.cpp on token ids (its own embedding lookup) and a greedy pick: the reference row."""

    def __init__(self, decoder: LlamaCppDecoder) -> None:
        self.decoder = decoder

    def decode(self, state: LlamaCppState, steps: int, first: int) -> tuple[float, list[int]]:
        state = state.copy()
        token, tokens = first, []
        started = time.perf_counter()
        for _ in range(steps):
            token = int(np.argmax(self.decoder.forward_ids(np.asarray([token]), state)))
            tokens.append(token)
        return (time.perf_counter() - started) / steps, tokens


def _part(event: dict) -> str:
    """A kernel's share label: MatMulNBits by projection (the lm_head apart), other operators by type."""
    op, name = event["args"]["op_name"], event["name"]
    if op == "MatMulNBits":
        return "MatMulNBits lm_head" if "lm_head" in name else "MatMulNBits " + name.split("/")[-2]
    return op


def kernel_seconds_per_run(trace: list[dict]) -> list[tuple[float, dict[str, float]]]:
    """(wall seconds, kernel seconds by part) of every `run` in an ONNX Runtime profile."""
    runs = []
    for run in (e for e in trace if e.get("cat") == "Session" and e["name"] == "model_run"):
        begin, end = run["ts"], run["ts"] + run["dur"]
        parts: dict[str, float] = {}
        for event in trace:
            if event.get("cat") == "Node" and event["name"].endswith("_kernel_time") and begin <= event["ts"] <= end:
                parts[_part(event)] = parts.get(_part(event), 0.0) + event["dur"] / 1e6
        runs.append((run["dur"] / 1e6, parts))
    return runs


def profile_steps(
    path: Path, threads: int, state: DecoderState, embeds: np.ndarray, config: dict[str, str], steps: int = 9
) -> dict:
    """Decode steps through ONNX Runtime's profiler: kernel seconds by operator and projection, the
    median over `steps` steps (one preempted kernel on the shared cores would skew a single step)."""
    with tempfile.TemporaryDirectory() as folder:
        options = session_options(threads)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "decode")
        for key, value in config.items():
            options.add_session_config_entry(key, value)
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        decoder = Decoder(session, "cpu", 128)
        run = state.copy()
        for _ in range(steps + 1):
            decoder.forward(embeds, run)
        runs = kernel_seconds_per_run(json.loads(Path(session.end_profiling()).read_text()))[1:]
    run_s = statistics.median(r[0] for r in runs)
    names = {name for _, parts in runs for name in parts}
    by_part = {name: statistics.median(parts.get(name, 0.0) for _, parts in runs) for name in names}
    kernel_s = sum(by_part.values())
    return {
        "steps": len(runs),
        "run_s": round(run_s, 4),
        "kernel_s": round(kernel_s, 4),
        "outside_kernels_s": round(run_s - kernel_s, 4),
        "parts": {
            name: {"s": round(seconds, 4), "share_of_run": round(seconds / run_s, 3)}
            for name, seconds in sorted(by_part.items(), key=lambda item: -item[1])
            if seconds >= 1e-4
        },
    }


def what_is_left(profile: dict, loop_ms: dict[str, float]) -> dict[str, float]:
    """A decode step's shares by kind of work: the int4 weight products (MatMulNBits) of the layers
    and of the lm_head over the vocabulary, attention with its KV cache (GroupQueryAttention), the
    other kernels, ONNX Runtime's own per-run work outside kernels, and the app's Python around
    the run (embedding row, sampling; shares of the profiled step's time)."""
    parts = {name: value["s"] for name, value in profile["parts"].items()}
    run = profile["run_s"]
    layers = sum(v for k, v in parts.items() if k.startswith("MatMulNBits") and k != "MatMulNBits lm_head")
    kinds = {
        "matmulnbits_layers": layers,
        "matmulnbits_lm_head": parts.get("MatMulNBits lm_head", 0.0),
        "group_query_attention": parts.get("GroupQueryAttention", 0.0),
        "other_kernels": profile["kernel_s"]
        - layers
        - parts.get("MatMulNBits lm_head", 0.0)
        - parts.get("GroupQueryAttention", 0.0),
        "ort_outside_kernels": profile["outside_kernels_s"],
    }
    shares = {kind: round(seconds / run, 3) for kind, seconds in kinds.items()}
    python_s = (loop_ms.get("embed", 0.0) + loop_ms.get("sample", 0.0)) / 1e3
    return {**shares, "python_embed_and_sample": round(python_s / run, 4), "step_s": run}


def ratio_to(ours: list[float], reference: list[float]) -> dict[str, float]:
    """Tokens/s of `ours` over the reference's, from seconds per token of interleaved repetitions.

    `of_best` (the summary's figure): each engine's least disturbed repetition. llama.cpp's threads
    wait on each other by spinning, so when other processes take a core it slows down far more than
    ONNX Runtime (1-2 tokens/s against 4-7 in the same repetition here): a paired ratio then
    measures the neighbours' load, not the engines. `paired_median`: the median of each
    repetition's own ratio, for comparison."""
    return {
        "of_best": round(min(reference) / min(ours), 3),
        "paired_median": round(statistics.median(b / a for a, b in zip(ours, reference, strict=True)), 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.decode_speed")
    parser.add_argument("--cache", type=Path, default=HERE / ".cache")
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--ort", nargs="+", choices=sorted(VARIANTS), default=["shipped"],
        help="ONNX Runtime variants to run (each holds ~9 GB at 28 layers: the weights and their pre-packed copy)",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, default=HERE / "results" / "decode-speed.json")
    parser.add_argument("--latest", type=Path, default=HERE / "results" / "latest.json")
    args = parser.parse_args(argv)

    path, bundle = ort_model(args.cache, args.layers, 32)
    embeddings = EmbeddingTable(bundle / "embeddings.npy", "bfloat16")
    ids = np.random.default_rng(0).integers(300, 150000, POSITIONS)
    variants = {
        SHIPPED: lambda: (path, {}),
        "ort, no spinning": lambda: (path, {"session.intra_op.allow_spinning": "0"}),
        "ort, accuracy_level 1 (fp32 compute)": lambda: (with_accuracy_level(path, 1), {}),
        "ort, int4 blocks of 128": lambda: (ort_model(args.cache, args.layers, 128)[0], {}),
    }
    chosen = {VARIANTS[v]: variants[VARIANTS[v]]() for v in args.ort}
    loops = {name: ort_loop(p, args.threads, c, embeddings) for name, (p, c) in chosen.items()}
    gguf = gguf_model(args.cache, args.layers)
    loops[EMBD] = AppLoop(
        LlamaCppDecoder(gguf, args.threads, 1024, 8, flash_attention=False, in_memory=True), embeddings
    )
    states, prefill_s = {}, {}
    first = next(iter(chosen))  # its prefill's KV serves every ONNX Runtime variant (same shapes, same cost)
    for name, decoder in ((first, loops[first].decoder), (EMBD, loops[EMBD].decoder)):
        states[name] = decoder.new_state()
        started = time.perf_counter()
        decoder.forward(embeddings(ids), states[name])
        prefill_s[name] = round(time.perf_counter() - started, 2)
    llama = LlamaTokens(loops[EMBD].decoder)
    states[TOKENS] = states[EMBD]  # same context, same positions: only the feeding differs
    print(f"prefill of {POSITIONS} positions, s: {prefill_s}", flush=True)

    rows: dict[str, list[float]] = {name: [] for name in [*loops, TOKENS]}
    for name, loop in loops.items():
        loop.decode(states.get(name, states[first]), 2, 300)
    loads = []
    for rep in range(args.reps):
        loads.append(loadavg())
        for name, loop in loops.items():
            rows[name].append(loop.decode(states.get(name, states[first]), args.steps, 300)[0])
        rows[TOKENS].append(llama.decode(states[TOKENS], args.steps, 300)[0])
        print(
            f"  rep {rep} load {loads[-1]}: " + "  ".join(f"{k} {1 / v[-1]:.2f}" for k, v in rows.items()), flush=True
        )
    loads.append(loadavg())
    loop_parts = {name: loop.ms_per_token() for name, loop in loops.items()}
    loops[EMBD].decoder.close()
    del loops, llama  # each 28-layer session holds ~4.5 GB: profile one at a time, after these are gone
    gc.collect()
    tokens_per_s = {
        name: {"median": round(statistics.median(1 / s for s in v), 2), "best": round(1 / min(v), 2)}
        for name, v in rows.items()
    }
    ratios = {name: ratio_to(rows[name], rows[TOKENS]) for name in rows}
    report = {
        "machine": describe(),
        "shape": shape(args.layers),
        "how": {
            "layers": f"{args.layers} (made from 4-layer models by repeating layers 1-3; benchmarks/deeper_decoder.py)",
            "positions_before_decoding": POSITIONS,
            "steps_per_rep": args.steps,
            "reps": args.reps,
            "threads": args.threads,
            "ort_bundle": bundle.name,
            "llama_cpp_python": __import__("llama_cpp").__version__,
            "llama_cpp": "Q4_0 by llama.cpp's own quantizer (its output.weight in Q6_K, as it ships Q4_0); flash "
            "attention off in both llama.cpp rows, as in the llama_cpp rows of results/latest.json",
        },
        "prefill_s": prefill_s,
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "loadavg_per_rep": loads,
        "seconds_per_token": rows,
        "tokens_per_s": tokens_per_s,
        "ratio_vs_llama_cpp_token_ids": ratios,
        "app_loop_ms_per_token": loop_parts,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    report["ort_decode_step_profiles"] = {
        name: profile_steps(variant_path, args.threads, states[first], embeddings(np.asarray([300])), config)
        for name, (variant_path, config) in chosen.items()
    }
    report["what_is_left"] = {
        name: what_is_left(profile, loop_parts.get(name, {}))
        for name, profile in report["ort_decode_step_profiles"].items()
    }
    args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    summary = {"decode_ratio_vs_llama_cpp_7b": ratios[SHIPPED]["of_best"] if SHIPPED in ratios else None}
    if args.latest.exists() and SHIPPED in ratios and args.layers == 28:
        merge_summary(args.latest, summary)
    print(
        json.dumps(
            {k: report[k] for k in ("tokens_per_s", "ratio_vs_llama_cpp_token_ids", "app_loop_ms_per_token")}, indent=1
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
