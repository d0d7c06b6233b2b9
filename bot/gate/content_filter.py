"""Prompt content filter: blocked terms and regex rules, matched after undoing common disguises.

Members who want to get a blocked term past a filter write it as ``F0rb1dd3n``, ``f o r b i d``,
``f.o.r.b``, with zero-width characters, fullwidth or Cyrillic look-alike letters, or split by a hyphen.
:func:`normalise` undoes all of that, and terms are then matched on *word boundaries* so that words that
merely contain a blocked term (``unforbiddenwordly``) still pass.

Matching model
--------------
A prompt is turned into a sequence of word tokens (runs of letters/digits) after NFKC, case folding,
removal of format characters (Unicode category Cf), accent stripping and confusable mapping.
A blocked term is turned into the same kind of tokens and joined without spaces (its *key*:
``"Forbidden Word"`` and ``"forbiddenword"`` both have the key ``forbiddenword``). The prompt is refused
when some run of *whole consecutive tokens* joined together equals the key, or the key plus a simple plural
ending (``s``/``es``). That single rule covers ``Forbidden Word``, ``FORBIDDEN-WORD``, ``forbidden_word``,
``f o r b i d d e n w o r d`` and ``f.o.r.b.i.d.d.e.n.w.o.r.d`` while ``forbidden world`` and
``unforbiddenwordly`` pass.

Leetspeak is ambiguous (``1`` is ``i`` or ``l``, and ``1024`` is a number), so the prompt is matched in
up to four forms: plain (digits kept); readable (what :func:`normalise` returns: leet undone except in
number-with-unit chunks such as ``1girl``, ``8k``, ``1024x768``); full leet with ``1 -> i``; full leet with
``1 -> l``. Leet mapping only touches chunks that also contain a letter, or that are a single character
(``f 0 r b``), so ``12 years`` keeps its digits in every form. A term or rule matches if it matches any
form; mapping more only ever blocks more, never less.

Regex rules are matched (case-insensitively) against the NFKC/case-folded prompt and every normalised form
(tokens separated by single spaces, runs of single characters collapsed), so a rule should be written
against lower-case words separated by single spaces, e.g. ``r"\\bforbidden ?words?\\b"``.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

__all__ = [
    "CATEGORY_PATTERN",
    "CATEGORY_TERM",
    "ContentFilter",
    "FilterConfigError",
    "FilterVerdict",
    "normalise",
    "term_key",
]

CATEGORY_TERM = "blocked term"
CATEGORY_PATTERN = "blocked pattern"

# Look-alike letters from other scripts that render like Latin ones (a small, common subset of Unicode's
# confusables list; NFKC already handles fullwidth, math alphanumerics, ligatures and the like).
_CONFUSABLES = str.maketrans({
    # Cyrillic
    "а": "a", "в": "b", "е": "e", "ё": "e", "з": "3", "і": "i", "ї": "i", "ј": "j", "к": "k", "м": "m",
    "н": "h", "о": "o", "р": "p", "с": "c", "т": "t", "у": "y", "х": "x", "ѕ": "s", "ԁ": "d", "ԛ": "q",
    "ԝ": "w", "һ": "h", "ӏ": "l",
    # Greek
    "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "μ": "u", "ν": "v", "ο": "o", "ρ": "p",
    "τ": "t", "υ": "u", "χ": "x", "ω": "w", "ς": "s",
    # Latin odds and ends that NFKC leaves alone
    "ı": "i", "ȷ": "j", "ɡ": "g", "ø": "o", "ł": "l", "đ": "d", "ħ": "h", "ß": "ss", "æ": "ae", "œ": "oe",
})

_LEET_COMMON = {
    "0": "o", "3": "e", "4": "a", "5": "s", "6": "g", "7": "t", "8": "b", "9": "g",
    "@": "a", "$": "s", "€": "e", "|": "l",
}
# Characters that are ordinary punctuation at a word's edge ("wow!", "(red)") and leet only inside a word.
_LEET_INNER = {"!": "i", "+": "t", "(": "c", "<": "c"}
_LEET_I = {**_LEET_COMMON, "1": "i"}
_LEET_L = {**_LEET_COMMON, "1": "l"}
_LEET_CHARS = frozenset(_LEET_COMMON) | frozenset(_LEET_INNER) | {"1"}

_TOKEN = re.compile(r"[^\W_]+")  # letters and digits of any script; "_" and punctuation separate words
_HAS_LETTER = re.compile(r"[^\W\d_]")
_NUMBERISH = re.compile(r"\d+(?:[x×:.,/-]\d+)*[^\W\d_]*\Z")  # 1girl, 8k, 35mm, 1024x768, 16:9, 1990s
_PLURAL_ENDINGS = ("", "s", "es")


@dataclass(frozen=True)
class FilterVerdict:
    """The outcome of :meth:`ContentFilter.check`.

    ``category`` is safe to show the member (it never contains the term); ``rule`` identifies the exact
    term or pattern for the moderation log only.
    """

    allowed: bool
    category: str | None = None
    rule: str | None = None


ALLOWED = FilterVerdict(True)


class FilterConfigError(ValueError):
    """A blocked term or regex rule in the config cannot be used; the message names it."""


def _fold(text: str) -> str:
    """NFKC, drop format characters, case-fold, strip accents, map look-alike letters."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    text = text.casefold()
    # Strip combining marks (é -> e) so accents cannot disguise a term. Terms go through the same folding,
    # so scripts that need their marks still compare consistently.
    decomposed = unicodedata.normalize("NFD", text)
    text = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return text.translate(_CONFUSABLES)


