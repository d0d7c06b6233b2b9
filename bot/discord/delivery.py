"""Getting a job's progress and result to the member: ephemeral progress edits, then a public result post.

Where a result goes is decided from the journalled job alone (so a job recovered after a restart is delivered
exactly like a live one):

* the interaction token is still usable (younger than :data:`TOKEN_USABLE_FOR`, a margin under Discord's
  15 minutes) -> a public followup through the interaction webhook (``Webhook`` built from the stored
  application id and token; no live ``Interaction`` needed);
* otherwise (a 🔄 reaction, a long queue, a restart) -> a channel message that mentions the member.

The journal calls :meth:`Delivery.on_job_finished` once the images are saved. Nothing here blocks the loop:
re-encoding a PNG to fit the upload limit and the safety checker run in threads.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import discord

from bot.clock import as_utc
from bot.discord import formatting
from bot.discord.output_safety import apply_policy, policy_for
from bot.discord.views import result_view
from bot.gate.refusals import refusal_message
from bot.services import Services
from bot.storage import repository
from bot.storage.records import ImageRecord, JobRecord
from bot.text import MESSAGE_CONTENT_LIMIT, truncate

if TYPE_CHECKING:
    from generation.worker import GenerationResult, JobHandle

log = logging.getLogger(__name__)

TOKEN_LIFETIME = timedelta(minutes=15)
TOKEN_USABLE_FOR = timedelta(minutes=14)  # a margin for the upload itself
RERUN_EMOJI = "🔄"
MENTIONS = discord.AllowedMentions(everyone=False, roles=False, users=True, replied_user=True)



def token_issued_at(job: JobRecord) -> datetime | None:
    """When the interaction token was issued: the interaction id's snowflake time, else when the job was queued.

    The snowflake is exact on Discord; it is only trusted when it is plausible (not after the job was queued,
    not more than a day before), so a server with odd ids degrades to ``queued_at`` instead of to nonsense.
    """
    if not job.interaction_token or not job.application_id:
        return None
    queued_at = as_utc(job.queued_at)
    if job.interaction_id:
        issued = discord.utils.snowflake_time(job.interaction_id)
        if queued_at - timedelta(days=1) <= issued <= queued_at + timedelta(seconds=5):
            return issued
    return queued_at


def token_usable(job: JobRecord, now: datetime | None = None) -> bool:
    """True while a followup through the job's interaction webhook will still be accepted by Discord."""
    issued = token_issued_at(job)
    if issued is None:
        return False
    now = as_utc(now or discord.utils.utcnow())
    return now - issued < TOKEN_USABLE_FOR


@dataclass
class Watched:
    """A job whose member is watching an ephemeral response (an /imagine or a Rerun click)."""

    job_id: int
    interaction: discord.Interaction | None
    size_limit: int
    handle: JobHandle | None = None
    task: asyncio.Task[None] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    finished: bool = False
    edited: bool = False  # the deferred ("thinking") response was edited at least once
    status_message: discord.Message | None = None  # the "queued" note of a reaction rerun


def _check_pngs(checker: Any, pngs: list[bytes]) -> list[bool]:
    """Decode and classify (thread only: PIL and the checker model are CPU/GPU work)."""
    from PIL import Image

    images = []
    for png in pngs:
        with Image.open(io.BytesIO(png)) as opened:
            images.append(opened.convert("RGB"))
    return [bool(flag) for flag in checker.check(images)]


