"""Helpers shared by the subcommands: config flags and output."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tgr_hub.config import PRESETS, RunConfig, load_config
from tgr_hub.io import write_json_atomic


def add_config_args(parser: argparse.ArgumentParser, default_preset: str | None = None) -> None:
    """Add ``--preset``, ``--config``, ``--set`` and ``--seed`` to a subcommand."""
    group = parser.add_argument_group("configuration")
    group.add_argument("--preset", choices=sorted(PRESETS), default=default_preset,
                       help="named settings: smoke (seconds), quick (minutes on a CPU), paper (reference)")
    group.add_argument("--config", metavar="FILE", help="YAML or JSON config file (e.g. a saved tgr_config.json)")
    group.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override one setting, e.g. --set train.beta=0 (repeatable)")
    group.add_argument("--seed", type=int, default=None, help="random seed of the whole run")


def config_from_args(args: argparse.Namespace, values: dict[str, Any] | None = None) -> RunConfig:
    """Build the run config from the flags of :func:`add_config_args` plus command-specific values."""
    values = dict(values or {})
    if getattr(args, "seed", None) is not None:
        values["seed"] = args.seed
    return load_config(preset=args.preset, path=args.config, overrides=args.overrides, values=values)


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as JSON atomically (temporary name, then rename)."""
    write_json_atomic(path, data)


def say(message: str = "") -> None:
    """Print a line of user-facing output."""
    print(message, file=sys.stdout, flush=True)
