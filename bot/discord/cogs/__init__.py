"""One cog per concern; :func:`bot.discord.client.cog_modules` loads every module here that has ``async setup(bot)``."""
