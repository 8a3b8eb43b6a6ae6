"""The API process's one way off the event loop: `await offload(fn, *args)`.

The job store, the key store, storage (local disk or S3) and request-sized image work are synchronous; a handler
never calls them on the event loop. It awaits them through the one `Offload` the app state holds, which runs the
call on a bounded pool of threads of its own (`server.blocking_threads`), so a burst of slow store or S3 calls
queues for those threads instead of taking every thread of anyio's default pool, and one place says how much
blocking work the process runs at once. Image URL fetches keep their own per-key pool (media/slots.py).

    job = await ds.offload(ds.service.jobs.get, job_id)
    jobs = await ds.offload(ds.service.jobs.list_for_key, key.key_id, limit=50)

A cancelled caller (a client gone) waits for its call to return: a store write is never abandoned half way.
Cancelled by an anyio cancel scope, it gets the call's result (the cancellation reaches it at its next await, as
with anyio's `to_thread.run_sync`); cancelled otherwise, CancelledError once the call returned.

The pool is its own, small: a queue of calls, threads started as calls need them (up to `threads`), each
result handed back to the caller's event loop. Every submission makes a few of these calls; anyio's `run_sync`
(its backend lookup, run variables, capacity limiter, a cancel scope per call) or a ThreadPoolExecutor with
`run_in_executor` (work items, a chained future) cost about as much event-loop CPU as the rest of the hop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from functools import partial
from queue import SimpleQueue
from typing import Any, ParamSpec, TypeVar

import anyio

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_THREADS = 32
ANYIO_CANCEL = "Cancelled via cancel scope "  # how anyio's cancel scopes word their cancellations


class _Call:
    __slots__ = ("loop", "future", "fn", "waiter", "finished", "result", "error")

    def __init__(self, loop: asyncio.AbstractEventLoop, fn: Callable[[], Any]) -> None:
        self.loop, self.fn = loop, fn
        self.future: asyncio.Future = loop.create_future()  # the caller awaits it
        self.waiter: asyncio.Future | None = None  # made if the caller was cancelled before the call returned
        self.finished = False
        self.result: Any = None
        self.error: BaseException | None = None


class Offload:
    """Awaitable calls of blocking functions on a bounded thread pool (`threads` at once)."""

    def __init__(self, threads: int = DEFAULT_THREADS) -> None:
        if threads < 1:
            raise ValueError(f"`threads` has to be at least 1 but is {threads}")
        self.threads = threads
        self._calls: SimpleQueue[_Call | None] = SimpleQueue()
        self._lock = threading.Lock()  # guards the three counts below
        self._started = 0  # threads started (and not told to stop)
        self._idle = 0  # of them, waiting for a call that no submitted call has claimed yet
        self._running = 0  # calls running now

    @property
    def busy(self) -> int:
        """Calls running now (the rest wait for a thread)."""
        return self._running

    async def __call__(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        call = _Call(asyncio.get_running_loop(), partial(fn, *args, **kwargs))
        self._submit(call)
        try:
            return await call.future
        except asyncio.CancelledError as exc:
            if not call.finished:  # wait for the call's end, out of reach of anyio's cancel scopes
                call.waiter = call.loop.create_future()
                with anyio.CancelScope(shield=True):
                    await call.waiter
            if exc.args and isinstance(exc.args[0], str) and exc.args[0].startswith(ANYIO_CANCEL):
                if call.error is not None:  # the scope stays cancelled: its next await raises, as with
                    raise call.error from None  # anyio's run_sync
                return call.result
            raise

    def close(self) -> None:
        """Stop the threads once the calls queued before this have run."""
        with self._lock:
            stopping, self._started, self._idle = self._started, 0, 0
        for _ in range(stopping):
            self._calls.put(None)

    def _submit(self, call: _Call) -> None:
        with self._lock:
            if self._idle:
                self._idle -= 1  # that thread takes it
                start = False
            else:
                start = self._started < self.threads  # else it waits for a thread to finish its call
                self._started += start
        self._calls.put(call)
        if start:
            threading.Thread(target=self._work, name="offload", daemon=True).start()

    def _work(self) -> None:
        calls = self._calls
        while (call := calls.get()) is not None:
            with self._lock:
                self._running += 1
            try:
                result, error = call.fn(), None
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                result, error = None, e
            with self._lock:
                self._running -= 1
                self._idle += 1
            try:
                call.loop.call_soon_threadsafe(_deliver, call, result, error)
            except RuntimeError:  # the caller's loop is closed: nobody to answer
                pass
            del call, result, error


def _deliver(call: _Call, result: Any, error: BaseException | None) -> None:
    """On the caller's loop: the call's outcome, to its caller (or to the wait of a cancelled one)."""
    call.finished, call.result, call.error = True, result, error
    if not call.future.done():
        if error is not None:
            call.future.set_exception(error)
        else:
            call.future.set_result(result)
    if call.waiter is not None and not call.waiter.done():
        call.waiter.set_result(None)
