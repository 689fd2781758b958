"""Hybrid retrieval with the real all-MiniLM-L6-v2 embedder, conversations and honest answers."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from app.chats import Message, turns
from app.library.answering import AnswerOutcome, Turn
from app.library.retrieval import Fusion, RetrievalParams, _convex, _reciprocal_rank
from app.library.store import StoredChunk
from inference import GenerationSettings
from inference.conversation import Exchange
from inference.splice import prompt_ids
from tests.conftest import FIXTURES, ROOT

LANDMARKS = FIXTURES / "landmarks"
SHORT = GenerationSettings(max_new_tokens=4)


@pytest.fixture
def landmarks(tmp_path: Path) -> Path:
    folder = tmp_path / "landmarks"
    folder.mkdir()
    for path in LANDMARKS.glob("*.txt"):
        shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture
def hybrid_library(make_library, hybrid_model, landmarks):
    library = make_library(model=hybrid_model)
    library.add_folder(landmarks)
    library.start()
    assert library.index_until_done(timeout=120)
    return library


def _names(chunks) -> list[str]:
    return [c.document_path.name for c in chunks]


def test_every_chunk_gets_an_embedding_in_the_same_pass(hybrid_library, hybrid_model) -> None:
    store = hybrid_library.store
    identity = hybrid_model.embedder.identity
    assert store.embedded_chunk_count(identity) == len(store.chunk_ids()) > 0
    assert hybrid_library.answerer.retriever.method == "hybrid"
    # The stored vector is the embedder's, unit length: the dense side's cosine is a dot product.
    chunk = hybrid_library.retrieve("sea-washed lighthouse", k=1)[0]
    (vector,) = [np.frombuffer(v, dtype=np.float32) for i, v in store.chunk_embeddings(identity) if i == chunk.id]
    np.testing.assert_allclose(vector, hybrid_model.embedder.embed([chunk.text])[0], atol=1e-5)
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5


def test_dense_search_finds_what_shares_no_word(hybrid_library, make_library, landmarks, tmp_path) -> None:
    question = "Which beacon warns seafarers away from a drowned Scottish shoal?"
    assert _names(hybrid_library.retrieve(question, k=1)) == ["bell-rock.txt"]
    keyword_only = make_library(data_dir=tmp_path / "bm25")
    keyword_only.add_folder(landmarks)
    keyword_only.start()
    keyword_only.index_until_done(timeout=120)
    assert keyword_only.answerer.retriever.method == "bm25"
    assert _names(keyword_only.retrieve(question, k=1)) != ["bell-rock.txt"]


def test_a_three_turn_conversation_follows_its_subject(hybrid_library) -> None:
    """The follow-ups name nothing; alone they find another tall structure, in the conversation
    they find the lighthouse the first question was about."""
    questions = [
        "When was the Bell Rock Lighthouse built?",
        "How tall is it?",
        "Who designed it?",
    ]
    history: list[Turn] = []
    for number, question in enumerate(questions):
        answer = hybrid_library.ask(question, settings=SHORT, history=history)
        text = "".join(answer)
        assert answer.outcome is AnswerOutcome.ANSWERED
        assert answer.sources[0].path.name == "bell-rock.txt", (question, [s.path.name for s in answer.sources])
        if number:
            alone = hybrid_library.retrieve(question, k=1)
            assert _names(alone) != ["bell-rock.txt"], f"{question!r} alone should be ambiguous"
        history.append(Turn(question, text, tuple(answer.sources)))
    # A follow-up that finds nothing alone keeps the previous answer's memories.
    more = hybrid_library.ask("Tell me more.", settings=SHORT, history=history)
    assert more.outcome is AnswerOutcome.KEPT_SOURCES
    assert [s.text_hash for s in more.sources] == [s.text_hash for s in history[-1].sources]
    more.stream.run()
    assert more.stream.stats.memory_count == len(history[-1].sources)
    # A question about something the library does not hold is not answered from the conversation's
    # sources; one that changes the subject is closer alone than with the conversation.
    elsewhere = hybrid_library.ask("How do I renew a Mongolian passport?", settings=SHORT, history=history)
    assert elsewhere.outcome is AnswerOutcome.NOTHING_MATCHES
    changed = hybrid_library.ask("Who designed the Eiffel Tower?", settings=SHORT, history=history)
    assert changed.sources[0].path.name == "eiffel-tower.txt"


def test_the_first_question_keeps_the_reference_layout_and_a_follow_up_sees_history(hybrid_model) -> None:
    tokenizer = hybrid_model.tokenizer
    memory = hybrid_model.encode("The Bell Rock Lighthouse was built by Robert Stevenson.")
    first = hybrid_model.answer("Who built it?", [memory], SHORT)
    assert first.question == "Who built it?"
    np.testing.assert_array_equal(first.prompt.ids, prompt_ids(tokenizer, "Who built it?", 1, 32))
    long_answer = "Robert Stevenson " * 200
    follow_up = hybrid_model.answer("And when?", [memory], SHORT, history=[Exchange("Who built it?", long_answer)])
    # Laid out afresh (nothing kept for a conversation): the first exchange where the weights
    # expect a question and its answer, the earlier answer cut short, then the question.
    text = tokenizer.decode([int(i) for i in follow_up.prompt.ids if i >= 0])
    assert text.startswith(" Who built it?Robert Stevenson")
    assert text.endswith(" …\nAnd when?")
    assert len(follow_up.prompt.ids) < 33 + 120
    first.run()
    follow_up.run()
    assert follow_up.stats.prompt_positions > first.stats.prompt_positions


def test_nothing_matches_is_said_and_answering_anyway_uses_no_memory(hybrid_library) -> None:
    answer = hybrid_library.ask("What is the capital of Mongolia's neighbouring desert province?", settings=SHORT)
    assert answer.outcome is AnswerOutcome.NOTHING_MATCHES
    assert answer.stream is None and list(answer) == [] and answer.sources == []
    assert answer.notes[-1].startswith("Nothing in your library matches this question.")
    assert answer.best_similarity is not None and answer.best_similarity < RetrievalParams().min_similarity
    anyway = hybrid_library.ask("What is the capital of Mongolia?", settings=SHORT, without_sources=True)
    assert anyway.outcome is AnswerOutcome.WITHOUT_SOURCES
    anyway.stream.run()
    assert anyway.stream.stats.memory_count == 0 and anyway.sources == []


def test_a_saved_chat_becomes_turns() -> None:
    source = {"path": "/d/bell-rock.txt", "page": None, "char_start": 0, "char_end": 9, "text": "t", "score": 1.0,
              "text_hash": "abc"}  # fmt: skip
    messages = [
        Message("user", "When was it built?"),
        Message("assistant", "1810.", [source], {"outcome": "answered"}),
        Message("user", "What about Mars?"),
        Message("assistant", "Nothing in your library matches this question.", [], {"outcome": "nothing_matches"}),
        Message("user", "And its height?"),
    ]
    result = turns(messages)
    assert [t.question for t in result] == ["When was it built?", "What about Mars?", "And its height?"]
    assert result[0].answer == "1810." and result[0].sources[0].text_hash == "abc"
    assert result[1].answer == "" and result[1].sources == ()


def test_a_library_indexed_without_embedder_backfills_when_the_bundle_gets_one(
    make_library, bundle_copy, minilm_folder, landmarks, tmp_path
) -> None:
    """`dolphin-desk add-embedder` on a bundle in use: the next start embeds every earlier chunk
    in the background and re-runs the Dolphin encoder for none of them."""
    from inference import DolphinModel
    from onnx_export.embedder import add_embedder

    data = tmp_path / "data"
    first = make_library(data_dir=data, model=DolphinModel.load(bundle_copy))
    first.add_folder(landmarks)
    first.start()
    first.index_until_done(timeout=120)
    chunks = len(first.store.chunk_ids())
    first.stop()
    add_embedder(bundle_copy, str(minilm_folder))
    model = DolphinModel.load(bundle_copy)
    second = make_library(data_dir=data, model=model)
    second.start()
    second.index_until_done(timeout=120)
    assert second.store.embedded_chunk_count(model.embedder.identity) == chunks
    assert second.indexer.encoded == 0
    assert _names(second.retrieve("Which beacon warns seafarers away from a drowned Scottish shoal?", k=1)) == [
        "bell-rock.txt"
    ]


def test_cli_ask_says_nothing_matches_and_answers_anyway_on_request(int4_bundle, landmarks, tmp_path) -> None:
    data = tmp_path / "data"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "app", *args], capture_output=True, text=True, cwd=ROOT,
                              check=False, timeout=300)  # fmt: skip

    assert cli("index", str(landmarks), "--bundle", str(int4_bundle), "--data-dir", str(data)).returncode == 0
    common = ("--bundle", str(int4_bundle), "--data-dir", str(data), "--max-new-tokens", "3")
    found = cli("ask", *common, "--question", "Who designed the Eiffel Tower?", "--json")
    result = json.loads(found.stdout)
    assert result["outcome"] == "answered" and Path(result["sources"][0]["path"]).name == "eiffel-tower.txt"
    assert result["sources"][0]["similarity"] > 0.3
    nothing = cli("ask", *common, "--question", "How do I renew a Mongolian passport?")
    assert nothing.returncode == 0
    assert nothing.stdout.startswith("Nothing in your library matches this question.")
    assert "--without-sources" in nothing.stderr
    anyway = cli("ask", *common, "--question", "How do I renew a Mongolian passport?", "--without-sources", "--json")
    result = json.loads(anyway.stdout)
    assert result["outcome"] == "without_sources" and result["sources"] == [] and result["answer"] is not None


def test_what_is_indexed_while_the_app_runs_is_found_by_a_new_answer_thread(
    make_library, hybrid_model, landmarks, tmp_path
) -> None:
    """Each answer runs on a worker thread of its own; the dense matrix must still see chunks the
    indexer stored after it was read (a fresh connection cannot tell that anything changed)."""
    import threading

    later = tmp_path / "later"
    later.mkdir()
    shutil.move(str(landmarks / "bell-rock.txt"), later / "bell-rock.txt")
    library = make_library(model=hybrid_model)
    library.add_folder(landmarks)
    library.start()
    assert library.index_until_done(timeout=120)
    question = "Which beacon warns seafarers away from a drowned Scottish shoal?"
    found: list[list[str]] = []

    def ask() -> None:
        found.append(_names(library.answerer.retriever.search(question, 1, RetrievalParams(min_similarity=-1)).chunks))

    for _ in range(2):  # the first thread reads the matrix; then the library grows
        worker = threading.Thread(target=ask)
        worker.start()
        worker.join()
        if len(found) == 1:
            library.add_folder(later)
            assert library.index_until_done(timeout=120)
    assert found[0] != ["bell-rock.txt"] and found[1] == ["bell-rock.txt"]


def test_the_same_text_in_two_files_fills_one_slot(make_library, hybrid_model, landmarks, tmp_path) -> None:
    copy = tmp_path / "backup"
    shutil.copytree(landmarks, copy)
    library = make_library(model=hybrid_model)
    library.add_folder(landmarks)
    library.add_folder(copy)
    library.start()
    assert library.index_until_done(timeout=120)
    chunks = library.answerer.retriever.search(
        "When was the lighthouse built?", 3, RetrievalParams(min_similarity=-1)
    ).chunks
    assert len(chunks) == 3 and len({c.text_hash for c in chunks}) == 3


def _chunk(chunk_id: int, score: float = 0.0) -> StoredChunk:
    return StoredChunk(chunk_id, Path(f"/docs/{chunk_id}.txt"), "text", 0, 4, None, 1, f"hash-{chunk_id}", score)


def test_fusion_keeps_how_far_ahead_the_best_passage_is() -> None:
    """Rank fusion hears only "first" and "fourth": a passage far closer in meaning than any other
    loses to one that BM25 ranked first and the embedder barely noticed. The convex fusion keeps
    the distance; where the embedder cannot tell passages apart, BM25 decides."""
    dense = [(1, 0.80), (2, 0.30), (3, 0.29), (4, 0.28)]
    cosine = dict(dense)
    keyword = [_chunk(2, 10.0), _chunk(3, 9.0), _chunk(4, 8.0), _chunk(1, 7.9)]

    def first(fused: dict[int, float]) -> int:
        return max(fused, key=fused.__getitem__)

    assert first(_reciprocal_rank(keyword, dense, cosine, RetrievalParams(fusion=Fusion.RRF))) == 2
    assert first(_convex(keyword, dense, cosine, RetrievalParams())) == 1
    close = [(1, 0.50), (2, 0.49), (3, 0.30)]
    assert first(_convex([_chunk(2, 10.0), _chunk(1, 2.0)], close, dict(close), RetrievalParams())) == 2


def test_a_chunk_whose_embedding_is_not_there_yet_is_found_by_its_words(hybrid_library) -> None:
    """While the background backfill runs, a chunk without an embedding still counts for BM25, and
    a question only it matches is not turned away as matching nothing."""
    store = hybrid_library.store
    chunks = store.chunks_by_id(store.chunk_ids()).values()
    hashes = [c.text_hash for c in chunks if c.document_path.name == "bell-rock.txt"]
    assert hashes
    with sqlite3.connect(store.path) as db:
        db.executemany("DELETE FROM embeddings WHERE text_hash = ?", [(h,) for h in hashes])
    found = hybrid_library.retrieve("Which lighthouse stands on the Inchcape reef off the Firth of Tay?", k=3)
    assert "bell-rock.txt" in _names(found)
