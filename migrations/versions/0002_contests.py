"""Contests: contests, their entries, votes (unique per entry and voter) and the frozen results.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 06:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RUNNING = sa.text("state = 'running'")


def upgrade() -> None:
    op.create_table(
        "contests",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("guild_id", sa.BigInteger(), nullable=False),
        sa.Column("channel_id", sa.BigInteger(), nullable=False),
        sa.Column("theme", sa.Text(), nullable=False),
        sa.Column("created_by", sa.BigInteger(), nullable=False),
        sa.Column("starts_at", sa.DateTime(), nullable=False),
        sa.Column("submit_ends_at", sa.DateTime(), nullable=False),
        sa.Column("vote_ends_at", sa.DateTime(), nullable=False),
        sa.Column("max_entries", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("announcement_message_id", sa.BigInteger(), nullable=True),
        sa.Column("voting_announced_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("results_message_id", sa.BigInteger(), nullable=True),
        sa.Column("results_posted_at", sa.DateTime(), nullable=True),
        sa.CheckConstraint("state IN ('running', 'finished', 'cancelled')", name=op.f("ck_contests_state")),
        sa.CheckConstraint("starts_at <= submit_ends_at AND submit_ends_at <= vote_ends_at",
                           name=op.f("ck_contests_windows")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contests")),
    )
    with op.batch_alter_table("contests", schema=None) as batch_op:
        batch_op.create_index("ix_contests_guild_state", ["guild_id", "state"], unique=False)
        batch_op.create_index("uq_contests_running_channel", ["channel_id"], unique=True,
                              sqlite_where=RUNNING, postgresql_where=RUNNING)

    op.create_table(
        "contest_entries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("contest_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("image_index", sa.Integer(), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("message_id", sa.BigInteger(), nullable=True),
        sa.Column("submitted_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["contest_id"], ["contests.id"], name=op.f("fk_contest_entries_contest_id_contests"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_contest_entries_job_id_jobs"),
                                ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contest_entries")),
        sa.UniqueConstraint("contest_id", "job_id", "image_index", name="uq_contest_entries_contest_job_image"),
    )
    with op.batch_alter_table("contest_entries", schema=None) as batch_op:
        batch_op.create_index("ix_contest_entries_contest_user", ["contest_id", "user_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_contest_entries_message_id"), ["message_id"], unique=False)

    op.create_table(
        "contest_votes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("entry_id", sa.Integer(), nullable=False),
        sa.Column("voter_id", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["entry_id"], ["contest_entries.id"],
                                name=op.f("fk_contest_votes_entry_id_contest_entries"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contest_votes")),
        sa.UniqueConstraint("entry_id", "voter_id", name="uq_contest_votes_entry_voter"),
    )

    op.create_table(
        "contest_results",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("contest_id", sa.Integer(), nullable=False),
        sa.Column("entry_id", sa.Integer(), nullable=True),
        sa.Column("guild_id", sa.BigInteger(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("place", sa.Integer(), nullable=False),
        sa.Column("votes", sa.Integer(), nullable=False),
        sa.Column("points", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["contest_id"], ["contests.id"], name=op.f("fk_contest_results_contest_id_contests"),
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["entry_id"], ["contest_entries.id"],
                                name=op.f("fk_contest_results_entry_id_contest_entries"), ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contest_results")),
        sa.UniqueConstraint("contest_id", "place", name="uq_contest_results_contest_place"),
    )
    with op.batch_alter_table("contest_results", schema=None) as batch_op:
        batch_op.create_index("ix_contest_results_guild_user", ["guild_id", "user_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("contest_results", schema=None) as batch_op:
        batch_op.drop_index("ix_contest_results_guild_user")
    op.drop_table("contest_results")
    op.drop_table("contest_votes")
    with op.batch_alter_table("contest_entries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_contest_entries_message_id"))
        batch_op.drop_index("ix_contest_entries_contest_user")
    op.drop_table("contest_entries")
    with op.batch_alter_table("contests", schema=None) as batch_op:
        batch_op.drop_index("uq_contests_running_channel")
        batch_op.drop_index("ix_contests_guild_state")
    op.drop_table("contests")
