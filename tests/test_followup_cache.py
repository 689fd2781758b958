"""Follow-ups from cache: a follow-up continues the kept KV cache of its conversation's last answer,
and a prompt whose first memory was seen starts after that memory's block. Both must give what a
full prefill of the same sequence gives (fp32 tiny bundle: logits to 1e-4, greedy tokens identical)."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from inference import GenerationSettings
from inference.answer_cache import AnswerCache
from inference.conversation import FOLLOW_UP_SEPARATOR, Exchange, fresh_ids
from inference.sampling import TokenSampler
from inference.splice import first_block_end, prompt_ids, splice

SETTINGS = GenerationSettings(max_new_tokens=12)
LIGHTHOUSE = "The Bell Rock Lighthouse stands on a reef in the North Sea; Robert Stevenson built it in 1810."
TOWER = "The Eiffel Tower in Paris was designed by Gustave Eiffel's company and finished in 1889."
BRIDGE = "The Forth Bridge, a cantilever railway bridge in Scotland, was opened in 1890."


@pytest.fixture
def model(fp32_model):
    fp32_model.answer_cache.clear()
    yield fp32_model
    fp32_model.answer_cache.clear()


@pytest.fixture(scope="module")
def memories(fp32_model) -> dict[str, object]:
    return {name: fp32_model.encode(text) for name, text in (("A", LIGHTHOUSE), ("B", TOWER), ("C", BRIDGE))}


def full_prefill(model, stream) -> tuple[list[int], list[np.ndarray]]:
    """The reference: the stream's whole prompt prefilled from nothing, then the same greedy loop."""
    prompt, eos = stream.prompt, model.manifest.eos_token_id
    state = model.decoder.new_state()
    logits = model.decoder.forward(splice(prompt.ids, model.embeddings, prompt.memories), state)
    sampler = TokenSampler(stream.settings, model.reserved)
    limit = min(stream.settings.max_new_tokens, model.max_positions - len(prompt.ids))
    tokens: list[int] = []
    seen: list[np.ndarray] = []
    while True:
        seen.append(logits)
        token = sampler(logits, tokens)
        if token == eos:
            break
        tokens.append(token)
        if len(tokens) >= limit:
            break
        logits = model.decoder.forward(model.embeddings(np.asarray([token])), state)
    return tokens, seen


def assert_exact(model, stream) -> None:
    tokens, logits = full_prefill(model, stream)
    assert stream.token_ids == tokens
    assert len(stream.logits) == len(logits)
    for cached, full in zip(stream.logits, logits, strict=True):
        np.testing.assert_allclose(cached, full, atol=1e-4, rtol=0)


def ask(model, question, memories, history=(), conversation="chat", settings=SETTINGS):
    stream = model.answer(question, memories, settings, record_logits=True, history=history, conversation=conversation)
    stream.run()
    return stream


def test_a_follow_up_continues_the_kept_sequence_and_equals_a_full_prefill(model, memories) -> None:
    mems = [memories["A"], memories["B"]]
    first = ask(model, "Who built it?", mems)
    np.testing.assert_array_equal(first.prompt.ids, prompt_ids(model.tokenizer, "Who built it?", 2, 32))
    assert first.stats.cached_positions == 0
    history = [Exchange("Who built it?", first.text)]

    second = ask(model, "And when?", mems, history)
    question = model.tokenizer.encode(FOLLOW_UP_SEPARATOR + "And when?")
    expected = np.concatenate([first.prompt.ids, first.token_ids, question])
    np.testing.assert_array_equal(second.prompt.ids, expected)
    # Everything but the new question came from the cache (the last answer token may not have run).
    assert second.stats.cached_positions >= len(first.prompt.ids) + len(first.token_ids) - 1
    assert second.stats.prompt_positions - second.stats.cached_positions <= len(question) + 1
    assert_exact(model, second)

    third = ask(model, "Where is it?", mems, [*history, Exchange("And when?", second.text)])
    assert third.stats.cached_positions >= len(second.prompt.ids) + len(second.token_ids) - 1
    assert_exact(model, third)


