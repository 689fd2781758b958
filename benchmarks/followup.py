"""Follow-ups from cache, and full context against persisted memories, with Qwen2's real vocabulary.

    python -m benchmarks.followup                     # both parts; about 5 minutes once bundles exist
    python -m benchmarks.followup --skip-2048         # only the follow-up part

1. **Follow-up time to first token, 7B decoder shape.** A random-weight checkpoint of the Qwen2-7B
   decoder shape (3584 wide, 28 heads, 4 KV heads, vocabulary 152,064) with `--layers` of its 28
   layers (default 4: the full 16 GB checkpoint, its split copy and the 28 GB fp32 export the
   converter quantizes from do not fit in this disk's free space) and the Qwen2-0.5B encoder,
   converted to int4 by the project's converter. Three persisted memories of 384 tokens each; one
   repetition of each kind, interleaved so that load from other processes falls on all alike:
     first       a first question in a new conversation, nothing cached (the reference layout)
     follow_up   the next question of that conversation, after a 64-token answer: it continues
                 the kept KV cache and prefills only its own tokens
     uncached    the same follow-up laid out afresh (the history as text after the memories,
                 prefilled from position 0), as every follow-up was before the cache
     block       a first question in another conversation over the same memories: it starts
                 after the first memory's kept block (positions 0..32)
   Time to first token is from the `DolphinModel.answer` call (tokenizing, projecting and hashing
   the memories, choosing the prompt, prefilling) to the first sampled token. Fewer layers make
   the fixed per-run costs (the lm_head over 152,064 tokens, ONNX Runtime's per-run overhead)
   a larger share, which weighs on the follow-up more than on the first question: the ratio at
   28 layers is expected to be higher, not lower.
2. **TTFT full/persisted at N = 2,048** with Qwen2's vocabulary (the 0.5B-shaped decoder, as the
   summary key always was): `benchmarks.answer`'s a_full and d_persisted, each in a child process,
   interleaved; with the positions each prefills and the measured cost per position.

Results: `results/followup.json`. The summary keys `followup_ttft_ratio_7b` and
`ttft_ratio_full_vs_persisted_2048` are then merged into `results/latest.json` (`merge_summary`:
read the file, set those keys in its "summary", write it back; every other key is kept).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from benchmarks.answer import CHUNK_TOKENS, QUESTION, TOP_K, chunks_of, document_ids
from benchmarks.machine import describe
from inference import DolphinModel, Exchange, GenerationSettings, Memory

HERE = Path(__file__).resolve().parent
ANSWER_TOKENS = 64  # the first answer's length before the follow-up, as in benchmarks/answer.py
FOLLOW_UP = "When did he arrive there?"
SUMMARY_KEYS = ("followup_ttft_ratio_7b", "ttft_ratio_full_vs_persisted_2048")
KINDS = ("first", "follow_up", "uncached", "block")
NOTES = {
    "followup_7b": "7B decoder shape with --layers of its 28 layers (see decoder.num_layers); fewer layers "
    "give the fixed per-run costs a larger share, which weighs more on the follow-up: the ratio with all "
    "28 layers is expected higher. ttft_s runs from the DolphinModel.answer call to the first sampled token.",
    "full_vs_persisted_2048": "positions: a_full prefills the 2,048-token document and the question; "
    "d_persisted prefills k x 33 positions (32 memory rows + 1 per memory) and the question, 99 at least "
    "for k = 3. 30x needs a_full's cost per position to be per_position_cost_ratio_needed_for_30x times "
    "d_persisted's; prefill_ms_per_position has the measured costs (from each side's least disturbed run).",
    "ratios": "paired_median (the summary's figure): the median of each repetition's own ratio, its two "
    "sides measured seconds apart under about the same load; of_minimums: the least disturbed run of each.",
}


def paired_ratio(numerators: list[dict], denominators: list[dict]) -> dict[str, float]:
    """Ratios of time to first token, robust to other engineers' load on the shared cores.

    `paired_median`: the median over repetitions of each repetition's own ratio (its two
    measurements ran seconds apart, under about the same load): the headline. `of_minimums`: the
    least disturbed run of each side. `of_medians`: for comparison with a single-run table."""
    top = [r["ttft_s"] for r in numerators]
    bottom = [r["ttft_s"] for r in denominators]
    return {
        "paired_median": round(statistics.median(a / b for a, b in zip(top, bottom, strict=True)), 2),
        "of_minimums": round(min(top) / min(bottom), 2),
        "of_medians": round(statistics.median(top) / statistics.median(bottom), 2),
    }


def loadavg() -> list[float]:
    """The 1, 5 and 15-minute load averages: other engineers share these two cores."""
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def build_bundle(cache: Path, decoder: str, layers: int | None) -> Path:
    """A cached int4 bundle with Qwen2's vocabulary; the checkpoint is deleted once converted."""
    import shutil

    from onnx_export.convert import convert
    from onnx_export.random_checkpoint import main as write_random

    name = f"{decoder}-l{layers}" if layers else decoder
    bundle = cache / f"bundle-{name}-qwen2vocab-int4"
    if (bundle / "manifest.json").exists():
        return bundle
    checkpoint = cache / f"ckpt-{name}-qwen2vocab"
    if not (checkpoint / "config.json").exists():
        layer_args = ["--layers", str(layers)] if layers else []
        write_random([str(checkpoint), "--decoder", decoder, "--encoder", "qwen2-0.5b", "--vocabulary", "qwen2",
                      *layer_args])  # fmt: skip
    convert(str(checkpoint), bundle, precision="int4", provider="cpu", force=True, embedder="none",
            progress=lambda m: print("  " + m, flush=True))  # fmt: skip
    shutil.rmtree(checkpoint)
    return bundle


