"""The ``imagine-bot`` console script: the entry points (run, playground, generate, db), a sub-command each.

Only entry points import the composition root (:mod:`bot.bootstrap`). The heavy sub-commands are imported when
chosen, so ``imagine-bot db`` does not load torch and ``imagine-bot generate`` does not load Discord. Errors an
admin can fix are printed as one message, never a traceback. ``--config`` may come before or after the
sub-command. Logging is set up before the heavy imports, so their start-up notices are filtered and redacted.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from bot.config import ConfigError, Settings, load_settings
from bot.logging_setup import adopt_library_loggers, setup_logging
from bot.redaction import url_password

NO_TOKEN_HELP = """\
No Discord bot token is configured, so the bot cannot log in to Discord.

To run it on Discord:
  1. Open https://discord.com/developers/applications and click "New Application".
  2. In "Bot", click "Reset Token" and copy the token (keep it secret).
  3. Either put it in config.yaml (discord.token) or set it in the environment:
       export DISCORD_TOKEN=your-token
  4. In "OAuth2" -> "URL Generator", tick the scopes "bot" and "applications.commands" and the permissions
     "Send Messages", "Attach Files", "Embed Links", "Add Reactions", "Read Message History" (and
     "Manage Messages" so a 🔄 reaction can be taken off after a rerun); open the URL to invite the bot.
  5. Run `imagine-bot run` again.

Starting the local playground instead: a Discord-like web page on this machine, no Discord account needed.
"""

CONFIG_HELP = "path to config.yaml (default: config.yaml if it exists; the playground needs none)"


def build_parser() -> argparse.ArgumentParser:
    """``--config`` is accepted at every level: ``imagine-bot --config x.yaml db upgrade`` and
    ``imagine-bot db upgrade --config x.yaml`` mean the same (a sub-command's own default never hides it)."""
    parser = argparse.ArgumentParser(prog="imagine-bot", description="Self-hosted Stable Diffusion bot for Discord.")
    parser.add_argument("--config", default=None, help=CONFIG_HELP)
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument("--config", default=argparse.SUPPRESS, help=CONFIG_HELP)
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("run", parents=[config],
                   help="start the bot (the local playground when no Discord token is configured)")

    playground = sub.add_parser("playground", parents=[config],
                                help="start a local Discord-like server, the bot and a web page")
    playground.add_argument("--port", type=int, default=None, help="web page port (default: playground.port)")

    sub.add_parser("generate", help="generate one image from the command line", add_help=False)

    db = sub.add_parser("db", parents=[config], help="database migrations and housekeeping")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_sub.add_parser("upgrade", parents=[config], help="migrate to the newest revision")
    upgrade.add_argument("revision", nargs="?", default="head")
    db_sub.add_parser("downgrade", parents=[config], help="migrate down").add_argument(
        "revision", nargs="?", default="-1")
    db_sub.add_parser("current", parents=[config], help="show the database's revision")
    prune = db_sub.add_parser("prune", parents=[config], help="delete old image files (rows stay, marked pruned)")
    prune.add_argument("--older-than", required=True, help="age such as 30d, 12h or 90m")
    return parser


def _load(config: str | None, *, default_path: str | None = "config.yaml") -> Settings:
    """Settings from ``config``; the default path may be missing (all defaults, DISCORD_TOKEN still applies)."""
    if config is not None and config == default_path and not Path(config).exists():
        return load_settings(None)
    return load_settings(config)


def _setup_logging(settings: Settings) -> None:
    setup_logging(settings.logging.level, json_lines=settings.logging.json_lines,
                  secrets=[settings.token, url_password(settings.database.url)])


def _start_playground(settings: Settings, port: int | None = None) -> int:
    """The playground entry point: local Discord-compatible server, the bot and the web page, until Ctrl-C."""
    from bot.playground.app import run_playground

    adopt_library_loggers()  # transformers and diffusers were just imported: their records go through ours
    if port is not None:
        settings = settings.model_copy(update={"playground": settings.playground.model_copy(update={"port": port})})
    return run_playground(settings)


def run_main(args: argparse.Namespace) -> int:
    """``imagine-bot run``: the bot on Discord, or the playground when no token is configured."""
    try:
        settings = _load(getattr(args, "config", None) or "config.yaml")
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    _setup_logging(settings)
    if not settings.token:
        print(NO_TOKEN_HELP, file=sys.stderr)
        return _start_playground(settings)
    from bot.bootstrap import run_bot  # torch and discord load here, not for `imagine-bot db`
    from bot.gate.content_filter import FilterConfigError
    from generation.loading import ModelLoadError
    from generation.safety import SafetyCheckerLoadError

    adopt_library_loggers()
    try:
        return asyncio.run(run_bot(settings))
    except ModelLoadError as exc:
        print(f"Cannot start: the model could not be loaded.\n{exc}", file=sys.stderr)
        return 2
    except (FilterConfigError, SafetyCheckerLoadError) as exc:
        print(f"Cannot start: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    except Exception as exc:
        import discord

        if isinstance(exc, discord.LoginFailure):
            print("Discord refused the bot token (discord.token / DISCORD_TOKEN). Reset it in the developer "
                  "portal (your application -> Bot -> Reset Token) and try again.", file=sys.stderr)
            return 2
        if isinstance(exc, ConfigError):
            print(exc, file=sys.stderr)
            return 2
        raise


def playground_main(args: argparse.Namespace) -> int:
    """``imagine-bot playground``: the local Discord-like server, the bot and its web page."""
    try:
        settings = _load(getattr(args, "config", None), default_path=None)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    _setup_logging(settings)
    return _start_playground(settings, getattr(args, "port", None))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["generate"]:
        from generation.cli import generate_main

        return generate_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "db":
        from bot.storage.cli import db_main

        return db_main(args)
    if args.command == "run":
        return run_main(args)
    return playground_main(args)


if __name__ == "__main__":
    sys.exit(main())