def test_a_cancelled_answer_is_continued_exactly(model, memories) -> None:
    stream = model.answer("Who built it?", [memories["A"]], SETTINGS, conversation="chat")
    for _ in stream:
        stream.cancel()
    assert stream.stats.stop_reason == "cancelled"
    follow_up = ask(model, "And when?", [memories["A"]], [Exchange("Who built it?", stream.text)])
    assert follow_up.stats.cached_positions > 33
    assert_exact(model, follow_up)


def test_regenerating_a_follow_up_reuses_the_common_prefix(model, memories) -> None:
    mems = [memories["A"]]
    first = ask(model, "Who built it?", mems)
    history = [Exchange("Who built it?", first.text)]
    second = ask(model, "And when?", mems, history)
    again = ask(model, "And when?", mems, history)  # Regenerate: the same history, the same question
    np.testing.assert_array_equal(again.prompt.ids, second.prompt.ids)
    assert again.stats.cached_positions == len(again.prompt.ids) - 1
    assert again.token_ids == second.token_ids
    assert_exact(model, again)


def test_other_memories_start_after_the_first_memory_block(model, memories) -> None:
    first = ask(model, "Who built it?", [memories["A"], memories["B"]])
    history = [Exchange("Who built it?", first.text)]
    # Retrieval picked other memories: the conversation's sequence does not apply; the prompt is
    # laid out afresh, and its first memory's block (positions 0..32) is reused.
    moved = ask(model, "And the bridge?", [memories["A"], memories["C"]], history)
    fresh = fresh_ids(model.tokenizer, "And the bridge?", history, 2, 32)
    np.testing.assert_array_equal(moved.prompt.ids, fresh)
    assert moved.stats.cached_positions == first_block_end(fresh, 32) == 33
    assert_exact(model, moved)
    # A new conversation whose first memory was seen starts after its block too.
    other = ask(model, "What is it?", [memories["A"]], conversation="another chat")
    assert other.stats.cached_positions == 33
    assert_exact(model, other)
    # A different first memory does not.
    assert ask(model, "What is it?", [memories["C"]], conversation=None).stats.cached_positions == 0


def test_reuse_is_decided_by_ids_and_memories_only(model, memories) -> None:
    first = ask(model, "Who built it?", [memories["A"]])
    history = [Exchange("Who built it?", first.text)]
    # Another conversation with the same text history has no sequence of its own, and its memory
    # was never seen: laid out afresh and prefilled from the start.
    elsewhere = ask(model, "And when?", [memories["C"]], history, "another chat")
    np.testing.assert_array_equal(elsewhere.prompt.ids, fresh_ids(model.tokenizer, "And when?", history, 1, 32))
    assert elsewhere.stats.cached_positions == 0
    # The history no longer ends with the kept answer (edited): laid out afresh; only the prefix
    # it shares with the kept sequence (the first prompt at least) is reused.
    edited_history = [Exchange("Who built it?", "Someone else entirely.")]
    edited = ask(model, "And when?", [memories["A"]], edited_history)
    np.testing.assert_array_equal(edited.prompt.ids, fresh_ids(model.tokenizer, "And when?", edited_history, 1, 32))
    assert len(first.prompt.ids) <= edited.stats.cached_positions < len(first.prompt.ids) + len(first.token_ids)
    assert_exact(model, edited)


def test_a_continuation_that_would_overflow_is_laid_out_afresh(model, memories) -> None:
    first = ask(model, "Who built it?", [memories["A"]])
    history = [Exchange("Who built it?", first.text)]
    continued = len(first.prompt.ids) + len(first.token_ids) + len(model.tokenizer.encode("\nAnd when?"))
    near_full = GenerationSettings(max_new_tokens=model.max_positions - continued + 1)
    follow_up = model.answer("And when?", [memories["A"]], near_full, history=history, conversation="chat")
    np.testing.assert_array_equal(follow_up.prompt.ids, fresh_ids(model.tokenizer, "And when?", history, 1, 32))


def test_a_deleted_conversation_keeps_nothing_even_while_answering(model, memories) -> None:
    ask(model, "Who built it?", [memories["A"]])
    assert model.answer_cache.segment("chat") is not None
    model.forget_conversation("chat")
    assert model.answer_cache.segment("chat") is None
    running = model.answer("Who built it?", [memories["A"]], SETTINGS, conversation="chat")
    model.forget_conversation("chat")  # deleted while its answer streams
    running.run()
    assert model.answer_cache.segment("chat") is None


