"""Transient errors in one process, on real servers: the job store away for a moment must not make a storage
operation fail (a worker cut off from PostgreSQL would fail its job with OperationalError while re-reading the
storage settings, issue 33). The fleet-wide partitions are in test_partition.py."""

from __future__ import annotations

import pytest

from .pgserver import PostgresServer
from .s3server import ACCESS_KEY, PRIVATE_BUCKET, SECRET_KEY, SeaweedS3


@pytest.fixture(scope="module")
def pg():
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = SeaweedS3(tmp_path_factory.mktemp("s3")).start()
    yield server
    server.stop()


def test_storage_keeps_its_backend_while_the_saved_settings_cannot_be_read(tmp_path, pg, s3, caplog):
    from diffserve.config import Settings, StorageSettings
    from diffserve.storage.configured import build_storage
    from diffserve.store.db import make_db_engine
    from diffserve.store.schema import ensure_schema
    from diffserve.store.storage_config import StorageConfigStore

    settings = Settings(data_dir=tmp_path, database_url=pg.url, storage=StorageSettings(refresh_s=0))
    db = make_db_engine(settings.db_url)
    ensure_schema(db)
    storage = build_storage(settings, db)  # local disk (the environment's), following saved settings
    storage.put("generations/a.png", b"A")
    pg.pause()  # the database is away: every re-read of the saved settings fails (connection refused)
    try:
        storage.put("generations/b.png", b"B")  # before: sqlalchemy OperationalError from the settings read
        assert storage.get("generations/b.png") == b"B"
        assert storage.url("generations/b.png", "http://me:1") == "http://me:1/generations/b.png"
    finally:
        pg.resume()
    assert (tmp_path / "generations" / "b.png").read_bytes() == b"B"
    assert "storage settings unreadable (OperationalError)" in caplog.text
    # back: the next operation reads the settings again and follows a change saved meanwhile
    StorageConfigStore(db).save({"backend": "s3", "bucket": PRIVATE_BUCKET, "endpoint_url": s3.endpoint,
                                 "access_key_id": ACCESS_KEY, "secret_access_key": SECRET_KEY, "prefix": "after"})
    storage.put("generations/c.png", b"C")
    assert s3.keys(PRIVATE_BUCKET, "after/") == ["after/generations/c.png"]
