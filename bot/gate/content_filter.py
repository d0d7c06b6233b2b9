"""Prompt content filter: blocked terms, regex rules and term combinations, matched after undoing disguises.

Members who want a blocked term past a filter write it as ``F0rb1dd3n``, ``f o r b i d``, ``f.o.r.b``, with
invisible characters, look-alike letters from other scripts (``FORBIDDEΝ`` with a Greek Nu), fullwidth or
enclosed letters (``🅵``, ``Ⓕ``, ``🇫``), stretched letters (``foorbidden``), ``f()rbidden``, ``|=orbidden``,
``phorbidden``, percent-encoded or as HTML entities, reversed, or behind a right-to-left override. The filter
undoes all of that, and matches terms on *word boundaries* so that words which merely contain a blocked term
(``unforbiddenwordly``) or that sit next to each other (``a pen is on the desk``) still pass.

Folding (:func:`_fold`)
-----------------------
1. Percent-encoding and HTML entities are decoded; text behind a right-to-left override is put in display order.
2. NFKC (fullwidth, circled and mathematical letters, ligatures).
3. Default-ignorable code points are removed (zero-width joiners, Hangul fillers, variation selectors, bidi
   controls, tags; Unicode's Default_Ignorable_Code_Point property, read from ICU), with the other format
   characters (category Cf).
4. Every other non-ASCII character is mapped to the ASCII character it looks like, *before* case folding: its
   UTS #39 skeleton (Unicode's confusables data, through ICU's SpoofChecker, the reference implementation) is
   looked up among the skeletons of the ASCII characters. Where UTS #39 links a character to no ASCII character,
   a decimal digit of another script becomes its ASCII digit, and a letter whose Unicode *name* says which Latin
   letter it is (small capitals, negative squared letters, regional indicators) becomes that letter.
5. Case folding, then accents are stripped and possessive ``'s`` is dropped (``a blue tit's nest``).

Matching
--------
The folded prompt is split into *chunks* (separated by white space, commas and semicolons) and the chunks into
word tokens (runs of letters and digits). A blocked term becomes its *key*: its words joined without spaces
(``"Forbidden Word"`` -> ``forbiddenword``). The prompt is refused when a run of whole consecutive tokens, joined,
equals a key, the key plus a plural ending (``s``/``es``), or the key with letters stretched (``foorbidden``;
short keys only when a letter is tripled, since ``annals`` is not a stretched ``anal``). Two neighbouring tokens
may only be joined when that cannot glue two ordinary words into a term:

* they are in the same chunk (``forbidden-word``, ``f.o.r.b``, ``pen-is``);
* both are single characters (spelled out: ``f o r b``);
* both are at least four letters long, counting a spelled-out run as one word (``Forbidden Word``); or
* the join falls where the term itself has a space (``red panda`` matches ``red, panda``).

So ``a pen is`` (penis), ``the king's ex-wife`` (sex) and ``a band's hit`` (shit) pass, and a number with a unit
(``a 5s exposure``) is never glued to the word before it.

Leetspeak is ambiguous (``1`` is ``i`` or ``l``, and ``1024`` is a number), so the prompt is matched in up to
four forms: plain (digits kept); readable (what :func:`normalise` returns: leet undone except in number-with-unit
chunks such as ``1girl``, ``8k``, ``1024x768``); full leet with ``1 -> i``; full leet with ``1 -> l`` (these two
also read ``ph`` as ``f``). Leet mapping only touches chunks that contain a letter or are one character long, so
``12 years`` keeps its digits in every form. Terms of five letters or more are also looked for in the reversed
forms (shorter ones reverse into ordinary words: ``lana``).

Regex rules (RE2, linear time: :mod:`bot.bounded_regex`) are matched case-insensitively against the folded
prompt and every normalised form (tokens separated by single spaces, runs of single characters collapsed), so a
rule should be written against lower-case words separated by single spaces, e.g. ``r"\\bforbidden ?words?\\b"``.

Co-occurrence rules refuse a request when every group of the rule has a hit (``a child`` and ``nude``); a group may
look at the negative prompt instead, which is otherwise only checked against ``negative_prompt_terms``: ``nsfw``
in a negative prompt is what keeps such content out. The shipped rules are in ``default_rules.yaml``.

The filter is pure CPU work (ICU, RE2, Python loops over at most a thousand characters); callers on the event loop
run it in a thread (:func:`bot.gate.submission.submit` does).
"""