class Delivery:
    """Progress edits while a job runs, and the result post (or the failure note) when it ends."""

    def __init__(self, bot: Any, services: Services) -> None:
        self.bot = bot
        self.services = services
        self.settings = services.settings
        self._watched: dict[int, Watched] = {}
        # Cogs add buttons under results here (contests: "Submit to contest"); each returns items for a job.
        self.result_item_providers: list[Callable[[JobRecord, Sequence[ImageRecord]],
                                                  Awaitable[list[discord.ui.Item[Any]]]]] = []

    # --- while the job waits and runs --------------------------------------------------------------------

    def size_limit_for(self, interaction: discord.Interaction | None) -> int:
        """The interaction's attachment_size_limit when Discord sent one, else the configured default."""
        limit = getattr(interaction, "filesize_limit", None) if interaction is not None else None
        return int(limit) if isinstance(limit, int) and limit > 0 else self.settings.discord.attachment_size_limit

    def watch(self, job: JobRecord, handle: JobHandle, interaction: discord.Interaction | None) -> Watched:
        """Register a live job (synchronously, before any await, so a fast result cannot overtake it)."""
        watched = Watched(job.id, interaction, self.size_limit_for(interaction), handle)
        self._watched[job.id] = watched
        if interaction is not None:
            watched.task = self.bot.spawn(self._progress(watched, handle), name=f"progress-{job.id}")
        return watched

    async def edit_status(self, watched: Watched, *, final: bool = False, **kwargs: Any) -> bool:
        """Edit the member's ephemeral response; progress edits stop once the final one was made."""
        if watched.interaction is None:
            return False
        async with watched.lock:
            if watched.finished and not final:
                return False
            if final:
                watched.finished = True
            try:
                await watched.interaction.edit_original_response(**kwargs)
                watched.edited = True
                return True
            except discord.HTTPException as exc:
                log.info("could not edit the response of job %s: %s", watched.job_id, exc)
                return False

    async def _progress(self, watched: Watched, handle: JobHandle) -> None:
        """Queue position, then step i/N (with a small preview), at most every ``progress_edit_seconds``."""
        worker = self.services.worker
        every = self.settings.discord.progress_edit_seconds
        position = worker.position(handle.job_id)
        await self.edit_status(watched, content=formatting.queued_message(
            position, worker.estimate_seconds(handle.job_id)))
        last_edit = time.monotonic()
        pending = None
        async for progress in handle.progress():
            pending = progress
            if time.monotonic() - last_edit < every:
                continue
            await self._show_progress(watched, progress)
            last_edit = time.monotonic()
            pending = None
        if pending is not None and not watched.finished:
            await self._show_progress(watched, pending)

    async def _show_progress(self, watched: Watched, progress: Any) -> None:
        kwargs: dict[str, Any] = {"content": formatting.progress_message(progress.step, progress.total)}
        if progress.preview_png and self.settings.generation.previews and len(progress.preview_png) < 512 * 1024:
            kwargs["attachments"] = [discord.File(io.BytesIO(progress.preview_png), filename="preview.png")]
        await self.edit_status(watched, **kwargs)

    # --- recovery ------------------------------------------------------------------------------------------

    async def fail_jobs_in_gone_channels(self) -> list[int]:
        """Before recovery re-queues anything: unfinished jobs whose channel is gone (deleted, or the bot was
        removed) are marked failed with the reason, so no GPU time is spent on images nobody can receive."""
        failed: list[int] = []
        gone: dict[int, str | None] = {}
        for job in await repository.unfinished_jobs(self.services.db):
            if self.services.journal.handle_for(job.id) is not None:
                continue  # followed by this process already: not a leftover
            if job.channel_id not in gone:
                gone[job.channel_id] = await self._channel_gone(job.channel_id)
            reason = gone[job.channel_id]
            if reason is not None:
                await repository.mark_failed(self.services.db, job.id, reason)
                log.warning("unfinished job not recovered: %s", reason, extra={"job": job.id})
                failed.append(job.id)
        return failed

    async def _channel_gone(self, channel_id: int) -> str | None:
        """Why a channel cannot receive results (None when it can, or when Discord could not tell us)."""
        try:
            await self.bot.fetch_channel(channel_id)
        except (discord.NotFound, discord.Forbidden) as exc:
            return f"channel {channel_id} is gone or no longer visible to the bot ({exc.status})"
        except discord.HTTPException:
            log.warning("could not check channel %s; its jobs run anyway", channel_id, exc_info=True)
        return None

    # --- when the job ends -----------------------------------------------------------------------------------

    async def on_job_finished(self, job: JobRecord, images: Sequence[ImageRecord], outcome: Any) -> None:
        """Journal listener: post the result (or say why there is none). Never raises into the journal."""
        watched = self._watched.pop(job.id, None)
        if watched is not None and watched.interaction is None:
            watched.finished = True
        try:
            if watched is not None and watched.task is not None and not watched.task.done():
                watched.task.cancel()
            from generation.worker import GenerationResult

            if isinstance(outcome, GenerationResult):
                await self.post_result(job, images, outcome, watched)
            else:
                await self.post_failure(job, outcome, watched)
            if watched is not None:
                await self.remove_status_message(watched)
        except Exception:
            log.exception("delivering job %s failed", job.id)
            if watched is not None:
                failure = refusal_message("failure", job_id=job.id)
                await self.edit_status(watched, final=True, content=failure, attachments=[])

    async def remove_status_message(self, watched: Watched) -> None:
        """Delete a reaction rerun's "queued" note once the result (or failure) mentions the member anyway."""
        message, watched.status_message = watched.status_message, None
        if message is not None:
            try:
                await message.delete()
            except discord.HTTPException:
                log.debug("could not delete the queued note %s", message.id, exc_info=True)

    async def post_failure(self, job: JobRecord, error: BaseException, watched: Watched | None) -> None:
        from generation.worker import JobCancelledError

        cancelled = isinstance(error, JobCancelledError)
        message = getattr(error, "message", None) or refusal_message("failure", job_id=job.id)
        if cancelled:
            message = refusal_message("cancelled")
        if watched is not None and watched.interaction is not None:
            await self.edit_status(watched, final=True, content=message, attachments=[])
            return
        if cancelled:
            return  # /cancel already told the member; a channel message would only be noise
        await self.send_to_channel(job, f"<@{job.user_id}> {message}", delete_after=None)

    async def post_result(self, job: JobRecord, images: Sequence[ImageRecord], result: GenerationResult,
                          watched: Watched | None) -> discord.Message | None:
        """Fit, check and post the images publicly with the embed and buttons; record the message id."""
        size_limit = watched.size_limit if watched is not None else self.settings.discord.attachment_size_limit
        generated = sorted(result.images, key=lambda image: image.index)
        pngs = [image.png for image in generated]
        outcomes = await self._apply_safety(job, pngs)
        notes: list[str] = []
        files: list[discord.File] = []
        for outcome, image in zip(outcomes, generated, strict=True):
            if outcome.png is None:
                continue
            try:
                data, note = await asyncio.to_thread(formatting.fit_attachment, outcome.png, size_limit)
            except ValueError as exc:
                notes.append(f"image {image.index + 1} could not be attached ({exc})")
                continue
            if note:
                notes.append(f"image {image.index + 1}: {note}")
            name = outcome.filename(f"imagine-{job.id}-{image.index}.png")
            files.append(discord.File(io.BytesIO(data), filename=name, spoiler=outcome.is_spoiler))
        withheld = sum(1 for o in outcomes if o.png is None)
        if withheld:
            notes.append(refusal_message("withheld", count=withheld, total=len(outcomes)))

        embed = formatting.job_embed(job, seeds=[image.seed for image in generated], model=result.model_name,
                                     elapsed_seconds=result.elapsed_seconds,
                                     prompt_truncated=result.prompt_truncated or job.prompt_truncated)
        lines = [f"<@{job.user_id}>"]
        if self.services.model.is_fallback and self.services.model.banner:
            lines.append(f"⚠️ {self.services.model.banner}")
        lines += [f"-# {note}" for note in notes]
        content = truncate("\n".join(lines), MESSAGE_CONTENT_LIMIT)
        extra: dict[str, Any] = {"view": await self._result_view(job, images)} if files else {}

        message = None
        if token_usable(job):
            if watched is None or not watched.edited:
                await self._end_thinking(job)
            message = await self._send_followup(job, content=content, embed=embed, files=files, **extra)
        if message is None:
            for file in files:
                file.reset()
            message = await self.send_to_channel(job, content, embed=embed, files=files, **extra)
        if message is None:
            if watched is not None:
                await self.edit_status(watched, final=True, content="Your image is ready, but I could not post it "
                                       "in this channel (missing permission?).", attachments=[])
            return None

        await repository.set_job_message(self.services.db, job.id, message.id)
        await repository.set_image_message(self.services.db, job.id, message.id)
        if files:
            try:
                await self.bot.http.add_reaction(message.channel.id, message.id, RERUN_EMOJI)
            except discord.HTTPException:
                log.debug("could not add the rerun reaction to %s", message.id, exc_info=True)
        if watched is not None:
            link = getattr(message, "jump_url", "")
            await self.edit_status(watched, final=True, content=f"Done: {link}" if link else "Done.", attachments=[])
        log.info("result posted", extra={"job": job.id, "message_id": message.id, "images": len(files)})
        return message

    async def _result_view(self, job: JobRecord, images: Sequence[ImageRecord]) -> discord.ui.View:
        """The result buttons, plus what the cogs' providers add (a failing provider only loses its items)."""

        view = result_view(job.id)
        for provider in list(self.result_item_providers):
            try:
                for item in await provider(job, images):
                    view.add_item(item)
            except Exception:
                log.exception("result item provider %r failed for job %s", provider, job.id)
        return view

    async def _apply_safety(self, job: JobRecord, pngs: list[bytes]) -> list[Any]:
        """Run the output checker (if any) in a thread and apply the channel's policy to each image."""

        checker = self.services.safety_checker
        if checker is None:
            return apply_policy(pngs, [False] * len(pngs), "allow")
        flags = await asyncio.to_thread(_check_pngs, checker, pngs)
        if not any(flags):
            return apply_policy(pngs, flags, "allow")
        guild_policy = None
        if job.guild_id is not None:
            guild_policy = (await repository.get_guild_settings(self.services.db, job.guild_id)).nsfw_policy
        policy = policy_for(await self._channel_is_nsfw(job.channel_id), self.settings.content_filter, guild_policy)
        images = await repository.images_for_job(self.services.db, job.id)
        for image in images:
            if image.index < len(flags) and flags[image.index]:
                await repository.set_image_nsfw(self.services.db, image.id, True)
        log.info("safety checker flagged images", extra={"job": job.id, "flagged": sum(flags), "policy": policy})
        return apply_policy(pngs, flags, policy)

    async def _channel_is_nsfw(self, channel_id: int) -> bool:
        channel = self.bot.get_channel(channel_id)
        if channel is None:
            try:
                channel = await self.bot.fetch_channel(channel_id)
            except discord.HTTPException:
                return False  # unknown: the stricter non-NSFW policy applies
        is_nsfw = getattr(channel, "is_nsfw", None)
        return bool(is_nsfw()) if callable(is_nsfw) else False

    async def _end_thinking(self, job: JobRecord) -> None:
        """Edit the deferred ephemeral response before the first followup.

        Discord turns the first followup after a deferred ("thinking") response into an edit of that response,
        keeping it ephemeral: a result posted before any progress edit (a job recovered after a restart, a
        first edit that failed or lost the race) would be seen by the member only, not posted publicly.
        """
        webhook = discord.Webhook.from_state(
            data={"id": job.application_id, "type": 3, "token": job.interaction_token}, state=self.bot._connection)
        try:
            await webhook.edit_message("@original", content="Your image is ready.")  # type: ignore[arg-type]
        except discord.HTTPException as exc:
            log.info("could not edit the deferred response of job %s: %s", job.id, exc)

    async def _send_followup(self, job: JobRecord, **kwargs: Any) -> discord.Message | None:
        """A public followup through the stored interaction token; None when Discord no longer takes it."""
        # Exactly what discord.py's Interaction.followup builds, from the journalled application id and token.
        webhook = discord.Webhook.from_state(
            data={"id": job.application_id, "type": 3, "token": job.interaction_token}, state=self.bot._connection)
        try:
            return await webhook.send(wait=True, allowed_mentions=MENTIONS, **kwargs)
        except (discord.NotFound, discord.Forbidden) as exc:
            log.info("interaction token of job %s refused (%s); posting in the channel instead", job.id, exc.status)
            return None
        except discord.HTTPException as exc:
            if exc.status == 401:
                return None
            raise

    async def send_to_channel(self, job: JobRecord, content: str, *, delete_after: float | None = None,
                              **kwargs: Any) -> discord.Message | None:
        """A channel message that mentions the member (no cache needed: a partial messageable is enough)."""
        channel = self.bot.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
        try:
            return await channel.send(content, allowed_mentions=MENTIONS, delete_after=delete_after, **kwargs)
        except (discord.NotFound, discord.Forbidden) as exc:
            log.warning("cannot post in channel %s for job %s: %s", job.channel_id, job.id, exc)
            return None
