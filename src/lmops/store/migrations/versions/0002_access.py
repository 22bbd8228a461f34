"""Access and billing tables (placeholder until the access capability lands).

Revision ID: 0002_access
Revises: 0001_request_records
"""

revision = "0002_access"
down_revision = "0001_request_records"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
