"""Rate-limit grants name the interaction they were made for, so a replay after a crash replaces its own grant.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 19:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("rate_limit_ledger", schema=None) as batch_op:
        batch_op.add_column(sa.Column("interaction_id", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rate_limit_ledger", schema=None) as batch_op:
        batch_op.drop_column("interaction_id")
