"""users.session_epoch: signing out ends the account's sessions on the server too

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.add_column(
            sa.Column("session_epoch", sa.Integer(), nullable=False, server_default="0")
        )


def downgrade() -> None:
    # Never by copying the table: on SQLite that drops `users`, and with foreign keys on the
    # drop cascades to every album and photo. SQLite >= 3.35 drops a column in place.
    with op.batch_alter_table("users", recreate="never") as batch:
        batch.drop_column("session_epoch")
