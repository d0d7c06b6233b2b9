"""Jobs carry every image parameter: img2img strength, upscale factor, style, its LoRAs, the parent image's seed.

Revision ID: 0007
Revises: 0002
Create Date: 2026-12-01 16:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("strength", "upscale", "style", "loras", "parent_seed")


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("strength", sa.Float(), nullable=True))
        batch.add_column(sa.Column("upscale", sa.Float(), nullable=True))
        batch.add_column(sa.Column("style", sa.String(length=64), server_default="", nullable=False))
        batch.add_column(sa.Column("loras", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("parent_seed", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        for name in reversed(COLUMNS):
            batch.drop_column(name)
