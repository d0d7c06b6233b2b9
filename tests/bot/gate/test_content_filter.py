"""Table-driven tests for the prompt content filter: disguises are refused, near misses pass."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import ConfigError, settings_from_mapping
from bot.gate.content_filter import (
    CATEGORY_COMBINATION,
    CATEGORY_NEGATIVE_TERM,
    CATEGORY_PATTERN,
    CATEGORY_TERM,
    DEFAULT_RULES_PATH,
    ContentFilter,
    FilterConfigError,
    _load_default_rules,
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


# --- look-alike letters (UTS #39 skeletons through ICU), invisible characters, encodings, reversal ---------------

LOOK_ALIKE_CASES = [
    ("FORBIDDE\u039d", "forbidden"),  # Greek capital Nu: mapped before case folding (not to "v")
    ("\u0440\u043e\u0433n", "porn"),  # Cyrillic r, o, ghe
    ("\u044coo\u044c", "boob"),  # Cyrillic soft sign
    ("nud\u04bd", "nude"),  # Cyrillic abkhasian che
    ("\u0578\u0585", "no"),  # Armenian vo, oh
    ("\u0192\u0269\u0256", "fid"),  # f with hook, iota, d with tail
    ("\u1d18\u1d0f\u0280\u0274 \ua730\u1d0f\u0280\u0299", "porn forb"),  # small capitals
    ("\u13da\u13ac\u0058", "sex"),  # Cherokee
    ("\ua4dd\u03dc", "ff"),  # Lisu and Greek digamma
    ("\U0001f17f\U0001f17e \U0001f15d\U0001f164 \u24dd\u24e2", "po nu ns"),  # negative squared/circled, circled
    ("\U0001f1eb\U0001f1f4\U0001f1f7", "for"),  # regional indicators
    ("FORB\u04c0DDEN", "forbidden"),  # Cyrillic palochka reads as I (and as l in the other leet form)
    ("p\u0660rn s\u0969x", "porn sex"),  # Arabic-Indic and Devanagari digits
    ("for\u3164bid\uffa0den\u115f\u1160", "forbidden"),  # Hangul fillers
    ("f\u200do\u200cr\ufe0fb\u034fi\u200ed\u00adden", "forbidden"),  # joiners, selector, CGJ, LRM, soft hyphen
    ("%66orbidden &#102;orbidden &#x66;orbidden %2566orbidden", "forbidden forbidden forbidden forbidden"),
    ("\u202enedd\u200bibrof\u202c word", "forbidden word"),  # right-to-left override shows it in this order
    ("f()rbidden |=orbidden", "forbidden forbidden"),
    ("fo\u0363rbi\u0364dde\u0336n", "forbidden"),  # combining letters and strokes are decoration, not letters
    ("a blue tit's nest", "a blue tit nest"),  # possessive 's is not a plural
    ("100% cotton, fish &amp; chips", "100 cotton fish chips"),
]


@pytest.mark.parametrize(("text", "expected"), LOOK_ALIKE_CASES)
def test_normalise_maps_look_alikes_and_invisible_characters(text: str, expected: str) -> None:
    assert normalise(text) == expected


JOIN_CASES = [  # (term, prompt, refused)
    ("penis", "a pen is on the desk", False),  # two words never join into a short term
    ("penis", "pen-is", True),  # inside one word they do
    ("penis", "p e n i s", True),  # spelled-out letters do
    ("sex", "the king's ex-wife", False),
    ("shit", "a band's hit", False),
    ("tits", "a blue tit's nest", False),
    ("ass", "a 5s exposure", False),  # a number with a unit stays a number
    ("ass", "a 55s Buick", False),
    ("ass", "4ss", True),
    ("forbiddenword", "Forbidden Word", True),  # two long words do join
    ("red panda", "a red, panda", True),  # where the term itself has a space, any separator joins
    ("forbidden", "foorbidden", True),  # stretched letters
    ("anal", "the annals of Rome", False),  # a doubled letter in a short term is ordinary spelling
    ("anal", "aaanal", True),  # a tripled one is not
    ("forbidden", "neddibrof", True),  # reversed
    ("anal", "a portrait of Lana", False),  # short terms are not looked for reversed
    ("forbidden", "phorbidden", True),
    ("forbidden", "a phone", False),
]


@pytest.mark.parametrize(("term", "prompt", "refused"), JOIN_CASES)
def test_words_join_only_where_they_cannot_be_two_ordinary_words(term: str, prompt: str, refused: bool) -> None:
    assert ContentFilter([term]).check(prompt).allowed is not refused


# --- regex rules run on RE2 ---------------------------------------------------------------------------------------


def test_backtracking_pattern_runs_in_linear_time() -> None:
    """``(a+)+b`` takes exponential time with Python's re on a run of a's; RE2 answers at once."""
    f = ContentFilter([], [r"(a+)+b"])
    assert f.check("a" * 900 + "!").allowed
    assert not f.check("aaab").allowed


@pytest.mark.parametrize("pattern", [r"(\w+) \1", r"(?=forbidden)", r"(?<!un)forbidden", r"x{1001}"])
def test_pattern_re2_cannot_run_is_refused_naming_it(pattern: str) -> None:
    with pytest.raises(FilterConfigError) as caught:
        ContentFilter([], [r"fine", pattern])
    message = str(caught.value)
    assert message.startswith(f"content_filter.regex_rules[1] = {pattern!r}: RE2") and "rewrite it" in message


def test_config_load_refuses_a_pattern_re2_cannot_run() -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping({"content_filter": {"regex_rules": [r"\bok\b", r"(\w+) \1"]}}, environ={})
    message = str(caught.value)
    assert "content_filter.regex_rules.1 = '(\\\\w+) \\\\1': RE2" in message
    assert "backreferences" in message and "Traceback" not in message
    with pytest.raises(ConfigError, match=r"regex_rules\.0 = '\(unclosed': not a valid regular expression"):
        settings_from_mapping({"content_filter": {"regex_rules": ["(unclosed"]}}, environ={})


# --- the config's keys --------------------------------------------------------------------------------------------


def test_from_settings_uses_every_key() -> None:
    settings = settings_from_mapping({"content_filter": {
        "blocked_terms": ["forbiddenword"], "regex_rules": [r"\bsecret \w+"], "negative_prompt_terms": ["clothes"],
        "co_occurrence_rules": [[["dragon", "wyvern"], ["burning", "on fire"]]],
    }}, environ={}).content_filter
    assert settings.default_rules is True  # shipped rules are on by default
    f = ContentFilter.from_settings(settings)
    assert f.check("f0rbiddenword").rule == "term:forbiddenword"
    assert f.check("a secret door").rule == r"regex:\bsecret \w+"
    assert f.check("a dragon on f1re").category == CATEGORY_COMBINATION
    assert f.check("a dragon").allowed and f.check("a house on fire").allowed
    assert f.check("a loli").rule == "default_term:loli"
    assert f.check_negative("nsfw, forbiddenword").allowed  # blocked_terms do not apply to a negative prompt
    verdict = f.check_negative("blurry, c l o t h e s")
    assert (verdict.category, verdict.rule, verdict.field) == (CATEGORY_NEGATIVE_TERM, "negative_term:clothes",
                                                               "negative_prompt")
    off = ContentFilter.from_settings(settings.model_copy(update={"default_rules": False}))
    assert off.check("a loli").allowed
    assert not off.check("a loli", default_rules=True).allowed  # a server may switch them on


def test_negative_prompt_terms_and_combinations_must_be_usable() -> None:
    with pytest.raises(FilterConfigError, match=r"negative_prompt_terms\[0\] = '\.\.\.'"):
        ContentFilter(negative_prompt_terms=["..."])
    with pytest.raises(FilterConfigError, match=r"co_occurrence_rules\[0\]: needs at least two lists"):
        ContentFilter(co_occurrence_rules=[[["dragon"]]])
    with pytest.raises(FilterConfigError, match=r"co_occurrence_rules\[0\]\[1\]\[0\] = '#'"):
        ContentFilter(co_occurrence_rules=[[["dragon"], ["#"]]])


def test_shipped_rules_span_prompt_and_negative_prompt() -> None:
    f = ContentFilter(default_rules=True)
    verdict = f.check_request("a child in a park", "blurry, CLOTHING")
    assert (verdict.allowed, verdict.category) == (False, CATEGORY_COMBINATION)
    assert f.check_request("a child in a park", "nsfw, nude, lowres").allowed  # what keeps such content out
    assert f.check_request("a woman in a park", "clothing").allowed
    assert f.check_request("a child in a park", "clothing", default_rules=False).allowed
    assert f.check_negative("clothing").allowed  # the rule needs both texts


def test_shipped_rule_file_is_checked_when_loaded(tmp_path: Path) -> None:
    bad = tmp_path / "rules.yaml"
    bad.write_text("blocked_terms: [x]\nco_occurrence_rules:\n  - name: n\n    groups:\n      - {terms: [a]}\n"
                   "      - {terms: [b], in: title}\n")
    with pytest.raises(FilterConfigError, match=r"rules\.yaml: co_occurrence_rules\[0\]\.groups\[1\]\.in = 'title'"):
        _load_default_rules(bad)
    assert _load_default_rules(DEFAULT_RULES_PATH).terms  # the shipped file itself loads
