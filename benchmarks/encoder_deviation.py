"""How far each encoder precision's memory is from the fp32 memory, on three kinds of weights.

* random 0.5B-shaped weights (the benchmark's speed model): max |delta| and cosine only, since a
  random model's predictions mean nothing;
* SmolLM2-135M, a real trained model of the same family (benchmarks/smollm2.py), on King James
  text: the same figures, plus how often its own (tied) LM head picks the same next token from
  the quantized states as from the fp32 ones, and how often that token is the text's next one.
  Trained weights have the activation outliers that random weights lack;
* the test fixtures (tests/fixtures): bundles converted with each `--encoder-precision` and an
  fp32 decoder, against Nexa's reference memories, and the decoder's greedy top-1 agreement with
  the reference logits, computed as tests/test_parity.py does.

The memory is the encoder's final states at the last 32 positions (the [memory_i] slots).

SmolLM2's figures come from King James text unless `--text` names other files: a check on text
that no choice here was made on (the converter calibrates on seeded random tokens):

    python -m benchmarks.encoder_deviation --text '/tmp/qa/debian-faq/docs/*.txt' [--variants fp32 int8 ...]
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from inference.providers import session_options

MEMORY_SLOTS = 32
ROOT = Path(__file__).resolve().parents[1]
KJV = ROOT / "benchmarks" / "data" / "kjv"
FIXTURES = ROOT / "tests" / "fixtures"


def deviation(states: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """max |delta| and the cosine of each memory vector ([..., width]) with its fp32 twin."""
    cosine = (states * reference).sum(-1) / (np.linalg.norm(states, axis=-1) * np.linalg.norm(reference, axis=-1))
    return {
        "max_abs_delta": float(np.abs(states - reference).max()),
        "reference_max_abs": float(np.abs(reference).max()),
        "cosine_mean": float(cosine.mean()),
        "cosine_min": float(cosine.min()),
    }


def _hidden_states(model: Path, chunks: list[list[int]], num_kv_heads: int, head_size: int) -> np.ndarray:
    session = ort.InferenceSession(str(model), session_options(None), providers=["CPUExecutionProvider"])
    past = [i.name for i in session.get_inputs() if i.name.startswith("past_key_values.")]
    out = []
    for chunk in chunks:
        ids = np.asarray([chunk], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        feeds.update({name: np.zeros((1, num_kv_heads, 0, head_size), dtype=np.float32) for name in past})
        out.append(session.run(["hidden_states"], feeds)[0][0])
    return np.stack(out)


def text_chunks(tokenizer_json: Path, files: list[Path], count: int = 8, length: int = 416) -> list[list[int]]:
    """`count` chunks of `length` real tokens, spread evenly over the files (sorted, joined)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    ids = tokenizer.encode("\n\n".join(p.read_text(encoding="utf-8") for p in sorted(files))).ids
    stride = (len(ids) - length) // count
    return [ids[i * stride : i * stride + length] for i in range(count)]


def kjv_chunks(tokenizer_json: Path, count: int = 8, length: int = 416) -> list[list[int]]:
    """`count` chunks of `length` real tokens, spread over the six KJV books."""
    return text_chunks(tokenizer_json, list(KJV.glob("*.txt")), count, length)


def trained_model(
    variants: dict[str, Path], hf_dir: Path, text: list[Path] | None = None
) -> dict[str, dict[str, float]]:
    """SmolLM2: deviation of the last 32 states, LM-head top-1 agreement with fp32 over every
    position, and next-token accuracy on the text (`text`'s files, King James without), per variant."""
    from safetensors.numpy import load_file

    config = json.loads((hf_dir / "config.json").read_text())
    head_size = config["hidden_size"] // config["num_attention_heads"]
    embeddings = load_file(str(hf_dir / "model.safetensors"))["model.embed_tokens.weight"]
    chunks = text_chunks(hf_dir / "tokenizer.json", text) if text else kjv_chunks(hf_dir / "tokenizer.json")
    truth = np.asarray([chunk[1:] for chunk in chunks])
    reference = _hidden_states(variants["fp32"], chunks, config["num_key_value_heads"], head_size)
    reference_top = (reference @ embeddings.T).argmax(-1)
    results = {}
    for name, path in variants.items():
        states = reference if name == "fp32" else _hidden_states(path, chunks, config["num_key_value_heads"], head_size)
        top = (states @ embeddings.T).argmax(-1)
        slots = slice(-MEMORY_SLOTS, None)
        results[name] = {
            **deviation(states[:, -MEMORY_SLOTS:], reference[:, -MEMORY_SLOTS:]),
            "lm_top1_agreement": float((top == reference_top).mean()),
            "lm_top1_agreement_memory_slots": float((top[:, slots] == reference_top[:, slots]).mean()),
            "next_token_accuracy": float((top[:, :-1] == truth).mean()),
            "chunks": len(chunks),
            "positions": len(chunks[0]),
        }
    return results


