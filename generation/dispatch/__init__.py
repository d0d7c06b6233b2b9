"""Running batches outside the bot process: Redis Streams between the bot (which keeps the fair order) and
generation workers on any host (``imagine-bot worker``). See docs/SCALING.md for the design and why Redis."""
