"""Flat cost as the history grows: indexes for /history, start-up re-delivery and prune; /stats aggregates.

* ``ix_jobs_guild_user_id`` (guild, user, id): /history takes a member's newest 10 jobs without sorting them all.
* ``ix_jobs_undelivered`` (status, finished_at) WHERE message_id IS NULL: the start-up query for results saved
  but never posted reads only jobs without a result message (partial index: SQLite and PostgreSQL both have it).
* ``ix_contests_channel_id`` (channel, id): a channel's latest contest for /contest status.
* ``ix_images_pruned_created_at`` replaces ``ix_images_created_at``: ``db prune`` reads only the stored images
  older than its date, not the pruned majority of a long history.
* ``guild_status_counts``, ``guild_member_counts``, ``guild_counters``: /stats reads these maintained counts
  (kept by the repository in the same transaction as the rows they count) instead of counting every job and
  image of the guild. They are filled here from the existing rows.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 16:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UNDELIVERED = sa.text("message_id IS NULL")

BACKFILL = (
    """
    INSERT INTO guild_status_counts (guild_id, status, jobs)
    SELECT guild_id, status, COUNT(*) FROM jobs WHERE guild_id IS NOT NULL GROUP BY guild_id, status
    """,
    """
    INSERT INTO guild_member_counts (guild_id, user_id, jobs, images)
    SELECT jobs.guild_id, jobs.user_id, COUNT(*), COALESCE(SUM(per_job.n), 0)
    FROM jobs LEFT JOIN (SELECT job_id, COUNT(*) AS n FROM images GROUP BY job_id) AS per_job
         ON per_job.job_id = jobs.id
    WHERE jobs.guild_id IS NOT NULL
    GROUP BY jobs.guild_id, jobs.user_id
    """,
    """
    INSERT INTO guild_counters (guild_id, images, moderation_events)
    SELECT guild_id, SUM(images), SUM(moderation_events) FROM (
        SELECT jobs.guild_id AS guild_id, COUNT(*) AS images, 0 AS moderation_events
        FROM images JOIN jobs ON jobs.id = images.job_id WHERE jobs.guild_id IS NOT NULL GROUP BY jobs.guild_id
        UNION ALL
        SELECT guild_id, 0, COUNT(*) FROM moderation_events WHERE guild_id IS NOT NULL GROUP BY guild_id
    ) AS per_guild
    GROUP BY guild_id
    """,
)


def upgrade() -> None:
    op.create_index("ix_jobs_guild_user_id", "jobs", ["guild_id", "user_id", "id"], unique=False)
    op.create_index("ix_jobs_undelivered", "jobs", ["status", "finished_at"], unique=False,
                    sqlite_where=UNDELIVERED, postgresql_where=UNDELIVERED)
    op.drop_index("ix_images_created_at", table_name="images")
    op.create_index("ix_images_pruned_created_at", "images", ["pruned", "created_at"], unique=False)
    op.create_index("ix_contests_channel_id", "contests", ["channel_id", "id"], unique=False)

    op.create_table(
        "guild_status_counts",
        sa.Column("guild_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("jobs", sa.Integer(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("guild_id", "status", name=op.f("pk_guild_status_counts")),
    )
    op.create_table(
        "guild_member_counts",
        sa.Column("guild_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("user_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("jobs", sa.Integer(), server_default="0", nullable=False),
        sa.Column("images", sa.Integer(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("guild_id", "user_id", name=op.f("pk_guild_member_counts")),
    )
    op.create_index("ix_guild_member_counts_guild_images", "guild_member_counts", ["guild_id", "images", "user_id"],
                    unique=False)
    op.create_table(
        "guild_counters",
        sa.Column("guild_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("images", sa.Integer(), server_default="0", nullable=False),
        sa.Column("moderation_events", sa.Integer(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("guild_id", name=op.f("pk_guild_counters")),
    )
    for statement in BACKFILL:
        op.execute(sa.text(statement))


def downgrade() -> None:
    op.drop_table("guild_counters")
    op.drop_index("ix_guild_member_counts_guild_images", table_name="guild_member_counts")
    op.drop_table("guild_member_counts")
    op.drop_table("guild_status_counts")
    op.drop_index("ix_contests_channel_id", table_name="contests")
    op.drop_index("ix_images_pruned_created_at", table_name="images")
    op.create_index("ix_images_created_at", "images", ["created_at"], unique=False)
    op.drop_index("ix_jobs_undelivered", table_name="jobs")
    op.drop_index("ix_jobs_guild_user_id", table_name="jobs")
