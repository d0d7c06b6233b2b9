"""Errors the engine raises for one batch whose message a member may read as is.

They live in their own leaf module so the worker (which turns them into a failed job) and the engine and model
registry (which raise them) share the type without importing each other.
"""

from __future__ import annotations


class JobRefusedError(Exception):
    """This batch cannot run (its model does not load, its starting image is unreadable, ...), other batches can.

    ``message`` is one sentence for the member; the details for the admin are logged where it is raised.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
