"""The webhook dispatcher: a thread in the API process that delivers finished jobs' webhooks.

Why the API process: it is the one process that is always running (with or without local
workers, and in a fleet where workers sit on other machines), it knows the dialects (which render
the payloads) and the public base URL, and it keeps network calls to client-chosen hosts away from
the GPU workers. Several API processes may run it at once: deliveries are claimed with an atomic
update in the shared database (see store/deliveries.py), so each attempt is made by one of them.

The ledger writes a delivery in the transaction that finishes a job with a webhook (store/ledger.py);
every `poll_interval_s` the dispatcher hands the due deliveries to a pool of `concurrency` sender threads, at most
`per_host_concurrency` of them to one receiver host (the URL's host name, port aside): a due
delivery to a host at its bound stays due for a later round, so a receiver that hangs holds its
own host's senders and never delays deliveries to other hosts. An attempt is one POST, through the
same network rules as image URLs (UrlPolicy, connection pinned to the checked address, no
redirects), bounded by `connect_timeout_s` to connect, `read_timeout_s` per read and `timeout_s`
in total. A delivery's payload is rendered (by the job's dialect, from the finished job the delivery names)
at every attempt, so a retry carries links signed now: a presigned URL of a short expiry that lapsed
before the retry is signed afresh. Everything else in it is the same on every attempt (the job ended
and its outputs never change; the delivery id too); the body sent last is kept on the delivery row. A
job that is gone fails its delivery; a render that fails (its storage out of reach for a base64 body)
counts as a failed attempt and is retried like one. A 2xx ends the delivery; a timeout, connection error or other
status schedules the next attempt after an exponential backoff (`backoff_initial_s` times
`backoff_factor` per attempt, at most `backoff_max_s`) until `max_attempts`. The schedule lives in
the database, so a restart resumes it. Jobs never wait for any of this.

Retries are a persisted schedule rather than an in-process retry loop (e.g. tenacity): a sleeping
retry loop would hold a thread per slow receiver and forget its place on restart.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from collections.abc import Callable
import queue
from datetime import timedelta
from typing import Any

import httpx

from diffserve.config import WebhookSettings
from diffserve.core.errors import ImageInputError
from diffserve.core.job import Job
from diffserve.core.threads import periodic
from diffserve.media.fetch import Deadline, UrlPolicy, pinned_request
from diffserve.store.db import utcnow
from diffserve.store.deliveries import Delivery, DeliveryStore
from diffserve.store.jobs import JobStore
from diffserve.webhooks.signing import delivery_headers

log = logging.getLogger(__name__)

_LEASE_MARGIN_S = 5.0  # an attempt cut off by a crash is due again timeout_s + this later


class Outcome:
    """What one attempt gave: ok, or an error and whether trying again could help."""

    def __init__(self, ok: bool, error: str | None = None, permanent: bool = False) -> None:
        self.ok, self.error, self.permanent = ok, error, permanent


def backoff_s(settings: WebhookSettings, attempts_made: int) -> float:
    """Wait before attempt `attempts_made + 1`: initial, initial*factor, ... capped."""
    return min(settings.backoff_initial_s * settings.backoff_factor ** max(attempts_made - 1, 0),
               settings.backoff_max_s)


def webhook_host(url: str) -> str:
    """The receiver host a delivery counts against (per_host_concurrency): the URL's host name, lower case."""
    try:
        return httpx.URL(url).host.lower() or url
    except (httpx.InvalidURL, TypeError, ValueError):
        return url


def post_webhook(http: httpx.Client, policy: UrlPolicy, url: str, body: bytes, headers: dict[str, str],
                 timeout_s: float, connect_s: float | None = None, read_s: float | None = None) -> Outcome:
    """One POST of `body` to `url`; never raises for network or receiver trouble."""
    try:
        target = policy.check(url, field="webhook")
    except ImageInputError as e:
        reason = getattr(e, "reason", None)
        return Outcome(False, reason or e.message, permanent=reason is None)  # blocked: permanent
    deadline = Deadline(timeout_s)
    try:
        request = pinned_request(http, target, "POST", headers=headers, deadline=deadline, content=body,
                                 connect_s=connect_s, read_s=read_s)
        response = http.send(request, stream=True, follow_redirects=False)
        response.close()  # only the status matters; the body is never read
    except httpx.HTTPError as e:
        return Outcome(False, "timed out" if deadline.expired() else f"{type(e).__name__}: {e}"[:300])
    finally:
        deadline.cancel()
    if response.is_success:
        return Outcome(True)
    if response.is_redirect:
        return Outcome(False, f"HTTP {response.status_code} (redirects are not followed)")
    return Outcome(False, f"HTTP {response.status_code}")


