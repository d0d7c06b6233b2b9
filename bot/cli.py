"""The ``imagine-bot`` console script: one entry point, a sub-command per job.

Each sub-command imports its implementation lazily so ``imagine-bot generate`` does not load Discord and
``imagine-bot db`` does not load torch. Errors an admin can fix are printed as one message, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagine-bot", description="Self-hosted Stable Diffusion bot for Discord.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="start the bot (the local playground when no Discord token is configured)")
    run.add_argument("--config", default="config.yaml", help="path to config.yaml (default: %(default)s)")

    playground = sub.add_parser("playground", help="start a local Discord-like server, the bot and a web page")
    playground.add_argument("--config", default=None, help="path to config.yaml (optional)")
    playground.add_argument("--port", type=int, default=None, help="web page port (default: playground.port)")

    sub.add_parser("generate", help="generate one image from the command line", add_help=False)

    db = sub.add_parser("db", help="database migrations and housekeeping")
    db.add_argument("--config", default="config.yaml", help="path to config.yaml (default: %(default)s)")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    upgrade = db_sub.add_parser("upgrade", help="migrate to the newest revision")
    upgrade.add_argument("revision", nargs="?", default="head")
    db_sub.add_parser("downgrade", help="migrate down").add_argument("revision", nargs="?", default="-1")
    db_sub.add_parser("current", help="show the database's revision")
    prune = db_sub.add_parser("prune", help="delete old image files (rows stay, marked pruned)")
    prune.add_argument("--older-than", required=True, help="age such as 30d, 12h or 90m")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["generate"]:
        from generation.cli import generate_main

        return generate_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "db":
        from bot.storage.cli import db_main

        return db_main(args)
    from bot.app import playground_main, run_main

    if args.command == "run":
        return run_main(args)
    return playground_main(args)


if __name__ == "__main__":
    sys.exit(main())
