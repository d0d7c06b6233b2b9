"""The playground: a web page that looks like a Discord channel, served next to the local Discord-compatible
server, with the real bot connected to that server (see :mod:`bot.playground.app`)."""

from bot.playground.app import Playground, run_playground, start_playground

__all__ = ["Playground", "run_playground", "start_playground"]
