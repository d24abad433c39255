"""``tgr-hub quickstart``: the whole method on the built-in offline glyph benchmark.

Builds a heterogeneous glyph pool (3 domains × 2 architectures), trains TGR and the ERM
baseline (β = 0, one group) on the same recovered tasks, and prints a 5-way 1-/5-shot
meta-test table of Random, Average, ERM and TGR with 95% confidence intervals.

It is the benchmark's special case (:mod:`tgr_hub.benchmark`): one scenario (the config's
pool), one seed, four methods, all scored on the same episodes; ``results.json`` is the
benchmark's report (it also carries the paired differences from ERM).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .common import add_config_args, config_from_args, say


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "quickstart",
        help="build a glyph pool, train TGR and baselines, print the meta-test table (offline)",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    parser.add_argument("--out", default="runs/quickstart", help="folder for the pool, the runs and results.json")
    add_config_args(parser, default_preset="quick")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tgr_hub.benchmark import (
        CONFIG_SCENARIO,
        METHODS,
        QUICKSTART_METHODS,
        BenchmarkSpec,
        run_benchmark,
        scenario_from_name,
    )

    cfg = config_from_args(args)
    out = Path(args.out)
    started = time.perf_counter()
    spec = BenchmarkSpec(cfg, (scenario_from_name(CONFIG_SCENARIO, cfg),), (cfg.seed,), QUICKSTART_METHODS)
    report = run_benchmark(spec, out)
    total = time.perf_counter() - started

    scenario = report["scenarios"][CONFIG_SCENARIO]
    seed = str(cfg.seed)
    say("")
    say(
        f"{cfg.eval.way}-way meta-test accuracy on '{cfg.data.dataset}' ({cfg.eval.episodes} episodes, "
        f"{cfg.eval.query} queries/class, 95% CI)"
    )
    header = f"{'method':<8}" + "".join(f"{f'{shot}-shot':>18}" for shot in cfg.eval.shots)
    say(header)
    for name in QUICKSTART_METHODS:
        entry = scenario["methods"][name]
        cells = "".join(
            f"{100 * entry[f'{s}shot']['per_seed'][seed]['mean']:>10.2f} ± "
            f"{100 * entry[f'{s}shot']['per_seed'][seed]['ci95']:<5.2f}"
            for s in cfg.eval.shots
        )
        say(f"{METHODS[name].label:<8}{cells}")
    # the timings of this call's work (a resumed run's finished parts were timed when they ran)
    timings = dict(scenario["prepare"].get(seed, {}).get("timings_s", {}))
    for name in QUICKSTART_METHODS:
        spent = scenario["methods"][name]["timings_s"][seed]
        timings[name] = spent["train"] + spent["evaluate"]  # its pool preparation is counted above
    say(f"total time {total / 60:.1f} min (" + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + ")")
    say(f"paired differences from ERM on these episodes: {out / 'results.md'}")
    return 0
