"""A job's outputs name the storage settings they were written under (`jobs.storage_version`), and every saved
settings version is kept (`storage_config_versions`), so an output stays readable where it was written after
update_s3 switches the storage (storage/configured.py). The settings saved before this revision become their
version's first entry; jobs finished before it have no version (read through the current settings, as before).

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("storage_version", sa.Integer(), nullable=True))
    op.create_table(
        "storage_config_versions",
        sa.Column("version", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("saved_at", sa.DateTime(), nullable=False),
    )
    op.execute(sa.text("INSERT INTO storage_config_versions (version, config, saved_at) "
                       "SELECT version, config, updated_at FROM storage_config"))


def downgrade() -> None:
    op.drop_table("storage_config_versions")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("storage_version")
