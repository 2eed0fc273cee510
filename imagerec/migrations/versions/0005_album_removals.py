"""albums.removals and an (album_id, status) index: whether an album changed, cheaply

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("albums") as batch:
        batch.add_column(sa.Column("removals", sa.Integer(), nullable=False, server_default="0"))
    op.create_index("ix_images_album_id_status", "images", ["album_id", "status"])


def downgrade() -> None:
    op.drop_index("ix_images_album_id_status", table_name="images")
    # Never by copying the table: on SQLite that drops `albums`, and with foreign keys on the
    # drop cascades to every photo. SQLite >= 3.35 drops a column in place.
    with op.batch_alter_table("albums", recreate="never") as batch:
        batch.drop_column("removals")