def _leet(folded: str, table: dict[str, str], *, keep_numbers: bool = False) -> str:
    """Map leetspeak in whitespace-separated chunks that contain a letter or are one character long.

    With ``keep_numbers``, chunks that read as a number with a unit (``1girl``, ``8k``, ``1024x768``,
    ``1990s``) are left alone: that is the readable form :func:`normalise` returns.
    """
    mapped = []
    for chunk in folded.split():
        if keep_numbers and _NUMBERISH.match(chunk.strip(string.punctuation)):
            mapped.append(chunk)
            continue
        if (len(chunk) == 1 or _HAS_LETTER.search(chunk)) and any(ch in _LEET_CHARS for ch in chunk):
            chars = []
            for i, ch in enumerate(chunk):
                if ch in table:
                    ch = table[ch]
                elif ch in _LEET_INNER and 0 < i < len(chunk) - 1 and chunk[i - 1].isalnum() and chunk[i + 1].isalnum():
                    ch = _LEET_INNER[ch]
                chars.append(ch)
            chunk = "".join(chars)
        mapped.append(chunk)
    return " ".join(mapped)


def _tokens(text: str) -> tuple[str, ...]:
    return tuple(_TOKEN.findall(text))


def _collapse(tokens: Sequence[str]) -> str:
    """Join tokens with spaces, gluing runs of two or more single-character tokens ("f o r b" -> "forb")."""
    out: list[str] = []
    run: list[str] = []
    for token in tokens:
        if len(token) == 1:
            run.append(token)
            continue
        if run:
            out.append("".join(run) if len(run) > 1 else run[0])
            run = []
        out.append(token)
    if run:
        out.append("".join(run) if len(run) > 1 else run[0])
    return " ".join(out)


def _forms(text: str) -> tuple[str, tuple[tuple[str, ...], ...]]:
    """The folded text and the distinct token sequences of the plain, readable and full leet forms."""
    folded = _fold(text)
    forms = []
    candidates = (folded, _leet(folded, _LEET_I, keep_numbers=True), _leet(folded, _LEET_I), _leet(folded, _LEET_L))
    for candidate in candidates:
        tokens = _tokens(candidate)
        if tokens not in forms:
            forms.append(tokens)
    return folded, tuple(forms)


