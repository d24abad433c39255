"""``tgr-hub docs``: refill the generated tables of markdown documents from the JSON results they name."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import say


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "docs",
        help="refill the generated tables of markdown files from the JSON results they name",
        description="Refill every block '<!-- tgr-hub docs: SOURCE SECTION SCENARIO --> ... "
        "<!-- end tgr-hub docs -->' of the given markdown files from the JSON it names (relative to the "
        "file; several files joined by commas, no spaces, where a section combines them), so rerun results "
        "update their documents without hand edits. The SECTION picks what the file must be. A benchmark "
        "results.json (one file): setup, accuracy, decomposition, per-seed, selection, gradients (SCENARIO: "
        "one of the report's scenarios) and across-scenarios (SCENARIO all). A sweep of "
        "bench/bench_val_sweep.py --json: val-curve (each seed's meta-val curve, the variants joined by "
        "step) and val-sweep (the accuracy meta-validation chose per method, variant and seed); SCENARIO: "
        "the sweep's. bench/bench_task_conflict.py --json: task-conflict. tgr-hub analyze gain / "
        "gradients: analysis-gain, analysis-gradients. These three take SCENARIO all.",
    )
    parser.add_argument("files", nargs="+", type=Path, help="markdown files, e.g. docs/results.md")
    parser.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if a file's generated blocks are out of date"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tgr_hub.docs_blocks import regenerate_blocks
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
