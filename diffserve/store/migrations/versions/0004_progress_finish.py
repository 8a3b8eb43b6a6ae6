"""A running job's "finish now" request (A1111's /interrupt): the worker ends the denoising at its next step
and the job succeeds with the image so far (job_progress.cancel_requested ends it cancelled, without one).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("job_progress") as batch:
        batch.add_column(sa.Column("finish_requested", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("job_progress") as batch:
        batch.drop_column("finish_requested")
