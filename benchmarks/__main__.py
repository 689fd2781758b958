"""`python -m benchmarks [--quick]`: Dolphin with persisted memories against reading the text.

For a document of N tokens and a question, answering a fixed number of tokens, one process
measures side by side (same decoder, same run):

  (a) full context   the decoder reads the whole document and the question
  (b) text RAG       the decoder reads the top-k chunk texts and the question
  (c) Dolphin        the chunks are encoded into memories at question time (the paper's setting)
  (d) persisted      the memories come from the library's SQLite store (ours)

Bundles are built by the project's converter from random-weight checkpoints of real shapes
(encoder Qwen2-0.5B; decoder Qwen2-0.5B in --quick, plus 1.5B in the full run), int4 like the
app, and cached in benchmarks/.cache. Results: benchmarks/results/{quick,latest}.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
RESULTS = HERE / "results"
ANSWER_TOKENS = 64
TOP_K = 3
CHUNK_TOKENS = 384


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def build_bundle(decoder: str) -> Path:
    """A cached int4 bundle: random weights, real shapes, made by the project's converter."""
    from onnx_export.convert import convert
    from onnx_export.random_checkpoint import main as write_random

    bundle = CACHE / f"bundle-{decoder}-int4"
    if (bundle / "manifest.json").exists():
        return bundle
    checkpoint = CACHE / f"ckpt-{decoder}"
    if not (checkpoint / "config.json").exists():
        write_random([str(checkpoint), "--decoder", decoder, "--encoder", "qwen2-0.5b"])
    convert(str(checkpoint), bundle, precision="int4", provider="cpu", force=True, progress=lambda m: print("  " + m))
    return bundle


def document_ids(model, n_tokens: int, seed: int = 0) -> list[int]:  # noqa: ANN001 - DolphinModel
    """Token ids of an N-token document; the tokenizer's own vocabulary, random order."""
    rng = np.random.default_rng(seed)
    vocab = model.tokenizer._tokenizer.get_vocab_size() - 40
    return rng.integers(10, vocab, size=n_tokens).tolist()


def timed_decode(model, embeds: np.ndarray) -> dict[str, float]:  # noqa: ANN001 - DolphinModel
    """Prefill `embeds`, then greedy-decode ANSWER_TOKENS; the same loop for every method."""
    state = model.decoder.new_state()
    started = time.perf_counter()
    logits = model.decoder.forward(embeds, state)
    first = time.perf_counter()
    for _ in range(ANSWER_TOKENS - 1):
        token = int(np.argmax(logits))
        logits = model.decoder.forward(model.embeddings(np.asarray([token])), state)
    done = time.perf_counter()
    return {
        "prefill_s": first - started,
        "decode_tokens_per_s": (ANSWER_TOKENS - 1) / (done - first),
        "decode_s": done - first,
    }


def measure_method(name: str, prepare, model) -> dict[str, float]:  # noqa: ANN001
    cpu0, wall0 = _cpu_seconds(), time.perf_counter()
    embeds, extra = prepare()
    prepared = time.perf_counter()
    timing = timed_decode(model, embeds)
    wall1, cpu1 = time.perf_counter(), _cpu_seconds()
    return {
        "method": name,
        "prompt_positions": int(embeds.shape[0]),
        "ttft_s": (prepared - wall0) + timing["prefill_s"],
        "total_s": wall1 - wall0,
        "decode_tokens_per_s": timing["decode_tokens_per_s"],
        "cpu_s": cpu1 - cpu0,
        **extra,
    }


def run_size(model, store, n_tokens: int) -> list[dict]:  # noqa: ANN001 - DolphinModel, Store
    from inference.splice import prompt_ids, splice

    ids = document_ids(model, n_tokens)
    question = model.tokenizer.encode(" What does the document say about the harbour keeper?")
    chunks = [ids[i : i + CHUNK_TOKENS] for i in range(0, len(ids), CHUNK_TOKENS)]
    top = chunks[:TOP_K]
    identity = model.encoder_identity
    for index, chunk in enumerate(top):
        key = f"n{n_tokens}-c{index}"
        if store.get_memory(key, identity) is None:
            store.put_memory(key, identity, model.encoder.encode_ids(chunk), len(chunk))

    def full() -> tuple[np.ndarray, dict]:
        return model.embeddings(np.asarray(ids + question)), {}

    def rag() -> tuple[np.ndarray, dict]:
        return model.embeddings(np.asarray([t for c in top for t in c] + question)), {}

    def encode_now() -> tuple[np.ndarray, dict]:
        started = time.perf_counter()
        states = [model.encoder.encode_ids(c) for c in top]
        encode_s = time.perf_counter() - started
        memories = model.encoder.project(states)
        layout = prompt_ids(model.tokenizer, "", len(memories), 32)
        return splice(np.concatenate([layout, question]), model.embeddings, memories), {"encode_s": encode_s}

    def persisted() -> tuple[np.ndarray, dict]:
        started = time.perf_counter()
        states = [store.get_memory(f"n{n_tokens}-c{i}", identity)[0] for i in range(len(top))]
        load_s = time.perf_counter() - started
        memories = model.encoder.project(states)
        layout = prompt_ids(model.tokenizer, "", len(memories), 32)
        return splice(np.concatenate([layout, question]), model.embeddings, memories), {"load_memories_s": load_s}

    rows = []
    for name, prepare in (("a_full", full), ("b_rag", rag), ("c_encode", encode_now), ("d_persisted", persisted)):
        rows.append({"n_tokens": n_tokens, **measure_method(name, prepare, model)})
        print(f"  N={n_tokens:5d} {name:12s} ttft {rows[-1]['ttft_s']:7.3f} s  cpu {rows[-1]['cpu_s']:7.2f} s")
    return rows


