"""An fp32 bundle made by the project's converter equals Nexa's reference code."""

from __future__ import annotations

import numpy as np
import pytest

from inference import GenerationSettings

TOLERANCE = 1e-4
NEAR_TIE = 2 * TOLERANCE


def _compare_greedy(
    stream_logits: list[np.ndarray], stream_tokens: list[int], case: dict, ref_logits: np.ndarray
) -> int:
    """Compare step by step until the reference's first near-tie; return the steps compared."""
    compared = 0
    for step, margin in enumerate(case["greedy_margins"]):
        if margin < NEAR_TIE or step >= len(case["greedy_tokens"]):
            break
        np.testing.assert_allclose(stream_logits[step], ref_logits[step], atol=TOLERANCE, rtol=0)
        assert stream_tokens[step] == case["greedy_tokens"][step], f"step {step}"
        compared += 1
    return compared


@pytest.mark.parametrize("index", [0, 1, 2])
def test_memory_matches_reference(fp32_model, reference, index: int) -> None:
    case = reference["cases"][index]
    memory = fp32_model.encode(case["contexts"][0])
    assert memory.token_count + fp32_model.manifest.memory_size == len(case["context_ids"])
    ref = reference["arrays"]
    np.testing.assert_allclose(memory.states, ref[f"case{index}_encoder_states"], atol=TOLERANCE, rtol=0)
    projected = fp32_model.project([memory])[0]
    assert projected.shape == (32, fp32_model.manifest.decoder.hidden_size)
    np.testing.assert_allclose(projected, ref[f"case{index}_memory"], atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_logits_and_greedy_tokens_match_reference(fp32_model, reference, index: int) -> None:
    case = reference["cases"][index]
    memory = fp32_model.encode(case["contexts"][0])
    stream = fp32_model.answer(
        case["question"],
        [memory],
        GenerationSettings(max_new_tokens=reference["greedy_steps"], mask_reserved=False),
        record_logits=True,
    )
    stream.run()
    compared = _compare_greedy(stream.logits, stream.token_ids, case, reference["arrays"][f"case{index}_step_logits"])
    assert compared >= 16


def test_two_markers_with_one_memory_reduce_to_the_reference(fp32_model, reference) -> None:
    """The reference fills every <context> marker with the same memory; ours takes one per
    marker, and given the same memory twice it must do exactly what the reference does."""
    case = reference["by_name"]["two_markers"]
    memory = fp32_model.encode(case["contexts"][0])
    stream = fp32_model.answer(
        case["question"],
        [memory, memory],
        GenerationSettings(max_new_tokens=20, mask_reserved=False),
        record_logits=True,
    )
    stream.run()
    assert stream.stats.prompt_positions == len(case["decoder_ids"])
    compared = _compare_greedy(stream.logits, stream.token_ids, case, reference["arrays"]["two_markers_step_logits"])
    assert compared >= 16


def test_two_different_memories(fp32_model, reference) -> None:
    case = reference["by_name"]["two_memories"]
    memories = [fp32_model.encode(text) for text in case["contexts"]]
    stream = fp32_model.answer(
        case["question"], memories, GenerationSettings(max_new_tokens=1, mask_reserved=False), record_logits=True
    )
    stream.run()
    np.testing.assert_allclose(
        stream.logits[0], reference["arrays"]["two_memories_last_logits"], atol=TOLERANCE, rtol=0
    )


def test_int4_bundle_converts_loads_and_answers(int4_bundle, fp32_model, reference, report) -> None:
    from inference import DolphinModel

    model = DolphinModel.load(int4_bundle)
    assert model.manifest.precision == "int4"
    agree = total = 0
    for index, case in enumerate(reference["cases"][:3]):
        memory = model.encode(case["contexts"][0])
        assert memory.states.shape == (32, model.manifest.encoder.hidden_size)
        assert np.isfinite(memory.states).all()
        stream = model.answer(
            case["question"], [memory], GenerationSettings(max_new_tokens=16, mask_reserved=False), record_logits=True
        )
        stream.run()
        assert len(stream.token_ids) == 16
        reference_logits = reference["arrays"][f"case{index}_step_logits"][: len(stream.logits)]
        total += len(reference_logits)
        agree += int(sum(np.argmax(a) == np.argmax(b) for a, b in zip(stream.logits, reference_logits, strict=True)))
    report(
        f"int4 vs fp32 reference, top-1 agreement on the fixtures: {agree}/{total} ({agree / total:.0%}); "
        "random weights make int4 logits flat, so this is a sanity figure, not a bar"
    )
