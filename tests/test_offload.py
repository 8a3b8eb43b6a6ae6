"""core/offload.py: the API process's one bounded pool for blocking calls (store, storage, image work)."""

from __future__ import annotations

import threading
import time

import anyio
import pytest

from diffserve.core.offload import Offload


def test_calls_run_off_the_loop_with_args_and_kwargs():
    loop_thread = threading.get_ident()

    def call(a, b, *, c):
        return a + b + c, threading.get_ident()

    async def main():
        return await Offload(2)(call, 1, 2, c=3)

    total, thread = anyio.run(main)
    assert total == 6 and thread != loop_thread


def test_at_most_threads_calls_at_once():
    running, peak, lock = 0, 0, threading.Lock()

    def slow():
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)
        with lock:
            running -= 1

    async def main():
        offload = Offload(3)
        async with anyio.create_task_group() as tg:
            for _ in range(12):
                tg.start_soon(offload, slow)
        return offload.busy

    started = time.perf_counter()
    assert anyio.run(main) == 0
    assert peak == 3
    assert time.perf_counter() - started >= 0.05 * 4 * 0.9  # 12 calls, 3 at a time: 4 rounds


def test_errors_reach_the_caller():
    def boom():
        raise KeyError("gone")

    async def main():
        await Offload(1)(boom)

    with pytest.raises(KeyError, match="gone"):
        anyio.run(main)


def test_threads_has_to_be_positive():
    with pytest.raises(ValueError, match="`threads` has to be at least 1 but is 0"):
        Offload(0)


def test_a_cancelled_caller_waits_for_the_call_to_return():
    events: list[str] = []

    def slow():
        time.sleep(0.2)
        events.append("call returned")
        return 7

    async def main():
        offload = Offload(2)
        with anyio.move_on_after(0.05):
            got = await offload(slow)  # an anyio scope's cancellation: the call's result, then the cancel
            events.append(f"got {got}")
            await anyio.sleep(1)
            events.append("slept")  # never: the scope is cancelled
        events.append("scope left")

    anyio.run(main)
    assert events == ["call returned", "got 7", "scope left"]

