"""Generation controls of the Python API: stop, sampling, limits, end of text."""

from __future__ import annotations

import json
import threading

import pytest

from inference import DolphinModel, GenerationSettings, InputError


def test_cancel_stops_mid_answer(fp32_model, reference) -> None:
    memory = fp32_model.encode(reference["cases"][0]["contexts"][0])
    stream = fp32_model.answer("Who founded it?", [memory], GenerationSettings(max_new_tokens=200))
    for count, _ in enumerate(stream, start=1):
        if count == 3:
            threading.Thread(target=stream.cancel).start()
    assert stream.stats.stop_reason == "cancelled"
    assert 3 <= len(stream.token_ids) < 200


def test_sampling_is_reproducible_with_a_seed_and_varies_without(fp32_model, reference) -> None:
    memory = fp32_model.encode(reference["cases"][1]["contexts"][0])

    def sample(seed: int) -> list[int]:
        settings = GenerationSettings(max_new_tokens=24, greedy=False, temperature=1.5, top_p=0.95, seed=seed)
        stream = fp32_model.answer("What happened?", [memory], settings)
        stream.run()
        return stream.token_ids

    assert sample(7) == sample(7)
    assert len({tuple(sample(seed)) for seed in range(4)}) > 1


def test_top_p_near_zero_is_greedy(fp32_model, reference) -> None:
    case = reference["cases"][0]
    memory = fp32_model.encode(case["contexts"][0])
    stream = fp32_model.answer(
        case["question"], [memory], GenerationSettings(max_new_tokens=16, greedy=False, top_p=1e-9, mask_reserved=False)
    )
    stream.run()
    assert stream.token_ids == case["greedy_tokens"][:16]


def test_generation_stops_at_end_of_text(bundle_copy, reference) -> None:
    """Make the first greedy token the bundle's EOS: the answer must end before it, empty."""
    case = reference["cases"][0]
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["tokenizer"]["eos_token_id"] = case["greedy_tokens"][3]
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    model = DolphinModel.load(bundle_copy)
    stream = model.answer(
        case["question"],
        [model.encode(case["contexts"][0])],
        GenerationSettings(max_new_tokens=50, mask_reserved=False),
    )
    stream.run()
    assert stream.stats.stop_reason == "eos"
    assert stream.token_ids == case["greedy_tokens"][:3]


def test_answer_without_memories_is_a_plain_question(fp32_model) -> None:
    stream = fp32_model.answer("Hello?", [], GenerationSettings(max_new_tokens=4))
    stream.run()
    assert stream.stats.memory_count == 0 and len(stream.token_ids) == 4


def test_bad_settings_are_input_errors(fp32_model) -> None:
    with pytest.raises(InputError):
        fp32_model.answer("q", [], GenerationSettings(max_new_tokens=0))
    with pytest.raises(InputError):
        fp32_model.answer("q", [], GenerationSettings(greedy=False, temperature=0))


def test_memories_of_another_bundle_are_refused(fp32_model, reference) -> None:
    memory = fp32_model.encode("some text")
    memory.encoder_identity = "another-model"
    with pytest.raises(InputError, match="another model bundle"):
        fp32_model.answer("q", [memory])


def test_threads_default_to_every_core(fp32_model) -> None:
    import os

    assert fp32_model.threads == len(os.sched_getaffinity(0))


def test_reserved_tokens_never_reach_an_answer(fp32_model, reference) -> None:
    """The reference's own greedy answers contain memory tokens; masked, no answer does."""
    reserved = set(fp32_model.reserved.ids)
    unmasked = [t for case in reference["cases"] for t in case.get("greedy_tokens", [])]
    assert reserved & set(unmasked), "the fixture should exercise the mask"
    context = fp32_model.tokenizer.encode("<context>")
    for case in reference["cases"]:
        if "question" not in case:
            continue
        memories = [fp32_model.encode(c) for c in case["contexts"]]
        for settings in (
            GenerationSettings(max_new_tokens=40),
            GenerationSettings(max_new_tokens=40, greedy=False, temperature=2.0, seed=3),
        ):
            stream = fp32_model.answer(case["question"], memories, settings)
            text = stream.run()
            assert not reserved & set(stream.token_ids)
            assert "[memory_" not in text and "<context>" not in text and "<|endoftext|>" not in text
            ids = stream.token_ids
            assert all(ids[i : i + len(context)] != context for i in range(len(ids)))


def test_a_banned_sequence_blocks_only_its_last_token() -> None:
    from inference.sampling import ReservedTokens

    reserved = ReservedTokens(ids=(9,), sequences=((1, 2, 3),))
    assert reserved.banned([5, 1, 2]) == [9, 3]
    assert reserved.banned([5, 1]) == [9]
