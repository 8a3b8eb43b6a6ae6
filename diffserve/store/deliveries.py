"""Webhook deliveries in the database: whose job, to which URL, under which id, and when to try next.

A job created with a webhook has `webhook_status = "pending"`. The ledger inserts its delivery in the
transaction that finishes the job (store/ledger.py; one per job: `job_id` is unique), due at once. The row
keeps what a delivery needs besides the job: the URL, the `webhook-id` (the same on every attempt) and the
schedule; the dispatcher renders the payload from the job at every attempt (so presigned links in it are
signed anew) and the body of the latest attempt is written with its outcome (`payload`). Taking a delivery for an attempt moves its
`next_attempt_at` past the attempt's timeout (a lease): if the process dies mid-attempt, the delivery is
due again after that. Each outcome is written to the delivery and mirrored in the job's `webhook_status`:

    pending  -> retrying (after a failed attempt, more to come) -> success | failed
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from diffserve.store.db import JobRow, WebhookDeliveryRow, utcnow

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"


@dataclass(frozen=True)
class Delivery:
    id: int
    job_id: int
    delivery_id: str
    url: str
    payload: str | None  # the body of the latest attempt; None before the first
    state: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None


class DeliveryStore:
    def __init__(self, db: Engine) -> None:
        self._db = db

    def create(self, job_id: int, url: str) -> bool:
        """A delivery for a job that has none (the ledger writes them at finish; this is for tools and tests).
        False if the job already has one."""
        now = utcnow()
        row = WebhookDeliveryRow(
            job_id=job_id, delivery_id=f"msg_{uuid.uuid4().hex}", url=url, payload=None, state=PENDING,
            attempts=0, next_attempt_at=now, created_at=now,
        )
        try:
            with Session(self._db) as s, s.begin():
                s.add(row)
        except IntegrityError:
            return False
        return True

    def claim_due(self, lease_s: float, limit: int, take: Callable[[str], bool] | None = None,
                  scan: int = 500) -> list[Delivery]:
        """Take up to `limit` due deliveries for one attempt each (attempts + 1, leased for `lease_s`), oldest due
        first. `take(url)`, when given, is asked before each claim (the dispatcher's per-host bound): a delivery
        it refuses stays due for a later round. At most `scan` due deliveries are looked at per call."""
        now = utcnow()
        taken: list[Delivery] = []
        with Session(self._db) as s:
            due = s.execute(
                select(WebhookDeliveryRow.id, WebhookDeliveryRow.next_attempt_at, WebhookDeliveryRow.url)
                .where(WebhookDeliveryRow.state == PENDING, WebhookDeliveryRow.next_attempt_at <= now)
                .order_by(WebhookDeliveryRow.next_attempt_at).limit(limit if take is None else max(limit, scan))
            ).all()
            candidates = [(r[0], r[1]) for r in due if take is None or take(r[2])]
        for row_id, seen_at in candidates:
            if len(taken) >= limit:
                break
            with Session(self._db) as s, s.begin():
                row = s.execute(
                    update(WebhookDeliveryRow)
                    .where(WebhookDeliveryRow.id == row_id, WebhookDeliveryRow.state == PENDING,
                           WebhookDeliveryRow.next_attempt_at == seen_at)
                    .values(attempts=WebhookDeliveryRow.attempts + 1,
                            next_attempt_at=now + timedelta(seconds=lease_s))
                    .returning(WebhookDeliveryRow)
                ).scalar_one_or_none()
                if row is not None:
                    taken.append(_to_delivery(row))
        return taken

    def delivered(self, delivery: Delivery, payload: str | None = None) -> None:
        self._record(delivery, state=DELIVERED, job_status="success", error=None, payload=payload, finished=True)

    def retry_at(self, delivery: Delivery, when: datetime, error: str, payload: str | None = None) -> None:
        self._record(delivery, state=PENDING, job_status="retrying", error=error, payload=payload,
                     next_attempt_at=when)

    def failed(self, delivery: Delivery, error: str, payload: str | None = None) -> None:
        """payload: the body the attempt sent (None: no attempt was made, or none was rendered)."""
        self._record(delivery, state=FAILED, job_status="failed", error=error, payload=payload, finished=True)

    def _record(self, delivery: Delivery, *, state: str, job_status: str, error: str | None,
                payload: str | None = None, finished: bool = False,
                next_attempt_at: datetime | None = None) -> None:
        values: dict = {"state": state, "last_error": error}
        if payload is not None:
            values["payload"] = payload
        if finished:
            values["finished_at"] = utcnow()
        if next_attempt_at is not None:
            values["next_attempt_at"] = next_attempt_at
        with Session(self._db) as s, s.begin():
            s.execute(update(WebhookDeliveryRow).where(WebhookDeliveryRow.id == delivery.id).values(**values))
            s.execute(update(JobRow).where(JobRow.id == delivery.job_id).values(webhook_status=job_status))


def _to_delivery(row: WebhookDeliveryRow) -> Delivery:
    return Delivery(row.id, row.job_id, row.delivery_id, row.url, row.payload, row.state, row.attempts,
                    row.next_attempt_at, row.last_error)
