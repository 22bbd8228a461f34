"""The usage ledger becomes the billing columns of request_records (one row written per request).

A ledger row is moved into the request record of the same request: its ``request_id``,
endpoint and status match exactly one record and no other ledger row. Any other ledger row
(a request id a caller reused, a record that was dropped) becomes a record of its own, so
no booked usage is lost. Records keep the public name ``model:adapter`` they had unless
their ledger row split it.

Revision ID: 0004_ledger_in_records
Revises: 0003_batch
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_ledger_in_records"
down_revision = "0003_batch"
branch_labels = None
depends_on = None

_BILLING = ("team_id", "user_id", "key_id", "cost_usd", "day", "model", "adapter")

# Ledger rows that pair with exactly one record (and the record with exactly one of them).
_PAIRED = """
    SELECT l.id AS ledger_id, r.id AS record_id FROM usage_ledger l
    JOIN request_records r ON r.request_id = l.request_id AND r.endpoint = l.endpoint AND r.status = l.status
    WHERE l.request_id IN (SELECT request_id FROM usage_ledger GROUP BY request_id HAVING count(*) = 1)
      AND l.request_id IN (SELECT request_id FROM request_records GROUP BY request_id HAVING count(*) = 1)
"""


def upgrade() -> None:
    with op.batch_alter_table("request_records") as table:
        table.add_column(sa.Column("adapter", sa.String(200), nullable=True))
        table.add_column(sa.Column("team_id", sa.String(40), nullable=True))
        table.add_column(sa.Column("user_id", sa.String(40), nullable=True))
        table.add_column(sa.Column("key_id", sa.String(40), nullable=True))
        table.add_column(sa.Column("cost_usd", sa.Float(), nullable=True))
        table.add_column(sa.Column("day", sa.Date(), nullable=True))
    op.execute(f"CREATE TEMPORARY TABLE ledger_pairs AS {_PAIRED}")
    assignments = ", ".join(f"{c} = l.{c}" for c in _BILLING)
    op.execute(f"UPDATE request_records SET {assignments} FROM ledger_pairs p JOIN usage_ledger l "
               "ON l.id = p.ledger_id WHERE p.record_id = request_records.id")
    op.execute("""
        INSERT INTO request_records (id, request_id, created_at, endpoint, model, adapter, stream, prompt_tokens,
                                     completion_tokens, latency_ms, status, team_id, user_id, key_id, cost_usd, day)
        SELECT 'ledger-' || CAST(id AS VARCHAR(20)), request_id, created_at, endpoint, model, adapter, stream,
               prompt_tokens, completion_tokens, latency_ms, status, team_id, user_id, key_id, cost_usd, day
        FROM usage_ledger WHERE id NOT IN (SELECT ledger_id FROM ledger_pairs)
    """)
    op.execute("DROP TABLE ledger_pairs")
    for column in ("team_id", "key_id"):  # partial: requests that are not billed cost no entry in them
        where = sa.text(f"{column} IS NOT NULL")
        op.create_index(f"ix_request_records_{column}_created_at", "request_records", [column, "created_at"],
                        sqlite_where=where, postgresql_where=where)
    op.drop_table("usage_ledger")


def downgrade() -> None:
    op.create_table(
        "usage_ledger",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("team_id", sa.String(40), nullable=False),
        sa.Column("user_id", sa.String(40), nullable=True),
        sa.Column("key_id", sa.String(40), nullable=True),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("adapter", sa.String(200), nullable=True),
        sa.Column("endpoint", sa.String(64), nullable=False),
        sa.Column("stream", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("completion_tokens", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("cost_usd", sa.Float(), nullable=False, server_default="0"),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
    )
    op.execute("""
        INSERT INTO usage_ledger (request_id, created_at, day, team_id, user_id, key_id, model, adapter, endpoint,
                                  stream, prompt_tokens, completion_tokens, cost_usd, latency_ms, status)
        SELECT request_id, created_at, day, team_id, user_id, key_id, model, adapter, endpoint, stream,
               prompt_tokens, completion_tokens, cost_usd, latency_ms, status
        FROM request_records WHERE team_id IS NOT NULL ORDER BY created_at
    """)
    op.create_index("ix_usage_ledger_created_at", "usage_ledger", ["created_at"])
    op.create_index("ix_usage_ledger_team_id_created_at", "usage_ledger", ["team_id", "created_at"])
    op.create_index("ix_usage_ledger_key_id_created_at", "usage_ledger", ["key_id", "created_at"])
    op.execute("DELETE FROM request_records WHERE id LIKE 'ledger-%'")
    op.drop_index("ix_request_records_key_id_created_at", "request_records")
    op.drop_index("ix_request_records_team_id_created_at", "request_records")
    with op.batch_alter_table("request_records") as table:
        for column in ("day", "cost_usd", "key_id", "user_id", "team_id", "adapter"):
            table.drop_column(column)
