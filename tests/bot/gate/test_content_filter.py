"""Table-driven tests for the prompt content filter: disguises are refused, near misses pass."""

from __future__ import annotations

import pytest

from bot.gate.content_filter import (
    CATEGORY_PATTERN,
    CATEGORY_TERM,
    ContentFilter,
    FilterConfigError,
    normalise,
    term_key,
)

NORMALISE_CASES = [
    ("ForbiddenWord", "forbiddenword"),
    ("ｆｏｒｂｉｄｄｅｎ", "forbidden"),  # fullwidth -> ASCII
    ("forbid\u200bden\u200d\u2060word", "forbiddenword"),  # zero-width / format characters vanish
    ("f o r b i d", "forbid"),
    ("f.o.r.b.i.d", "forbid"),
    ("f-o-r-b", "forb"),
    ("FORBIDDEN-WORD", "forbidden word"),
    ("snake_case_words", "snake case words"),
    ("f0rb1dd3n", "forbidden"),
    ("p@$$w0rd", "password"),
    ("wow! (red)", "wow red"),
    ("café naïve", "cafe naive"),
    ("fоrbidden", "forbidden"),  # Cyrillic о
    ("Straße", "strasse"),
    # legit numbers survive in the readable form
    ("1girl, 8k, 35mm, 1024x768, 16:9, 1990s", "1girl 8k 35mm 1024x768 16 9 1990s"),
    ("12 years old", "12 years old"),
    ("a cat", "a cat"),
    ("", ""),
]


@pytest.mark.parametrize(("text", "expected"), NORMALISE_CASES)
def test_normalise(text: str, expected: str) -> None:
    assert normalise(text) == expected


@pytest.mark.parametrize("term", ["forbiddenword", "Forbidden Word", "forbidden-word", "FORBIDDEN_WORD"])
def test_term_key_ignores_spacing_and_case(term: str) -> None:
    assert term_key(term) == "forbiddenword"


SHOULD_BLOCK = [
    "ForbiddenWord",
    "forbiddenword",
    "a forbiddenword in a sentence",
    "f o r b i d d e n w o r d",
    "f.o.r.b.i.d.d.e.n.w.o.r.d",
    "f-o-r-b-i-d-d-e-n-w-o-r-d",
    "f0rb1dd3nw0rd",
    "F0RB!DD3NW0RD",
    "forbid\u200bdenword",
    "ｆｏｒｂｉｄｄｅｎｗｏｒｄ",
    "FORBIDDEN-WORD",
    "forbidden_word",
    "Forbidden Word",
    "forbidden  word",
    "forbidden\tword",
    "forbidden w0rd!",
    "(forbiddenword)",
    "fоrbiddenwоrd",  # Cyrillic о look-alikes
    "fórbiddénword",  # accents
    "forbiddenwords",  # decision: simple plurals are blocked
    "forbiddenwordes",
    "masterpiece, best quality, forbiddenword, 8k",
]

SHOULD_PASS = [
    "forbidden world",
    "unforbiddenwordly",  # word boundary: the term inside a longer word passes
    "forbiddenwordly",
    "unforbiddenword",
    "forbidden",
    "word",
    "a forbidden fruit and a kind word",  # both words present but not adjacent
    "forbidden wordsmith",
    "1girl, 8k, 1024x768, masterpiece",
    "a cat sitting on a mat",
    "",
]


@pytest.fixture(params=["forbiddenword", "forbidden word"], ids=["one-word term", "two-word term"])
def content_filter(request: pytest.FixtureRequest) -> ContentFilter:
    return ContentFilter([request.param])


@pytest.mark.parametrize("prompt", SHOULD_BLOCK)
def test_disguised_terms_are_refused(content_filter: ContentFilter, prompt: str) -> None:
    verdict = content_filter.check(prompt)
    assert not verdict.allowed
    assert verdict.category == CATEGORY_TERM
    assert verdict.rule is not None and verdict.rule.startswith("term:")


