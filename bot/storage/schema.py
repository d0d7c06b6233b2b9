"""The whole schema in one metadata: Alembic's autogenerate target and what ``Database.create_all`` creates.

Each feature owns its table module (jobs in ``models``, contests in ``contest_models``); this module is the one
place that imports them all, so neither has to import the other.
"""

from bot.storage import contest_models, models
from bot.storage.base import Base

metadata = Base.metadata

__all__ = ["contest_models", "metadata", "models"]
