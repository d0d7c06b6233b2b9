"""Subprocess for test_journal_kill.py: the real worker and the real ``tiny`` model on a SQLite journal.

``accept DB IMAGES N``: migrate, journal N jobs (one member, so they run one at a time in order), print
``JOURNALLED`` once all are committed, then start the worker and run until killed.
``recover DB IMAGES``: what the bot does at start (migrate, sweep orphans, recover), then wait for every
recovered job to be recorded and print ``RECOVERED <n>``.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import torch

from bot.journal.job_journal import JobJournal
from bot.storage.db import Database, upgrade_to_head
from bot.storage.images import sweep_orphans
from generation.engine import DiffusionEngine
from generation.loading import load_pipeline
from generation.request import GenerationRequest, ImageParams
from generation.settings import GenerationSettings
from generation.worker import GenerationWorker

STEPS = 25


def build_worker() -> tuple[GenerationWorker, str]:
    torch.set_num_threads(1)
    settings = GenerationSettings(model="tiny", device="cpu", min_size=64)
    loaded = load_pipeline(settings)
    return GenerationWorker(DiffusionEngine(loaded, settings), queue_size=64, max_batch_size=4), loaded.name


async def accept(db_path: Path, images_dir: Path, count: int) -> None:
    url = f"sqlite+aiosqlite:///{db_path}"
    await upgrade_to_head(url)
    db = Database.connect(url)
    worker, model_name = build_worker()
    journal = JobJournal(db, worker, images_dir, model_name)
    for i in range(count):
        params = ImageParams(prompt=f"a tiny picture number {i}", negative_prompt="blurry", seed=1000 + i,
                             steps=STEPS, guidance=7.5, width=64, height=64, count=2, scheduler="euler",
                             model=model_name)
        request = GenerationRequest(params, requester_id="42")
        await journal.accept(request, guild_id=1, channel_id=2, user_id=42, interaction_id=100 + i,
                             interaction_token=f"token-{i}", application_id=3)
    print("JOURNALLED", flush=True)
    await worker.start()
    await asyncio.sleep(3600)  # killed by the test long before


async def recover(db_path: Path, images_dir: Path) -> None:
    url = f"sqlite+aiosqlite:///{db_path}"
    await upgrade_to_head(url)
    db = Database.connect(url)
    worker, model_name = build_worker()
    await sweep_orphans(db, images_dir)
    journal = JobJournal(db, worker, images_dir, model_name)
    recovered = await journal.recover()
    await worker.start()
    await journal.wait_idle()
    await worker.close()
    await db.close()
    print(f"RECOVERED {len(recovered)}", flush=True)


if __name__ == "__main__":
    mode, db_arg, images_arg = sys.argv[1:4]
    if mode == "accept":
        asyncio.run(accept(Path(db_arg), Path(images_arg), int(sys.argv[4])))
    else:
        asyncio.run(recover(Path(db_arg), Path(images_arg)))
