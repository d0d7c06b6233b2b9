"""At start: the commands acknowledged before a crash that never became jobs, run through the same gate.

A command with an attached picture downloads it again from the URL the entry kept (checked as the live
command checks it). Button clicks that make jobs are entries too: a Rerun stores the clicked job, an Upscale or
Vary click also the image and the action (``{"derive": "upscale", "image_index": 1}``); both are rebuilt from the
job as it is now.

Each inbox entry (``bot/storage/inbox.py``) still within its token's 15 minutes is replayed: the member's
"thinking…" response is edited through the interaction webhook, then :func:`bot.gate.submission.submit` runs
(validation, filter, limits, journal) exactly as for a live command. The journal deletes the entry together
with the job's INSERT, so a crash during the replay replays it again and a finished replay never repeats.
Entries older than the token are dropped with a log line: Discord no longer lets the bot answer them.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import discord

from bot.clock import as_utc, utcnow
from bot.discord.delivery import TOKEN_LIFETIME
from bot.discord.replies import APOLOGY
from bot.discord.uploads import read_upload
from bot.gate.refusals import refusal_message
from bot.gate.submission import DERIVATIONS, Derivation, Options, Origin, Refusal, submit
from bot.storage import inbox, repository
from bot.storage.records import InboxRecord, JobRecord
from generation.request import ImageParams, RequestError

log = logging.getLogger(__name__)

REPLAY_NOTE = "The bot restarted; picking your request up again…"
# What an inbox entry may carry: a field a newer version stored is left out rather than refused.
OPTION_NAMES = frozenset(field.name for field in dataclasses.fields(ImageParams)) | {"aspect"}
DERIVED_SOURCES = frozenset({"upscale_button", "vary_button"})
UNREADABLE_CLICK = "I could not read that click again after a restart; please click the button once more."
UPLOAD_LOST = ("The bot restarted before your picture was saved, so this request cannot be picked up again; "
               "please send the command with the image once more.")
UPLOAD_FIELD = "image"


def rerun_refusal(job: JobRecord | None, guild_id: int | None) -> str | None:
    """Why a Rerun click cannot run (the job is gone, or belongs to another server), else None."""
    if job is None:
        return "I no longer know that job."
    if guild_id is not None and job.guild_id not in (None, guild_id):
        return "That job belongs to another server."
    return None


async def derivation(services: Any, job: JobRecord | None, index: int, derive: Derivation,
                     guild_id: int | None) -> Options | str:
    """Upscale / Vary image ``index`` of ``job`` (from its stored PNG), or why that cannot run."""
    refusal = rerun_refusal(job, guild_id)
    if refusal is not None or job is None:
        return refusal or "I no longer know that job."
    images = {image.index: image for image in await repository.images_for_job(services.db, job.id)}
    image = images.get(index)
    if index >= job.params.count or (image is None and job.status == "done"):
        return f"Job {job.id} has no image {index + 1}."
    if image is None or image.pruned:
        return (f"Image {index + 1} of job {job.id} is no longer stored (old images are removed after a while), so "
                "it cannot be upscaled or varied; run the prompt again instead.")
    return Options.derived_from(job, index, image.path, derive)


async def options_of(services: Any, entry: InboxRecord) -> Options | str:
    """The entry's options (a button click: rebuilt from the clicked job), or why it cannot run."""
    if entry.source == "rerun_button" and not entry.options:
        job = await repository.get_job(services.db, entry.parent_job_id) if entry.parent_job_id else None
        refusal = rerun_refusal(job, entry.guild_id)
        return refusal if refusal is not None or job is None else Options.rerun_of(job)
    if entry.source in DERIVED_SOURCES:
        derive, index = entry.options.get("derive"), entry.options.get("image_index")
        if derive not in DERIVATIONS or not isinstance(index, int) or entry.parent_job_id is None:
            return UNREADABLE_CLICK
        job = await repository.get_job(services.db, entry.parent_job_id)
        return await derivation(services, job, index, derive, entry.guild_id)  # type: ignore[arg-type]
    typed = {key: value for key, value in entry.options.items() if key in OPTION_NAMES}
    if UPLOAD_FIELD not in entry.options:
        return Options.typed_by_member(**typed)
    upload = entry.options[UPLOAD_FIELD]
    if not isinstance(upload, dict):  # an older entry kept only the file name: running without it is not wanted
        return UPLOAD_LOST
    settings = services.settings
    try:  # downloaded and checked again, exactly as the live command does
        picture = await read_upload(upload, settings.input_images, settings.generation)
    except RequestError as exc:
        return refusal_message("invalid", message=exc.message)
    return Options.typed_by_member(init_image=picture.png, **typed)


