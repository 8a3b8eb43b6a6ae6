"""A job finished in another process wakes the requests waiting for it at once (jobqueue/signals.py
CompletionBroadcaster, service/watch.py JobWatch), and disturbs the event loop of a process where nobody waits not
at all. No server: the broadcaster and the watch on an event loop, the store's marks a dict."""

from __future__ import annotations

import asyncio
import threading
import time

from diffserve.jobqueue.signals import CompletionBroadcaster
from diffserve.service.watch import JobWatch

SLOW_POLL_S = 30.0  # the watch's own round: a wake-up that came from it would take this long


def test_a_waiting_request_hears_a_job_finished_elsewhere_at_once() -> None:
    async def scenario() -> float:
        marks = {7: ("running",)}
        broadcaster = CompletionBroadcaster(None)
        broadcaster.start(asyncio.get_running_loop())
        watch = JobWatch(lambda ids: {i: marks[i] for i in ids}, SLOW_POLL_S, broadcaster)
        try:
            with watch.follow(7) as follower:
                assert await follower.changed(5)  # the first read of the job

                def finish() -> None:  # a worker elsewhere ends the job; its NOTIFY reaches this process
                    time.sleep(0.2)
                    marks[7] = ("succeeded",)
                    broadcaster.job_done_elsewhere(7)

                threading.Thread(target=finish).start()
                started = time.monotonic()
                assert await follower.changed(SLOW_POLL_S / 2)
                return time.monotonic() - started
        finally:
            await watch.stop()
            broadcaster.stop()

    assert asyncio.run(scenario()) < 5


def test_a_job_finished_while_nobody_waits_does_not_wake_the_loop() -> None:
    async def scenario() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        wakes: list[int] = []
        real = loop.call_soon_threadsafe
        loop.call_soon_threadsafe = lambda *args, **kw: (wakes.append(1), real(*args, **kw))[1]  # type: ignore
        broadcaster = CompletionBroadcaster(None)
        broadcaster.start(loop)
        try:
            listener = threading.Thread(target=lambda: [broadcaster.job_done_elsewhere(i) for i in range(100)])
            listener.start()  # finished jobs nobody here waits for, heard on the listener's thread
            listener.join()
            idle = len(wakes)
            waiting = asyncio.create_task(broadcaster.wait(SLOW_POLL_S))
            await asyncio.sleep(0.05)
            threading.Thread(target=broadcaster.job_done_elsewhere, args=(100,)).start()
            await asyncio.wait_for(waiting, 5)  # one that is waited for wakes its waiter
            return idle, len(wakes) - idle
        finally:
            broadcaster.stop()

    idle, waited = asyncio.run(scenario())
    assert idle == 0 and waited >= 1
