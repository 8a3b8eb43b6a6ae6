"""Fleet queue backend: the claims stay in the job store, Celery 5 messages on Redis carry the wake-ups.

The store is the single source of truth (jobqueue/local.py's table and its affinity, label and fairness rules,
now across machines: every worker's loaded models are in the shared database). The broker adds what a fleet
needs: a worker on another machine hears of a job at once, and delivery is at least once.

- enqueue: the queue row in the store (idempotent), then a Celery task message `diffserve.job` with the job id
  on its class's queue: `diffserve` (any worker) or `diffserve.<label>` (a GPU class; workers with that label
  consume it). A broker that is down does not fail the request: the job is queued in the store, and
  `resend_missing` sends its message once the broker is back.
- claim: wait for a message, prefetch 1 (the store alone only while the broker is away, and a slow look every
  TABLE_LOOK_S for a message lost before resend_missing): an idle worker costs the store nothing, and no
  claim takes a job straight from the store, leaving its message to cost another claim. On a message, one
  statement on PostgreSQL: the worker claims the best waiting job of the message's class for itself (its own
  model first...), learns whether others wait, and whether the message's job is claimed by a worker that is
  gone (the message came back after its visibility timeout): that claim is released (`on_orphan`). It got one:
  the message stays unacknowledged until that job is acked (acks_late: a worker killed mid-job leaves it to be
  delivered again). No job of that class waits: the message was a duplicate, acked and dropped (a job id
  delivered twice runs once). Jobs wait, but another worker is better placed: the message goes back to the
  broker and this worker pauses a moment.
- resend_missing (API side, every resend_interval_s): per class, jobs waiting in the store beyond the messages
  in the broker's list get a message again (Redis restarted without its data, a message lost).

The worker's own loop stays in charge of the process (heartbeats, orders between jobs, batching ticks), so
messages are consumed through Celery's connection (kombu) rather than run by a Celery worker pool.
"""

from __future__ import annotations

import logging
import queue
import socket
import time
from collections import defaultdict
from datetime import timedelta
from typing import Any, Callable, Sequence

from celery import Celery
from kombu import Consumer, Producer, Queue
from kombu.transport import redis as kombu_redis
from kombu.utils.uuid import uuid
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from diffserve.config import QueueSettings
from diffserve.jobqueue.local import LocalQueue, gone_holder
from diffserve.store.db import QueueRow, utcnow

log = logging.getLogger(__name__)

TASK = "diffserve.job"
QUEUE_PREFIX = "diffserve"
_BACK_OFF_S = 0.2  # after giving a message back because another worker is better placed for its jobs
TABLE_LOOK_S = 5.0  # an idle worker looks at the store without a message this often (the API re-sends lost ones)


def queue_name(label: str | None) -> str:
    return QUEUE_PREFIX if label is None else f"{QUEUE_PREFIX}.{label}"


class _Channel(kombu_redis.Channel):
    """kombu's Redis channel, with one client object for its publishes and acks. kombu builds a new
    `redis.Redis` (~170 response callbacks set up) for each message it publishes or acknowledges; a client is
    safe to share (it takes a connection from the channel's pool for each command, as before), so the channel
    keeps the first one it builds. Consuming (BRPOP) keeps kombu's own client."""

    _kept_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        if self._kept_client is None:
            self._kept_client = super()._create_client()
        return self._kept_client


class RedisTransport(kombu_redis.Transport):
    """kombu's Redis transport with `_Channel` (Celery's `broker_transport`; redis:// URLs as before)."""

    Channel = _Channel


def celery_app(settings: QueueSettings) -> Celery:
    """The Celery app both sides share: JSON messages, late acks, one message in flight per worker."""
    app = Celery("diffserve", broker=settings.broker_url, set_as_current=False)
    timeout = settings.broker_timeout_s
    app.conf.update(
        broker_transport=RedisTransport if settings.broker_url.startswith("redis://") else None,
        task_serializer="json", accept_content=["json"], task_default_queue=QUEUE_PREFIX,
        task_acks_late=True, task_reject_on_worker_lost=True, worker_prefetch_multiplier=1,
        broker_connection_timeout=timeout, broker_connection_retry=False, broker_connection_max_retries=0,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            "socket_timeout": timeout, "socket_connect_timeout": timeout,
            "unacked_restore_interval": 1, "unacked_restore_throttle": 1,
        },
    )
    return app


