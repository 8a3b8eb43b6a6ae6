"""The job ledger writes a job's webhook delivery when it finishes: the payload is rendered later, at the
first attempt (nullable); jobs that finished before this revision without a delivery get theirs now (the
dispatcher no longer looks for `webhook_status = 'pending'` jobs).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.alter_column("payload", existing_type=sa.Text(), nullable=True)
    # finished jobs whose webhook was never rendered: a delivery each, due now (payload rendered when sent)
    now = _now()
    op.execute(sa.text(
        "INSERT INTO webhook_deliveries (job_id, delivery_id, url, payload, state, attempts, next_attempt_at, "
        f"created_at) SELECT j.id, 'msg_job' || CAST(j.id AS VARCHAR(20)), j.hook, NULL, 'pending', 0, {now}, {now} "
        f"FROM (SELECT id, status, webhook_status, {_webhook_of_request()} AS hook FROM jobs) AS j "
        "WHERE j.webhook_status = 'pending' AND j.status IN ('succeeded', 'failed', 'cancelled') "
        "AND j.hook IS NOT NULL AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.job_id = j.id)"))


def _webhook_of_request() -> str:
    """The request JSON's `webhook` member, in this database's SQL."""
    if op.get_bind().dialect.name == "postgresql":
        return "CAST(request AS JSON) ->> 'webhook'"
    return "json_extract(request, '$.webhook')"


def _now() -> str:
    """Now, naive UTC (the store's convention)."""
    if op.get_bind().dialect.name == "postgresql":
        return "(now() AT TIME ZONE 'utc')"
    return "CURRENT_TIMESTAMP"


def downgrade() -> None:
    op.execute(sa.text("DELETE FROM webhook_deliveries WHERE payload IS NULL"))
    with op.batch_alter_table("webhook_deliveries") as batch:
        batch.alter_column("payload", existing_type=sa.Text(), nullable=False)
