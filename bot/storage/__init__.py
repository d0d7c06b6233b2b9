"""Persistence: the database handle, models, migrations entry points, the repository and image files.

Nothing outside this package sees an ORM object: the repository returns records from ``records.py``.
"""

from bot.storage.db import Database, upgrade_to_head

__all__ = ["Database", "upgrade_to_head"]
