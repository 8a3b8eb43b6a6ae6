"""Job progress and cancel requests, worker devices, per-key client options.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_progress",
        sa.Column("job_id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("step_s", sa.Float(), nullable=True),
        sa.Column("preview", sa.LargeBinary(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "worker_devices",
        sa.Column("worker_id", sa.String(64), primary_key=True),
        sa.Column("device", sa.String(32), nullable=False),
        sa.Column("dtype", sa.String(8), nullable=False),
        sa.Column("cache_budget_bytes", sa.BigInteger(), nullable=True),
    )
    op.create_table(
        "key_options",
        sa.Column("key_id", sa.String(32), primary_key=True),
        sa.Column("options", sa.JSON(), nullable=False),
    )


def downgrade() -> None:
    for table in ("key_options", "worker_devices", "job_progress"):
        op.drop_table(table)
