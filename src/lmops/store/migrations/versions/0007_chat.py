"""Chat: conversations, their messages (one row each), web credentials of users, sign-in sessions.

Revision ID: 0007_chat
Revises: 0006_crash_safe_batches
"""

import sqlalchemy as sa
from alembic import op

revision = "0007_chat"
down_revision = "0006_crash_safe_batches"
branch_labels = None
depends_on = None

TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "chat_conversations",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("user_id", sa.String(40), nullable=False),
        sa.Column("team_id", sa.String(40), nullable=False),
        sa.Column("title", sa.String(500), nullable=False),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("system_prompt", sa.Text(), nullable=True),
        sa.Column("params", sa.JSON(), nullable=True),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
    )
    op.create_index("ix_chat_conversations_user_id_updated_at", "chat_conversations", ["user_id", "updated_at"])
    op.create_table(
        "chat_messages",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("conversation_id", sa.String(40),
                  sa.ForeignKey("chat_conversations.id", ondelete="CASCADE",
                                name="fk_chat_messages_conversation_id_chat_conversations"),
                  nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("params", sa.JSON(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
    )
    op.create_index("ix_chat_messages_conversation_id_seq", "chat_messages", ["conversation_id", "seq"], unique=True)
    op.create_table(
        "chat_credentials",
        sa.Column("user_id", sa.String(40), primary_key=True),
        sa.Column("password_hash", sa.String(200), nullable=False),
        sa.Column("updated_at", TIME, nullable=False),
    )
    op.create_table(
        "chat_sessions",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.String(40), nullable=False),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.Column("expires_at", TIME, nullable=False),
    )
    op.create_index("ix_chat_sessions_user_id", "chat_sessions", ["user_id"])


def downgrade() -> None:
    op.drop_table("chat_sessions")
    op.drop_table("chat_credentials")
    op.drop_table("chat_messages")
    op.drop_table("chat_conversations")
