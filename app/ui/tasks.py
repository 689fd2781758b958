"""Run slow work off the GUI thread, then deliver its result or error on the GUI thread."""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, Signal


class _Relay(QObject):
    succeeded = Signal(object)
    failed = Signal(str, str)


class _Task(QRunnable):
    def __init__(self, function: Callable[[], Any], relay: _Relay) -> None:
        super().__init__()
        self._function = function
        self._relay = relay

    def run(self) -> None:
        try:
            result = self._function()
        except Exception as exc:  # noqa: BLE001 - every failure goes back to the GUI as a message
            self._relay.failed.emit(str(exc) or type(exc).__name__, traceback.format_exc())
            return
        self._relay.succeeded.emit(result)


class TaskRunner(QObject):
    """`runner.run(work, on_done, on_error)`: `work` in the pool, callbacks on the GUI thread."""

    def __init__(self, parent: QObject | None = None, max_threads: int = 4) -> None:
        super().__init__(parent)
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(max_threads)
        self._relays: set[_Relay] = set()

    def run(
        self,
        work: Callable[[], Any],
        on_done: Callable[[Any], None] | None = None,
        on_error: Callable[[str, str], None] | None = None,
    ) -> None:
        relay = _Relay(self)
        self._relays.add(relay)

        def finish() -> None:
            self._relays.discard(relay)
            relay.deleteLater()

        relay.succeeded.connect(lambda result: (on_done(result) if on_done else None, finish()))
        relay.failed.connect(lambda message, details: (on_error(message, details) if on_error else None, finish()))
        self._pool.start(_Task(work, relay))

    def wait(self, msecs: int = 30000) -> bool:
        return self._pool.waitForDone(msecs)