def normalise(text: str) -> str:
    """The canonical form of ``text`` used for matching: lower-case words separated by single spaces.

    Fullwidth/compatibility letters become ASCII, zero-width and other format characters vanish, accents
    and look-alike letters are mapped, leetspeak inside words is undone (``f0rb1d`` -> ``forbid``), and
    separators between single letters are removed (``f.o.r.b`` -> ``forb``). Punctuation, hyphens and
    underscores separate words (``FORBIDDEN-WORD`` -> ``forbidden word``). Numbers on their own are kept.
    """
    return _collapse(_tokens(_leet(_fold(text), _LEET_I, keep_numbers=True)))


@lru_cache(maxsize=4096)
def term_key(term: str) -> str:
    """The key a blocked term is matched by: its plain normalised words joined without spaces.

    ``"Forbidden Word"``, ``"forbidden-word"`` and ``"forbiddenword"`` share the key ``forbiddenword``.
    An empty string means the term has no letters or digits and can never match.
    """
    return "".join(_tokens(_fold(term)))


def _find_key(tokens: Sequence[str], keys: dict[str, str], max_len: int) -> str | None:
    """The first key matched by a run of whole consecutive tokens (plus an optional plural ending)."""
    for start in range(len(tokens)):
        joined = ""
        for token in tokens[start:]:
            joined += token
            if len(joined) > max_len:
                break
            for ending in _PLURAL_ENDINGS:
                if ending and not joined.endswith(ending):
                    continue
                stem = joined[: len(joined) - len(ending)] if ending else joined
                if stem in keys:
                    return keys[stem]
    return None


class ContentFilter:
    """Refuses prompts containing blocked terms (global or per guild) or matching regex rules.

    Built once at start from ``settings.content_filter``; a bad term or rule raises
    :class:`FilterConfigError` naming it, so the admin sees the mistake at start rather than at the first prompt.
    """

    def __init__(self, global_terms: Iterable[str], regex_rules: Iterable[str] = ()) -> None:
        self._terms: dict[str, str] = {}
        for index, term in enumerate(global_terms):
            key = term_key(term)
            if not key:
                raise FilterConfigError(
                    f"content_filter.blocked_terms[{index}] = {term!r}: has no letters or digits, so it can never "
                    "match; remove it or use a regex rule instead."
                )
            self._terms.setdefault(key, term)
        self._rules: list[tuple[str, re.Pattern[str]]] = []
        for index, rule in enumerate(regex_rules):
            try:
                compiled = re.compile(rule, re.IGNORECASE)
            except re.error as exc:
                raise FilterConfigError(
                    f"content_filter.regex_rules[{index}] = {rule!r}: not a valid regular expression ({exc})."
                ) from None
            self._rules.append((rule, compiled))

    @property
    def term_count(self) -> int:
        """How many distinct global terms are active (for the start-up log)."""
        return len(self._terms)

    @property
    def rule_count(self) -> int:
        """How many regex rules are active (for the start-up log)."""
        return len(self._rules)

    def check(self, prompt: str, guild_terms: Iterable[str] = ()) -> FilterVerdict:
        """Decide whether ``prompt`` may run; ``guild_terms`` are the extra terms of the member's server.

        Guild terms with no letters or digits are ignored (they come from the database, not the config).
        """
        keys: dict[str, str] = {key: f"term:{term}" for key, term in self._terms.items()}
        for term in guild_terms:
            key = term_key(term)
            if key and key not in keys:
                keys[key] = f"guild_term:{term}"
        folded, forms = _forms(prompt)
        if keys:
            max_len = max(map(len, keys)) + max(map(len, _PLURAL_ENDINGS))
            for tokens in forms:
                hit = _find_key(tokens, keys, max_len)
                if hit is not None:
                    return FilterVerdict(False, CATEGORY_TERM, hit)
        if self._rules:
            texts = [folded, *(_collapse(tokens) for tokens in forms), *(" ".join(tokens) for tokens in forms)]
            for rule, compiled in self._rules:
                if any(compiled.search(text) for text in texts):
                    return FilterVerdict(False, CATEGORY_PATTERN, f"regex:{rule}")
        return ALLOWED
