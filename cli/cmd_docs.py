"""``tgr-hub docs``: refill the generated tables of markdown documents from the benchmark reports they name."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import say


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "docs",
        help="refill the generated tables of markdown files from benchmark results.json files",
        description="Refill every block '<!-- tgr-hub docs: RESULTS_JSON SECTION SCENARIO --> ... "
        "<!-- end tgr-hub docs -->' of the given markdown files from the results.json it names (relative to the "
        "file), so a rerun benchmark updates its documents without hand edits. Sections: setup, accuracy, "
        "per-seed, selection, gradients.",
    )
    parser.add_argument("files", nargs="+", type=Path, help="markdown files, e.g. docs/results.md")
    parser.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if a file's generated blocks are out of date"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tgr_hub.benchmark import regenerate_blocks
    from tgr_hub.errors import ConfigError
    from tgr_hub.io import write_text_atomic

    stale = []
    for path in args.files:
        if not path.is_file():
            raise ConfigError(f"no such markdown file: {path}")
        text = path.read_text()
        fresh = regenerate_blocks(text, path.parent)
        if fresh == text:
            say(f"{path}: up to date")
        elif args.check:
            stale.append(path)
            say(f"{path}: generated blocks are out of date (run tgr-hub docs {path})")
        else:
            write_text_atomic(path, fresh)
            say(f"{path}: regenerated")
    return 1 if stale else 0
