"""``tgr-hub make-pool``: train a pool of teachers on the offline glyph benchmark (or any dataset).

    tgr-hub make-pool --dataset glyphs --domains latin,greek --archs conv4,resnet10t \\
        --teachers 12 --way 5 --epochs 6 --seed 0 --out pool/
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .common import add_config_args, add_data_args, config_from_args, data_values, say


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "make-pool",
        help="train N-way teacher classifiers and save them in timm's Hub layout with a repo-list.txt",
        description="Train a pool of teachers, each an N-way classifier on N meta-train classes of one domain, "
        "spread over the given architectures and domains; save each in timm's Hub layout and write "
        "OUT/repo-list.txt and OUT/pool.json. Teachers already trained with the same recipe are reused. "
        "Flags left out take their value from --config / --preset (section pool, and data for the dataset).",
    )
    parser.add_argument("--out", required=True, help="pool folder (teachers t00, t01, ... and repo-list.txt)")
    parser.add_argument(
        "--domains",
        type=_csv,
        default=None,
        help="comma-separated domains, e.g. latin,greek; '*' for every domain of the dataset",
    )
    parser.add_argument(
        "--archs", type=_csv, default=None, help="comma-separated timm architectures, e.g. conv4,resnet10t"
    )
    parser.add_argument("--teachers", type=int, default=None, help="number of teachers")
    parser.add_argument("--way", type=int, default=None, help="classes per teacher")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs per teacher")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch size")
    parser.add_argument("--lr", type=float, default=None, help="peak AdamW learning rate")
    parser.add_argument("--data-seed", type=int, default=None, help="seed of the class split of non-glyph datasets")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads while training (default 1: fastest for small teachers, even on a busy CPU; "
        "0 keeps torch's default)",
    )
    parser.add_argument(
        "--device",
        default=None,
        help="where the teachers train: cpu, cuda, cuda:1 ... (default: Accelerate's device, "
        "the GPU when one is visible; only the CPU is bit-exact from run to run)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument(
        "--push-org",
        metavar="ORG",
        help="also push each teacher to the Hub as ORG/<pool>-tNN and write OUT/repo-list-hub.txt",
    )
    parser.add_argument("--private", action="store_true", help="with --push-org: create private repositories")
    add_data_args(parser)
    add_config_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tgr_hub.distributed import choose_device
    from tgr_hub.teachers import format_table, make_pool

    pool: dict = {}
    for key in ("domains", "archs", "teachers", "way", "epochs", "batch_size", "lr"):
        if getattr(args, key) is not None:
            pool[key] = getattr(args, key)
    data = data_values(args)
    if args.data_seed is not None:
        data["seed"] = args.data_seed
    cfg = config_from_args(args, {"pool": pool, "data": data})

    started = time.perf_counter()
    out = Path(args.out)
    reports = make_pool(
        out,
        cfg.pool,
        seed=cfg.seed,
        data=cfg.data,
        num_threads=args.threads or None,
        progress=not args.no_progress,
        device=choose_device(args.device),
    )
    elapsed = time.perf_counter() - started
    say(format_table(reports))
    say()
    worst = min(r.heldout_accuracy for r in reports)
    trained = sum(not r.reused for r in reports)
    say(
        f"{len(reports)} teachers ({trained} trained, {len(reports) - trained} reused) in {elapsed:.1f}s; "
        f"lowest held-out accuracy {100 * worst:.1f}%"
    )
    say(f"pool list: {out / 'repo-list.txt'}")
    if args.push_org:
        from tgr_hub.hub import push_pool
        from tgr_hub.pool import pool_folders

        entries = push_pool(
            out, args.push_org, private=args.private, progress=not args.no_progress, teachers=pool_folders(out) or None
        )
        say(f"pushed {len(entries)} teachers to {args.push_org}; Hub pool list: {out / 'repo-list-hub.txt'}")
    return 0
