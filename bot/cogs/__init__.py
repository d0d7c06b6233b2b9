"""One cog per concern; :func:`bot.client.cog_modules` loads every module here that has ``async setup(bot)``."""
