"""The same decoder shape through llama.cpp (Q4_0), for prefill and decode tokens/s.

Runs under a Python that has llama-cpp-python and gguf (it builds from source, so it is not a
project dependency; see benchmarks/README.md), not the project's own environment:

    LLAMA_PY benchmarks/llama_cpp_compare.py --shape '{"hidden_size": 896, ...}' --name qwen2-0.5b \
        --cache benchmarks/.cache --tokens 2048

Writes a random-weight Qwen2 GGUF of exactly the given shape in f16 (the weights' values do not
change the cost), quantizes it with llama.cpp's own quantizer to Q4_0 (blocks of 32, like the
bundle's int4 MatMulNBits), then times one prefill of N + 33 positions and 63 decode steps on all
cores. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import gguf
import llama_cpp
import numpy as np

ANSWER_TOKENS = 64
QUESTION_TOKENS = 33


def byte_alphabet() -> list[str]:
    """GPT-2's byte-to-unicode table: every byte has a token, so any text tokenizes."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    extra = 0
    table = {}
    for byte in range(256):
        if byte in printable:
            table[byte] = chr(byte)
        else:
            table[byte] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def write_f16(path: Path, shape: dict) -> None:
    h, ffn, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    heads, kv_heads, vocab = shape["num_attention_heads"], shape["num_key_value_heads"], shape["vocab_size"]
    kv = kv_heads * (h // heads)
    rng = np.random.default_rng(0)

    def weight(*dims: int) -> np.ndarray:
        return (rng.standard_normal(dims, dtype=np.float32) * 0.02).astype(np.float16)

    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_context_length(32768)
    writer.add_embedding_length(h)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(shape["rope_theta"])
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    alphabet = byte_alphabet()
    tokens = alphabet + ["Ġt"] + [f"<|x{i}|>" for i in range(vocab - len(alphabet) - 1)]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.NORMAL] * vocab)
    writer.add_token_merges(["Ġ t"])
    writer.add_eos_token_id(vocab - 1)
    writer.add_bos_token_id(vocab - 1)
    writer.add_tensor("token_embd.weight", weight(vocab, h))
    for i in range(layers):
        block = f"blk.{i}."
        writer.add_tensor(block + "attn_norm.weight", np.ones(h, dtype=np.float32))
        writer.add_tensor(block + "attn_q.weight", weight(h, h))
        writer.add_tensor(block + "attn_q.bias", np.zeros(h, dtype=np.float32))
        writer.add_tensor(block + "attn_k.weight", weight(kv, h))
        writer.add_tensor(block + "attn_k.bias", np.zeros(kv, dtype=np.float32))
        writer.add_tensor(block + "attn_v.weight", weight(kv, h))
        writer.add_tensor(block + "attn_v.bias", np.zeros(kv, dtype=np.float32))
        writer.add_tensor(block + "attn_output.weight", weight(h, h))
        writer.add_tensor(block + "ffn_norm.weight", np.ones(h, dtype=np.float32))
        writer.add_tensor(block + "ffn_gate.weight", weight(ffn, h))
        writer.add_tensor(block + "ffn_up.weight", weight(ffn, h))
        writer.add_tensor(block + "ffn_down.weight", weight(h, ffn))
    writer.add_tensor("output_norm.weight", np.ones(h, dtype=np.float32))
    writer.add_tensor("output.weight", weight(vocab, h))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def q4_model(cache: Path, name: str, shape: dict) -> Path:
    target = cache / f"llama-{name}-q4_0.gguf"
    if target.exists():
        return target
    f16 = cache / f"llama-{name}-f16.gguf"
    write_f16(f16, shape)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(gguf.LlamaFileType.MOSTLY_Q4_0)
    params.nthread = os.cpu_count() or 1
    partial = target.with_suffix(".partial")
    if llama_cpp.llama_model_quantize(str(f16).encode(), str(partial).encode(), params) != 0:
        raise RuntimeError("llama.cpp could not quantize the model")
    f16.unlink()
    partial.rename(target)
    return target


def measure(model_path: Path, n_tokens: int, vocab: int) -> dict[str, float]:
    threads = os.cpu_count() or 1
    positions = n_tokens + QUESTION_TOKENS
    llm = llama_cpp.Llama(
        str(model_path), n_ctx=positions + ANSWER_TOKENS + 16, n_threads=threads, n_threads_batch=threads,
        n_batch=512, n_ubatch=512, verbose=False,
    )  # fmt: skip
    prompt = np.random.default_rng(0).integers(300, vocab - 10, positions).tolist()
    llm.eval(prompt[:64])
    llm.reset()
    started = time.perf_counter()
    llm.eval(prompt)
    first = time.perf_counter()
    for step in range(ANSWER_TOKENS - 1):
        llm.eval([300 + step])
    done = time.perf_counter()
    return {
        "positions": positions,
        "prefill_s": first - started,
        "prefill_tokens_per_s": positions / (first - started),
        "decode_tokens_per_s": (ANSWER_TOKENS - 1) / (done - first),
        "threads": threads,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llama_cpp_compare.py")
    parser.add_argument("--shape", required=True, help="the decoder's Qwen2 shape as JSON")
    parser.add_argument("--name", required=True)
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--tokens", type=int, required=True)
    args = parser.parse_args(argv)
    shape = json.loads(args.shape)
    model = q4_model(args.cache, args.name, shape)
    result = measure(model, args.tokens, shape["vocab_size"])
    print(json.dumps({"decoder": args.name, "n_tokens": args.tokens, "quantization": "Q4_0",
                      "llama_cpp_python": llama_cpp.__version__, **result}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
