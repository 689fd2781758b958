"""The library's state as one plain dictionary, for `dolphin-desk status` (readable without a
model or a writer: it only reads the database)."""

from __future__ import annotations

from app.library.states import DocumentState
from app.library.store import LIBRARY_WIDE, Store, display_path


def library_status(store: Store) -> dict[str, object]:
    """Per folder and per document state, and what went wrong outside documents (a folder
    that cannot be watched, a bad .gitignore, the indexer stopping); readable without a model."""
    problems = store.problems()

    def problems_of(folder_id: int) -> list[dict[str, object]]:
        return [
            {"source": p.source, "subject": p.subject, "message": p.message, "at": p.at}
            for p in problems
            if p.folder_id == folder_id
        ]

    folders = []
    for folder in store.folders():
        documents = store.documents(folder.id)
        counts: dict[str, int] = {}
        for document in documents:
            counts[document.state.value] = counts.get(document.state.value, 0) + 1
        folders.append(
            {
                "path": display_path(folder.path),
                "missing": not folder.path.is_dir(),
                "counts": counts,
                "documents": len(documents),
                "problems": problems_of(folder.id),
            }
        )
    documents = [
        {
            "path": display_path(d.path),
            "state": d.state.value,
            "chunks": d.chunk_count,
            "indexed_at": d.indexed_at,
            "error": d.error if d.state.has_reason else None,
            "note": d.note if d.state is DocumentState.READY else None,
        }
        for d in store.documents()
    ]
    stopped = next((p.message for p in problems if p.folder_id == LIBRARY_WIDE and p.source == "indexer"), None)
    return {
        "data_dir": str(store.path.parent),
        "folders": folders,
        "documents": documents,
        "counts": {state.value: n for state, n in store.count_states().items()},
        "memories": store.memory_stats(),
        "indexer": {"state": "stopped", "reason": stopped} if stopped else {"state": "running"},
        "problems": [p for p in problems_of(LIBRARY_WIDE) if p["source"] != "indexer"],
    }
