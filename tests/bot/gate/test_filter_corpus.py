"""The corpus in filter_corpus.py, with the shipped rules on: every disguise refused, every harmless prompt run."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from bot.gate.content_filter import ContentFilter, normalise


def _corpus() -> ModuleType:
    """filter_corpus.py beside this file (pytest's importlib mode does not put test folders on sys.path)."""
    spec = importlib.util.spec_from_file_location("filter_corpus", Path(__file__).with_name("filter_corpus.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CORPUS = _corpus()
DISGUISES, HARMLESS = CORPUS.DISGUISES, CORPUS.HARMLESS
FILTER = ContentFilter(CORPUS.CORPUS_TERMS, default_rules=True, negative_prompt_terms=["clothes"])


def test_corpus_counts() -> None:
    """At least 100 of each, all distinct; the counts are printed for the closing note (pytest -s)."""
    refused = [p for p, _ in DISGUISES if not FILTER.check(p).allowed]
    passed = [p for p, _ in HARMLESS if FILTER.check(p).allowed]
    print(f"\ncontent filter corpus: {len(refused)}/{len(DISGUISES)} disguises refused, "
          f"{len(passed)}/{len(HARMLESS)} harmless prompts passed")
    assert len(DISGUISES) >= 100 and len(HARMLESS) >= 100
    assert len({p for p, _ in DISGUISES}) == len(DISGUISES) and len({p for p, _ in HARMLESS}) == len(HARMLESS)
    assert (len(refused), len(passed)) == (len(DISGUISES), len(HARMLESS))


@pytest.mark.parametrize(("prompt", "how"), DISGUISES, ids=[f"{i}-{how}" for i, (_, how) in enumerate(DISGUISES)])
def test_disguise_is_refused(prompt: str, how: str) -> None:
    verdict = FILTER.check(prompt)
    assert not verdict.allowed, f"{how}: {prompt!r} reads as {normalise(prompt)!r}"
    assert verdict.rule is not None and verdict.rule.startswith("term:")


@pytest.mark.parametrize(("prompt", "near_miss"), HARMLESS, ids=[f"{i}" for i in range(len(HARMLESS))])
def test_harmless_prompt_passes(prompt: str, near_miss: str) -> None:
    verdict = FILTER.check(prompt)
    assert verdict.allowed, f"{prompt!r} ({near_miss}) reads as {normalise(prompt)!r}: {verdict.rule}"


@pytest.mark.parametrize(("prompt", "how"), CORPUS.MINOR_COMBINATIONS)
def test_shipped_rules_refuse_sexual_content_involving_minors(prompt: str, how: str) -> None:
    verdict = ContentFilter(default_rules=True).check(prompt)
    assert not verdict.allowed, f"{prompt!r} ({how}) reads as {normalise(prompt)!r}"
    assert ContentFilter(default_rules=False).check(prompt).allowed  # the config switch
    assert ContentFilter(default_rules=True).check(prompt, default_rules=False).allowed  # the server's switch


@pytest.mark.parametrize(("prompt", "how"), CORPUS.MINOR_NEAR_MISSES)
def test_shipped_rules_let_near_misses_through(prompt: str, how: str) -> None:
    verdict = ContentFilter(default_rules=True).check(prompt)
    assert verdict.allowed, f"{prompt!r} ({how}): {verdict.rule}"


@pytest.mark.parametrize(("prompt", "negative", "refused"), CORPUS.NEGATIVE_PROMPTS)
def test_negative_prompts(prompt: str, negative: str, refused: bool) -> None:
    verdict = FILTER.check_request(prompt, negative)
    assert verdict.allowed is not refused, verdict