class WebhookDispatcher:
    def __init__(
        self,
        settings: WebhookSettings,
        deliveries: DeliveryStore,
        jobs: JobStore,
        render: Callable[[Job], dict[str, Any]],
        policy: UrlPolicy,
        on_outcome: Callable[[str], None] | None = None,
    ) -> None:
        """on_outcome("delivered" | "retry" | "failed"): told of every attempt's result (metrics)."""
        self.settings = settings
        self.deliveries = deliveries
        self.jobs = jobs
        self.render = render
        self.policy = policy
        self._on_outcome = on_outcome or (lambda _outcome: None)
        self._secret = settings.signing_secret.get_secret_value() if settings.signing_secret else None
        self._rounds = periodic("webhooks", self.tick, settings.poll_interval_s, first_now=False, join_s=5,
                                failure="webhook dispatcher round failed")
        self._todo: queue.Queue[Delivery] = queue.Queue()
        self._senders: list[threading.Thread] = []
        self._in_flight = 0
        self._per_host: Counter[str] = Counter()  # attempts in flight per receiver host
        self._lock = threading.Lock()
        self._http = httpx.Client(trust_env=False, follow_redirects=False)

    def start(self) -> None:
        # daemon threads: an attempt stuck on a slow receiver never holds up the server's exit
        self._senders = [threading.Thread(target=self._send_loop, name=f"webhook-{i}", daemon=True)
                         for i in range(self.settings.concurrency)]
        for sender in self._senders:
            sender.start()
        self._rounds.start()

    def stop(self) -> None:
        """Stop taking deliveries; attempts in flight are abandoned (their lease makes them due again)."""
        self._rounds.stop()
        self._http.close()

    def tick(self) -> None:
        """One round: start the due deliveries."""
        with self._lock:
            free = self.settings.concurrency - self._in_flight
            busy = Counter(self._per_host)
        if free <= 0:
            return

        def take(url: str) -> bool:  # this round's picks count too
            host = webhook_host(url)
            if busy[host] >= self.settings.per_host_concurrency:
                return False
            busy[host] += 1
            return True

        lease = self.settings.timeout_s + _LEASE_MARGIN_S
        for delivery in self.deliveries.claim_due(lease, free, take):
            with self._lock:
                self._in_flight += 1
                self._per_host[webhook_host(delivery.url)] += 1
            self._todo.put(delivery)

    def _send_loop(self) -> None:
        while not self._rounds.halt.is_set():
            try:
                delivery = self._todo.get(timeout=0.5)
            except queue.Empty:
                continue
            self._attempt(delivery)

    def _rendered(self, delivery: Delivery) -> bytes | Outcome:
        """This attempt's body, rendered from the job now (links signed now); or the Outcome of an attempt that
        cannot be made: the job is gone (permanent), or rendering failed (a failed attempt, retried)."""
        job = self.jobs.get(delivery.job_id)
        if job is None:
            log.error("webhook for job %s: the job is gone; no delivery", delivery.job_id)
            return Outcome(False, "the job is gone", permanent=True)
        try:
            return json.dumps(self.render(job), separators=(",", ":"), ensure_ascii=False).encode()
        except Exception as e:  # noqa: BLE001 - e.g. its storage out of reach (base64 outputs)
            log.warning("cannot render the webhook payload of job %s", delivery.job_id, exc_info=True)
            return Outcome(False, f"the payload could not be rendered: {type(e).__name__}")

    def _attempt(self, delivery: Delivery) -> None:
        try:
            if self._rounds.halt.is_set():
                return  # leased: another round (or the next start) takes it
            if delivery.attempts > self.settings.max_attempts:  # a crash ate the last attempt's result
                self.deliveries.failed(delivery, delivery.last_error or "no answer")
                return
            body = self._rendered(delivery)
            if isinstance(body, Outcome):
                self._record(delivery, body)
                return
            headers = delivery_headers(delivery.delivery_id, body, self._secret)
            outcome = post_webhook(self._http, self.policy, delivery.url, body, headers, self.settings.timeout_s,
                                   self.settings.connect_timeout_s, self.settings.read_timeout_s)
            self._record(delivery, outcome, body.decode())
        except Exception:
            log.exception("webhook delivery %s failed unexpectedly", delivery.delivery_id)
        finally:
            host = webhook_host(delivery.url)
            with self._lock:
                self._in_flight -= 1
                self._per_host[host] -= 1
                if self._per_host[host] <= 0:
                    del self._per_host[host]

    def _record(self, delivery: Delivery, outcome: Outcome, payload: str | None = None) -> None:
        """Write an attempt's outcome (and the body it sent, if one was sent)."""
        if outcome.ok:
            log.info("webhook for job %s delivered (attempt %s)", delivery.job_id, delivery.attempts)
            self.deliveries.delivered(delivery, payload)
            self._on_outcome("delivered")
            return
        error = outcome.error or "failed"
        if outcome.permanent or delivery.attempts >= self.settings.max_attempts:
            log.warning("webhook for job %s failed after %s attempts: %s", delivery.job_id, delivery.attempts, error)
            self.deliveries.failed(delivery, error, payload)
            self._on_outcome("failed")
            return
        self._on_outcome("retry")
        wait = backoff_s(self.settings, delivery.attempts)
        log.info("webhook for job %s: attempt %s failed (%s); next in %.1fs", delivery.job_id,
                 delivery.attempts, error, wait)
        self.deliveries.retry_at(delivery, utcnow() + timedelta(seconds=wait), error, payload)