def persisted_memories(model: DolphinModel) -> list[Memory]:
    """TOP_K memories of 384-token chunks, as the library would hand them over."""
    chunks = chunks_of(document_ids(model, CHUNK_TOKENS * TOP_K))[:TOP_K]
    return [Memory(model.encoder.encode_ids(c), len(c), model.encoder_identity) for c in chunks]


def timed_answer(model: DolphinModel, question: str, memories: list[Memory], tokens: int, **options: object) -> dict:
    """One answer; time to first token from the `answer` call, and what it prefilled."""
    settings = GenerationSettings(max_new_tokens=tokens)
    started = time.perf_counter()
    stream = model.answer(question, memories, settings, **options)
    called = time.perf_counter() - started
    stream.run()
    stats = stream.stats
    return {
        "ttft_s": called + stats.first_token_s,
        "prompt_positions": stats.prompt_positions,
        "cached_positions": stats.cached_positions,
        "prefilled_positions": stats.prompt_positions - stats.cached_positions,
        "text": stream.text,
    }


def measure_followups(bundle: Path, reps: int) -> dict:
    model = DolphinModel.load(bundle)
    memories = persisted_memories(model)
    timed_answer(model, QUESTION, memories, 4)  # warm-up: sessions initialised, arenas allocated
    rows: dict[str, list[dict]] = {kind: [] for kind in KINDS}
    loads = []
    for rep in range(reps):
        loads.append(loadavg())
        model.answer_cache.clear()
        first = timed_answer(model, QUESTION, memories, ANSWER_TOKENS, conversation=rep)
        history = [Exchange(QUESTION, first.pop("text"))]
        follow_up = timed_answer(model, FOLLOW_UP, memories, 4, history=history, conversation=rep)
        block = timed_answer(model, QUESTION, memories, 4, conversation=f"other {rep}")
        model.answer_cache.clear()
        uncached = timed_answer(model, FOLLOW_UP, memories, 4, history=history)
        for kind, row in zip(KINDS, (first, follow_up, uncached, block), strict=True):
            row.pop("text", None)
            rows[kind].append(row)
        print(f"  rep {rep}: " + "  ".join(f"{k} {rows[k][-1]['ttft_s']:.3f} s" for k in KINDS), flush=True)
    loads.append(loadavg())
    medians = {kind: statistics.median(r["ttft_s"] for r in rows[kind]) for kind in KINDS}
    manifest = model.manifest
    kv_bytes_per_position = 2 * manifest.decoder.num_layers * manifest.decoder.num_kv_heads
    kv_bytes_per_position *= manifest.decoder.head_size * np.dtype(model.decoder.embeds_dtype).itemsize
    return {
        "bundle": bundle.name,
        "decoder": {**asdict(manifest.decoder), "vocab_size": manifest.content.decoder.vocab_size},
        "threads": model.threads,
        "memories": len(memories),
        "first_answer_tokens": ANSWER_TOKENS,
        "questions": {"first": QUESTION, "follow_up": FOLLOW_UP},
        "reps": rows,
        "loadavg_per_rep": loads,
        "median_ttft_s": medians,
        "min_ttft_s": {kind: min(r["ttft_s"] for r in rows[kind]) for kind in KINDS},
        "positions": {kind: rows[kind][0]["prefilled_positions"] for kind in KINDS},
        "kv_cache_bytes_per_position": kv_bytes_per_position,
        "followup_ttft_ratio": paired_ratio(rows["first"], rows["follow_up"]),
        "uncached_followup_over_cached": paired_ratio(rows["uncached"], rows["follow_up"]),
        "first_over_block_cached_first": paired_ratio(rows["first"], rows["block"]),
    }


