"""Readiness: named checks that the composition root registers (gateway, database, queue backend, ...).

Why a registry rather than a fixed list: what "ready" means depends on what was built. The local queue is
always ready; a Redis queue backend registers its own check under the same name, and a new dependency adds one
line where it is built. ``/healthz`` runs every check at once, each bounded by a timeout, so a hung database
makes the bot "not ready" instead of making the probe hang.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

CHECK_TIMEOUT = 5.0

Check = Callable[[], Awaitable[str | None]]
"""An async check: returns None when ready, else a short reason (raising counts as not ready, with the error)."""


@dataclass(frozen=True)
class CheckResult:
    name: str
    reason: str | None  # None: ready

    @property
    def ready(self) -> bool:
        return self.reason is None


@dataclass(frozen=True)
class HealthReport:
    results: tuple[CheckResult, ...]

    @property
    def ready(self) -> bool:
        return all(result.ready for result in self.results)

    @property
    def not_ready(self) -> dict[str, str]:
        return {r.name: r.reason for r in self.results if r.reason is not None}

    def as_json(self) -> dict[str, object]:
        """The ``/healthz`` body: overall status, what is not ready and why, and every check."""
        return {
            "status": "ready" if self.ready else "not ready",
            "not_ready": self.not_ready,
            "checks": {r.name: {"ready": r.ready, **({"reason": r.reason} if r.reason else {})}
                       for r in self.results},
        }


class HealthChecks:
    """Named readiness checks; adding a name again replaces its check (a queue backend replaces the local one)."""

    def __init__(self, timeout: float = CHECK_TIMEOUT) -> None:
        self.timeout = timeout
        self._checks: dict[str, Check] = {}

    def add(self, name: str, check: Check) -> None:
        self._checks[name] = check

    def remove(self, name: str) -> None:
        self._checks.pop(name, None)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._checks)

    async def run(self) -> HealthReport:
        """Every check at once; none registered means not ready (nothing has said it is)."""
        if not self._checks:
            return HealthReport((CheckResult("startup", "nothing is running yet"),))
        names = list(self._checks)
        reasons = await asyncio.gather(*(self._run_one(self._checks[name]) for name in names))
        return HealthReport(tuple(CheckResult(name, reason) for name, reason in zip(names, reasons, strict=True)))

    async def _run_one(self, check: Check) -> str | None:
        try:
            reason = await asyncio.wait_for(check(), self.timeout)
        except TimeoutError:
            return f"no answer within {self.timeout:g} s"
        except Exception as exc:  # a failing check is a "not ready" answer, never a failed probe
            return f"{type(exc).__name__}: {exc}".rstrip(": ")
        return None if reason is None else str(reason)
