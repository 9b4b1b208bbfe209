"""Poll for a condition with a deadline instead of sleeping for a guess; run a poller in
a thread for as long as a `with` block lasts."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Self, TypeVar

T = TypeVar("T")


def wait_for(probe: Callable[[], T | None], *, timeout: float = 60.0, what: str = "condition") -> T:
    """Poll `probe` until it returns something truthy; fail with `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class InThread:
    """`with obj:` runs `obj._run` in a thread until the block ends and sets `_stop`
    (subclasses are dataclasses with a `_stop: threading.Event` field)."""

    _stop: threading.Event

    def _run(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
