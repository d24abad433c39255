"""``tgr-hub evaluate``: few-shot accuracy of a meta-model or a baseline on real episodes.

Examples::

    tgr-hub evaluate runs/x --dataset glyphs --split test --way 5 --shot 1 --shot 5 --episodes 600
    tgr-hub evaluate --baseline random --arch conv4 --shot 1 --shot 5
    tgr-hub evaluate --baseline average --pool pool/repo-list.txt --json average.json
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from .common import add_config_args, add_data_args, config_from_args, data_values, say, write_json


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="few-shot accuracy (mean ± 95%% CI) of a meta-model or of the Random / Average baseline",
        description="Adapt to N-way K-shot episodes of a real split and report the mean query accuracy "
        "± 1.96·std/√episodes. MODEL is a meta-model folder (config.json + model.safetensors) or a run "
        "folder holding one in meta_model/. Episodes are a deterministic function of --seed.",
    )
    parser.add_argument("model", nargs="?", metavar="MODEL", help="meta-model folder or run folder")
    parser.add_argument(
        "--baseline",
        choices=("random", "average"),
        help="evaluate a baseline instead of MODEL: random (randomly initialised --arch) "
        "or average (parameter average of the --pool teachers of the most common architecture)",
    )
    parser.add_argument("--arch", default=None, help="architecture of the random baseline (default: train.arch)")
    parser.add_argument("--pool", metavar="REPO_LIST", help="repo-list.txt of the teachers (average baseline)")
    parser.add_argument(
        "--allow-pickle", action="store_true", help="accept pickled teacher weights (loaded with weights_only=True)"
    )
    parser.add_argument("--split", default=None, choices=("train", "val", "test"), help="split to draw episodes from")
    parser.add_argument(
        "--domains",
        type=_csv,
        default=None,
        help="comma-separated domains whose classes the episodes use (data.domains; default: the "
        "config's, else every domain)",
    )
    parser.add_argument(
        "--image-size", type=int, default=None, help="image size of the dataset (default: data.image_size)"
    )
    parser.add_argument("--way", type=int, default=None, help="classes per episode (default 5)")
    parser.add_argument(
        "--shot",
        type=int,
        action="append",
        default=None,
        help="support images per class; repeat for several settings (default: 1 and 5)",
    )
    parser.add_argument("--query", type=int, default=None, help="query images per class (default 15)")
    parser.add_argument("--episodes", type=int, default=None, help="episodes per setting (default 600)")
    parser.add_argument(
        "--method",
        default=None,
        choices=("auto", "protonet", "finetune"),
        help="adaptation: protonet (nearest class mean), finetune (MAML-style, --inner-steps SGD "
        "steps with --inner-lr), auto (protonet for ProtoNet meta-models, else finetune)",
    )
    parser.add_argument("--inner-steps", type=int, default=None, help="fine-tuning steps (default 10)")
    parser.add_argument("--inner-lr", type=float, default=None, help="fine-tuning learning rate (default 0.01)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1... (default: cuda when available)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_data_args(parser)
    add_config_args(parser)
    parser.set_defaults(func=run)


def _config(args: argparse.Namespace):
    data: dict[str, Any] = data_values(args)
    if args.domains is not None:
        data["domains"] = args.domains
    if args.image_size is not None:
        data["image_size"] = args.image_size
    evaluation: dict[str, Any] = {}
    for key in ("split", "way", "query", "episodes", "method", "inner_steps", "inner_lr"):
        if getattr(args, key) is not None:
            evaluation[key] = getattr(args, key)
    if args.shot:
        evaluation["shots"] = list(dict.fromkeys(args.shot))
    train: dict[str, Any] = {"arch": args.arch} if args.arch is not None else {}
    return config_from_args(args, {"data": data, "eval": evaluation, "train": train})


def run(args: argparse.Namespace) -> int:
    from tgr_hub.distributed import choose_device
    from tgr_hub.errors import ConfigError

    if args.baseline is None and args.model is None:
        raise ConfigError("give a MODEL folder or --baseline random|average")
    if args.baseline is not None and args.model is not None:
        raise ConfigError(f"give either MODEL ({args.model}) or --baseline {args.baseline}, not both")
    if args.baseline == "average" and not args.pool:
        raise ConfigError("--baseline average needs --pool REPO_LIST (the teachers to average)")
    if args.pool and args.baseline != "average":
        raise ConfigError("--pool is only used with --baseline average")
    cfg = _config(args)

    from tgr_hub.data import split_of
    from tgr_hub.evaluate import average_baseline, evaluate_model, random_baseline
    from tgr_hub.metamodel import load_meta_model

    if args.baseline == "random":
        model = random_baseline(cfg.train.arch, image_size=cfg.data.image_size, seed=cfg.seed)
        name = f"Random baseline ({cfg.train.arch}, seed {cfg.seed})"
    elif args.baseline == "average":
        from tgr_hub.pool import load_pool

        members = load_pool(args.pool, allow_pickle=args.allow_pickle, progress=not args.no_progress)
        model = average_baseline(members)
        name = f"Average baseline ({model.architecture}, pool {args.pool})"
    else:
        model = load_meta_model(args.model)
        name = f"{args.model} ({model.architecture})"

    device = choose_device(args.device)
    model.to(device)
    split = split_of(cfg.data, cfg.eval.split)
    pinned = f" (commit {split.revision[:12]})" if split.revision else ""
    say(
        f"evaluating {name} on {cfg.data.dataset}{pinned} {cfg.eval.split} ({split.num_classes} classes): "
        f"{cfg.eval.way}-way, {cfg.eval.query} queries, {cfg.eval.episodes} episodes, seed {cfg.seed}"
    )
    start = time.perf_counter()
    results = evaluate_model(
        model,
        split,
        way=cfg.eval.way,
        shots=cfg.eval.shots,
        query=cfg.eval.query,
        episodes=cfg.eval.episodes,
        learner=cfg.eval.method,
        seed=cfg.seed,
        inner_steps=cfg.eval.inner_steps,
        inner_lr=cfg.eval.inner_lr,
        progress=not args.no_progress,
    )
    elapsed = time.perf_counter() - start
    for value in results.values():
        say(
            f"  {value['way']}-way {value['shot']}-shot ({value['method']}): "
            f"{100 * value['mean']:.2f}% ± {100 * value['ci95']:.2f}%"
        )
    say(f"({elapsed:.1f} s; chance is {100 / cfg.eval.way:.1f}%)")
    if args.json:
        write_json(
            args.json,
            {
                "model": args.model,
                "baseline": args.baseline,
                "pool": args.pool,
                "architecture": model.architecture,
                "dataset": cfg.data.dataset,
                "dataset_revision": split.revision,
                "class_split": split.class_split,
                "split": cfg.eval.split,
                "domains": cfg.data.domains,
                "seed": cfg.seed,
                "results": results,
                "seconds": round(elapsed, 2),
            },
        )
        say(f"results written to {args.json}")
    return 0
