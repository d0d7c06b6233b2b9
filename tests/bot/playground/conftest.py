"""Shared by the playground tests: the ``tiny`` model loaded once per session (both tests start a playground)."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(scope="session")
def playground_tiny_model() -> Any:
    """``tiny`` on the CPU, reused by every playground started in this session (loading it takes seconds)."""
    from generation.loading import load_pipeline
    from generation.settings import GenerationSettings

    return load_pipeline(GenerationSettings(model="tiny", device="cpu"))