def fixtures(work: Path, precisions: tuple[str, ...] = ("fp32", "int8", "int4")) -> dict[str, dict[str, object]]:
    """Tiny fixture bundles, one per encoder precision (fp32 decoder), against the reference."""
    from inference import DolphinModel, GenerationSettings
    from onnx_export.convert import convert

    cases = json.loads((FIXTURES / "reference" / "cases.json").read_text(encoding="utf-8"))["cases"][:3]
    with np.load(FIXTURES / "reference" / "reference.npz") as arrays:
        reference = {k: arrays[k] for k in arrays.files}
    results: dict[str, dict[str, object]] = {}
    for precision in precisions:
        bundle = convert(
            str(FIXTURES / "tiny-dolphin"),
            work / f"tiny-{precision}",
            precision="fp32",
            provider="cpu",
            encoder_precision=precision,
            force=True,
        )
        model = DolphinModel.load(bundle)
        states, expected, agree, total = [], [], 0, 0
        for index, case in enumerate(cases):
            memory = model.encode(case["contexts"][0])
            states.append(memory.states)
            expected.append(reference[f"case{index}_encoder_states"])
            stream = model.answer(
                case["question"],
                [memory],
                GenerationSettings(max_new_tokens=16, mask_reserved=False),
                record_logits=True,
            )
            stream.run()
            logits = reference[f"case{index}_step_logits"][: len(stream.logits)]
            total += len(logits)
            agree += int(sum(np.argmax(a) == np.argmax(b) for a, b in zip(stream.logits, logits, strict=True)))
        results[precision] = {
            **deviation(np.stack(states), np.stack(expected)),
            "decoder_top1_agreement": agree / total,
            "steps": total,
            "encoder_identity": model.encoder_identity,
        }
    return results


def main(argv: list[str] | None = None) -> int:
    """SmolLM2 deviation alone, on any text: the check that the calibration text does not flatter."""
    from benchmarks.encoder_variants import VARIANTS, build_variants
    from benchmarks.smollm2 import write_qwen2_checkpoint

    parser = argparse.ArgumentParser(prog="python -m benchmarks.encoder_deviation")
    parser.add_argument("--text", help="glob of UTF-8 files to measure on (default: King James)")
    parser.add_argument("--variants", nargs="+", default=["fp32", "int8"], choices=list(VARIANTS))
    parser.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / ".cache")
    parser.add_argument("--out", type=Path, help="write the result here as JSON")
    args = parser.parse_args(argv)
    files = [Path(p) for p in sorted(glob.glob(args.text))] if args.text else None
    if args.text and not files:
        raise SystemExit(f"no files match {args.text}")
    names = tuple(dict.fromkeys(["fp32", *args.variants]))
    work = args.cache / "encoder-precision"
    smol_dir = write_qwen2_checkpoint(work / "smollm2-hf")
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "text": args.text or "King James (benchmarks/data/kjv)",
        "files": len(files) if files else None,
        "smollm2_135m_trained": trained_model(build_variants(smol_dir, work / "smollm2", [], names), smol_dir, files),
    }
    for name, row in result["smollm2_135m_trained"].items():
        print(f"{name}: cosine {row['cosine_mean']:.4f} mean / {row['cosine_min']:.4f} min, "
              f"top-1 {row['lm_top1_agreement']:.1%}, next-token {row['next_token_accuracy']:.1%}")  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