def matmul_peak_gflops(threads: int) -> float:
    """The machine's fp32 GEMM rate through ONNX Runtime: the ceiling the encoder is held to."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    size = 1536
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "peak",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [size, size]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [size, size])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [size, size])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    session.run(None, {"a": a, "b": a})
    best = min(_time(lambda: session.run(None, {"a": a, "b": a})) for _ in range(5))
    return 2 * size**3 / best / 1e9


def _time(action) -> float:  # noqa: ANN001
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def encoder_throughput(model) -> dict[str, float]:  # noqa: ANN001 - DolphinModel
    stack = model.manifest.encoder
    ids = document_ids(model, CHUNK_TOKENS, seed=1)
    model.encoder.encode_ids(ids)
    best = min(_time(lambda: model.encoder.encode_ids(ids)) for _ in range(3))
    tokens = CHUNK_TOKENS + 32
    ffn = 4864 if stack.hidden_size == 896 else stack.hidden_size * 3
    kv = stack.num_kv_heads * stack.head_size
    per_token = (
        stack.num_layers * 2 * (stack.hidden_size * (2 * stack.hidden_size + 2 * kv) + 3 * stack.hidden_size * ffn)
    )
    return {"tokens_per_s": tokens / best, "chunks_per_s": 1 / best, "gflops": per_token * tokens / best / 1e9}


def machine() -> dict[str, object]:
    import onnxruntime

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    return {
        "cpu": cpu or platform.processor(), "cores": os.cpu_count(),
        "ram_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
        "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
        "rapl": Path("/sys/class/powercap/intel-rapl:0/energy_uj").exists(),
    }  # fmt: skip


def ratio(rows: list[dict], n: int, key: str, slow: str, fast: str) -> float | None:
    by = {r["method"]: r for r in rows if r["n_tokens"] == n}
    return round(by[slow][key] / by[fast][key], 1) if slow in by and fast in by and by[fast][key] else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("--quick", action="store_true", help="0.5B-shaped decoder, N = 512 and 2048 (under 5 minutes)")
    args = parser.parse_args(argv)
    from app.library.store import Store
    from inference import DolphinModel

    decoders = ["qwen2-0.5b"] if args.quick else ["qwen2-0.5b", "qwen2-1.5b"]
    sizes = [512, 2048] if args.quick else [512, 2048, 8192]
    report: dict[str, object] = {"mode": "quick" if args.quick else "full", "machine": machine(), "runs": []}
    for decoder in decoders:
        print(f"decoder {decoder}")
        model = DolphinModel.load(build_bundle(decoder))
        with tempfile.TemporaryDirectory() as data_dir:
            store = Store(Path(data_dir))
            rows = [row for n in sizes for row in run_size(model, store, n)]
            stats = store.memory_stats()
            store.close()
        report["runs"].append({"decoder": decoder, "rows": rows, "bytes_per_memory": stats["bytes_per_memory"],
                               "encoder": encoder_throughput(model)})  # fmt: skip
    peak = matmul_peak_gflops(DolphinModel.load(build_bundle(decoders[0])).threads)
    first = report["runs"][0]
    rows = first["rows"]
    largest = max(sizes)
    report["summary"] = {
        "ttft_ratio_full_vs_persisted_2048": ratio(rows, 2048, "ttft_s", "a_full", "d_persisted"),
        f"cpu_ratio_full_vs_persisted_{largest}": ratio(rows, largest, "cpu_s", "a_full", "d_persisted"),
        "ttft_ratio_full_vs_encode_2048": ratio(rows, 2048, "ttft_s", "a_full", "c_encode"),
        "ttft_ratio_rag_vs_persisted": ratio(rows, 2048, "ttft_s", "b_rag", "d_persisted"),
        "matmul_peak_gflops": round(peak, 1),
        "encoder_gflops": round(first["encoder"]["gflops"], 1),
        "encoder_fraction_of_peak": round(first["encoder"]["gflops"] / peak, 2),
        "bytes_per_memory": first["bytes_per_memory"],
    }
    RESULTS.mkdir(exist_ok=True)
    name = "quick" if args.quick else "latest"
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    cpu = report["machine"]["cpu"]
    lines = [
        f"# Benchmark ({report['mode']}) on {cpu}, {report['machine']['cores']} cores",
        "",
        "| decoder | N | method | positions | TTFT s | total s | decode tok/s | CPU s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in report["runs"]:
        for r in run["rows"]:
            cells = [
                run["decoder"],
                r["n_tokens"],
                r["method"],
                r["prompt_positions"],
                f"{r['ttft_s']:.3f}",
                f"{r['total_s']:.2f}",
                f"{r['decode_tokens_per_s']:.1f}",
                f"{r['cpu_s']:.2f}",
            ]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", "Summary: " + json.dumps(report["summary"])]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(report["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