def measure_full_vs_persisted(bundle: Path, reps: int) -> dict:
    """a_full and d_persisted at N = 2,048, alternating, each in a child process of its own."""
    from benchmarks.__main__ import run_child

    rows: dict[str, list[dict]] = {"a_full": [], "d_persisted": []}
    loads = []
    with tempfile.TemporaryDirectory() as data_dir:
        for rep in range(reps):
            loads.append(loadavg())
            for method in rows:
                row = run_child("benchmarks.answer", "--bundle", str(bundle), "--data-dir", data_dir,
                                "--method", method, "--tokens", "2048")  # fmt: skip
                rows[method].append(row)
                print(f"  rep {rep}: {method} ttft {row['ttft_s']:.3f} s ({row['prompt_positions']} positions)",
                      flush=True)  # fmt: skip
    loads.append(loadavg())
    return {"bundle": bundle.name, "reps": rows, "loadavg_per_rep": loads, **position_arithmetic(rows)}


def position_arithmetic(rows: dict[str, list[dict]]) -> dict:
    """Why the ratio is what it is: positions each method prefills, and what one position costs."""
    full, persisted = rows["a_full"], rows["d_persisted"]
    full_positions, persisted_positions = full[0]["prompt_positions"], persisted[0]["prompt_positions"]
    # Costs from the least disturbed run of each: the machine's own figures, as near as it gets.
    quiet_full = min(full, key=lambda r: r["ttft_s"])
    quiet_persisted = min(persisted, key=lambda r: r["ttft_s"])
    full_cost = quiet_full["prefill_s"] / full_positions
    persisted_cost = quiet_persisted["prefill_s"] / persisted_positions
    persisted_prepare = quiet_persisted["prepare_s"]
    question = persisted_positions - TOP_K * 33
    return {
        "median_ttft_s": {m: statistics.median(r["ttft_s"] for r in rows[m]) for m in rows},
        "min_ttft_s": {m: min(r["ttft_s"] for r in rows[m]) for m in rows},
        "ratio": paired_ratio(full, persisted),
        "positions": {"a_full": full_positions, "d_persisted": persisted_positions, "question": question},
        "prefill_ms_per_position": {"a_full": round(full_cost * 1e3, 3), "d_persisted": round(persisted_cost * 1e3, 3)},
        "d_persisted_prepare_ms": round(persisted_prepare * 1e3, 2),
        "ratio_if_costs_per_position_were_equal": round(full_positions / persisted_positions, 1),
        "ratio_from_positions_and_measured_costs": round(
            full_positions * full_cost / (persisted_positions * persisted_cost + persisted_prepare), 1
        ),
        "per_position_cost_ratio_needed_for_30x": round(30 * persisted_positions / full_positions, 2),
        "floor_positions_k3": TOP_K * 33,
    }


def merge_summary(latest: Path, values: dict[str, float]) -> None:
    """Set `values` in latest.json's "summary" (read, update these keys, write); keep every other
    key, and the file's indentation, so that the change reads as what it is."""
    text = latest.read_text(encoding="utf-8")
    report = json.loads(text)
    report.setdefault("summary", {}).update(values)
    second = text.splitlines()[1] if text.count("\n") > 1 else "  "
    indent = len(second) - len(second.lstrip()) or 2
    latest.write_text(json.dumps(report, indent=indent) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.followup")
    parser.add_argument("--cache", type=Path, default=HERE / ".cache")
    parser.add_argument("--layers", type=int, default=4, help="decoder layers of the 7B shape (28 in the real model)")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--reps-2048", type=int, default=5)
    parser.add_argument("--skip-2048", action="store_true")
    parser.add_argument("--json", type=Path, default=HERE / "results" / "followup.json")
    parser.add_argument("--latest", type=Path, default=HERE / "results" / "latest.json")
    args = parser.parse_args(argv)

    report: dict[str, object] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": describe(),
        "vocabulary": "qwen2 (onnx_export/qwen_vocabulary.py)",
        "notes": NOTES,
    }
    print("follow-ups, 7B shape", flush=True)
    report["followup_7b"] = measure_followups(build_bundle(args.cache, "qwen2-7b", args.layers), args.reps)
    summary = {"followup_ttft_ratio_7b": report["followup_7b"]["followup_ttft_ratio"]["paired_median"]}
    if not args.skip_2048:
        print("full context vs persisted memories, N = 2048, 0.5B shape", flush=True)
        report["full_vs_persisted_2048"] = measure_full_vs_persisted(
            build_bundle(args.cache, "qwen2-0.5b", None), args.reps_2048
        )
        summary["ttft_ratio_full_vs_persisted_2048"] = report["full_vs_persisted_2048"]["ratio"]["paired_median"]
    report["summary"] = summary
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if args.latest.exists():
        merge_summary(args.latest, summary)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
