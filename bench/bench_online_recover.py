"""Online recovery: a cold 200-step recovery against warm-started k-step recoveries, same teacher.

For each teacher of a pool (default: a small glyph pool built into ``--work`` on first use,
one conv4 and one resnet10t teacher), each recovering all of the teacher's classes:

- cold: ``--cold-reps`` recoveries, each from a newly initialised generator, ``--cold-steps``
  steps (reference 200), fresh latent codes and seed each time;
- warm k (k in ``--ks``): one teacher generator is burnt in by one cold recovery (its cost is
  reported as the "burn-in" row, paid once per teacher per run), then ``--warm-reps``
  recoveries of k steps each continue that generator *and its Adam state*
  (:class:`tgr_hub.recover.WarmGenerator`), each with fresh latent codes; every k starts from
  the same burnt-in state.
- meta k (k in ``--ks``): online recovery's ``meta`` start (:class:`tgr_hub.recover.MetaStart`):
  one meta-generator per input size, shared by the teachers, first trained at the burn-in's cost
  (``--cold-steps // k`` rounds, each a k-step recovery of every teacher from a copy, then the
  Reptile step), then ``--warm-reps`` k-step recoveries per teacher from copies of it.

Reported per row: seconds per recovery (median), the teacher's agreement with the intended
labels on the kept images (mean over recoveries), the BN loss and the feature diversity (mean
pairwise distance of the teacher's penultimate features), see :func:`tgr_hub.recover.recovery_quality`;
"speed-up" is the cold row's time over the row's. Target of the online-recovery issue: warm 5
steps reaches at least the cold agreement in at least 20x less time.

Run (prints a table, writes JSON):
    .venv/bin/python bench/bench_online_recover.py [--pool LIST] [--ipc 30] [--width 128] [--json out.json]
Defaults are the reference's (30 images per class, generator width 128, 200 cold steps,
BN weight 1); ``--preset-quick`` uses the quick preset's recovery settings instead.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from tgr_hub.config import RecoverConfig, load_config
from tgr_hub.pool import PoolMember, load_pool
from tgr_hub.recover import MetaStart, WarmGenerator, recover_task, recovery_quality
from tgr_hub.seeds import RECOVER_ONLINE, seed_sequence


def default_pool(work: Path) -> Path:
    """A 2-teacher glyph pool (conv4 + resnet10t, latin), built once into ``work``."""
    from tgr_hub.config import PoolBuildConfig
    from tgr_hub.teachers import make_pool

    out = work / "pool"
    if not (out / "repo-list.txt").is_file():
        make_pool(out, PoolBuildConfig(domains=["latin"], archs=["conv4", "resnet10t"], teachers=2, way=5, epochs=30),
                  seed=0, progress=False)
    return out / "repo-list.txt"


def one(member: PoolMember, cfg: RecoverConfig, seed: int, steps: int, warm: WarmGenerator | None) -> dict:
    classes = list(range(member.num_classes))
    start = time.perf_counter()
    task = recover_task(member, classes, cfg, seed=seed, warm=warm, steps=steps)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, **recovery_quality(member, task)}


def from_meta(
    meta: MetaStart, member: PoolMember, cfg: RecoverConfig, seed: int, steps: int
) -> tuple[dict, torch.Tensor]:
    """A k-step recovery from a copy of the meta-generator; its row and the copy's displacement."""
    adapted = meta.copy_for(member)
    start = time.perf_counter()
    task = recover_task(member, list(range(member.num_classes)), cfg, seed=seed, generator=adapted, steps=steps)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, **recovery_quality(member, task)}, meta.displacement(member, adapted)


