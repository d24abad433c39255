"""``tgr-hub benchmark``: methods × seeds × scenarios on identical episodes, with paired statistics.

Every method of a seed is scored on the same meta-test episodes; the report gives each
method's accuracy and its paired difference from the reference (ERM by default) with 95%
intervals and p-values, per seed and across seeds. With ``erm-replicate`` (ERM again with
another training seed) beside ``erm``, it also gives the noise floor (ERM − ERM) a method
difference must exceed. Finished cells are kept: rerunning the same command resumes. Copies of the
same command share the cells (each skips the cells another one is running); ``--shard i/n``
shares them out by grid position instead.

    tgr-hub benchmark --scenario standard --seeds 0,1,2 --methods random,average,erm,erm-replicate,tgr
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tgr_hub.errors import ConfigError

from .common import add_config_args, add_data_args, config_from_args, data_values, say


def register(subparsers: argparse._SubParsersAction) -> None:
    from tgr_hub.benchmark import METHODS, REPLICATE_SEED_OFFSET, SCENARIOS

    parser = subparsers.add_parser(
        "benchmark",
        help="methods x seeds x scenarios on identical episodes, with paired statistics (resumable)",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--scenario",
        default=None,
        help=f"comma-separated scenarios: {', '.join(SCENARIOS)}, or config (the config's pool "
        "section); default multi-domain. standard is the paper's main setting: >= 24 Conv4 "
        "teachers, each on a random 5-class subset of cyrillic's meta-train classes, scored on "
        "cyrillic's meta-val/test classes only",
    )
    where.add_argument("--pool", metavar="LIST", help="your own repo-list file instead of a built scenario")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds, e.g. 0,1,2 (default: --seed or 0)")
    parser.add_argument(
        "--methods",
        default=",".join(name for name, method in METHODS.items() if method.kind != "peer"),
        help=f"comma-separated, from: {', '.join(METHODS)} (default: all but the DFML peers purer, free and "
        "bidf-mkd, whose steps cost 8 to 100 times an ERM step: name them to run them). erm-replicate is ERM "
        f"meta-trained with another seed (train.seed = seed + {REPLICATE_SEED_OFFSET}) on the same "
        "pool, tasks and episodes: with erm, the report shows this noise floor (ERM - ERM)",
    )
    parser.add_argument(
        "--learner",
        choices=["protonet", "maml"],
        default=None,
        help="meta-training learner of every method, and its test-time adaptation (default: config)",
    )
    parser.add_argument("--reference", default="erm", help="the method the others are compared with (paired)")
    parser.add_argument("--out", default="runs/bench", help="the benchmark folder (reused: finished cells are skipped)")
    parser.add_argument(
        "--shard",
        default="0/1",
        metavar="I/N",
        help="run only the cells at grid positions I mod N (without it, processes sharing --out still share the cells)",
    )
    parser.add_argument("--merge", action="store_true", help="run nothing: write the report from the finished cells")
    add_data_args(parser)
    add_config_args(parser, default_preset="quick")
    parser.set_defaults(func=run)


def _ints(text: str, what: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated integers, got {text!r}", hint="e.g. 0,1,2") from None


def _shard(text: str) -> tuple[int, int]:
    parts = text.split("/")
    if len(parts) != 2:
        raise ConfigError(f"--shard must be I/N, got {text!r}", hint="e.g. --shard 0/2 and --shard 1/2")
    index, count = _ints(parts[0], "--shard"), _ints(parts[1], "--shard")
    if len(index) != 1 or len(count) != 1:
        raise ConfigError(f"--shard must be I/N, got {text!r}", hint="e.g. --shard 0/2 and --shard 1/2")
    return index[0], count[0]


def spec_from_args(args: argparse.Namespace):
    """The :class:`~tgr_hub.benchmark.BenchmarkSpec` the flags describe."""
    from tgr_hub.benchmark import BenchmarkSpec, Scenario, scenario_from_name, scenario_from_pool

    values = {"data": data_values(args), "train": {"learner": args.learner} if args.learner else {}}
    cfg = config_from_args(args, values)
    scenarios: tuple[Scenario, ...]
    if args.pool:
        scenarios = (scenario_from_pool(args.pool),)
    else:
        names = [n.strip() for n in (args.scenario or "multi-domain").split(",") if n.strip()]
        scenarios = tuple(scenario_from_name(n, cfg) for n in names)
    seeds = tuple(_ints(args.seeds, "--seeds")) if args.seeds else (cfg.seed,)
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    return BenchmarkSpec(cfg, scenarios, seeds, methods, reference=args.reference)


def run(args: argparse.Namespace) -> int:
    from tgr_hub.benchmark import run_benchmark, write_report

    spec = spec_from_args(args)
    out = Path(args.out)
    report = write_report(spec, out) if args.merge else run_benchmark(spec, out, shard=_shard(args.shard))
    say((out / "results.md").read_text())
    missing = report["missing_cells"]
    if missing:
        say(
            f"{len(missing)} cells not finished; rerun the same command "
            "(or wait for the other processes or shards, then --merge)"
        )
    say(f"report: {out / 'results.md'}, {out / 'results.json'}, {out / 'results.png'}")
    return 0
