"""Background threads of the server's processes: one daemon thread with a halt event, and a periodic round.

Every long-lived helper (the webhook dispatcher, the temp cleaner, the registration follower, the job-done
listener and broadcaster, the worker supervisor) runs on one `Background`: `start()` starts its daemon
thread, `stop()` sets `halt` and waits up to `join_s` for the loop to notice. `periodic` builds the common
loop: a round now (or after the first interval), then one every `interval_s`; a round that raises is logged
and the next round runs (a database or bucket that is away now is no reason to stop for good).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Background:
    def __init__(self, name: str, loop: Callable[[threading.Event], None], *, join_s: float = 3.0) -> None:
        self.name, self._loop, self._join_s = name, loop, join_s
        self.halt = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, args=(self.halt,), name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.halt.set()
        if self._thread:
            self._thread.join(self._join_s)


def periodic(name: str, round_: Callable[[], object], interval_s: float, *, first_now: bool = True,
             join_s: float = 3.0, failure: str | None = None) -> Background:
    """A Background calling `round_()` every `interval_s` (the first at once unless `first_now` is False);
    an exception in a round is logged as `failure` (default: "<name> round failed") with its traceback."""
    def loop(halt: threading.Event) -> None:
        if not first_now and halt.wait(interval_s):
            return
        while True:
            try:
                round_()
            except Exception:  # noqa: BLE001 - logged; the next round runs
                log.warning(failure or f"{name} round failed", exc_info=True)
            if halt.wait(interval_s):
                return

    return Background(name, loop, join_s=join_s)
