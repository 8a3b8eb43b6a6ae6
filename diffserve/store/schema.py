"""The database schema's version, with Alembic (migrations in store/migrations/versions/).

* `ensure_schema(db)`: what `serve`, the key commands and tests call. An empty database gets the whole
  schema (migrated to head); one at head is used as it is; anything older is refused with SchemaOutOfDate,
  which says to run `diffserve db upgrade` -- a server never changes a schema others may be using.
* `upgrade(db)`: `diffserve db upgrade`. A data dir of the release before migrations (tables, no
  `alembic_version`) is stamped at 0001 first, then moved to head in place.
Works on SQLite and PostgreSQL alike (batch mode for SQLite's ALTER limits).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, inspect

MIGRATIONS = Path(__file__).with_name("migrations")
FIRST = "0001"


class SchemaOutOfDate(RuntimeError):
    pass


def _config(connection=None):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_config()).get_current_head()


def current(db: Engine) -> str | None:
    """The database's revision; None when it has none (empty, or made before migrations)."""
    from alembic.runtime.migration import MigrationContext

    with db.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def _has_tables(db: Engine) -> bool:
    return bool(set(inspect(db).get_table_names()) - {"alembic_version"})


def upgrade(db: Engine) -> tuple[str | None, str]:
    """Migrate to head; (revision before, revision now)."""
    from alembic import command

    before = current(db)
    with db.begin() as conn:
        config = _config(conn)
        if before is None and _has_tables(db):
            command.stamp(config, FIRST)  # the release before migrations had exactly 0001's tables
            before = FIRST
        command.upgrade(config, "head")
    return before, current(db) or ""


def ensure_schema(db: Engine) -> None:
    """Create the schema in an empty database; refuse an out-of-date one (see the module doc)."""
    revision, latest = current(db), head()
    if revision == latest:
        return
    if revision is None and not _has_tables(db):
        upgrade(db)
        return
    raise SchemaOutOfDate(
        f"The database schema is out of date (revision {revision or 'from before migrations'}, this release needs "
        f"{latest}). Back up the database, then run `diffserve db upgrade` (with the same --data-dir or "
        f"DIFFSERVE_DATABASE_URL) and start again.")
