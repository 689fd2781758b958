"""The memory library: folders -> documents -> chunks -> memories, and retrieval. No Qt here."""
