"""One app per library: a lock in the data folder, and a channel to the app that holds it.

Two windows on one data folder would run two indexers over one database, each encoding the same
documents and each pruning what the other wrote. So the app takes an OS lock on
`DATA/app.lock` (`fcntl.flock` / `msvcrt.locking`: the OS drops it when the process dies, so a
crash never leaves a stale lock) and listens on a local channel (a Unix socket or a Windows
named pipe, through `multiprocessing.connection`, authenticated by a random key written in the
lock file, which only the user can read). A second app on the same folder asks the first to come
to the front and exits; `dolphin-desk index FOLDER` asks it to add the folder, so the running
app indexes and watches it rather than a second indexer behind its back.

Core module: no Qt. The window connects `InstanceServer`'s callback to a Qt signal.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path

log = logging.getLogger("dolphin.instance")

LOCK_NAME = "app.lock"
TIMEOUT_S = 5.0


class AlreadyRunning(Exception):
    """Another app holds this data folder's lock."""

    def __init__(self, data_dir: Path, owner: InstanceInfo | None) -> None:
        pid = f" (process {owner.pid})" if owner else ""
        super().__init__(f"Dolphin Desk is already running with the library in {data_dir}{pid}")
        self.owner = owner


@dataclass(frozen=True)
class InstanceInfo:
    """What the lock file tells a second process: who holds it and how to reach it."""

    pid: int
    address: str
    authkey: str  # hex

    @classmethod
    def read(cls, data_dir: Path) -> InstanceInfo | None:
        try:
            data = json.loads((data_dir / LOCK_NAME).read_text(encoding="utf-8"))
            return cls(int(data["pid"]), str(data["address"]), str(data["authkey"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None


def channel_address(data_dir: Path) -> str:
    """A per-folder address; Unix socket paths must stay short (~100 bytes), so it is not in the folder."""
    digest = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:16]
    if sys.platform == "win32":
        return rf"\\.\pipe\dolphin-desk-{digest}"
    return str(Path(tempfile.gettempdir()) / f"dolphin-desk-{os.getuid()}-{digest}.sock")


class InstanceLock:
    """Held for the app's lifetime; `acquire` raises AlreadyRunning when another app holds it."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / LOCK_NAME
        self._file: int | None = None
        self.info: InstanceInfo | None = None

    def acquire(self) -> InstanceInfo:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        if not _try_lock(fd):
            os.close(fd)
            raise AlreadyRunning(self.data_dir, InstanceInfo.read(self.data_dir))
        self._file = fd
        self.info = InstanceInfo(os.getpid(), channel_address(self.data_dir), secrets.token_hex(16))
        record = json.dumps({"pid": self.info.pid, "address": self.info.address, "authkey": self.info.authkey})
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, record.encode())
        return self.info

    def release(self) -> None:
        if self._file is None:
            return
        fd, self._file = self._file, None
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        _unlock(fd)
        os.close(fd)


# Windows locks are mandatory: lock a byte past the record, so others can still read the record.
_WINDOWS_LOCK_OFFSET = 1 << 16


def _try_lock(fd: int) -> bool:
    if sys.platform == "win32":
        import msvcrt

        try:
            os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _unlock(fd: int) -> None:
    if sys.platform == "win32":
        import msvcrt

        try:
            os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        except OSError:
            pass
        return
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_UN)


Handler = Callable[[dict], dict]


class InstanceServer:
    """Takes requests (`{"op": "show"}`, `{"op": "add_folder", "path": ...}`) from other processes
    on a thread of its own and answers with what `handler` returns."""

    def __init__(self, info: InstanceInfo, handler: Handler) -> None:
        self._handler = handler
        self._authkey = bytes.fromhex(info.authkey)
        if sys.platform != "win32":
            Path(info.address).unlink(missing_ok=True)  # left by a crashed app; the lock is ours now
        self._listener = Listener(info.address, authkey=self._authkey)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="instance-server", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._closed.is_set():
            try:
                connection = self._listener.accept()
            except (OSError, EOFError) as exc:  # closed, or a client that failed authentication
                if self._closed.is_set():
                    return
                log.warning("instance channel: %s", exc)
                continue
            threading.Thread(target=self._answer, args=(connection,), daemon=True).start()

    def _answer(self, connection: Connection) -> None:
        with connection:
            try:
                if not connection.poll(TIMEOUT_S):
                    return
                request = connection.recv()
                reply = self._handler(request) if isinstance(request, dict) else {"ok": False, "error": "bad request"}
                connection.send(reply)
            except (OSError, EOFError, ValueError) as exc:
                log.warning("instance channel: %s", exc)

    def close(self) -> None:
        self._closed.set()
        address = self._listener.address
        try:
            # Wake the accept() so the thread ends: connect once, then close the listener.
            with Client(address, authkey=self._authkey):
                pass
        except (OSError, EOFError, ValueError):
            pass
        self._listener.close()
        self._thread.join(timeout=TIMEOUT_S)


def ask_running_app(data_dir: Path, request: dict, timeout: float = TIMEOUT_S) -> dict | None:
    """Send `request` to the app that holds `data_dir`; None if no app answers within `timeout`."""
    info = InstanceInfo.read(data_dir)
    if info is None:
        return None
    try:
        with Client(info.address, authkey=bytes.fromhex(info.authkey)) as connection:
            connection.send(request)
            if not connection.poll(timeout):
                return None
            reply = connection.recv()
    except (OSError, EOFError, ValueError) as exc:
        log.info("no running app answered on %s: %s", info.address, exc)
        return None
    return reply if isinstance(reply, dict) else None


def is_locked(data_dir: Path) -> bool:
    """Whether an app holds this data folder (tries the lock, and lets go at once)."""
    if not (data_dir / LOCK_NAME).exists():
        return False
    try:
        lock_fd = os.open(data_dir / LOCK_NAME, os.O_RDWR)
    except OSError:
        return False
    try:
        if _try_lock(lock_fd):
            _unlock(lock_fd)
            return False
        return True
    finally:
        os.close(lock_fd)
