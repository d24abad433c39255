"""``tgr-hub quickstart``: the whole method on the built-in offline glyph benchmark.

Builds a heterogeneous glyph pool (3 domains × 2 architectures), trains TGR and the ERM
baseline (β = 0, one group) on the same recovered tasks, and prints a 5-way 1-/5-shot
meta-test table of Random, Average, ERM and TGR with 95% confidence intervals.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import time
from pathlib import Path

from tgr_hub.cli.common import add_config_args, config_from_args, say, write_json


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
    from accelerate import PartialState

    from tgr_hub.data import load_split
    from tgr_hub.evaluate import average_baseline, eval_settings, evaluate_model, random_baseline
    from tgr_hub.pipeline import run_tgr
    from tgr_hub.pool import load_pool
    from tgr_hub.teachers import make_pool

    cfg = config_from_args(args)
    out = Path(args.out)
    started = time.perf_counter()
    timings: dict[str, float] = {}

    start = time.perf_counter()
    pool = cfg.pool
    # Accelerate's device (a GPU when one is visible), the one the TGR and ERM runs use too.
    device = PartialState().device
    make_pool(out / "pool", dataset=cfg.data.dataset, domains=pool.domains, archs=pool.archs, teachers=pool.teachers,
              way=pool.way, epochs=pool.epochs, seed=cfg.seed, batch_size=pool.batch_size, lr=pool.lr,
              data_seed=cfg.data.seed, cache_dir=cfg.data.cache_dir, device=device)
    timings["make-pool"] = time.perf_counter() - start
    repo_list = out / "pool" / "repo-list.txt"

    start = time.perf_counter()
    tgr = run_tgr(repo_list, out / "tgr", cfg)
    timings["tgr"] = time.perf_counter() - start

    # ERM: β = 0 and no grouping, on the very same recovered tasks.
    start = time.perf_counter()
    erm_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, beta=0.0),
                                  group=dataclasses.replace(cfg.group, strategy="none"))
    erm_dir = out / "erm"
    erm_dir.mkdir(parents=True, exist_ok=True)
    for name in ("recovered", "embeddings.safetensors"):
        source, target = out / "tgr" / name, erm_dir / name
        if source.exists() and not target.exists():
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, target)
    erm = run_tgr(repo_list, erm_dir, erm_cfg)
    timings["erm"] = time.perf_counter() - start

    start = time.perf_counter()
    test = load_split(cfg.data.dataset, cfg.eval.split, image_size=cfg.data.image_size, seed=cfg.data.seed,
                      cache_dir=cfg.data.cache_dir)
    eval_kwargs = dict(seed=cfg.seed, **eval_settings(cfg.eval, cfg.train.learner))  # as run_tgr's final test
    # The baselines run where the runs ran (Accelerate's device: the GPU on a GPU machine), not on the CPU.
    rows = {
        "Random": evaluate_model(random_baseline(cfg.train.arch, cfg.data.image_size, seed=cfg.seed).to(device), test,
                                 **eval_kwargs),
        "Average": evaluate_model(average_baseline(load_pool(repo_list)).to(device), test, **eval_kwargs),
        "ERM": erm.metrics[cfg.eval.split],
        "TGR": tgr.metrics[cfg.eval.split],
    }
    timings["baselines"] = time.perf_counter() - start
    timings["total"] = time.perf_counter() - started

    say("")
    say(f"{cfg.eval.way}-way meta-test accuracy on '{cfg.data.dataset}' ({cfg.eval.episodes} episodes, "
        f"{cfg.eval.query} queries/class, 95% CI)")
    header = f"{'method':<8}" + "".join(f"{f'{shot}-shot':>18}" for shot in cfg.eval.shots)
    say(header)
    for method, metrics in rows.items():
        cells = "".join(f"{100 * metrics[f'{s}shot']['mean']:>10.2f} ± {100 * metrics[f'{s}shot']['ci95']:<5.2f}"
                        for s in cfg.eval.shots)
        say(f"{method:<8}{cells}")
    say(f"total time {timings['total'] / 60:.1f} min (" + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()
                                                             if k != "total") + ")")
    write_json(out / "results.json", {"table": rows, "timings_s": timings, "device": str(device),
                                      "config": cfg.to_dict()})
    return 0
