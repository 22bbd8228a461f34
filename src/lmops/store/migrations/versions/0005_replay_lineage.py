"""Lineage that replays: a step result keeps the model call it sent and its step's definition hash; a job keeps
the hash of its workflow's definition when it was submitted.

Existing rows get NULLs: ``lmops replay`` runs such a step as it is defined today, and says so.

Revision ID: 0005_replay_lineage
Revises: 0004_ledger_in_records
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_replay_lineage"
down_revision = "0004_ledger_in_records"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("batch_jobs") as table:
        table.add_column(sa.Column("workflow_hash", sa.String(64), nullable=True))
    with op.batch_alter_table("batch_results") as table:
        table.add_column(sa.Column("request", sa.Text(), nullable=True))
        table.add_column(sa.Column("step_hash", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("batch_results") as table:
        table.drop_column("step_hash")
        table.drop_column("request")
    # Not in batch mode: on SQLite that copies the table and drops the old one, and dropping batch_jobs would
    # delete every batch_items row through their ON DELETE CASCADE key. SQLite >= 3.35 drops a plain column.
    op.drop_column("batch_jobs", "workflow_hash")
