"""Database schema and engine: SQLite (WAL) on one machine, PostgreSQL for a fleet."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Engine,
    Float,
    Integer,
    LargeBinary,
    String,
    Text,
    create_engine,
    event,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    """Naive UTC: SQLite keeps no time zone, so every timestamp is UTC by convention."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class JobRow(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key_id: Mapped[str] = mapped_column(String(32), index=True)
    dialect: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), index=True)
    request: Mapped[dict] = mapped_column(JSON)
    dialect_params: Mapped[dict] = mapped_column(JSON, default=dict)
    output_token: Mapped[str] = mapped_column(String(64), unique=True)
    outputs: Mapped[list] = mapped_column(JSON, default=list)
    nsfw: Mapped[list] = mapped_column(JSON, default=list)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    webhook_status: Mapped[str] = mapped_column(String(32), default="", index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(), nullable=True)


class WebhookDeliveryRow(Base):
    """One job's webhook: written by the ledger in the transaction that finishes the job (store/ledger.py),
    then its rendered payload and its retry schedule (store/deliveries.py).

    `next_attempt_at` is both the schedule and the lease: a dispatcher that takes a delivery pushes it
    past the attempt's timeout, so a delivery whose process died mid-attempt is simply due again later.
    """

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(BigInteger, unique=True)
    delivery_id: Mapped[str] = mapped_column(String(64), unique=True)  # sent as webhook-id, same on every retry
    url: Mapped[str] = mapped_column(Text)
    # the exact JSON body sent (and signed); None until the dispatcher renders it at its first attempt (the
    # ledger writes the row when the job finishes, in a worker that knows no dialect)
    payload: Mapped[str | None] = mapped_column(Text, nullable=True)
    state: Mapped[str] = mapped_column(String(16), index=True)  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(), index=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(), nullable=True)


class StorageConfigRow(Base):
    """Storage settings saved by `update_s3` (one row, id 1); `version` tells processes to reload."""

    __tablename__ = "storage_config"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    config: Mapped[dict] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)


class QueueRow(Base):
    """The local queue backend's table: one row per job waiting or claimed."""

    __tablename__ = "local_queue"

    job_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    claimed_by: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(), nullable=True)
    # routing, copied from the job at enqueue: workers prefer jobs for models they hold (affinity)
    model_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    label: Mapped[str | None] = mapped_column(String(32), nullable=True)  # only workers with this label
    enqueued_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)


class ControlEventRow(Base):
    """Orders to every worker, applied between jobs (store/control.py): clear_cache, reload_registry, restart."""

    __tablename__ = "control_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)


class KeyRow(Base):
    __tablename__ = "api_keys"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16), default="user")
    max_queued: Mapped[int | None] = mapped_column(Integer, nullable=True)  # None: the server's default cap
    created_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(), nullable=True)


class WorkerRow(Base):
    """Live workers and what they hold: the API's /health and system details read this."""

    __tablename__ = "workers"

    worker_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    pid: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))  # starting | idle | busy | stopped
    current_job: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    models: Mapped[list] = mapped_column(JSON, default=list)
    labels: Mapped[list] = mapped_column(JSON, default=list)  # e.g. ["a100"]: the GPU class it runs on
    started_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)


class ProgressRow(Base):
    """A running job's denoising progress (written by its worker, throttled), its latest step preview, and
    whether a client asked to cancel it or to finish it now (read by the worker between steps)."""

    __tablename__ = "job_progress"

    job_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    step: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int] = mapped_column(Integer, default=0)
    step_s: Mapped[float | None] = mapped_column(Float, nullable=True)  # measured seconds per step
    preview: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)  # small JPEG of the latents
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # a client asked to end the denoising now and keep the image so far (A1111's /interrupt): the job succeeds
    finish_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    updated_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)


class KeyOptionsRow(Base):
    """Settings a client keeps per key (the A1111 API's /options: sd_model_checkpoint)."""

    __tablename__ = "key_options"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    options: Mapped[dict] = mapped_column(JSON, default=dict)


class WorkerDeviceRow(Base):
    """The hardware a live worker runs on: its torch device, the dtype it resolved, its model-cache budget."""

    __tablename__ = "worker_devices"

    worker_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    device: Mapped[str] = mapped_column(String(32))
    dtype: Mapped[str] = mapped_column(String(8))
    cache_budget_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)


def make_db_engine(url: str) -> Engine:
    """One engine per process. SQLite gets WAL and a busy timeout so API and workers share it."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # noqa: ANN001
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

    else:  # a server: a dead connection is noticed before use, and a down server fails fast (no hang)
        # PostgreSQL (libpq): TCP keepalives and a user timeout, so a connection whose packets are dropped (a
        # network partition) fails within ~15 s instead of waiting for TCP's retransmits (minutes)
        connect_args = {"connect_timeout": 5, "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
                        "keepalives_count": 3, "tcp_user_timeout": 15000} if url.startswith("postgresql") else {}
        engine = create_engine(url, pool_pre_ping=True, pool_timeout=10, connect_args=connect_args)
    return engine

