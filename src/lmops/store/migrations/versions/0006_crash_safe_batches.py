"""Crash-safe batches: an item counts the leases it lost (a worker died) apart from its failed tries, and a
job keeps how far its intake got, so that a new owner resumes the input file there.

Existing items start with no lease lost; a job in intake without a saved position starts from the top, as
before (its items are unique per line, so lines queued already are not queued twice).

Revision ID: 0006_crash_safe_batches
Revises: 0005_replay_lineage
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_crash_safe_batches"
down_revision = "0005_replay_lineage"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("batch_items") as table:
        table.add_column(sa.Column("lease_losses", sa.Integer(), nullable=False, server_default="0"))
    # Not in batch mode: on SQLite that would copy batch_jobs and drop the old one, deleting every batch_items
    # row through their ON DELETE CASCADE key. Adding a nullable column is a plain ALTER TABLE everywhere.
    op.add_column("batch_jobs", sa.Column("intake", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("batch_jobs", "intake")  # SQLite >= 3.35 drops a plain column
    with op.batch_alter_table("batch_items") as table:
        table.drop_column("lease_losses")