from __future__ import annotations

import html
import re
import string
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import icu
import yaml

from bot.bounded_regex import BoundedPattern, RegexRuleError, compile_rule

if TYPE_CHECKING:
    from bot.config import ContentFilterSettings

__all__ = [
    "CATEGORY_COMBINATION",
    "CATEGORY_NEGATIVE_TERM",
    "CATEGORY_PATTERN",
    "CATEGORY_TERM",
    "DEFAULT_RULES_PATH",
    "ContentFilter",
    "FilterConfigError",
    "FilterVerdict",
    "normalise",
    "term_key",
]

CATEGORY_TERM = "blocked term"
CATEGORY_PATTERN = "blocked pattern"
CATEGORY_COMBINATION = "blocked combination"
CATEGORY_NEGATIVE_TERM = "blocked negative term"

DEFAULT_RULES_PATH = Path(__file__).with_name("default_rules.yaml")

Field = Literal["prompt", "negative_prompt"]

# --- folding ------------------------------------------------------------------------------------------------------

_SPOOF_CHECKER = icu.SpoofChecker()
_DEFAULT_IGNORABLE = icu.UProperty.DEFAULT_IGNORABLE_CODE_POINT


def _skeleton(text: str) -> str:
    """The UTS #39 skeleton (ICU ignores the legacy type argument)."""
    return _SPOOF_CHECKER.getSkeleton(0, text)


def _strip_marks(text: str) -> str:
    return "".join(ch for ch in unicodedata.normalize("NFD", text) if not unicodedata.combining(ch))


def _ascii_by_skeleton() -> dict[str, str]:
    """Which ASCII character each ASCII skeleton stands for; letters win over digits and punctuation.

    UTS #39 gives ``l``, ``I``, ``1`` and ``|`` one skeleton; a look-alike of them becomes ``1`` so that the leet
    forms read it as both ``i`` and ``l`` (``FORBӀDDEN`` with a Cyrillic palochka is ``forbidden``).
    """
    table: dict[str, str] = {}
    for ch in string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation:
        table.setdefault(_skeleton(ch), ch)
    table[_skeleton("l")] = "1"
    return table


_ASCII_BY_SKELETON = _ascii_by_skeleton()
# Skeleton prototypes that UTS #39 keeps apart from a Latin letter they still resemble in common fonts
# (Cyrillic ь -> ƅ, к/κ -> ĸ, м/ᴍ -> ʍ).
_BEYOND_UTS39 = {"ƅ": "b", "ĸ": "k", "ʍ": "m"}
_LATIN_LETTER_NAME = re.compile(
    r"(?:LATIN|REGIONAL INDICATOR SYMBOL)(?: CAPITAL| SMALL)? LETTER(?: SMALL CAPITAL)? ([A-Z])(?: WITH .+)?$"
)


@lru_cache(maxsize=1 << 16)
def _look_alike(ch: str) -> str:
    """What a non-ASCII, non-ignorable character reads as: an ASCII character where it looks like one."""
    if unicodedata.category(ch) in ("Mn", "Me"):
        return ""  # combining marks, combining Latin letters included: never a letter of their own
    skeleton = _strip_marks(_skeleton(ch))
    mapped = _ASCII_BY_SKELETON.get(skeleton) or _BEYOND_UTS39.get(skeleton)
    if mapped is None and skeleton.isascii() and skeleton.isalnum():
        mapped = skeleton  # several letters, e.g. "ae"
    if unicodedata.category(ch) == "Nd" and not (mapped and mapped.isalnum()):
        return str(unicodedata.decimal(ch))  # Arabic-Indic ٠ looks like a dot but is written for 0
    if mapped is not None:
        return mapped
    for candidate in (skeleton, ch):
        if len(candidate) == 1:
            named = _LATIN_LETTER_NAME.search(unicodedata.name(candidate, ""))
            if named:
                return named.group(1)
    return ch