def test_the_caches_are_bounded_by_bytes(model, memories) -> None:
    ask(model, "Who built it?", [memories["A"]], conversation="one")
    one = model.answer_cache.segment("one").nbytes()
    small = AnswerCache(conversation_bytes=int(one * 1.5), block_bytes=1)
    model.answer_cache, kept = small, model.answer_cache
    try:
        ask(model, "Who built it?", [memories["A"]], conversation="one")
        ask(model, "Who built it?", [memories["A"]], conversation="two")
        assert small.segment("one") is None, "the least recently used conversation went first"
        assert small.segment("two") is not None
        assert small.nbytes <= int(one * 1.5)
        assert ask(model, "What is it?", [memories["A"]], conversation=None).stats.cached_positions == 0
    finally:
        model.answer_cache = kept


def test_conversations_answered_on_threads_at_once_stay_apart(model, memories) -> None:
    expected = {}
    for name, mem in (("A", memories["A"]), ("B", memories["B"])):
        first = ask(model, "Who built it?", [mem], conversation=f"solo {name}")
        expected[name] = ask(model, "And when?", [mem], [Exchange("Who built it?", first.text)], f"solo {name}")
    model.answer_cache.clear()
    results: dict[str, object] = {}
    errors: list[BaseException] = []

    def converse(name: str) -> None:
        try:
            first = ask(model, "Who built it?", [memories[name]], conversation=name)
            history = [Exchange("Who built it?", first.text)]
            results[name] = ask(model, "And when?", [memories[name]], history, conversation=name)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=converse, args=(name,)) for name in ("A", "B")]
    stop = threading.Event()

    def forget_others() -> None:
        while not stop.wait(0.001):
            model.forget_conversation("a deleted chat")

    forgetter = threading.Thread(target=forget_others)
    forgetter.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    stop.set()
    forgetter.join(10)
    assert not errors, errors
    for name in ("A", "B"):
        assert results[name].token_ids == expected[name].token_ids
        assert results[name].stats.cached_positions > 33


def test_a_library_passes_its_conversation_and_drops_everything_when_stopped(make_library, model, tmp_path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "bell-rock.txt").write_text(LIGHTHOUSE, encoding="utf-8")
    library = make_library()
    library.add_folder(folder)
    library.start()
    assert library.index_until_done(timeout=60)
    from app.library.answering import Turn

    first = library.ask("Who built the lighthouse?", settings=SETTINGS, conversation=7)
    first_text = "".join(first)
    history = [Turn("Who built the lighthouse?", first_text, tuple(first.sources))]
    follow_up = library.ask("When was the lighthouse built?", settings=SETTINGS, history=history, conversation=7)
    follow_up.stream.run()
    assert [s.text_hash for s in follow_up.sources] == [s.text_hash for s in first.sources]
    assert follow_up.stream.stats.cached_positions >= first.stream.stats.prompt_positions
    library.forget_conversation(7)
    assert model.answer_cache.segment(7) is None
    library.ask("Who built the lighthouse?", settings=SETTINGS, conversation=8).stream.run()
    assert model.answer_cache.nbytes > 0
    library.stop()
    assert model.answer_cache.nbytes == 0, "a model reloaded (its library stopped) keeps nothing"


def test_the_benchmark_merges_only_its_keys_into_latest_json(tmp_path) -> None:
    from benchmarks.followup import merge_summary

    latest = tmp_path / "latest.json"
    before = {"mode": "full", "summary": {"ttft_ratio_full_vs_persisted_2048": 17.7, "x": 1}}
    latest.write_text(json.dumps(before, indent=1) + "\n")
    merge_summary(latest, {"followup_ttft_ratio_7b": 5.4, "ttft_ratio_full_vs_persisted_2048": 14.9})
    text = latest.read_text()
    assert text.startswith('{\n "mode"'), "the file keeps its indentation"
    assert json.loads(text) == {
        "mode": "full",
        "summary": {"ttft_ratio_full_vs_persisted_2048": 14.9, "x": 1, "followup_ttft_ratio_7b": 5.4},
    }
