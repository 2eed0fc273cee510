"""users.username_folded: user names compared without case ("Alice" is "alice")

Accounts that already differ only by case keep working: the oldest of each such group gets the
folded name, the later ones keep it null and sign in by their exact name (web/auth.py looks up
the exact name first). No new account can take any casing of a name in use.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Never by copying the table: on SQLite that drops `users`, and with foreign keys on the
    # drop cascades to every album (see 0005).
    with op.batch_alter_table("users", recreate="never") as batch:
        batch.add_column(sa.Column("username_folded", sa.String(64), nullable=True))
    # User names are ASCII, so SQL's lower() is models.fold_username on every backend.
    op.execute(
        "UPDATE users SET username_folded = lower(username) "
        "WHERE id IN (SELECT min(id) FROM users GROUP BY lower(username))"
    )
    op.create_index("ix_users_username_folded", "users", ["username_folded"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_users_username_folded", table_name="users")
    with op.batch_alter_table("users", recreate="never") as batch:
        batch.drop_column("username_folded")
