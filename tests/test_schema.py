"""Schema migrations (Alembic): a data dir of the release before migrations upgrades in place, `serve`
refuses an out-of-date schema with a clear message, the migrations build exactly the models' schema, and
the whole server runs on a real PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from sqlalchemy import text

from diffserve.api.errors import STORE_DOWN
from diffserve.store.db import Base, make_db_engine
from diffserve.store.schema import current, ensure_schema, head, upgrade

from . import web
from .jobs_helpers import LONG, Jobs, data_uri
from .pgserver import PostgresServer
from .servers import DiffserveServer


def old_release_db(path) -> None:
    """What the release before migrations left: 0001's tables, no alembic_version, a key in it."""
    from alembic import command

    from diffserve.store.keys import KeyStore
    from diffserve.store.schema import _config

    engine = make_db_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        command.upgrade(_config(conn), "0001")
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE alembic_version"))
    return KeyStore(engine).create("old", role="user")[1]


def cli(server: DiffserveServer, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "diffserve.cli.main", *args], env=server.env(),
                          capture_output=True, text=True, timeout=120)


def test_migrations_build_exactly_the_models_schema(tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = make_db_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
    ensure_schema(engine)
    assert current(engine) == head()
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []


def test_an_old_data_dir_is_refused_then_upgraded_in_place(tmp_path, models_root):
    srv = DiffserveServer(tmp_path / "data", models_root)
    srv.data_dir.mkdir()
    old_key = old_release_db(srv.data_dir / "diffserve.db")
    refused = cli(srv, "serve", "--port", "9")
    assert refused.returncode == 2
    assert "The database schema is out of date (revision from before migrations" in refused.stderr
    assert "diffserve db upgrade" in refused.stderr
    assert cli(srv, "db", "current").returncode == 1
    upgraded = cli(srv, "db", "upgrade")
    assert upgraded.returncode == 0 and f"database at revision {head()} (was 0001)" in upgraded.stdout
    assert "already there" in cli(srv, "db", "upgrade").stdout
    srv.start()
    try:
        out = srv.post("/api/v6/images/img2img", {"key": old_key, "prompt": "x", "init_image": data_uri(),
                                                  "num_inference_steps": 4}).json()
        assert out["status"] == "success"  # the old key, jobs table and all, kept
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def postgres():
    pg = PostgresServer().start()
    yield pg
    pg.stop()


def test_the_server_runs_on_postgresql(postgres, tmp_path, models_root):
    engine = make_db_engine(postgres.url)
    assert upgrade(engine) == (None, head())
    srv = DiffserveServer(tmp_path / "data", models_root, env_overrides={"DIFFSERVE_DATABASE_URL": postgres.url})
    srv.start()
    try:
        key = srv.create_key("--name", "pg")
        out = srv.post("/api/v6/images/img2img", {"key": key, "prompt": "x", "init_image": data_uri(),
                                                  "num_inference_steps": 4}).json()
        assert out["status"] == "success"
        jobs = Jobs(srv, key)
        slow = jobs.submit(**LONG)
        jobs.wait(slow["id"], lambda j: j["status"] == "running")
        jobs.http.post(f"/v1/jobs/{slow['id']}/cancel")
        assert jobs.done(slow["id"], timeout=60)["status"] == "cancelled"
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM jobs")).scalar() == 2
        assert not (srv.data_dir / "diffserve.db").exists()  # nothing in SQLite

        postgres.pause()  # the database goes down: clear 503s in each dialect's shape, no hang
        body = {"key": key, "prompt": "x", "init_image": data_uri(), "num_inference_steps": 4}
        started = time.monotonic()
        down = srv.post("/api/v6/images/img2img", body, timeout=30)
        assert down.status_code == 503 and down.json() == {"status": "error", "message": STORE_DOWN}
        qolaba = web.post(f"{srv.url}/getImage", headers={"Authorization": f"Bearer {key}"}, json={"id": "1"},
                          timeout=30)
        assert qolaba.status_code == 503 and qolaba.json()["status"] == "FAILED"
        assert jobs.http.get("/v1/jobs").status_code == 503
        assert web.get(f"{srv.url}/ready", timeout=30).status_code == 503
        assert time.monotonic() - started < 30
        postgres.resume()  # and back: requests succeed again
        again = srv.post("/api/v6/images/img2img", body, timeout=120).json()
        assert again["status"] == "success", again
    finally:
        srv.stop()


def test_a_finished_job_is_announced_to_listeners_on_postgresql(postgres):
    """API processes learn that a job finished anywhere through LISTEN/NOTIFY (no polling of the store)."""
    import threading

    from diffserve.core.request import GenerationRequest
    from diffserve.store.jobs import JobStore, new_output_token
    from diffserve.store.notify import StoreListener

    engine = make_db_engine(postgres.url)
    upgrade(engine)
    heard, event = [], threading.Event()
    listener = StoreListener(postgres.url, lambda job_id: (heard.append(job_id), event.set()))
    listener.start()
    try:
        jobs = JobStore(engine)
        request = GenerationRequest(model_id="tiny-sd", prompt="x", init_image_key="k", width=64, height=64,
                                    steps=4, guidance_scale=7.5, strength=0.7, seed=1)
        job = jobs.create(key_id="k", dialect="native", request=request, output_token=new_output_token())
        assert listener.listening.wait(10)
        jobs.start(job.id, "worker-x")
        assert not heard  # starting is not finishing
        jobs.succeed(job.id, [], [])
        assert event.wait(10) and heard == [job.id]
    finally:
        listener.stop()