def summarise(rows: list[dict]) -> dict:
    return {"seconds": statistics.median(r["seconds"] for r in rows),
            **{k: float(np.mean([r[k] for r in rows])) for k in ("agreement", "bn_loss", "diversity")},
            "recoveries": len(rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pool", help="repo-list of the teachers (default: build a 2-teacher glyph pool)")
    parser.add_argument("--work", default="runs/bench-online-recover", help="where the default pool is built")
    parser.add_argument("--teachers", type=int, default=2, help="first N teachers of the pool")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 5, 10, 20])
    parser.add_argument("--cold-steps", type=int, default=200)
    parser.add_argument("--cold-reps", type=int, default=2)
    parser.add_argument("--warm-reps", type=int, default=5)
    parser.add_argument("--ipc", type=int, default=None, help="images per class (default: the settings' own)")
    parser.add_argument("--width", type=int, default=None, help="generator width (default: the settings' own)")
    parser.add_argument("--preset-quick", action="store_true", help="the quick preset's recovery settings")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cfg = load_config(preset="quick" if args.preset_quick else "paper").recover
    overrides = {k: v for k, v in (("images_per_class", args.ipc), ("generator_width", args.width)) if v is not None}
    cfg = dataclasses.replace(cfg, **overrides)
    pool = Path(args.pool) if args.pool else default_pool(Path(args.work))
    members = load_pool(pool)[: args.teachers]

    results = []
    for t, member in enumerate(members):
        seed = lambda *key: int(seed_sequence(0, RECOVER_ONLINE, t, *key).generate_state(1)[0])  # noqa: E731
        cold = summarise([one(member, cfg, seed(0, r), args.cold_steps, None) for r in range(args.cold_reps)])
        results.append({"teacher": member.name, "arch": member.architecture, "mode": "cold", "steps": args.cold_steps,
                        **cold})
        burnt = WarmGenerator.fresh(member, cfg, seed(1, 0))
        burn = one(member, cfg, seed(1, 1), args.cold_steps, burnt)
        results.append({"teacher": member.name, "arch": member.architecture, "mode": "burn-in",
                        "steps": args.cold_steps, **summarise([burn])})
        for k in args.ks:
            warm = copy.deepcopy(burnt)
            rows = [one(member, cfg, seed(2, k, r), k, warm) for r in range(args.warm_reps)]
            results.append({"teacher": member.name, "arch": member.architecture, "mode": "warm", "steps": k,
                            **summarise(rows)})
        for row in results:
            if row["teacher"] == member.name:
                row["speedup_vs_cold"] = cold["seconds"] / row["seconds"]

    cold_seconds = {r["teacher"]: r["seconds"] for r in results if r["mode"] == "cold"}
    for k in args.ks:
        meta = MetaStart(members, cfg, seed=0)
        for r in range(max(1, args.cold_steps // k)):  # the burn-in's cost: cold_steps steps per teacher
            moves = []
            for t, member in enumerate(members):
                seed = int(seed_sequence(0, RECOVER_ONLINE, t, 3, k, r).generate_state(1)[0])
                moves.append((MetaStart.size_of(member), from_meta(meta, member, cfg, seed, k)[1]))
            meta.step(moves)
        for t, member in enumerate(members):
            rows = [from_meta(meta, member, cfg, int(seed_sequence(0, RECOVER_ONLINE, t, 4, k, r).generate_state(1)[0]),
                              k)[0] for r in range(args.warm_reps)]
            row = {"teacher": member.name, "arch": member.architecture, "mode": "meta", "steps": k, **summarise(rows)}
            results.append({**row, "speedup_vs_cold": cold_seconds[member.name] / row["seconds"]})

    print(f"images per class {cfg.images_per_class}, generator width {cfg.generator_width}, "
          f"bn_weight {cfg.bn_weight}, {args.threads} thread(s)")
    print(f"{'teacher':10} {'arch':10} {'mode':8} {'steps':>5} {'s/recovery':>10} {'speed-up':>8} "
          f"{'agreement':>9} {'bn loss':>8} {'diversity':>9}")
    for r in results:
        print(f"{r['teacher']:10} {r['arch']:10} {r['mode']:8} {r['steps']:5d} {r['seconds']:10.3f} "
              f"{r['speedup_vs_cold']:8.1f} {r['agreement']:9.3f} {r['bn_loss']:8.3f} {r['diversity']:9.3f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"settings": vars(args), "recover": vars(cfg), "rows": results},
                                              indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
