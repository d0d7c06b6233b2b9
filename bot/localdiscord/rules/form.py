"""Discord's "Invalid Form Body" (400, code 50035): every problem of a body at once, under its field path.

Discord nests the errors like the body: ``{"embeds": {"0": {"title": {"_errors": [{"code", "message"}]}}}}``
(list indexes become string keys). :class:`FormErrors` collects them; :meth:`FormErrors.raise_if_any` raises
the :class:`~bot.localdiscord.errors.DiscordError` the router turns into that response.
"""

from __future__ import annotations

from typing import Any

from bot.localdiscord.errors import DiscordError

Path = tuple[str | int, ...]


class FormErrors:
    """Collects ``(path, code, message)``; ``prefix`` is prepended (``("data",)`` for interaction callbacks)."""

    def __init__(self, prefix: Path = ()) -> None:
        self.prefix = prefix
        self.items: list[tuple[Path, str, str]] = []

    def add(self, path: Path, code: str, message: str) -> None:
        self.items.append((self.prefix + path, code, message))

    def max_length(self, path: Path, value: Any, limit: int) -> None:
        """Discord's BASE_TYPE_MAX_LENGTH for a string or list longer than ``limit``."""
        if value is not None and len(value) > limit:
            self.add(path, "BASE_TYPE_MAX_LENGTH", f"Must be {limit} or fewer in length.")

    def length_between(self, path: Path, value: Any, low: int, high: int) -> None:
        """Discord's BASE_TYPE_BAD_LENGTH (a missing value counts as length 0)."""
        if not low <= len(value or "") <= high:
            self.add(path, "BASE_TYPE_BAD_LENGTH", f"Must be between {low} and {high} in length.")

    def required(self, path: Path, present: bool) -> None:
        if not present:
            self.add(path, "BASE_TYPE_REQUIRED", "This field is required")

    def as_dict(self) -> dict[str, Any]:
        tree: dict[str, Any] = {}
        for path, code, message in self.items:
            node = tree
            for key in path:
                node = node.setdefault(str(key), {})
            node.setdefault("_errors", []).append({"code": code, "message": message})
        return tree

    def raise_if_any(self) -> None:
        if self.items:
            raise DiscordError(400, 50035, "Invalid Form Body", self.as_dict())


def invalid_form(path: Path, code: str, message: str) -> DiscordError:
    """A single-field 50035, for rules that stop at the first problem."""
    errors = FormErrors()
    errors.add(path, code, message)
    return DiscordError(400, 50035, "Invalid Form Body", errors.as_dict())