def _ignorable(ch: str) -> bool:
    return icu.Char.hasBinaryProperty(ch, _DEFAULT_IGNORABLE) or unicodedata.category(ch) == "Cf"


_PERCENT_ESCAPES = re.compile(r"(?:%[0-9A-Fa-f]{2})+")
_HTML_ENTITY = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9A-Fa-f]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")
_RIGHT_TO_LEFT_OVERRIDE = re.compile("\u202e([^\u202c\u2029\n]*)\u202c?")
_POSSESSIVE = re.compile(r"(?<=[^\W\d_])['\u2019]s\b")


def _percent_decoded(match: re.Match[str]) -> str:
    try:
        return bytes.fromhex(match.group().replace("%", "")).decode("utf-8")
    except UnicodeDecodeError:
        return match.group()  # "100%ed" is not an escape


def _decode_escapes(text: str) -> str:
    """Undo percent-encoding and HTML entities, twice encoded included (``%2566`` -> ``%66`` -> ``f``)."""
    for _ in range(3):
        decoded = _PERCENT_ESCAPES.sub(_percent_decoded, text)
        decoded = _HTML_ENTITY.sub(lambda m: html.unescape(m.group()), decoded)
        if decoded == text:
            break
        text = decoded
    return text


def _fold(text: str) -> str:
    """Decode escapes, display order, NFKC, drop ignorables, map look-alikes, case-fold, strip accents."""
    text = _decode_escapes(text)
    text = _RIGHT_TO_LEFT_OVERRIDE.sub(lambda m: m.group(1)[::-1], text)
    text = unicodedata.normalize("NFKC", text)
    text = "".join(ch if ch.isascii() else "" if _ignorable(ch) else _look_alike(ch) for ch in text)
    text = _strip_marks(text.casefold())
    return _POSSESSIVE.sub("", text)


# --- leetspeak and tokens -----------------------------------------------------------------------------------------

_LEET_COMMON = {
    "0": "o", "3": "e", "4": "a", "5": "s", "6": "g", "7": "t", "8": "b", "9": "g",
    "@": "a", "$": "s", "€": "e", "|": "l",
}
# Characters that are ordinary punctuation at a word's edge ("wow!", "(red)") and leet only inside a word.
_LEET_INNER = {"!": "i", "+": "t", "(": "c", "<": "c"}
_LEET_I = {**_LEET_COMMON, "1": "i"}
_LEET_L = {**_LEET_COMMON, "1": "l"}
_LEET_CHARS = frozenset(_LEET_COMMON) | frozenset(_LEET_INNER) | {"1", "(", "[", "{"}
# Letters drawn with two characters, next to a letter or digit: f()rbidden, |=orbidden.
_LEET_ROUND = re.compile(r"(?<=[^\W_])(?:\(\)|\[\]|\{\})|(?:\(\)|\[\]|\{\})(?=[^\W_])")
_LEET_PIPE_F = re.compile(r"(?<=[^\W_])\|=|\|=(?=[^\W_])")

_CHUNK_SEPARATORS = re.compile(r"[\s,;]+")
_TOKEN = re.compile(r"[^\W_]+")  # letters and digits of any script; "_" and punctuation separate words
_HAS_LETTER = re.compile(r"[^\W\d_]")
_NUMBERISH = re.compile(r"\d+(?:[x×:.,/-]\d+)*[^\W\d_]*\Z")  # 1girl, 8k, 35mm, 1024x768, 16:9, 1990s
_PLURAL_ENDINGS = ("", "s", "es")
_LONG_WORD = 4  # words at least this long may be joined across a space ("Forbidden Word")
_REVERSIBLE = 5  # keys at least this long are also looked for reversed
_STRETCHABLE = 5  # keys at least this long match with a doubled letter; shorter ones need a tripled one
_MAX_STRETCH = 8  # letters a stretched disguise may add to a term


