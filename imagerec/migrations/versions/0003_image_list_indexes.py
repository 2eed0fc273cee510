"""indexes for paging through an album by date taken or uploaded, and for watching it

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# As imagerec.models.TAKEN_KEY renders it: the queries must use this very expression.
TAKEN_KEY = sa.text("coalesce(creation_time, '')")
INDEXES = {
    "ix_images_album_id_created_at": ["album_id", "created_at", "id"],
    "ix_images_album_id_taken": ["album_id", TAKEN_KEY, "id"],
    "ix_images_user_id_created_at": ["user_id", "created_at", "id"],
    "ix_images_user_id_taken": ["user_id", TAKEN_KEY, "id"],
    "ix_images_album_id_updated_at": ["album_id", "updated_at", "status"],
}


def upgrade() -> None:
    for name, columns in INDEXES.items():
        op.create_index(name, "images", columns)


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, table_name="images")
