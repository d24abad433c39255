"""``tgr-hub inspect``: the pool table, teacher dissimilarities and groups, without meta-training."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_config_args, config_from_args, say


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "inspect",
        help="print the pool table and write the dissimilarity heatmap with groups",
        description="Resolve the pool, recover pseudo-tasks, embed and group the teachers (stages 1-2).",
    )
    parser.add_argument("--pool", required=True, help="repo-list.txt naming the teachers")
    parser.add_argument("--out", help="folder for the artefacts (default: runs/inspect-<pool folder name>)")
    parser.add_argument("--allow-pickle", action="store_true", help="accept pickled teacher weights")
    add_config_args(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tgr_hub.pipeline import prepare_pool

    cfg = config_from_args(args)
    out = Path(args.out) if args.out else Path("runs") / f"inspect-{Path(args.pool).resolve().parent.name}"
    prepared = prepare_pool(args.pool, out, cfg, allow_pickle=args.allow_pickle)
    group_of = {i: g for g, members in enumerate(prepared.groups) for i in members}
    say(f"{'teacher':<10} {'arch':<16} {'classes':>7}  {'group':>5}  {'revision':<12} source")
    for i, member in enumerate(prepared.members):
        revision = (member.revision or "-")[:12]
        say(
            f"{member.name:<10} {member.architecture:<16} {member.num_classes:>7}  {group_of[i]:>5}  "
            f"{revision:<12} {member.source}"
        )
    say(f"heatmap: {out / 'dissimilarity.png'}")
    # the analyses reuse this folder's recovered tasks and embeddings
    say(f"analyses: tgr-hub analyze cka|fisher --pool {args.pool} --out {out}")
    return 0