def _leet(chunk: str, table: Mapping[str, str], *, keep_numbers: bool, ph: bool) -> str:
    """Map leetspeak in a chunk that contains a letter or is one character long.

    With ``keep_numbers``, a chunk that reads as a number with a unit (``1girl``, ``8k``, ``1024x768``,
    ``1990s``) is left alone: that is the readable form :func:`normalise` returns.
    """
    if keep_numbers and _NUMBERISH.match(chunk.strip(string.punctuation)):
        return chunk
    if not (len(chunk) == 1 or _HAS_LETTER.search(chunk)) or not any(ch in _LEET_CHARS for ch in chunk):
        return chunk.replace("ph", "f") if ph else chunk
    chunk = _LEET_PIPE_F.sub("f", _LEET_ROUND.sub("o", chunk))
    chars = []
    for i, ch in enumerate(chunk):
        if ch in table:
            ch = table[ch]
        elif ch in _LEET_INNER and 0 < i < len(chunk) - 1 and chunk[i - 1].isalnum() and chunk[i + 1].isalnum():
            ch = _LEET_INNER[ch]
        chars.append(ch)
    mapped = "".join(chars)
    return mapped.replace("ph", "f") if ph else mapped


@dataclass(frozen=True)
class _Token:
    text: str
    chunk: int
    word_length: int  # its own length, or that of the spelled-out run it belongs to


def _tokens(chunks: Sequence[str]) -> tuple[_Token, ...]:
    raw = [(text, index) for index, chunk in enumerate(chunks) for text in _TOKEN.findall(chunk)]
    tokens: list[_Token] = []
    start = 0
    while start < len(raw):
        end = start
        while end < len(raw) and len(raw[end][0]) == 1:
            end += 1
        if end - start >= 2:  # a spelled-out run counts as one word of that many letters
            tokens.extend(_Token(text, chunk, end - start) for text, chunk in raw[start:end])
            start = end
            continue
        text, chunk = raw[start]
        tokens.append(_Token(text, chunk, len(text)))
        start += 1
    return tuple(tokens)


def _may_join(left: _Token, right: _Token) -> bool:
    """Whether two neighbouring tokens may be read as one word (see the module docstring)."""
    if left.chunk == right.chunk:
        return True
    if len(left.text) == 1 and len(right.text) == 1:
        return True
    return left.word_length >= _LONG_WORD and right.word_length >= _LONG_WORD


def _collapse(texts: Sequence[str]) -> str:
    """Join tokens with spaces, gluing runs of two or more single-character tokens ("f o r b" -> "forb")."""
    out: list[str] = []
    run: list[str] = []
    for text in texts:
        if len(text) == 1:
            run.append(text)
            continue
        if run:
            out.append("".join(run))
            run = []
        out.append(text)
    if run:
        out.append("".join(run))
    return " ".join(out)


def _runs(text: str) -> tuple[str, tuple[int, ...]]:
    """``"foorbidden"`` -> ``("forbiden", (1, 2, 1, 1, 1, 2, 1, 1))``."""
    letters: list[str] = []
    counts: list[int] = []
    for ch in text:
        if letters and letters[-1] == ch:
            counts[-1] += 1
        else:
            letters.append(ch)
            counts.append(1)
    return "".join(letters), tuple(counts)


@dataclass(frozen=True)
class _Analysis:
    """A text read every way the filter matches it."""

    forms: tuple[tuple[_Token, ...], ...]
    reversed_forms: tuple[tuple[_Token, ...], ...]
    texts: tuple[str, ...]  # what regex rules see


