"""What travels through Redis between the bot and its workers, and the key names: one place for both sides.

Requests are serialised generically (a field's ``to_dict()``/``from_dict()`` when its type has them, bytes as
base64, nested dataclasses field by field), so a new request field needs no change here. The batch key the bot
uses without an engine is generic too: every field that the pipeline takes as one value for the whole call, i.e.
all of them but the per-image ones (:data:`PER_IMAGE_FIELDS`). It is at least as strict as any engine's key.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from functools import cache
from typing import Any

from generation.request import GenerationRequest

# Fields that differ image by image inside one pipeline call (prompts, seeds, counts, the starting image).
PER_IMAGE_FIELDS = frozenset({"prompt", "negative_prompt", "seed", "count", "requester_id", "init_image",
                              "parent_seed"})
WORKERS_GROUP = "workers"
BOT_GROUP = "bot"


@dataclass(frozen=True)
class Keys:
    """Redis names under one prefix (``queue.redis_prefix``)."""

    prefix: str

    def batches(self, model: str) -> str:
        """Stream of batches for one model; workers that serve it read it in group :data:`WORKERS_GROUP`."""
        return f"{self.prefix}:batches:{model}"

    @property
    def events(self) -> str:
        """Stream of claims, results and errors for the bot (durable: read in group :data:`BOT_GROUP`)."""
        return f"{self.prefix}:events"

    @property
    def progress(self) -> str:
        """Pub/sub channel of step events with previews (losing one is harmless)."""
        return f"{self.prefix}:progress"

    @property
    def control(self) -> str:
        """Pub/sub channel: a worker announces itself, so the bot need not wait for its next scan."""
        return f"{self.prefix}:control"

    def worker(self, worker_id: str) -> str:
        """A worker's heartbeat (JSON of :class:`WorkerInfo`), expiring after ``lease_seconds``."""
        return f"{self.prefix}:worker:{worker_id}"

    @property
    def worker_pattern(self) -> str:
        return f"{self.prefix}:worker:*"

    def cancel(self, job_id: str) -> str:
        """Set by the bot when a member cancels a job that a worker may be running."""
        return f"{self.prefix}:cancel:{job_id}"

    @property
    def epoch(self) -> str:
        """The bot's session id: missing or different = Redis lost its data (or another bot process took over)."""
        return f"{self.prefix}:epoch"


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker advertises with each heartbeat."""

    worker_id: str
    models: tuple[str, ...]
    device: str
    max_batch: int
    slots: int  # batches it holds at once: the one it runs plus queue.prefetch
    host: str = ""
    pid: int = 0

    def to_json(self) -> bytes:
        return json.dumps({**dataclasses.asdict(self), "models": list(self.models)}).encode()

    @classmethod
    def from_json(cls, raw: bytes | str) -> WorkerInfo:
        data = json.loads(raw)
        return cls(worker_id=str(data["worker_id"]), models=tuple(map(str, data["models"])),
                   device=str(data.get("device", "")), max_batch=int(data["max_batch"]), slots=int(data["slots"]),
                   host=str(data.get("host", "")), pid=int(data.get("pid", 0)))


# --- requests ----------------------------------------------------------------------------------------------------


def _encode(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    return value


def _classes(annotation: Any) -> list[Any]:
    """The classes an annotation allows (``X | None`` -> [X, NoneType])."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return [c for arg in typing.get_args(annotation) for c in _classes(arg)]
    return [typing.get_origin(annotation) or annotation]


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _decode(annotation: Any, value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"$bytes"}:
        return base64.b64decode(value["$bytes"])
    if isinstance(value, dict):
        for cls in _classes(annotation):
            if callable(getattr(cls, "from_dict", None)):
                return cls.from_dict(value)
            if dataclasses.is_dataclass(cls):
                return _build(cls, value)
    if isinstance(value, list) and tuple in _classes(annotation):
        return tuple(value)
    return value


def _build(cls: type, data: dict[str, Any]) -> Any:
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)} (bot and worker versions differ?)")
    return cls(**{name: _decode(hints[name], value) for name, value in data.items()})


def request_to_dict(request: GenerationRequest) -> dict[str, Any]:
    """JSON-safe form of a request (see the module docstring)."""
    return _encode(request)


def request_from_dict(data: dict[str, Any]) -> GenerationRequest:
    """The inverse of :func:`request_to_dict`; ``ValueError`` when a field is unknown to this version."""
    return _build(GenerationRequest, data)


def _flat_fields(request: GenerationRequest) -> dict[str, Any]:
    """The request's fields with nested parameter objects flattened into it (e.g. ``request.params``)."""
    flat: dict[str, Any] = {}
    for name, value in request_to_dict(request).items():
        if isinstance(value, dict) and "$bytes" not in value:
            flat.update(value)
        else:
            flat[name] = value
    return flat


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


def model_of(request: GenerationRequest, default_model: str) -> str:
    """The model a request runs on: its own ``model`` field, else the configured default."""
    return str(_flat_fields(request).get("model") or default_model)


def generic_batch_key(request: GenerationRequest, default_model: str) -> tuple:
    """Requests with equal keys may share a pipeline call: equal in every field but the per-image ones."""
    fields = _flat_fields(request)
    fields["model"] = fields.get("model") or default_model
    return tuple(sorted((name, _hashable(value)) for name, value in fields.items()
                        if name not in PER_IMAGE_FIELDS))


# --- messages ----------------------------------------------------------------------------------------------------


def dumps(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def loads(raw: bytes | str) -> dict[str, Any]:
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    return data


def progress_message(header: dict[str, Any], preview_png: bytes | None) -> bytes:
    """A progress event: the JSON header, a newline, then the preview PNG bytes (if any)."""
    return dumps(header) + b"\n" + (preview_png or b"")


def parse_progress_message(raw: bytes) -> tuple[dict[str, Any], bytes | None]:
    header, _, preview = raw.partition(b"\n")
    return loads(header), (preview or None)
