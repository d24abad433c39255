"""Entry point of the ``tgr-hub`` console script.

Each subcommand lives in its own module with ``register(subparsers)``, which adds a
parser whose ``func`` default runs it. Errors from :mod:`tgr_hub.errors` become one line
on stderr and exit code 2; ``--debug`` or ``TGR_HUB_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from tgr_hub.errors import TgrHubError

# Subcommand modules in the order `tgr-hub --help` lists them.
COMMANDS = ["quickstart", "make_pool", "inspect", "train", "evaluate", "push", "demo"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tgr-hub",
        description="Data-free meta-learning from pools of pre-trained classifiers (TGR).",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"tgr_hub.cli.cmd_{name}")
        except ModuleNotFoundError as error:
            if error.name == f"tgr_hub.cli.cmd_{name}":
                continue  # command not built yet
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("TGR_HUB_DEBUG", "") not in ("", "0")
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s" if debug else "%(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        result = args.func(args)
    except TgrHubError as error:
        if debug:
            raise
        print(f"tgr-hub: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tgr-hub: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