def _analyse(text: str) -> _Analysis:
    folded = _fold(text)
    chunks = [chunk for chunk in _CHUNK_SEPARATORS.split(folded) if chunk]
    variants = (
        chunks,
        [_leet(c, _LEET_I, keep_numbers=True, ph=False) for c in chunks],
        [_leet(c, _LEET_I, keep_numbers=False, ph=True) for c in chunks],
        [_leet(c, _LEET_L, keep_numbers=False, ph=True) for c in chunks],
    )
    forms: list[tuple[_Token, ...]] = []
    for variant in variants:
        tokens = _tokens(variant)
        if tokens not in forms:
            forms.append(tokens)
    reversed_forms = tuple(
        tuple(_Token(t.text[::-1], t.chunk, t.word_length) for t in reversed(form)) for form in forms
    )
    texts = [folded]
    for form in forms:
        words = [t.text for t in form]
        for candidate in (_collapse(words), " ".join(words)):
            if candidate not in texts:
                texts.append(candidate)
    return _Analysis(tuple(forms), reversed_forms, tuple(texts))


def normalise(text: str) -> str:
    """The canonical form of ``text`` used for matching: lower-case words separated by single spaces.

    Fullwidth/compatibility letters become ASCII, invisible characters vanish, accents and look-alike letters are
    mapped, leetspeak inside words is undone (``f0rb1d`` -> ``forbid``), and separators between single letters are
    removed (``f.o.r.b`` -> ``forb``). Punctuation, hyphens and underscores separate words (``FORBIDDEN-WORD`` ->
    ``forbidden word``). Numbers on their own, and numbers with a unit (``8k``), are kept.
    """
    chunks = [chunk for chunk in _CHUNK_SEPARATORS.split(_fold(text)) if chunk]
    readable = [_leet(c, _LEET_I, keep_numbers=True, ph=False) for c in chunks]
    return _collapse([t.text for t in _tokens(readable)])


@lru_cache(maxsize=4096)
def _term_words(term: str) -> tuple[str, ...]:
    return tuple(_TOKEN.findall(_fold(term)))


def term_key(term: str) -> str:
    """The key a blocked term is matched by: its plain normalised words joined without spaces.

    ``"Forbidden Word"``, ``"forbidden-word"`` and ``"forbiddenword"`` share the key ``forbiddenword``.
    An empty string means the term has no letters or digits and can never match.
    """
    return "".join(_term_words(term))


# --- term index ---------------------------------------------------------------------------------------------------