@pytest.mark.parametrize("prompt", SHOULD_PASS)
def test_near_misses_pass(content_filter: ContentFilter, prompt: str) -> None:
    verdict = content_filter.check(prompt)
    assert verdict.allowed, verdict
    assert verdict.category is None and verdict.rule is None


MULTI_WORD_CASES = [
    ("a red panda eating", False),
    ("a Red-Panda eating", False),
    ("redpanda", False),
    ("r e d p a n d a", False),
    ("r3d p4nd4s", False),
    ("a red car and a panda", True),
    ("red pandamonium", True),
    ("a red", True),
]


@pytest.mark.parametrize(("prompt", "allowed"), MULTI_WORD_CASES)
def test_multi_word_term(prompt: str, allowed: bool) -> None:
    assert ContentFilter(["red panda"]).check(prompt).allowed is allowed


LEET_NUMBER_CASES = [
    ("4ss", False),  # leading digit leet is caught by the full leet form
    ("a$$", False),
    ("a s s", False),
    ("assassin", True),
    ("class", True),
    ("bass guitar", True),
]


@pytest.mark.parametrize(("prompt", "allowed"), LEET_NUMBER_CASES)
def test_short_term_with_leet(prompt: str, allowed: bool) -> None:
    assert ContentFilter(["ass"]).check(prompt).allowed is allowed


def test_numbers_in_terms_match_plain_digits() -> None:
    f = ContentFilter(["area 51"])
    assert not f.check("visit Area-51 tonight").allowed
    assert f.check("area 52").allowed


REGEX_CASES = [
    ("a child soldier", False),
    ("a CHILD   soldier", False),
    ("a ch1ld-s0ldier", False),
    ("c.h.i.l.d soldier", False),
    ("a child and a soldier", True),
    ("childsoldiers", True),
]


@pytest.mark.parametrize(("prompt", "allowed"), REGEX_CASES)
def test_regex_rule(prompt: str, allowed: bool) -> None:
    f = ContentFilter([], [r"\bchild soldiers?\b"])
    verdict = f.check(prompt)
    assert verdict.allowed is allowed
    if not allowed:
        assert verdict.category == CATEGORY_PATTERN
        assert verdict.rule == r"regex:\bchild soldiers?\b"


def test_regex_rule_sees_digits_in_plain_form() -> None:
    f = ContentFilter([], [r"\b1[0-7] ?(yo|years? old)\b"])
    assert not f.check("a 12 years old").allowed
    assert not f.check("12yo").allowed
    assert f.check("a 30 years old man").allowed


def test_guild_terms_add_to_global_terms() -> None:
    f = ContentFilter(["forbiddenword"])
    assert f.check("bananas").allowed
    verdict = f.check("B4N4N4S", guild_terms=["banana"])
    assert (verdict.allowed, verdict.category, verdict.rule) == (False, CATEGORY_TERM, "guild_term:banana")
    assert f.check("forbiddenword", guild_terms=["banana"]).rule == "term:forbiddenword"
    assert f.check("fine", guild_terms=["", "!!!"]).allowed  # unusable guild terms are ignored


def test_category_never_contains_the_term() -> None:
    verdict = ContentFilter(["forbiddenword"], [r"secret\w+"]).check("forbiddenword")
    assert "forbidden" not in (verdict.category or "")
    verdict = ContentFilter([], [r"secret\w+"]).check("secretthing")
    assert "secret" not in (verdict.category or "")


def test_invalid_regex_names_the_rule() -> None:
    with pytest.raises(FilterConfigError, match=r"regex_rules\[1\] = '\(unclosed'.*not a valid regular expression"):
        ContentFilter([], [r"fine", r"(unclosed"])


def test_term_without_letters_is_a_config_error() -> None:
    with pytest.raises(FilterConfigError, match=r"blocked_terms\[0\] = '\?\?\?'"):
        ContentFilter(["???"])


def test_counts() -> None:
    f = ContentFilter(["forbiddenword", "Forbidden Word", "other"], ["a", "b"])
    assert (f.term_count, f.rule_count) == (2, 2)
