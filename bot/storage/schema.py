"""The whole schema in one metadata: Alembic's autogenerate target and what ``Database.create_all`` creates.

Each feature owns its table module (jobs in ``models``, contests in ``contest_models``, the bot-wide durable
timers in ``timer_models``); this module is the one place that imports them all, so none has to import another.
"""

from bot.storage import contest_models, models, timer_models
from bot.storage.base import Base

metadata = Base.metadata

__all__ = ["contest_models", "metadata", "models", "timer_models"]
