"""Fixtures for the store's own tests, which need no diffserve server: `url`, a fresh, empty database of each kind
(SQLite in the test's tmp_path; PostgreSQL: a new database in the module's server, `postgres`), and `db`, an engine
on it with the schema. A test module imports them: `from .databases import db, postgres, url  # noqa: F401`."""

from __future__ import annotations

import itertools

import pytest
from sqlalchemy import text

from diffserve.store.db import make_db_engine
from diffserve.store.schema import ensure_schema

from .pgserver import PostgresServer

_names = itertools.count()


@pytest.fixture(scope="module")
def postgres():
    pg = PostgresServer().start()
    yield pg
    pg.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request, tmp_path):
    """A fresh, empty database of each kind (PostgreSQL: a new database in the module's server)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    pg = request.getfixturevalue("postgres")
    name = f"store_{next(_names)}"
    admin = make_db_engine(pg.url).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return pg.url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture
def db(url):
    engine = make_db_engine(url)
    ensure_schema(engine)
    yield engine
    engine.dispose()
