"""How much conflict the IGR step's task gradients carry: ‖g_i − ḡ‖ / ‖ḡ‖ per task loss.

IGR regularises the spread of the m task gradients g_i around their mean ḡ. If that spread is
no larger for four tasks of four *different* teachers than for four tasks of *one* teacher,
there is no conflict between teachers to align, and IGR regularises sampling noise.

For each task loss (``train.igr_loss`` and ``train.distill_weight``), over ``--trials`` draws:

- ``4 teachers``: one pseudo-task from each of m distinct teachers;
- ``1 teacher``: m pseudo-tasks of one teacher (other images of the same classes);

and reports the mean over tasks of ‖g_i − ḡ‖ / ‖ḡ‖ (mean ± std over draws) and the ratio of the
two, at the meta-model's initialisation (or a trained meta-model, ``--meta-model``). Gradients
are with respect to the meta-model's parameters only (the shared head's own gradient is left out,
so every loss is measured on the same parameters).

Run (prints a table, writes JSON):
    .venv/bin/python bench/bench_task_conflict.py [--pool LIST] [--trials 20] [--json out.json]
Default pool: 8 conv4 teachers over the four glyph domains, built into ``--work`` on first use;
recovery: the quick preset's settings, ``--recoveries`` per teacher.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from tgr_hub.bank import MemoryBank
from tgr_hub.config import PoolBuildConfig, load_config
from tgr_hub.igr import task_gradients
from tgr_hub.learners import make_learner
from tgr_hub.metamodel import create_meta_model, load_meta_model
from tgr_hub.pool import load_pool
from tgr_hub.recover import recover_task, sample_task_classes
from tgr_hub.seeds import RECOVER, seed_sequence
from tgr_hub.train import HEAD_BIAS, HEAD_WEIGHT, _make_head, make_pseudo_task, pseudo_task_loss

LOSSES = {  # name: (igr_loss, distill_weight)
    "episodic + distill (w 1, T 4)": ("episodic", 1.0),
    "episodic, CE only": ("episodic", 0.0),
    "head, CE only": ("head", 0.0),
    "head + distill (w 1, T 4)": ("head", 1.0),
}


def default_pool(work: Path, teachers: int) -> Path:
    from tgr_hub.teachers import make_pool

    out = work / "pool"
    if not (out / "repo-list.txt").is_file():
        make_pool(out, PoolBuildConfig(domains=["latin", "greek", "cyrillic", "symbols"], archs=["conv4"],
                                       teachers=teachers, way=5, epochs=30), seed=0, progress=False)
    return out / "repo-list.txt"


def spread(grads: list[dict[str, torch.Tensor]], keys: list[str]) -> float:
    """Mean over tasks of ‖g_i − ḡ‖ / ‖ḡ‖, on the parameters ``keys``."""
    flat = torch.stack([torch.cat([g[k].flatten() for k in keys]) for g in grads]).double()  # [m, P]
    mean = flat.mean(0)
    return float((flat - mean).norm(dim=1).mean() / mean.norm())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pool", help="repo-list of the teachers (default: build an 8-teacher glyph pool)")
    parser.add_argument("--work", default="runs/bench-task-conflict")
    parser.add_argument("--teachers", type=int, default=8)
    parser.add_argument("--m", type=int, default=4, help="tasks per step")
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--recoveries", type=int, default=2, help="recoveries per teacher in the bank")
    parser.add_argument("--meta-model", default=None, help="a meta-model folder (default: conv4 at initialisation)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(preset="quick")

    pool = Path(args.pool) if args.pool else default_pool(Path(args.work), args.teachers)
    members = load_pool(pool)
    start = time.perf_counter()
    bank = MemoryBank(cfg.recover.bank_size)
    for t, member in enumerate(members):
        for r in range(args.recoveries):
            sequence = seed_sequence(0, RECOVER, t, r)
            classes = sample_task_classes(member, cfg.recover.max_way, np.random.default_rng(sequence.spawn(1)[0]))
            bank.add(recover_task(member, classes, cfg.recover, seed=int(sequence.generate_state(1)[0])))
    recover_s = time.perf_counter() - start

    if args.meta_model:
        model = load_meta_model(args.meta_model)
    else:
        model = create_meta_model(cfg.train.arch, cfg.data.image_size, seed=0)
    model.train()
    learner = make_learner(cfg.train.learner)
    head = _make_head(model.feature_dim, cfg.train.replay_way, seed=0)
    body = dict(model.named_parameters())
    params = {**body, HEAD_WEIGHT: head.weight, HEAD_BIAS: head.bias}
    keys = list(body)
    tc = cfg.train

    def grads_of(tasks, kind: str, weight: float) -> list[dict[str, torch.Tensor]]:
        fns = [lambda p, t=t: pseudo_task_loss(learner, model, t, p, kind=kind, distill_weight=weight,
                                               temperature=tc.distill_temperature) for t in tasks]
        return task_gradients(fns, params)[1]

    rows = []
    for name, (kind, weight) in LOSSES.items():
        values: dict[str, list[float]] = {"4 teachers": [], "1 teacher": []}
        for trial in range(args.trials):
            rng = np.random.default_rng([trial, 7])
            draw = lambda t, i: make_pseudo_task(members[t], bank, way=tc.replay_way, shot=tc.replay_shot,  # noqa: E731
                                                 query=tc.replay_query, temperature=tc.distill_temperature,
                                                 rng=np.random.default_rng([trial, t, i]))
            distinct = [int(t) for t in rng.choice(len(members), args.m, replace=False)]
            one = int(rng.integers(len(members)))
            values["4 teachers"].append(spread(grads_of([draw(t, 0) for t in distinct], kind, weight), keys))
            values["1 teacher"].append(spread(grads_of([draw(one, i) for i in range(args.m)], kind, weight), keys))
        row = {"loss": name, **{k: {"mean": float(np.mean(v)), "std": float(np.std(v))} for k, v in values.items()}}
        row["ratio"] = row["4 teachers"]["mean"] / row["1 teacher"]["mean"]
        rows.append(row)

    print(f"{len(members)} teachers, m = {args.m}, {args.trials} draws, recovery {recover_s:.0f} s, "
          f"{'meta-model ' + args.meta_model if args.meta_model else 'meta-model at initialisation'}")
    print(f"{'task loss':32} {'4 teachers':>16} {'1 teacher':>16} {'ratio':>6}")
    for r in rows:
        print(f"{r['loss']:32} {r['4 teachers']['mean']:8.3f} ± {r['4 teachers']['std']:5.3f} "
              f"{r['1 teacher']['mean']:8.3f} ± {r['1 teacher']['std']:5.3f} {r['ratio']:6.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
