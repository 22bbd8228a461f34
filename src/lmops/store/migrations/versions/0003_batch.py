"""Batch enrichment: files, jobs, the item queue and step results.

Revision ID: 0003_batch
Revises: 0002_access
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_batch"
down_revision = "0002_access"
branch_labels = None
depends_on = None

ITEM_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
CLAIMABLE = sa.text("status IN ('pending', 'leased')")


def upgrade() -> None:
    op.create_table(
        "batch_files",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("team_id", sa.String(64), nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("filename", sa.String(500), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.Integer(), nullable=False),
        sa.Column("path", sa.String(500), nullable=False),
    )
    op.create_index("ix_batch_files_team_id_created_at", "batch_files", ["team_id", "created_at"])
    op.create_table(
        "batch_jobs",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("team_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("workflow", sa.String(200), nullable=False),
        sa.Column("endpoint", sa.String(64), nullable=True),
        sa.Column("input_file_id", sa.String(64), nullable=False),
        sa.Column("output_file_id", sa.String(64), nullable=True),
        sa.Column("error_file_id", sa.String(64), nullable=True),
        sa.Column("completion_window", sa.String(16), nullable=False),
        sa.Column("meta", sa.Text(), nullable=True),
        sa.Column("params", sa.Text(), nullable=True),
        sa.Column("errors", sa.Text(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        *(sa.Column(name, sa.Integer(), nullable=name != "created_at")
          for name in ("created_at", "expires_at", "in_progress_at", "finalizing_at", "completed_at",
                       "failed_at", "expired_at", "cancelling_at", "cancelled_at")),
        *(sa.Column(name, sa.Integer(), nullable=False, server_default="0")
          for name in ("total", "completed", "failed", "flagged")),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("owner_until", sa.Float(), nullable=True),
    )
    op.create_index("ix_batch_jobs_team_id_kind_created_at", "batch_jobs", ["team_id", "kind", "created_at"])
    op.create_index("ix_batch_jobs_status", "batch_jobs", ["status"])
    op.create_table(
        "batch_items",
        sa.Column("id", ITEM_ID, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(64), sa.ForeignKey("batch_jobs.id", ondelete="CASCADE",
                                                         name="fk_batch_items_job_id_batch_jobs"), nullable=False),
        sa.Column("team_id", sa.String(64), nullable=False),
        sa.Column("workflow", sa.String(200), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("custom_id", sa.String(500), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("available_at", sa.Float(), nullable=False),
        sa.Column("lease_token", sa.String(32), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.UniqueConstraint("job_id", "seq", name="uq_batch_items_job_id_seq"),
    )
    op.create_index("ix_batch_items_claimable", "batch_items", ["available_at"],
                    postgresql_where=CLAIMABLE, sqlite_where=CLAIMABLE)
    op.create_table(
        "batch_results",
        sa.Column("item_id", ITEM_ID, nullable=False),
        sa.Column("step", sa.String(100), nullable=False),
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("output", sa.Text(), nullable=True),
        sa.Column("inputs", sa.Text(), nullable=True),
        sa.Column("prompt", sa.Text(), nullable=True),
        sa.Column("prompt_version", sa.String(64), nullable=True),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("adapter", sa.String(200), nullable=True),
        sa.Column("params", sa.Text(), nullable=True),
        sa.Column("seed", sa.BigInteger(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("completion_tokens", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("latency_ms", sa.Float(), nullable=False, server_default="0"),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("item_id", "step", name="pk_batch_results"),
    )
    op.create_index("ix_batch_results_job_id_item_id", "batch_results", ["job_id", "item_id"])


def downgrade() -> None:
    op.drop_table("batch_results")
    op.drop_table("batch_items")
    op.drop_table("batch_jobs")
    op.drop_table("batch_files")
