"""Timers: the bot-wide durable deadlines, and the deadlines of the contests already under way.

Contest deadlines used to be read from the contests table; now each contest owns two timer rows. The upgrade
gives every running contest its ``contest_voting`` timer (until voting was announced) and its
``contest_results`` timer, and a finished contest whose results were never posted a ``contest_results`` timer
due at once, so nothing in progress is lost. The downgrade drops the table: the older code reads the contests.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 09:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The event names of bot/contests/service.py, as they were when this revision was written.
VOTING_EVENT = "contest_voting"
RESULTS_EVENT = "contest_results"


def upgrade() -> None:
    timers = op.create_table(
        "timers",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("event", sa.String(length=64), nullable=False),
        sa.Column("due_at", sa.DateTime(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_timers")),
    )
    op.create_index(op.f("ix_timers_due_at"), "timers", ["due_at"], unique=False)

    contests = sa.table("contests", sa.column("id", sa.Integer()), sa.column("state", sa.String()),
                        sa.column("starts_at", sa.DateTime()), sa.column("submit_ends_at", sa.DateTime()),
                        sa.column("vote_ends_at", sa.DateTime()), sa.column("voting_announced_at", sa.DateTime()),
                        sa.column("finished_at", sa.DateTime()), sa.column("results_posted_at", sa.DateTime()))
    # Built in SQL (not read into Python) so the revision also renders offline (--sql).
    json_object = sa.func.json_build_object if op.get_context().dialect.name == "postgresql" else sa.func.json_object
    payload = json_object(sa.literal("contest_id"), contests.c.id)
    backfill = (
        (VOTING_EVENT, contests.c.submit_ends_at,
         (contests.c.state == "running") & contests.c.voting_announced_at.is_(None)),
        (RESULTS_EVENT, contests.c.vote_ends_at, contests.c.state == "running"),
        (RESULTS_EVENT, contests.c.finished_at,
         (contests.c.state == "finished") & contests.c.results_posted_at.is_(None)),
    )
    for event, due_at, which in backfill:
        rows = sa.select(sa.literal(event), due_at, payload, contests.c.starts_at).where(which).order_by(due_at)
        op.execute(timers.insert().from_select(["event", "due_at", "payload", "created_at"], rows))


def downgrade() -> None:
    op.drop_index(op.f("ix_timers_due_at"), table_name="timers")
    op.drop_table("timers")