class _TermIndex:
    """The keys of a set of terms, found in a text in one pass over each of its forms."""

    def __init__(self, terms: Iterable[str], *, reversed_too: bool = True) -> None:
        self.boundaries: dict[str, set[int]] = {}  # key -> offsets where the term has a space
        self.by_squeezed: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
        # Squeezed prefixes of keys and their plurals -> the longest such key: a scan stops when it leaves them.
        self.prefixes: dict[str, int] = {}
        for term in terms:
            words = _term_words(term)
            key = "".join(words)
            if not key:
                continue
            if key not in self.boundaries:
                squeezed, counts = _runs(key)
                self.by_squeezed.setdefault(squeezed, []).append((key, counts))
                for ending in _PLURAL_ENDINGS:
                    plural = _runs(key + ending)[0]
                    for i in range(1, len(plural) + 1):
                        self.prefixes[plural[:i]] = max(self.prefixes.get(plural[:i], 0), len(key + ending))
            self.boundaries.setdefault(key, set()).update(
                sum(len(w) for w in words[:i]) for i in range(1, len(words)))
        # Shorter keys reverse into ordinary words ("lana"), so only long ones are looked for reversed.
        self.reversed = _TermIndex((k for k in self.boundaries if len(k) >= _REVERSIBLE), reversed_too=False) \
            if reversed_too else None

    def found_in(self, analysis: _Analysis) -> set[str]:
        """Every key some form of the text contains, or some reversed form for keys of five letters or more."""
        found: set[str] = set()
        if self.boundaries:
            for form in analysis.forms:
                self._scan(form, found)
        if self.reversed is not None and self.reversed.boundaries:
            for form in analysis.reversed_forms:
                self.reversed._scan(form, found)
        return found

    def _scan(self, form: Sequence[_Token], found: set[str]) -> None:
        """Add the keys matched by runs of whole tokens that may be joined (see the module docstring)."""
        for start in range(len(form)):
            joined = squeezed = ""
            unjoinable: list[int] = []  # offsets in `joined` where two tokens do not form one word
            for end in range(start, len(form)):
                text = form[end].text
                if end > start and not _may_join(form[end - 1], form[end]):
                    unjoinable.append(len(joined))
                joined += text
                for ch in text:
                    if not squeezed or squeezed[-1] != ch:
                        squeezed += ch
                longest = self.prefixes.get(squeezed)
                if longest is None or len(joined) > min(longest, len(squeezed)) + _MAX_STRETCH:
                    break
                self._match(joined, squeezed, unjoinable, found)

    def _match(self, joined: str, squeezed: str, unjoinable: Sequence[int], found: set[str]) -> None:
        for ending in _PLURAL_ENDINGS:
            if ending and not joined.endswith(ending):
                continue
            stem = joined[: len(joined) - len(ending)]
            boundaries = self.boundaries.get(stem)
            if boundaries is not None and all(o in boundaries for o in unjoinable):
                found.add(stem)
        if unjoinable:
            return  # stretched letters only within one word
        # Less a plural ending, the text squeezes to `squeezed` less at most two letters.
        by_squeezed = self.by_squeezed
        if squeezed not in by_squeezed and squeezed[:-1] not in by_squeezed and squeezed[:-2] not in by_squeezed:
            return
        for ending in _PLURAL_ENDINGS:
            if ending and not joined.endswith(ending):
                continue
            stem_squeezed, counts = _runs(joined[: len(joined) - len(ending)])
            for key, key_counts in self.by_squeezed.get(stem_squeezed, ()):
                extra = [c - k for c, k in zip(counts, key_counts, strict=True)]
                if min(extra) >= 0 and (len(key) >= _STRETCHABLE and max(extra) >= 1 or max(extra) >= 2):
                    found.add(key)


def _first_pattern(analysis: _Analysis, patterns: Sequence[tuple[str, BoundedPattern]]) -> str | None:
    for pattern_text, pattern in patterns:
        if any(pattern.search(text) for text in analysis.texts):
            return pattern_text
    return None


# --- rules --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FilterVerdict:
    """The outcome of a check.

    ``category`` is safe to show the member (it never contains the term); ``rule`` identifies the exact
    term or pattern for the moderation log only; ``field`` says which text was refused.
    """

    allowed: bool
    category: str | None = None
    rule: str | None = None
    field: Field | None = None


ALLOWED = FilterVerdict(True)


class FilterConfigError(ValueError):
    """A blocked term or regex rule in the config cannot be used; the message names it."""


def _keyed_terms(terms: Iterable[str], setting: str | None) -> dict[str, str]:
    """Key -> the term as written (the first of equal keys). With a ``setting``, a term that can never match
    (no letters or digits) is a config error naming it; without, it is skipped (a server's list)."""
    keyed: dict[str, str] = {}
    for index, term in enumerate(terms):
        key = term_key(term)
        if not key:
            if setting is None:
                continue
            raise FilterConfigError(
                f"{setting}[{index}] = {term!r}: has no letters or digits, so it can never match; remove it or use "
                "a regex rule instead."
            )
        keyed.setdefault(key, term)
    return keyed


def _first_term(keyed: Mapping[str, str], found: set[str]) -> str | None:
    return next((term for key, term in keyed.items() if key in found), None)


def _compiled(patterns: Iterable[str], setting: str) -> tuple[tuple[str, BoundedPattern], ...]:
    compiled = []
    for index, pattern in enumerate(patterns):
        try:
            compiled.append((pattern, compile_rule(pattern)))
        except RegexRuleError as exc:
            raise FilterConfigError(f"{setting}[{index}] = {pattern!r}: {exc}") from None
    return tuple(compiled)


