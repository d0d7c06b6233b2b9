"""Alembic migrations, shipped as a package so an installed bot can migrate its own database.

Use :func:`bot.storage.db.alembic_config` (or ``imagine-bot db ...``); it finds this folder from
``migrations.__file__``. The ``alembic.ini`` at the repository root points here for developers.
"""
