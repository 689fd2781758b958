"""A chat limited to some folders (GPT4All's collections): retrieval, the saved scope, the bar."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from app.chats import SCHEMA_VERSION, ChatStore, Message
from app.library.retrieval import RetrievalParams
from app.settings import Settings
from tests.conftest import FIXTURES
from tests.test_ui import KJV, open_window, wait_ready  # noqa: F401 (fixture)

ANY = RetrievalParams(min_similarity=-1.0)


def _split_landmarks(tmp_path: Path) -> tuple[Path, Path]:
    coast, city = tmp_path / "Coast", tmp_path / "City"
    for folder, names in (
        (coast, ("bell-rock.txt", "sourdough.txt")),
        (city, ("eiffel-tower.txt", "elizabeth-tower.txt")),
    ):
        folder.mkdir()
        for name in names:
            shutil.copy(FIXTURES / "landmarks" / name, folder / name)
    return coast, city


def test_retrieval_keeps_to_the_chats_folders(make_library, hybrid_model, tmp_path) -> None:
    coast, city = _split_landmarks(tmp_path)
    library = make_library(model=hybrid_model)
    library.add_folder(coast)
    library.add_folder(city)
    library.start()
    assert library.index_until_done(timeout=120)
    retriever = library.answerer.retriever
    question = "When was the lighthouse on the reef built?"

    def files(folders) -> set[str]:
        return {c.document_path.name for c in retriever.search(question, 3, ANY, folders=folders).chunks}

    assert "bell-rock.txt" in files(None) and "bell-rock.txt" in files([coast])
    assert files([city]) <= {"eiffel-tower.txt", "elizabeth-tower.txt"} and files([city])
    assert files([]) == set()


def test_an_older_chats_file_gains_scopes_and_keeps_its_chats(tmp_path) -> None:
    db = sqlite3.connect(tmp_path / "chats.sqlite3")
    db.executescript(
        "CREATE TABLE conversations (id INTEGER PRIMARY KEY, title TEXT NOT NULL, created REAL NOT NULL, "
        "updated REAL NOT NULL);"
        "CREATE TABLE messages (id INTEGER PRIMARY KEY, conversation_id INTEGER NOT NULL REFERENCES "
        "conversations(id) ON DELETE CASCADE, role TEXT NOT NULL CHECK (role IN ('user', 'assistant')), "
        "text TEXT NOT NULL, sources TEXT, stats TEXT, created REAL NOT NULL);"
        "INSERT INTO conversations VALUES (1, 'Old chat', 0, 0);"
        "INSERT INTO messages VALUES (1, 1, 'user', 'Still here?', NULL, NULL, 0);"
        "PRAGMA user_version = 1;"
    )
    db.close()
    chats = ChatStore(tmp_path)
    assert [c.title for c in chats.conversations()] == ["Old chat"]
    assert chats.messages(1)[0].text == "Still here?" and chats.scope(1) is None
    chats.set_scope(1, [tmp_path / "Docs"])
    chats.close()
    again = ChatStore(tmp_path)
    assert again.scope(1) == [tmp_path / "Docs"]
    assert again._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    again.close()


def test_the_scope_bar_limits_a_chat_and_is_remembered(qtbot, open_window, fp32_bundle, tmp_path) -> None:  # noqa: F811
    prophets, others = tmp_path / "Prophets", tmp_path / "Others"
    for folder, names in ((prophets, ("jonah.txt", "daniel-1-6.txt")), (others, ("ruth.txt", "esther.txt"))):
        folder.mkdir()
        for name in names:
            shutil.copy(KJV / name, folder / name)
    window, controller = open_window(settings=Settings(bundle_path=str(fp32_bundle), greedy=True, max_new_tokens=4))
    wait_ready(qtbot, controller)
    controller.add_folder(str(prophets))
    controller.add_folder(str(others))
    qtbot.waitUntil(lambda: len(window._library_folders()) == 2, timeout=30000)
    qtbot.waitUntil(
        lambda: (
            controller.library.store.count_states()["ready"] == 4
            and controller.library.store.count_states()["pending"] == 0
        ),
        timeout=120000,
    )
    bar = window.chat.scope_bar
    assert bar.button.text() == "All folders ▾"
    bar.menu.aboutToShow.emit()
    assert [a.text() for a in bar.menu.actions() if a.text()] == ["All folders", "Others", "Prophets"]
    bar.toggle(others, True)
    chat = window.conversation_id
    assert controller.chats.scope(chat) == [others] and bar.button.text() == "Others ▾"
    window.ask("How long was Jonah inside the great fish?")
    qtbot.waitUntil(lambda: window.worker is None, timeout=60000)
    answer = controller.chats.messages(chat)[-1]
    assert answer.sources and {Path(s["path"]).parent for s in answer.sources} == {others}
    # Another chat searches everything; coming back restores this chat's scope.
    window.new_conversation()
    assert bar.scope is None and bar.button.text() == "All folders ▾"
    controller.chats.add(window.conversation_id, Message("user", "placeholder"))
    window._load_conversations(select=chat)
    assert bar.scope == [others]