@dataclass(frozen=True)
class _Group:
    """One side of a co-occurrence rule: it has a hit when any of its terms or patterns matches its field."""

    terms: dict[str, str]
    patterns: tuple[tuple[str, BoundedPattern], ...]
    field: Field

    def hit(self, analysis: _Analysis, found: set[str]) -> bool:
        return _first_term(self.terms, found) is not None or _first_pattern(analysis, self.patterns) is not None


@dataclass(frozen=True)
class _Combination:
    name: str
    groups: tuple[_Group, ...]

    @property
    def spans_negative_prompt(self) -> bool:
        return any(group.field == "negative_prompt" for group in self.groups)


@dataclass(frozen=True)
class _DefaultRules:
    terms: dict[str, str]
    combinations: tuple[_Combination, ...]


def _load_default_rules(path: Path) -> _DefaultRules:
    """The shipped rule set; a mistake in it is the project's bug, so it fails loudly at import."""
    data: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    combinations = []
    for rule_index, rule in enumerate(data["co_occurrence_rules"]):
        groups = []
        for group_index, group in enumerate(rule["groups"]):
            where = f"{path.name}: co_occurrence_rules[{rule_index}].groups[{group_index}]"
            field = group.get("in", "prompt")
            if field not in ("prompt", "negative_prompt"):
                raise FilterConfigError(f"{where}.in = {field!r}: expected prompt or negative_prompt.")
            groups.append(_Group(_keyed_terms(group.get("terms", ()), f"{where}.terms"),
                                 _compiled(group.get("patterns", ()), f"{where}.patterns"), field))
        combinations.append(_Combination(rule["name"], tuple(groups)))
    return _DefaultRules(_keyed_terms(data["blocked_terms"], f"{path.name}: blocked_terms"), tuple(combinations))


_DEFAULT_RULES = _load_default_rules(DEFAULT_RULES_PATH)  # read at import, never on the event loop


