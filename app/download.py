"""`dolphin-desk download REPO DEST`: fetch a checkpoint from the Hugging Face hub, resumable.

Prints `download: <done> <total>` byte counts to stderr so the app can draw a progress bar.
"""

from __future__ import annotations

import shutil
import socket
import sys
import threading
import time
from pathlib import Path

CHECKPOINT_FILES = ["*.json", "*.safetensors", "*.txt", "tokenizer*", "*.model", "*.py"]


class DownloadError(Exception):
    """The download cannot start or did not finish; one line."""


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _unreachable(exc: BaseException) -> bool:
    """No network, no name resolution, a refused or timed-out connection, or offline mode, at any
    depth of the exception chain (huggingface_hub wraps httpx's and requests' errors)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        kind = type(current).__name__
        if any(word in kind for word in ("Connect", "Offline", "Timeout", "LocalEntryNotFound", "NameResolution")):
            return True
        if isinstance(current, (ConnectionError, TimeoutError, socket.gaierror)):
            return True
        current = current.__cause__ or current.__context__
    return False


def download(repo: str, dest: Path, report: bool = True) -> Path:
    try:
        from huggingface_hub import HfApi, snapshot_download
    except ImportError:
        raise DownloadError("downloading needs huggingface_hub: pip install huggingface-hub") from None
    dest.mkdir(parents=True, exist_ok=True)
    try:
        info = HfApi().model_info(repo, files_metadata=True)
    except Exception as exc:  # noqa: BLE001 - offline, unknown repo, auth: all end as one line
        kind = type(exc).__name__
        if _unreachable(exc):
            raise DownloadError(
                f"you appear to be offline: the Hugging Face hub cannot be reached ({kind}); connect to the "
                "internet and start the download again (it resumes)"
            ) from None
        raise DownloadError(
            f"cannot look up {repo} on the Hugging Face hub: {kind}: {str(exc).splitlines()[0]}"
        ) from None
    total = sum(s.size or 0 for s in info.siblings or [] if not s.rfilename.endswith((".bin", ".pt", ".gguf")))
    needed = max(total - _folder_bytes(dest), 0) * 1.05
    free = shutil.disk_usage(dest).free
    if needed > free:
        raise DownloadError(
            f"{repo} needs {needed / 1e9:.1f} GB more disk space, {free / 1e9:.1f} GB is free at {dest}"
        )
    finished = threading.Event()

    def progress() -> None:
        while not finished.wait(0.5):
            print(f"download: {_folder_bytes(dest)} {total}", file=sys.stderr, flush=True)

    reporter = threading.Thread(target=progress, daemon=True)
    if report:
        reporter.start()
    try:
        snapshot_download(repo, local_dir=str(dest), allow_patterns=CHECKPOINT_FILES)
    except Exception as exc:  # noqa: BLE001
        raise DownloadError(
            f"the download stopped: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
            "(run it again to resume)"
        ) from None
    finally:
        finished.set()
        time.sleep(0)
    if report:
        print(f"download: {total} {total}", file=sys.stderr, flush=True)
    return dest
