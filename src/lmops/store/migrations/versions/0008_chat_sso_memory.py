"""Chat: single sign-on identities (an OpenID Connect issuer's subject -> a user) and conversation summaries.

Revision ID: 0008_chat_sso_memory
Revises: 0007_chat
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_chat_sso_memory"
down_revision = "0007_chat"
branch_labels = None
depends_on = None

TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "chat_identities",
        sa.Column("issuer", sa.String(500), primary_key=True),
        sa.Column("subject", sa.String(255), primary_key=True),
        sa.Column("user_id", sa.String(40), nullable=False),
        sa.Column("created_at", TIME, nullable=False),
    )
    op.create_index("ix_chat_identities_user_id", "chat_identities", ["user_id"])
    op.create_table(
        "chat_summaries",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("conversation_id", sa.String(40),
                  sa.ForeignKey("chat_conversations.id", ondelete="CASCADE",
                                name="fk_chat_summaries_conversation_id_chat_conversations"),
                  nullable=False),
        sa.Column("through_seq", sa.Integer(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("created_at", TIME, nullable=False),
    )
    op.create_index("ix_chat_summaries_conversation_id_through_seq", "chat_summaries",
                    ["conversation_id", "through_seq"], unique=True)


def downgrade() -> None:
    op.drop_table("chat_summaries")
    op.drop_table("chat_identities")
