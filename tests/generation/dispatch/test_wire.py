"""What travels through Redis: requests survive the round trip, the engine-free batch key groups what may share a
pipeline call and nothing else, worker heartbeats parse."""

from __future__ import annotations

import dataclasses

import pytest

from generation.dispatch import wire
from generation.request import GenerationRequest, ImageParams


def req(prompt: str = "a cat", *, seed: int = 1, count: int = 1, size: int = 64, steps: int = 4,
        model: str = "", requester: str = "u1") -> GenerationRequest:
    return GenerationRequest(ImageParams(prompt=prompt, negative_prompt="blur", seed=seed, steps=steps, guidance=7.5,
                                         width=size, height=size, count=count, scheduler="euler_a", model=model),
                             requester_id=requester)


def test_a_request_survives_the_round_trip_through_json() -> None:
    original = req("ünïcode ✓ prompt", seed=2**32 - 1, count=3, model="m1")
    data = wire.loads(wire.dumps(wire.request_to_dict(original)))
    assert wire.request_from_dict(data) == original


@dataclasses.dataclass(frozen=True)
class Inner:
    weights: tuple[float, ...]


@dataclasses.dataclass(frozen=True)
class Outer:
    inner: Inner
    blob: bytes | None
    name: str


def test_bytes_and_nested_dataclasses_are_encoded_generically() -> None:
    value = Outer(Inner((0.5, 1.0)), b"\x00\xffPNG", "x")
    encoded = wire.loads(wire.dumps(wire._encode(value)))
    assert encoded["blob"] == {"$bytes": "AP9QTkc="}
    assert wire._build(Outer, encoded) == value


def test_an_unknown_field_is_refused_not_dropped() -> None:
    data = wire.request_to_dict(req())
    data["lora_strength"] = 0.7
    with pytest.raises(ValueError, match="lora_strength"):
        wire.request_from_dict(data)


def test_batch_key_ignores_per_image_fields_only() -> None:
    base = wire.generic_batch_key(req(), "tiny")
    assert wire.generic_batch_key(req("a dog", seed=9, count=2, requester="u2"), "tiny") == base
    assert wire.generic_batch_key(req(size=128), "tiny") != base
    assert wire.generic_batch_key(req(steps=5), "tiny") != base
    assert wire.generic_batch_key(req(model="other"), "tiny") != base
    assert wire.generic_batch_key(req(model="tiny"), "tiny") == base  # "" means the default model


def test_model_of_falls_back_to_the_default() -> None:
    assert wire.model_of(req(), "tiny") == "tiny"
    assert wire.model_of(req(model="m1"), "tiny") == "m1"


def test_worker_heartbeat_round_trip_and_progress_framing() -> None:
    info = wire.WorkerInfo(worker_id="w1", models=("tiny", "m1"), device="cuda:1", max_batch=4, slots=2,
                           host="gpu-host", pid=42)
    assert wire.WorkerInfo.from_json(info.to_json()) == info
    header = {"batch_id": "b", "job_id": "1", "attempt": 2, "step": 3, "total": 4}
    assert wire.parse_progress_message(wire.progress_message(header, b"\x89PNG\n\x00")) == (header, b"\x89PNG\n\x00")
    assert wire.parse_progress_message(wire.progress_message(header, None)) == (header, None)