class ContentFilter:
    """Refuses prompts containing blocked terms (global, per guild or shipped), regex rules or term combinations.

    Built once at start from ``settings.content_filter`` (:meth:`from_settings`); a bad term or rule raises
    :class:`FilterConfigError` naming it, so the admin sees the mistake at start rather than at the first prompt.
    ``default_rules`` says whether the shipped rules apply where a server has not chosen for itself.
    """

    def __init__(self, global_terms: Iterable[str] = (), regex_rules: Iterable[str] = (), *,
                 negative_prompt_terms: Iterable[str] = (), default_rules: bool = False,
                 co_occurrence_rules: Iterable[Sequence[Sequence[str]]] = ()) -> None:
        self._terms = _keyed_terms(global_terms, "content_filter.blocked_terms")
        self._rules = _compiled(regex_rules, "content_filter.regex_rules")
        self._negative_terms = _keyed_terms(negative_prompt_terms, "content_filter.negative_prompt_terms")
        combinations = []
        for index, lists in enumerate(co_occurrence_rules):
            setting = f"content_filter.co_occurrence_rules[{index}]"
            if len(lists) < 2:
                raise FilterConfigError(f"{setting}: needs at least two lists of terms (a prompt is refused when it "
                                        "has a term from every list).")
            groups = tuple(_Group(_keyed_terms(terms, f"{setting}[{i}]"), (), "prompt")
                           for i, terms in enumerate(lists))
            combinations.append(_Combination(f"co_occurrence_rules[{index}]", groups))
        self._combinations = tuple(combinations)
        self.default_rules = default_rules
        # One index of every term a prompt can hit, so that a prompt is scanned once whatever the rules.
        groups = [group for c in (*self._combinations, *_DEFAULT_RULES.combinations) for group in c.groups]
        self._prompt_index = _TermIndex([
            *self._terms.values(), *_DEFAULT_RULES.terms.values(),
            *(term for group in groups if group.field == "prompt" for term in group.terms.values()),
        ])
        self._negative_index = _TermIndex([
            *self._negative_terms.values(),
            *(term for group in groups if group.field == "negative_prompt" for term in group.terms.values()),
        ])

    @classmethod
    def from_settings(cls, settings: ContentFilterSettings) -> ContentFilter:
        """The filter the config describes."""
        return cls(settings.blocked_terms, settings.regex_rules, negative_prompt_terms=settings.negative_prompt_terms,
                   default_rules=settings.default_rules, co_occurrence_rules=settings.co_occurrence_rules)

    @property
    def term_count(self) -> int:
        """How many distinct global terms are active (for the start-up log)."""
        return len(self._terms)

    @property
    def rule_count(self) -> int:
        """How many regex rules are active (for the start-up log)."""
        return len(self._rules)

    def check(self, prompt: str, guild_terms: Iterable[str] = (), *, default_rules: bool | None = None
              ) -> FilterVerdict:
        """Decide whether ``prompt`` may run; ``guild_terms`` are the extra terms of the member's server.

        ``default_rules`` is the server's choice about the shipped rules (``None``: the config decides). Guild
        terms with no letters or digits are ignored (they come from the database, not the config).
        """
        return self.check_request(prompt, "", guild_terms, default_rules=default_rules)

    def check_negative(self, negative_prompt: str) -> FilterVerdict:
        """Decide whether a negative prompt may run on its own: only ``negative_prompt_terms`` apply to it."""
        if not negative_prompt or not self._negative_terms:
            return ALLOWED
        return self._check_negative(_analyse(negative_prompt))

    def check_request(self, prompt: str, negative_prompt: str = "", guild_terms: Iterable[str] = (), *,
                      default_rules: bool | None = None) -> FilterVerdict:
        """The whole check for one request: the prompt, the negative prompt, and rules that span both.

        CPU work of up to tens of milliseconds: call it from a thread when on the event loop.
        """
        defaults = self.default_rules if default_rules is None else default_rules
        combinations = self._combinations + (_DEFAULT_RULES.combinations if defaults else ())
        prompt_analysis = _analyse(prompt)
        found = self._prompt_index.found_in(prompt_analysis)
        guild_keyed = _keyed_terms(guild_terms, None)
        if guild_keyed:
            found |= _TermIndex(guild_keyed.values()).found_in(prompt_analysis)
        for keyed, label in ((self._terms, "term"), (guild_keyed, "guild_term"),
                             (_DEFAULT_RULES.terms if defaults else {}, "default_term")):
            term = _first_term(keyed, found)
            if term is not None:
                return FilterVerdict(False, CATEGORY_TERM, f"{label}:{term}", "prompt")
        pattern = _first_pattern(prompt_analysis, self._rules)
        if pattern is not None:
            return FilterVerdict(False, CATEGORY_PATTERN, f"regex:{pattern}", "prompt")
        for combination in combinations:
            if not combination.spans_negative_prompt and all(g.hit(prompt_analysis, found) for g in combination.groups):
                return FilterVerdict(False, CATEGORY_COMBINATION, f"co_occurrence:{combination.name}", "prompt")
        if not negative_prompt:
            return ALLOWED
        negative_analysis = _analyse(negative_prompt)
        verdict = self._check_negative(negative_analysis)
        if not verdict.allowed:
            return verdict
        negative_found = self._negative_index.found_in(negative_analysis)
        seen = {"prompt": (prompt_analysis, found), "negative_prompt": (negative_analysis, negative_found)}
        for combination in combinations:
            if combination.spans_negative_prompt and all(g.hit(*seen[g.field]) for g in combination.groups):
                return FilterVerdict(False, CATEGORY_COMBINATION, f"co_occurrence:{combination.name}", "prompt")
        return ALLOWED

    def _check_negative(self, analysis: _Analysis) -> FilterVerdict:
        term = _first_term(self._negative_terms, self._negative_index.found_in(analysis))
        if term is not None:
            return FilterVerdict(False, CATEGORY_NEGATIVE_TERM, f"negative_term:{term}", "negative_prompt")
        return ALLOWED