class CeleryQueue(LocalQueue):
    def __init__(self, db: Engine, settings: QueueSettings, *, affinity_wait_s: float = 2.0,
                 live_worker_s: float = 15.0, on_orphan: Callable[["CeleryQueue", int], None] | None = None) -> None:
        super().__init__(db, affinity_wait_s=affinity_wait_s, live_worker_s=live_worker_s)
        self._settings = settings
        self._on_orphan = on_orphan  # gives a dead worker's job back (workers/recovery.py)
        self._app = celery_app(settings)
        self._conn = None
        self._consuming: tuple[str, ...] = ()
        self._inbox: list = []
        self._held: dict[int, object] = {}  # job id -> the message that got it, acked with the job
        self._redis = None
        self._looked = float("-inf")  # when the store was last looked at without a message
        self._producers: queue.SimpleQueue[Producer] = queue.SimpleQueue()  # idle ones (one per sender at once)

    # -- the API side ---------------------------------------------------------------------------------------
    def enqueue(self, job_id: int) -> None:
        self._send(job_id, self._insert(job_id))

    def release(self, job_id: int, attempt: int | None = None) -> bool:
        if not super().release(job_id, attempt):
            return False
        self._ack_message(job_id)
        with Session(self._db) as s:
            label = s.scalar(select(QueueRow.label).where(QueueRow.job_id == job_id))
        self._send(job_id, label)
        return True

    # -- after a ledger change commits (store/ledger.py QueueEvents) -----------------------------------------
    def enqueued(self, job_id: int, label: str | None) -> None:
        """A queue row was written or released: its message on the class's queue (re-sent later if the broker
        is away: resend_missing)."""
        self._send(job_id, label)

    def forgotten(self, job_id: int) -> None:
        """The job ended, was refused to this attempt or given back: acknowledge the message that brought it."""
        super().forgotten(job_id)
        self._ack_message(job_id)

    def resend_missing(self) -> int:
        """Send a message again for every waiting job the broker's queues do not account for."""
        with Session(self._db) as s:
            rows = s.execute(select(QueueRow.job_id, QueueRow.label).where(QueueRow.claimed_by.is_(None))
                             .order_by(QueueRow.job_id)).all()
        waiting: dict[str | None, list[int]] = defaultdict(list)
        for job_id, label in rows:
            waiting[label].append(job_id)
        sent = 0
        for label, ids in waiting.items():
            missing = len(ids) - self._broker().llen(queue_name(label))
            for job_id in ids[:max(0, missing)]:
                sent += self._send(job_id, label)
        if sent:
            log.warning("re-sent %d job message(s) missing from the broker", sent)
        return sent

    def _send(self, job_id: int, label: str | None) -> bool:
        """One message (the API's every submission), as Celery's send_task writes it, on a producer kept by this
        queue (a kombu producer serves one thread at a time: each sender takes an idle one or makes one, and
        gives it back; send_task takes one from Celery's pool and routes the task per message: ~1/3 of its
        CPU here).
        What Celery would work out per message is given: the arguments' repr for its headers (`saferepr`, the
        same text for an int and a label), and no queue declaration -- on Redis a message is pushed onto the list
        named by its queue whether or not that queue was declared, and the workers' consumers declare theirs
        (`declare=[]`: no `maybe_declare` per publish)."""
        args, kwargs = [job_id], {"label": label}
        amqp = self._app.amqp
        producer = None
        try:
            try:
                producer = self._producers.get_nowait()
            except queue.Empty:
                producer = Producer(self._app.connection_for_write().default_channel, auto_declare=False)
            message = amqp.create_task_message(uuid(), TASK, args, kwargs, argsrepr=repr(args),
                                               kwargsrepr=repr(kwargs))
            amqp.send_task_message(producer, TASK, message, queue=queue_name(label), retry=False, declare=[])
        except Exception as e:  # noqa: BLE001 - the broker is away; the job waits in the store, re-sent later
            if producer is not None:  # its connection may be broken: dropped, the next send makes a new one
                _release(producer.connection)
            log.warning("broker unreachable (%s): job %s stays queued and is re-sent later", e, job_id)
            return False
        self._producers.put(producer)
        return True

    def _broker(self):
        if self._redis is None:
            import redis

            timeout = self._settings.broker_timeout_s
            self._redis = redis.Redis.from_url(self._settings.broker_url, socket_timeout=timeout,
                                               socket_connect_timeout=timeout)
        return self._redis

    # -- the worker side ------------------------------------------------------------------------------------
    def claim(self, worker_id: str, timeout: float, *, loaded: Sequence[str] = (),
              labels: Sequence[str] = (), start: bool = False) -> int | None:
        """Jobs come through messages: every waiting job has one in the broker (a claim that takes another
        job than its message's leaves that message for the next claim), and on a message the worker claims
        the best waiting job for itself, its own model's first. The store is looked at without a message only
        while the broker is away and once every TABLE_LOOK_S (a message lost before the API's resend_missing):
        an idle worker costs the store nothing, a job one claim statement (on PostgreSQL with `start`, that
        statement starts it too: LocalQueue.claim)."""
        deadline = time.monotonic() + timeout
        if self._conn is None or time.monotonic() - self._looked >= TABLE_LOOK_S:
            self._looked = time.monotonic()
            job_id = self._try_claim(worker_id, loaded, labels, start=start)
            if job_id is not None:
                return job_id
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            message = self._receive(labels, remaining)
            if message is not None:
                job_id = self._on_message(message, worker_id, loaded, labels, deadline, start)
            elif self._conn is None:  # the broker is away: take jobs from the store meanwhile
                job_id = self._try_claim(worker_id, loaded, labels, start=start)
            else:
                continue
            if job_id is not None:
                return job_id

    def ack(self, job_id: int, attempt: int | None = None) -> bool:
        dropped = super().ack(job_id, attempt)
        self._ack_message(job_id)
        return dropped

    def _ack_message(self, job_id: int) -> None:
        message = self._held.pop(job_id, None)
        if message is None:
            return
        try:
            message.ack()
        except Exception:  # noqa: BLE001 - the broker is away: it delivers the message again, a no-op then
            log.warning("could not acknowledge the message of job %s", job_id, exc_info=True)
            self._disconnect()

    def _on_message(self, message, worker_id: str, loaded: Sequence[str], labels: Sequence[str],
                    deadline: float, start: bool = False) -> int | None:
        try:
            (job_id,), kwargs = message.payload[0], message.payload[1]
            label = kwargs.get("label")
        except (TypeError, ValueError, IndexError, AttributeError):
            log.warning("dropping a malformed message: %r", message.payload)
            message.ack()
            return None
        # one statement on PostgreSQL: the best waiting job of the message's class for this worker, whether
        # others wait, and whether the message's job is held by a worker that is gone
        claimed = self._claim_retried(worker_id, loaded, labels, label, message_job=int(job_id), start=start) \
            if self._pg else None
        orphan_of = claimed.orphan_of if claimed is not None else self._holder_gone(int(job_id), worker_id)
        if orphan_of is not None:
            log.warning("job %s was claimed by %s, which is gone: running it again", job_id, orphan_of)
            if self._on_orphan is not None:
                self._on_orphan(self, int(job_id))
            if claimed is not None and claimed.job_id is None:
                claimed = None  # the orphan is queued again: claim once more, it may be this worker's
        if claimed is None:
            claimed = self._claim_retried(worker_id, loaded, labels, label, start=start)
        if claimed.job_id is not None:
            self._held[claimed.job_id] = message
            return claimed.job_id
        if claimed.waiting:
            message.requeue()  # another worker is better placed now; someone takes it soon
            time.sleep(max(0.0, min(_BACK_OFF_S, deadline - time.monotonic())))
        else:
            message.ack()  # a duplicate: its job ran already (or is running)
        return None

    def _holder_gone(self, job_id: int, worker_id: str) -> str | None:
        """The worker holding the job when it is another one and gone (stale heartbeat), by the claim statement's
        own rule (gone_holder): one read (the store is not PostgreSQL, where the claim statement answers it)."""
        params = {"p_message_job": job_id, "p_worker": worker_id,
                  "p_stale": utcnow() - timedelta(seconds=self._live_worker_s)}
        with self._now.connect() as c:
            return c.execute(gone_holder(), params).scalar()

    def _receive(self, labels: Sequence[str], timeout: float):
        names = tuple(queue_name(label) for label in (None, *sorted(labels)))
        try:
            if self._conn is None or self._consuming != names:
                self._connect(names)
            if not self._inbox:
                self._conn.drain_events(timeout=timeout)
        except socket.timeout:
            pass
        except Exception as e:  # noqa: BLE001 - the broker is away: claims from the store go on meanwhile
            log.warning("broker unreachable (%s); taking jobs from the store until it is back", e)
            self._disconnect()
            time.sleep(min(timeout, 1.0))
        return self._inbox.pop(0) if self._inbox else None

    def _connect(self, names: tuple[str, ...]) -> None:
        self._disconnect()
        conn = self._app.connection_for_read()
        conn.ensure_connection(max_retries=1)
        consumer = Consumer(conn.default_channel, [Queue(n, routing_key=n) for n in names], accept=["json"],
                            callbacks=[lambda _body, message: self._inbox.append(message)], prefetch_count=1)
        consumer.consume()
        self._conn, self._consuming = conn, names

    def _disconnect(self) -> None:
        conn, self._conn, self._consuming, self._inbox = self._conn, None, (), []
        self._held.clear()  # unacknowledged messages come back from the broker by themselves
        if conn is not None:
            _release(conn)


def _release(conn) -> None:  # noqa: ANN001 - a kombu Connection
    try:
        conn.release()
    except Exception:  # noqa: BLE001 - already gone
        pass
