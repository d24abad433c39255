"""``tgr-hub train``: run every TGR stage on a pool and write the meta-model.

On several devices, either let tgr-hub start the processes::

    tgr-hub train --pool repo-list.txt --out runs/x --num-processes 4

or start them with Accelerate (any topology Accelerate supports, e.g. several machines)::

    accelerate launch --num_processes 4 -m tgr_hub.cli train --pool repo-list.txt --out runs/x
"""

from __future__ import annotations

import argparse
import logging
import os
import time

from .common import DATA_FLAGS, add_config_args, add_data_args, config_from_args, data_values, say

TRACKERS = ("tensorboard", "wandb", "mlflow", "aim", "comet_ml", "clearml", "dvclive", "swanlab", "trackio")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="learn a few-shot meta-model from a pool of teachers (recover, embed, group, meta-train)",
        description="Run every TGR stage; stages whose artefacts exist in --out are skipped, and --resume "
        "continues meta-training from its newest checkpoint.",
    )
    parser.add_argument("--pool", required=True, help="repo-list.txt naming the teachers")
    parser.add_argument("--out", required=True, help="run folder, e.g. runs/NAME")
    parser.add_argument(
        "--allow-pickle", action="store_true", help="accept pickled teacher weights (loaded with weights_only=True)"
    )
    parser.add_argument("--no-test", action="store_true", help="skip the final meta-test evaluation")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue meta-training from the newest checkpoint in OUT/checkpoints "
        "(checkpoints: --set train.checkpoint_every=K)",
    )
    parser.add_argument(
        "--num-processes",
        type=int,
        metavar="N",
        help="run on N processes (N GPUs, or N CPU processes without a GPU) via accelerate launch",
    )
    parser.add_argument(
        "--mixed-precision",
        choices=("no", "fp16", "bf16"),
        help="autocast precision (train.mixed_precision); fp16 needs a GPU. "
        "Default: the config's, or accelerate launch --mixed_precision",
    )
    parser.add_argument(
        "--log-with",
        action="append",
        choices=TRACKERS,
        metavar="TRACKER",
        help=f"log metrics to an installed experiment tracker ({', '.join(TRACKERS)}); "
        "file-based ones write to OUT/logs (repeatable)",
    )
    parser.add_argument("--push", metavar="REPO_ID", help="push the meta-model to this Hub model repo")
    parser.add_argument("--space", metavar="SPACE_ID", help="with --push: also create/update this Gradio Space")
    parser.add_argument("--private", action="store_true", help="with --push: create private repos")
    add_data_args(parser)
    add_config_args(parser)
    parser.set_defaults(func=run)


def print_metrics(metrics: dict) -> None:
    for split, results in metrics.items():
        if split == "val":
            continue
        for setting, value in results.items():
            say(f"  {split} {setting}: {100 * value['mean']:.2f}% ± {100 * value['ci95']:.2f}%")


def child_arguments(args: argparse.Namespace) -> list[str]:
    """The ``tgr-hub`` arguments each launched process gets: these flags without ``--num-processes``."""
    argv = ["--debug"] if getattr(args, "debug", False) else []
    argv += ["train", "--pool", str(args.pool), "--out", str(args.out)]
    for flag, value in (
        ("--allow-pickle", args.allow_pickle),
        ("--no-test", args.no_test),
        ("--resume", args.resume),
        ("--private", args.private),
    ):
        if value:
            argv.append(flag)
    for flag, value in (
        ("--mixed-precision", args.mixed_precision),
        ("--push", args.push),
        ("--space", args.space),
        ("--preset", args.preset),
        ("--config", args.config),
        ("--seed", args.seed),
        ("--recipe", args.recipe),
        *((flag, getattr(args, key)) for flag, key in DATA_FLAGS.items()),
    ):
        if value is not None:
            argv += [flag, str(value)]
    for tracker in args.log_with or []:
        argv += ["--log-with", tracker]
    for override in args.overrides:
        argv += ["--set", override]
    return argv


def _mixed_precision_values(args: argparse.Namespace) -> dict:
    """``--mixed-precision``, else what ``accelerate launch --mixed_precision`` asked for, as config values."""
    chosen = args.mixed_precision
    if (
        chosen is None
        and os.environ.get("ACCELERATE_MIXED_PRECISION", "no") in ("fp16", "bf16")
        and not any(o.startswith("train.mixed_precision=") for o in args.overrides)
    ):
        chosen = os.environ["ACCELERATE_MIXED_PRECISION"]
    return {"train": {"mixed_precision": chosen}} if chosen else {}


def run(args: argparse.Namespace) -> int:
    from tgr_hub.errors import ConfigError

    cfg = config_from_args(args, {**_mixed_precision_values(args), "data": data_values(args)})
    if args.space and not args.push:
        raise ConfigError("--space needs --push REPO_ID (the Space loads the pushed meta-model)")

    from tgr_hub.distributed import is_distributed_launch, launch_command

    if args.num_processes is not None and args.num_processes < 1:
        raise ConfigError(f"--num-processes must be >= 1, got {args.num_processes}")
    if args.num_processes is not None and args.num_processes > 1 and not is_distributed_launch():
        command, env = launch_command(
            child_arguments(args), num_processes=args.num_processes, mixed_precision=cfg.train.mixed_precision
        )
        say(f"launching {args.num_processes} processes: accelerate launch ... -m tgr_hub.cli train ...")
        # replace this process by the launcher: signals and the exit status are the run's
        os.execvpe(command[0], command, env)

    rank = int(os.environ.get("RANK", "0") or 0)
    main = rank == 0
    if not main:  # one voice per run: the other processes only report problems
        logging.getLogger().setLevel(logging.WARNING)

    from tgr_hub.pipeline import run_tgr

    start = time.perf_counter()
    result = run_tgr(
        args.pool,
        args.out,
        cfg,
        allow_pickle=args.allow_pickle,
        evaluate_test=not args.no_test,
        resume=args.resume,
        log_with=args.log_with,
        progress=main,
    )
    if not result.is_main:
        return 0
    say(f"meta-model written to {result.out} in {time.perf_counter() - start:.1f} s")
    say("groups: " + "; ".join(", ".join(map(str, g)) for g in result.groups))
    print_metrics(result.metrics)
    if args.push:
        from tgr_hub.hub import push_meta_model

        pushed = push_meta_model(result.out, args.push, private=args.private, space_id=args.space)
        for url in pushed.urls:
            say(f"pushed: {url}")
    return 0
