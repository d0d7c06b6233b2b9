"""Everything Discord: client and cogs, moderation, rate limits, storage, the local server and playground."""
