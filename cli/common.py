"""Helpers shared by the subcommands: config flags and output."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tgr_hub.config import PRESETS, RunConfig, load_config
from tgr_hub.io import write_json_atomic
from tgr_hub.recipes import RECIPES


def add_config_args(parser: argparse.ArgumentParser, default_preset: str | None = None) -> None:
    """Add ``--preset``, ``--config``, ``--set`` and ``--seed`` to a subcommand."""
    group = parser.add_argument_group("configuration")
    group.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=default_preset,
        help="named settings: smoke (seconds), quick (minutes on a CPU), paper (reference)",
    )
    group.add_argument("--config", metavar="FILE", help="YAML or JSON config file (e.g. a saved tgr_config.json)")
    group.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one setting, e.g. --set train.beta=0 (repeatable)",
    )
    group.add_argument("--seed", type=int, default=None, help="random seed of the whole run")
    group.add_argument(
        "--recipe",
        choices=sorted(RECIPES),
        default=None,
        help="a paper benchmark (dataset, image size, class split, teacher pool), with the "
        f"{default_preset or 'paper'} preset unless --preset says otherwise; flags and --set "
        "still override it",
    )


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--dataset``, ``--class-split`` and ``--cache-dir`` (the config's data section) to a subcommand."""
    group = parser.add_argument_group("data")
    group.add_argument(
        "--dataset",
        default=None,
        help="glyphs (built in), a local image folder, or a Hub dataset id org/name[@revision] (data.dataset)",
    )
    group.add_argument(
        "--class-split",
        default=None,
        metavar="FILE|NAME",
        help='a built-in class split (cub-200) or a JSON file {"train": [...], "validation": [...], '
        '"test": [...]} of class names or ids, instead of the dataset\'s own splits or the '
        "seeded 60/20/20 one (data.class_split)",
    )
    group.add_argument(
        "--cache-dir", default=None, help="dataset cache folder (default ~/.cache/tgr_hub; data.cache_dir)"
    )


#: The flags of :func:`add_data_args` and the data keys they set.
DATA_FLAGS = {"--dataset": "dataset", "--class-split": "class_split", "--cache-dir": "cache_dir"}


def data_values(args: argparse.Namespace) -> dict[str, Any]:
    """The data-section values the flags of :func:`add_data_args` set (flags left out are absent)."""
    return {key: getattr(args, key) for key in DATA_FLAGS.values() if getattr(args, key, None) is not None}


def config_from_args(args: argparse.Namespace, values: dict[str, Any] | None = None) -> RunConfig:
    """Build the run config from the flags of :func:`add_config_args` plus command-specific values."""
    values = dict(values or {})
    if getattr(args, "seed", None) is not None:
        values["seed"] = args.seed
    return load_config(
        preset=args.preset,
        path=args.config,
        overrides=args.overrides,
        values=values,
        recipe=getattr(args, "recipe", None),
    )


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as JSON atomically (temporary name, then rename)."""
    write_json_atomic(path, data)


def say(message: str = "") -> None:
    """Print a line of user-facing output."""
    print(message, file=sys.stdout, flush=True)
