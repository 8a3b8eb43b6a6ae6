"""Database schema and engine: SQLite (WAL) on one machine, PostgreSQL for a fleet."""

from __future__ import annotations

import time
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
from sqlalchemy.exc import DisconnectionError
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
    # the storage settings version `outputs` were written under (StorageConfigVersionRow; 0: the environment's);
    # None: not recorded (a job that did not succeed, or one finished before revision 0005)
    storage_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
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
    # the JSON body of the latest attempt (signed as sent); the dispatcher renders it from the job at every attempt
    # (fresh presigned links); None until the first (the ledger writes the row in a worker that knows no dialect)
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


class StorageConfigVersionRow(Base):
    """Every storage settings version ever saved (written with StorageConfigRow's row): a job's outputs stay
    readable through the settings they were written under (JobRow.storage_version), whatever is current."""

    __tablename__ = "storage_config_versions"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    config: Mapped[dict] = mapped_column(JSON)
    saved_at: Mapped[datetime] = mapped_column(DateTime(), default=utcnow)


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


PING_AFTER_IDLE_S = 1.0  # a pooled server connection unused this long is pinged before it is handed out


def make_db_engine(url: str, *, pool_size: int = 5) -> Engine:
    """One engine per process. SQLite gets WAL and a busy timeout so API and workers share it.

    pool_size: connections kept open, at least as many as the process's threads that use the store at once (the
    API's `server.blocking_threads`): past it (plus a small overflow) each store call opened and closed a
    connection of its own -- on SQLite the connect and its pragmas cost more than the query."""
    if url.startswith("sqlite"):
        engine = create_engine(url, pool_size=pool_size, max_overflow=10,
                               connect_args={"timeout": 30, "check_same_thread": False})
        _cheap_sqlite_autocommit(engine)

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
        # LIFO: the connections in use stay few and warm, the others idle (and are pinged when taken again)
        engine = create_engine(url, pool_size=pool_size, pool_timeout=10, pool_use_lifo=True,
                               connect_args=connect_args)
        ping_when_idle(engine, PING_AFTER_IDLE_S)
        if engine.dialect.driver == "psycopg":
            prepare_early(engine)
    return engine


def prepare_early(engine: Engine) -> None:
    """psycopg (3) prepares a statement on the server at its second execution on a connection instead of its
    sixth: until then the server parsed and planned it at every execution -- the claim statement's plan alone
    costs about as much server CPU as running it (~0.2-0.5 ms), and each new connection of a worker ran each of
    its statements five times so. Not at the first: preparing is a round trip of its own, wasted on a statement
    run once. The statements here are few and built once (bind parameters): psycopg's cache of prepared
    statements per connection (`prepared_max`) holds them."""

    @event.listens_for(engine, "connect")
    def _prepare_early(dbapi_conn, _record) -> None:  # noqa: ANN001
        dbapi_conn.prepare_threshold = 1


def _cheap_sqlite_autocommit(engine: Engine) -> None:
    """`autocommit(db)` on SQLite without a statement per use: SQLAlchemy switches the pysqlite connection to
    the driver's autocommit mode on checkout and back on checkin, and going back runs `PRAGMA read_uncommitted = 0`
    (to restore SERIALIZABLE, the level every connection here keeps: nothing asks for READ UNCOMMITTED) -- a
    statement on every checkin, a fifth of a fetch's store time. Both levels this process uses are the driver's
    attribute alone; any other level goes through SQLAlchemy's own code."""
    dialect = engine.dialect
    general = dialect.set_isolation_level

    def set_isolation_level(dbapi_conn, level) -> None:  # noqa: ANN001
        if level == "AUTOCOMMIT":
            dbapi_conn.isolation_level = None
        elif level == "SERIALIZABLE":  # SQLite's own default: read_uncommitted is never set on these connections
            dbapi_conn.isolation_level = ""
        else:
            general(dbapi_conn, level)

    dialect.set_isolation_level = set_isolation_level  # type: ignore[method-assign]


def ping_when_idle(engine: Engine, idle_s: float) -> None:
    """pool_pre_ping, only for connections that sat in the pool `idle_s` or longer: a dead one (the server
    restarted, the network dropped it) is replaced before use. A connection handed back a moment ago is used
    as it is -- pinging it on every checkout cost a round trip and a server transaction per store call (~15 per
    job, docs/performance.md "Control plane"); if the server went away within that moment, the statement fails
    as a disconnect, which invalidates the pool, and the caller's retry (or its 503) follows."""

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_conn, record) -> None:  # noqa: ANN001
        if record is not None:
            record.info["checked_in"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_conn, record, _proxy) -> None:  # noqa: ANN001
        since = record.info.get("checked_in")
        if since is None or time.monotonic() - since < idle_s:
            return  # new (just connected) or just used
        try:
            alive = engine.dialect.do_ping(dbapi_conn)
        except Exception as e:  # noqa: BLE001 - any failure of the ping: take another connection
            raise DisconnectionError(f"pooled connection failed its ping: {e}") from e
        if alive is False:
            raise DisconnectionError("pooled connection failed its ping")


def autocommit(db: Engine) -> Engine:
    """The same engine (same pool) for single-statement reads and writes: no BEGIN and COMMIT/ROLLBACK around
    the statement (one round trip instead of three on PostgreSQL). For what needs no transaction of its own."""
    return db.execution_options(isolation_level="AUTOCOMMIT")
