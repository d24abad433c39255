"""Time of one meta-training iteration of ERM, TGR and the peers (PURER, FREE, BiDf-MKD) on the same
teachers (one process).

- ERM / TGR: one :func:`tgr_hub.train.meta_train` step of the chosen preset (m tasks drawn from one
  group of all the teachers, online recovery as the preset sets it, IGR with β = ``train.beta`` for
  TGR and β = 0 for ERM, then replay): the wall time between two consecutive ``on_step`` callbacks.
- PURER: one outer step of :func:`tgr_hub.peers.purer.train_purer` with the preset's ``purer``
  section (a data step on the pixel memory of all the teachers' classes, then MAML on
  ``purer.episode_batch`` tasks drawn from it).
- FREE: one outer step after the warm-up of :func:`tgr_hub.peers.free.train_free` (``free.teachers_per_step``
  fast recoveries of ``free.adapt_steps`` steps, the sequential distillation, the replay loop until
  it stalls, at most ``free.replay_max_batches`` batches).
- BiDf-MKD: two kinds of outer step of :func:`tgr_hub.peers.bidf.train_bidf_mkd`: one with a
  distillation task (support and query recovered by fresh generators of ``bidf_mkd.recover_steps``
  steps, the inner loop, then replay tasks filling the batch) and one of replay only. How often the
  first kind comes depends on the trigger (``bidf_mkd.recover_patience``).

Medians over ``--iterations`` iterations after a first, untimed one; validation is left out.

Run (prints a table, writes JSON):
    .venv/bin/python bench/bench_peers.py [--preset quick] [--iterations 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from bench_online_iteration import default_pool

from tgr_hub.bank import MemoryBank
from tgr_hub.config import load_config
from tgr_hub.data import load_split
from tgr_hub.distributed import Distributed, make_accelerator
from tgr_hub.metamodel import create_meta_model
from tgr_hub.peers.bidf import _BidfTrainer
from tgr_hub.peers.free import _FreeTrainer
from tgr_hub.peers.loop import PeerTrainer
from tgr_hub.peers.purer import _PurerTrainer
from tgr_hub.pool import load_pool
from tgr_hub.recover import recover_teachers
from tgr_hub.train import StepInfo, meta_train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pool", help="repo-list of the teachers (default: build a 4-teacher glyph pool)")
    parser.add_argument("--work", default="runs/bench-online-recover")
    parser.add_argument("--preset", default="quick", choices=["smoke", "quick", "paper"])
    parser.add_argument("--iterations", type=int, default=5, help="timed iterations per method (after a first one)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    run = load_config(preset=args.preset, overrides=["train.eval_every=100000", "train.val_episodes=1"])
    members = load_pool(Path(args.pool) if args.pool else default_pool(Path(args.work)))
    val = load_split(run.data.dataset, "val", image_size=run.data.image_size, seed=run.data.seed)
    rows = []

    # ERM and TGR: the preset's step on one group of every teacher, from a bank recovered up front
    bank, warm = MemoryBank(run.recover.bank_size), {}
    recover_teachers(members, run.recover, bank, seed=0, warm=warm)
    generators = {i: warm[m.name].state_tensors() for i, m in enumerate(members)}
    for name, beta in (("erm", 0.0), ("tgr", run.train.beta)):
        train = dataclasses.replace(run.train, iterations=args.iterations + 1, beta=beta)
        stamps: list[float] = []

        def on_step(info: StepInfo, stamps: list[float] = stamps) -> None:
            stamps.append(time.perf_counter())

        meta_train(create_meta_model(train.arch, run.data.image_size, seed=0), members, bank,
                   [list(range(len(members)))], train, val_split=val, seed=0, progress=False, on_step=on_step,
                   recover=run.recover, generators={i: dict(g) for i, g in generators.items()})
        seconds = [b - a for a, b in zip(stamps, stamps[1:])]
        rows.append({"method": name, "seconds_per_iteration": statistics.median(seconds), "all_seconds": seconds})

    # the peers: their outer steps, from their own starts (no recovered tasks)
    dist = Distributed(make_accelerator("no"))
    common = {"arch": run.train.arch, "image_size": run.data.image_size, "val_split": val, "seed": 0, "dist": dist}

    def time_steps(trainer: PeerTrainer, before: Callable[[PeerTrainer], None] | None = None) -> list[float]:
        seconds = []
        for step in range(args.iterations + 1):
            if before is not None:
                before(trainer)
            start = time.perf_counter()
            trainer.outer_step(step)
            seconds.append(time.perf_counter() - start)
        return seconds[1:]  # the first is untimed

    def due(trainer: PeerTrainer) -> None:
        trainer.recover_due = True  # type: ignore[attr-defined]

    def not_due(trainer: PeerTrainer) -> None:
        trainer.recover_due = False  # type: ignore[attr-defined]

    purer = dataclasses.replace(run.purer, curriculum_start=0)
    free = dataclasses.replace(run.free, warmup=0)
    bidf = _BidfTrainer(members, run.bidf_mkd, **common)
    for name, seconds in (
        ("purer", time_steps(_PurerTrainer(members, purer, **common))),
        ("free", time_steps(_FreeTrainer(members, free, **common))),
        ("bidf-mkd, recovering", time_steps(bidf, due)),
        ("bidf-mkd, replay", time_steps(bidf, not_due)),
    ):
        rows.append({"method": name, "seconds_per_iteration": statistics.median(seconds), "all_seconds": seconds})

    print(f"{len(members)} teachers; preset {args.preset}; {args.threads} thread(s); ERM/TGR: "
          f"{run.train.teachers_per_step} tasks per step, online recovery every {run.recover.online_every} "
          f"step(s); PURER: {purer.episode_batch} tasks of {purer.way}-way {purer.shot}/{purer.query}, "
          f"{purer.inner_steps} inner steps, {purer.per_class} images per class; FREE: {free.teachers_per_step} "
          f"teachers x {free.adapt_steps} adaptation steps, replay batches of {free.episode_batch} (at most "
          f"{free.replay_max_batches}); BiDf-MKD: {run.bidf_mkd.recover_steps} recovery steps per set, "
          f"{run.bidf_mkd.kd_inner_steps} distillation inner steps, batches of {run.bidf_mkd.episode_batch}")
    print(f"{'method':22} {'s/iteration':>11} {'vs erm':>7}")
    base = rows[0]["seconds_per_iteration"]
    for r in rows:
        print(f"{r['method']:22} {r['seconds_per_iteration']:11.2f} {r['seconds_per_iteration'] / base:7.1f}x")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
