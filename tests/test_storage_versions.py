"""Storage settings versions (storage/configured.py) on a real SQLite store, with no server: which backend a job's
outputs are read through, and what revision 0005 makes of settings saved before it. URLs are built without
reaching any bucket (presigning and public URLs are computed locally); tests/test_s3.py reads the objects back
from a real S3 server."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime

from diffserve.config import Settings, StorageSettings
from diffserve.core.job import Job, JobStatus
from diffserve.core.request import GenerationRequest
from diffserve.storage.configured import build_storage, holding
from diffserve.storage.local import LocalStorage
from diffserve.store.db import StorageConfigRow, make_db_engine
from diffserve.store.storage_config import StorageConfigStore

ENV_ENDPOINT = "http://127.0.0.1:9"  # never contacted
SAVED_S3 = {"backend": "s3", "bucket": "saved", "endpoint_url": ENV_ENDPOINT, "access_key_id": "k",
            "secret_access_key": "s", "public_url": "https://cdn.example/saved", "prefix": "p/"}


def old_db(tmp_path, saved_version: int | None):
    """A store as revision 0004 left it, with settings saved by update_s3 as `saved_version` (None: none)."""
    from alembic import command

    from diffserve.store.schema import _config

    engine = make_db_engine(f"sqlite:///{tmp_path / 'diffserve.db'}")
    with engine.begin() as conn:
        command.upgrade(_config(conn), "0004")
    if saved_version is not None:
        with engine.begin() as conn:
            conn.execute(StorageConfigRow.__table__.insert().values(
                id=1, version=saved_version, config={"backend": "local"}, updated_at=datetime(2026, 1, 1)))
    return engine


def job(version: int | None) -> Job:
    request = GenerationRequest(model_id="tiny-sd", prompt="x", init_image_key="inputs/x.png", width=64, height=64,
                                steps=4, guidance_scale=7.5, strength=0.7, seed=1)
    return Job(id=1, key_id="k", dialect="modelslab", status=JobStatus.SUCCEEDED, request=request,
               output_token="tok", outputs=["generations/tok-0.png"], storage_version=version)


def test_settings_saved_before_revision_0005_become_their_version(tmp_path):
    from diffserve.store.schema import head, upgrade

    engine = old_db(tmp_path, saved_version=3)
    assert upgrade(engine) == ("0004", head())
    saved = StorageConfigStore(engine)
    assert saved.config_at(3) == {"backend": "local"} and saved.config_at(2) is None
    assert saved.save(SAVED_S3) == 4
    assert saved.config_at(4) == SAVED_S3 and saved.config_at(3) == {"backend": "local"}  # the old one is kept


def test_a_job_is_read_through_the_settings_it_was_written_under(tmp_path, caplog):
    from diffserve.store.schema import ensure_schema

    engine = make_db_engine(f"sqlite:///{tmp_path / 'diffserve.db'}")
    ensure_schema(engine)
    settings = Settings(data_dir=tmp_path, storage=StorageSettings(
        backend="s3", bucket="env", endpoint_url=ENV_ENDPOINT, access_key_id="k", secret_access_key="s",
        presign_expiry_s=60, refresh_s=0))
    storage, saved = build_storage(settings, engine), StorageConfigStore(engine)
    key, base = "generations/tok-0.png", "http://api.example"
    assert storage.pinned()[0] == 0  # the environment's settings
    assert saved.save({"backend": "local"}) == 1
    assert saved.save(SAVED_S3) == 2

    assert holding(storage, job(0)).url(key, base).startswith(f"{ENV_ENDPOINT}/env/{key}?")  # presigned, env bucket
    assert "X-Amz-Expires=60" in holding(storage, job(0)).url(key, base)
    assert isinstance(holding(storage, job(1)), LocalStorage)
    assert holding(storage, job(1)).url(key, base) == f"{base}/{key}"
    assert holding(storage, job(2)).url(key, base) == f"https://cdn.example/saved/p/{key}"
    # not recorded (finished before revision 0005): the current settings, as before
    assert holding(storage, job(None)).url(key, base) == f"https://cdn.example/saved/p/{key}"
    # a version that is not known (its row gone): the current settings, said in the log
    with caplog.at_level(logging.WARNING, logger="diffserve.storage.configured"):
        assert holding(storage, replace(job(None), storage_version=99)).url(key, base).startswith("https://cdn")
    assert "version 99 is unknown" in caplog.text

    # a new process (the API restarted) that never met the older versions reads them from the store
    fresh = build_storage(settings, engine)
    assert fresh.pinned()[0] == 2
    assert holding(fresh, job(1)).url(key, base) == f"{base}/{key}"
    assert holding(fresh, job(0)).url(key, base).startswith(f"{ENV_ENDPOINT}/env/{key}?")
    assert holding(LocalStorage(tmp_path), job(2)).url(key, base) == f"{base}/{key}"  # a fixed backend: itself


class CountedVersions(StorageConfigStore):
    """A settings store that counts its version polls."""

    polls = 0

    def version(self) -> int:
        self.polls += 1
        return super().version()


def test_a_version_read_with_a_job_start_stands_for_the_poll(tmp_path):
    """A worker's start answers the saved settings' version (store/ledger.py): the same version as in use counts
    as a fresh read (no poll for refresh_s); another one makes the next operation read the settings at once."""
    from diffserve.storage.configured import ConfiguredStorage, noted
    from diffserve.store.schema import ensure_schema

    engine = make_db_engine(f"sqlite:///{tmp_path / 'diffserve.db'}")
    ensure_schema(engine)
    settings = Settings(data_dir=tmp_path, storage=StorageSettings(refresh_s=60))
    saved = CountedVersions(engine)
    storage = ConfiguredStorage(settings, saved)
    assert storage.pinned()[0] == 0 and saved.polls == 1  # the first operation reads them
    storage.invalidate()
    noted(storage, 0)  # a start read version 0 just now: no poll
    assert storage.pinned()[0] == 0 and saved.polls == 1
    version = saved.save(SAVED_S3)
    noted(storage, None)  # nothing read (SQLite's start): nothing changes
    assert storage.pinned()[0] == 0 and saved.polls == 1
    noted(storage, version)  # a start saw newer settings: the next operation reads them
    assert storage.pinned()[0] == version and saved.polls == 2
    noted(LocalStorage(tmp_path), version)  # a fixed backend follows no settings
