"""Entry point of the ``tgr-hub`` console script.

Each subcommand lives in its own module with ``register(subparsers)``, which adds a
parser whose ``func`` default runs it. Errors from :mod:`tgr_hub.errors` become one line
on stderr and exit code 2; ``--debug`` or ``TGR_HUB_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import os
import signal
import sys
import traceback

from tgr_hub.errors import TgrHubError

# Subcommand modules in the order `tgr-hub --help` lists them.
COMMANDS = ["quickstart", "benchmark", "make_pool", "inspect", "analyze", "train", "evaluate", "push", "demo", "docs"]

# What to do after Ctrl-C, by subcommand: every stage saves its finished work as it goes.
RESUME_HINTS = {
    "train": "rerun it with --resume: finished stages are kept, and meta-training continues from its "
    "newest checkpoint (train.checkpoint_every > 0)",
    "quickstart": "rerun the same command: the teachers and the recovered tasks that were finished are kept",
    "benchmark": "rerun the same command: finished cells are kept and skipped; the cell that was running starts over",
    "make-pool": "rerun the same command: the teachers that were finished are kept",
    "inspect": "rerun the same command: the recovered tasks and embeddings that were finished are kept",
    "analyze": "rerun the same command: the teachers, recovered tasks and embeddings that were finished are kept",
    "push": "rerun the same command: an interrupted push leaves the repository as it was",
}


def version_text() -> str:
    """``tgr-hub X.Y.Z (python ..., torch ..., timm ...)``: what a bug report needs to name."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from tgr_hub import __version__

    parts = [f"python {platform.python_version()}"]
    for package in ("torch", "timm"):
        try:
            parts.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            parts.append(f"{package} not installed")
    return f"tgr-hub {__version__} ({', '.join(parts)})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tgr-hub",
        description="Data-free meta-learning from pools of pre-trained classifiers (TGR).",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=version_text(),
        help="print the version of tgr-hub (and of python, torch, timm) and exit",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"tgr_hub.cli.cmd_{name}").register(subparsers)
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
    previous = signal.getsignal(signal.SIGINT)
    interrupted = _note_interrupts()
    try:
        result = args.func(args)
    except TgrHubError as error:
        if debug:
            raise
        print(f"tgr-hub: error: {error}", file=sys.stderr)
        return 2
    except Exception:
        # a Ctrl-C that lands inside a native extension (safetensors' load_file) can come out of it as
        # another error: after a SIGINT, any error is the interrupt
        if not interrupted or debug:
            raise
        return _interrupted(args.command)
    except KeyboardInterrupt as interrupt:
        # Release what the interrupted frames still hold (progress bars, ...) now, while the
        # interpreter is whole: collected at exit instead, their destructors can fail and print an
        # "Exception ignored ... tqdm.__del__" traceback under the hint (seen once in the Ctrl-C tests).
        # Before the hint: a closing bar clears its line, which would otherwise land after the hint.
        traceback.clear_frames(interrupt.__traceback__)
        del interrupt
        return _interrupted(args.command)
    finally:
        signal.signal(signal.SIGINT, previous)
    return int(result or 0)


def _note_interrupts() -> list[int]:
    """Where Python's own SIGINT handler is installed, one that also records each SIGINT in the list
    returned, then raises KeyboardInterrupt as before. An ignored SIGINT (a background job) stays ignored."""
    seen: list[int] = []
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:

        def handler(signum: int, frame: object) -> None:
            seen.append(signum)
            raise KeyboardInterrupt

        signal.signal(signal.SIGINT, handler)
    return seen


def _interrupted(command: str) -> int:
    """Exit code 130, after the message and the command's resume hint."""
    hint = RESUME_HINTS.get(command)
    gc.collect()
    print(f"tgr-hub: interrupted{'; ' + hint if hint else ''}", file=sys.stderr)
    return 130


if __name__ == "__main__":
    raise SystemExit(main())
