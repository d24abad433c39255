"""Time of one meta-training iteration at equal work, with warm and cold online recovery.

One iteration = fresh recovery of m = 4 pseudo-tasks (one per chosen teacher) + the IGR step on
them + ``--replay`` (default 16) replay episodes from the bank, exactly as
:func:`tgr_hub.train.meta_train` runs it (one process). Rows:

- none:  ``recover.online_every = 0`` (tasks from the up-front bank): the IGR step + replay alone;
- warm k: every teacher continues its generator and Adam state (handed on from the up-front
  recovery, as the pipeline does), ``k`` steps per recovery (``--warm-steps``);
- cold K: a new generator per recovery, ``K`` steps (``--cold-steps``, reference 200).

Per-iteration time is the median over ``--iterations`` iterations (the wall time between two
consecutive steps' ``on_step`` callbacks; the first iteration is excluded; validation is
reduced to one episode). The pool (default: 4 glyph teachers, conv4 and resnet10t, built into
``--work`` on first use) is recovered up front once with the chosen settings.

Run (prints a table, writes JSON):
    .venv/bin/python bench/bench_online_iteration.py [--ipc 30] [--width 128] [--cold-steps 200] [--json out.json]
Defaults are the reference's recovery settings (30 images per class, generator width 128).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch

from tgr_hub.config import load_config
from tgr_hub.data import load_split
from tgr_hub.metamodel import create_meta_model
from tgr_hub.pool import load_pool
from tgr_hub.bank import MemoryBank
from tgr_hub.recover import recover_teachers
from tgr_hub.train import StepInfo, meta_train


def default_pool(work: Path) -> Path:
    """A 4-teacher glyph pool (conv4 + resnet10t on latin and greek), built once into ``work``."""
    from tgr_hub.config import PoolBuildConfig
    from tgr_hub.teachers import make_pool

    out = work / "pool4"
    if not (out / "repo-list.txt").is_file():
        make_pool(out, PoolBuildConfig(domains=["latin", "greek"], archs=["conv4", "resnet10t"], teachers=4, way=5,
                                       epochs=30), seed=0, progress=False)
    return out / "repo-list.txt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pool", help="repo-list of the teachers (default: build a 4-teacher glyph pool)")
    parser.add_argument("--work", default="runs/bench-online-recover")
    parser.add_argument("--teachers", type=int, default=None, help="first N teachers of the pool (default: all)")
    parser.add_argument("--warm-steps", type=int, nargs="+", default=[5])
    parser.add_argument("--cold-steps", type=int, nargs="+", default=[200])
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations per row (after a first one)")
    parser.add_argument("--replay", type=int, default=16, help="replay episodes per iteration")
    parser.add_argument("--ipc", type=int, default=None, help="images per class (default: the settings' own)")
    parser.add_argument("--width", type=int, default=None, help="generator width (default: the settings' own)")
    parser.add_argument("--preset-quick", action="store_true", help="the quick preset's recovery settings")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    run = load_config(preset="quick" if args.preset_quick else "paper",
                      overrides=["train.learner=protonet", "train.teachers_per_step=4", f"train.replay_batch={args.replay}",
                                 "train.eval_every=100000", "train.val_episodes=1"])
    overrides = {k: v for k, v in (("images_per_class", args.ipc), ("generator_width", args.width)) if v is not None}
    recover = dataclasses.replace(run.recover, **overrides)
    members = load_pool(Path(args.pool) if args.pool else default_pool(Path(args.work)))[: args.teachers]
    # the up-front recovery (warm-startable generators, as the pipeline runs it for warm online recovery)
    bank, warm = MemoryBank(recover.bank_size), {}
    start = time.perf_counter()
    recover_teachers(members, recover, bank, seed=0, warm=warm)
    upfront = time.perf_counter() - start
    generators = {i: warm[m.name].state_tensors() for i, m in enumerate(members)}
    val = load_split(run.data.dataset, "val", image_size=run.data.image_size, seed=run.data.seed)
    everyone = [list(range(len(members)))]

    rows = []
    plans = [("none", 0, None)] + [("warm", k, "warm") for k in args.warm_steps] + [("cold", k, "cold")
                                                                                   for k in args.cold_steps]
    for mode, steps, start_kind in plans:
        cfg = dataclasses.replace(recover, online_every=0 if start_kind is None else 1,
                                  online_start=start_kind or "warm", online_steps=max(1, steps))
        train = dataclasses.replace(run.train, iterations=args.iterations + 1)
        stamps: list[float] = []

        def on_step(info: StepInfo) -> None:
            stamps.append(time.perf_counter())

        model = create_meta_model(train.arch, run.data.image_size, seed=0)
        meta_train(model, members, bank, everyone, train, val_split=val, seed=0, progress=False, on_step=on_step,
                   recover=cfg, generators={i: dict(g) for i, g in generators.items()} if start_kind == "warm" else None)
        per_iteration = [b - a for a, b in zip(stamps, stamps[1:])]
        rows.append({"mode": mode, "recovery_steps": steps, "seconds_per_iteration": statistics.median(per_iteration),
                     "iterations_timed": len(per_iteration), "all_seconds": per_iteration})

    print(f"m = 4 fresh tasks + IGR step + {args.replay} replay episodes; images per class {recover.images_per_class}, "
          f"generator width {recover.generator_width}; {len(members)} teachers; {args.threads} thread(s); "
          f"up-front recovery {upfront:.1f} s ({recover.steps} steps per teacher)")
    print(f"{'mode':6} {'steps':>5} {'s/iteration':>11} {'vs none':>8}")
    base = rows[0]["seconds_per_iteration"]
    for r in rows:
        print(f"{r['mode']:6} {r['recovery_steps']:5d} {r['seconds_per_iteration']:11.2f} "
              f"{r['seconds_per_iteration'] / base:8.1f}x")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"settings": vars(args), "recover": dataclasses.asdict(recover),
                                               "upfront_seconds": upfront, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