def origin_of_entry(entry: InboxRecord) -> Origin:
    index = entry.options.get("image_index") if entry.source in DERIVED_SOURCES else None
    return Origin(user_id=entry.user_id, channel_id=entry.channel_id, guild_id=entry.guild_id,
                  role_ids=entry.role_ids, interaction_id=entry.interaction_id, interaction_token=entry.token,
                  application_id=entry.application_id, parent_job_id=entry.parent_job_id,
                  parent_image_index=index if isinstance(index, int) else None, source=entry.source)


async def replay_inbox(bot: Any) -> list[int]:
    """Replay every entry left in the inbox (oldest first); returns the ids of the jobs it journalled."""
    services, delivery = bot.services, bot.delivery
    journalled: list[int] = []
    now = utcnow()
    for entry in await inbox.pending(services.db):
        age = now - as_utc(entry.received_at)
        if age >= TOKEN_LIFETIME:
            log.warning("inbox: interaction %s of user %s is %.0f min old, past its token's lifetime; dropped",
                        entry.interaction_id, entry.user_id, age.total_seconds() / 60)
            await inbox.forget(services.db, entry.interaction_id)
            continue
        original = delivery.interaction_webhook(entry.application_id, entry.token)
        try:
            await original.edit_message("@original", content=REPLAY_NOTE)  # type: ignore[arg-type]
        except (discord.NotFound, discord.Forbidden) as exc:
            # Never acknowledged (the crash came before the deferral) or the token is gone: Discord showed
            # the member that the command failed, so running it now would surprise them.
            log.warning("inbox: interaction %s cannot be answered any more (%s); dropped", entry.interaction_id,
                        exc.status)
            await inbox.forget(services.db, entry.interaction_id)
            continue
        except discord.HTTPException as exc:
            log.info("inbox: could not edit the response of interaction %s (%s); replaying anyway",
                     entry.interaction_id, exc.status)
        job_id = await _replay_one(bot, entry, original)
        if job_id is not None:
            journalled.append(job_id)
    if journalled:
        log.info("inbox: replayed %d acknowledged command(s) as jobs %s", len(journalled), journalled)
    return journalled


async def _replay_one(bot: Any, entry: InboxRecord, original: discord.Webhook) -> int | None:
    services = bot.services
    try:
        options = await options_of(services, entry)
        outcome = options if isinstance(options, str) else await submit(services.gate, options,
                                                                                  origin_of_entry(entry))
    except Exception:
        log.exception("inbox: replaying interaction %s failed", entry.interaction_id)
        outcome = APOLOGY
    if isinstance(outcome, str | Refusal):
        text = outcome if isinstance(outcome, str) else outcome.message
        try:
            await original.edit_message("@original", content=text)  # type: ignore[arg-type]
        except discord.HTTPException as exc:
            log.info("inbox: could not answer interaction %s: %s", entry.interaction_id, exc)
        await inbox.forget(services.db, entry.interaction_id)
        return None
    bot.delivery.watch_original(outcome.job, outcome.handle)
    log.info("inbox: interaction %s replayed as job %s", entry.interaction_id, outcome.job.id)
    return outcome.job.id
