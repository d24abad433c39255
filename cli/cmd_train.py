"""``tgr-hub train``: run every TGR stage on a pool and write the meta-model."""

from __future__ import annotations

import argparse
import time

from tgr_hub.cli.common import add_config_args, config_from_args, say


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="learn a few-shot meta-model from a pool of teachers (recover, embed, group, meta-train)",
        description="Run every TGR stage; stages whose artefacts exist in --out are skipped (resume).",
    )
    parser.add_argument("--pool", required=True, help="repo-list.txt naming the teachers")
    parser.add_argument("--out", required=True, help="run folder, e.g. runs/NAME")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="accept pickled teacher weights (loaded with weights_only=True)")
    parser.add_argument("--no-test", action="store_true", help="skip the final meta-test evaluation")
    parser.add_argument("--push", metavar="REPO_ID", help="push the meta-model to this Hub model repo")
    parser.add_argument("--space", metavar="SPACE_ID", help="with --push: also create/update this Gradio Space")
    parser.add_argument("--private", action="store_true", help="with --push: create private repos")
    add_config_args(parser)
    parser.set_defaults(func=run)


def print_metrics(metrics: dict) -> None:
    for split, results in metrics.items():
        if split == "val":
            continue
        for setting, value in results.items():
            say(f"  {split} {setting}: {100 * value['mean']:.2f}% ± {100 * value['ci95']:.2f}%")


def run(args: argparse.Namespace) -> int:
    from tgr_hub.pipeline import run_tgr

    cfg = config_from_args(args)
    if args.space and not args.push:
        from tgr_hub.errors import ConfigError

        raise ConfigError("--space needs --push REPO_ID (the Space loads the pushed meta-model)")
    start = time.perf_counter()
    result = run_tgr(args.pool, args.out, cfg, allow_pickle=args.allow_pickle, evaluate_test=not args.no_test)
    say(f"meta-model written to {result.out} in {time.perf_counter() - start:.1f} s")
    say("groups: " + "; ".join(", ".join(map(str, g)) for g in result.groups))
    print_metrics(result.metrics)
    if args.push:
        from tgr_hub.hub import push_meta_model

        pushed = push_meta_model(result.out, args.push, private=args.private, space_id=args.space)
        for url in pushed.urls:
            say(f"pushed: {url}")
    return 0
