"""The creative loop: which image of its parent a job upscales or varies, the starting image a job keeps on disk
(so it survives a restart), and a server's default model.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("parent_image_index", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("init_image_path", sa.String(length=1024), nullable=True))
    with op.batch_alter_table("guild_settings") as batch:
        batch.add_column(sa.Column("default_model", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("guild_settings") as batch:
        batch.drop_column("default_model")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("init_image_path")
        batch.drop_column("parent_image_index")
