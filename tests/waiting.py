"""The one way tests wait: poll a check until it holds, or fail saying what was awaited and what was last seen.

    job = wait_until(lambda: jobs.get(job_id), accept=lambda j: j["status"] == "succeeded",
                     timeout=60, what=f"job {job_id} to succeed")

Domain helpers (Jobs.wait, DiffserveServer.wait_healthy, poll_modelslab...) are thin wrappers over wait_until.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_MAX_SHOWN = 2000  # characters of the last value in a failure message


class WaitTimeout(TimeoutError):
    """A wait_until that ran out of time; its message names what it waited for and the last value seen."""


def wait_until(
    check: Callable[[], T],
    timeout: float = 60,
    every: float = 0.1,
    what: str | None = None,
    *,
    accept: Callable[[T], Any] = bool,
    ignore: type[BaseException] | tuple[type[BaseException], ...] = (),
    context: Callable[[], str] | None = None,
) -> T:
    """Call `check()` every `every` seconds until `accept(value)` holds (default: the value is truthy) and
    return that value. `check` runs at least once, and once more at the deadline.

    ignore: exceptions from `check` that mean "not yet" (e.g. httpx.HTTPError while a server starts); any
    other exception ends the wait at once (a process that exited, a failed assertion).
    On timeout: WaitTimeout (a TimeoutError) naming `what` (default: the check's name), the seconds waited,
    the last value or ignored error seen, and `context()` if given (a log tail, say).
    """
    started = time.monotonic()
    deadline = started + timeout
    last: Any = "<never returned>"
    while True:
        try:
            last = check()
        except ignore as error:  # an empty tuple catches nothing
            last = error
        else:
            if accept(last):
                return last
        left = deadline - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(every, left))
    shown = repr(last)
    if len(shown) > _MAX_SHOWN:
        shown = shown[:_MAX_SHOWN] + f"... ({len(shown)} characters)"
    message = (f"gave up waiting for {what or getattr(check, '__qualname__', repr(check))} after "
               f"{time.monotonic() - started:.1f} s (timeout {timeout} s); last seen: {shown}")
    if context is not None:
        message += "\n" + context()
    raise WaitTimeout(message)
