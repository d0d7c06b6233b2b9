"""What recording a command in the inbox before the ack costs (``bot/storage/inbox.py``).

The inbox INSERT sits between the member's click and Discord's 3 s deadline, so it must stay small next to the
ack itself. Measured on the bot's own ``Database`` (SQLite file in WAL mode, or any URL given), in one run:

* ``inbox.record`` alone (what the ack waits for);
* journalling a job without an inbox entry vs with one (``create_job`` also deletes the entry: the extra
  statement in the journal's transaction).

Medians and p99 over ``--rounds`` (after a warm-up), printed as a markdown table. Not a test; never in CI.

    .venv/bin/python bench/bench_inbox.py --rounds 300
    .venv/bin/python bench/bench_inbox.py --url postgresql+asyncpg://user@localhost/imagine_bench
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from bot.storage import inbox, repository
from bot.storage.db import Database

JOB = dict(guild_id=10, channel_id=20, user_id=30, prompt="a lighthouse in the rain", negative_prompt="", seed=7,
           steps=20, guidance=7.5, width=512, height=512, count=1, scheduler="euler_a", model="bench",
           interaction_token="t" * 180, application_id=50)
ENTRY = dict(application_id=50, token="t" * 180, guild_id=10, channel_id=20, user_id=30, role_ids=(1, 2, 3),
             options={"prompt": "a lighthouse in the rain", "negative_prompt": "", "seed": None, "steps": 20,
                      "guidance": None, "width": None, "height": None, "count": 1, "scheduler": None})


async def timed(rounds: int, step: Callable[[int], Awaitable[object]], start: int) -> list[float]:
    samples = []
    for n in range(start, start + rounds):
        began = time.perf_counter()
        await step(n)
        samples.append(time.perf_counter() - began)
    return samples


def row(name: str, samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return f"| {name} | {len(samples)} | {statistics.median(samples) * 1000:.2f} | {p99 * 1000:.2f} |"


async def main(url: str, rounds: int) -> None:
    db = Database.connect(url)
    await db.create_all()
    try:
        async def record(n: int) -> None:
            await inbox.record(db, interaction_id=n, **ENTRY)

        async def job_only(n: int) -> None:
            await repository.create_job(db, interaction_id=None, **JOB)

        async def record_then_job(n: int) -> None:
            await inbox.record(db, interaction_id=n, **ENTRY)
            await repository.create_job(db, interaction_id=n, **JOB)

        await timed(20, record_then_job, 10_000_000)  # warm-up: connections, statement cache, file growth
        results = {
            "inbox.record (before the ack)": await timed(rounds, record, 1),
            "create_job, no inbox entry": await timed(rounds, job_only, 0),
            "inbox.record + create_job (deletes it)": await timed(rounds, record_then_job, 20_000_000),
        }
    finally:
        await db.close()
    print(f"\n{url.split('://')[0]}, {rounds} rounds\n")
    print("| step | rounds | median ms | p99 ms |\n| --- | ---: | ---: | ---: |")
    for name, samples in results.items():
        print(row(name, samples))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="database URL (default: a temporary SQLite file, like the bot's default)")
    parser.add_argument("--rounds", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(args.url or f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}", args.rounds))
