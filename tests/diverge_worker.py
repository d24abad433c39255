"""Meta-train on a prepared run folder where one rank perturbs its own model: the ranks must notice.

Used by ``tests/test_distributed.py`` under ``accelerate launch --num_processes 2`` (two gloo
processes on the CPU), with ``train.sync_check_every=1``. After step 1, rank 1 (only) nudges
one weight of its meta-model (its first tensor's largest) by one ulp, as a silent bug or a flipped bit would. Each rank
prints ``rank R: finished`` or ``rank R: RankDivergenceError: <message>`` (then exits with 3).

    python tests/diverge_worker.py POOL_LIST RUN_FOLDER
"""

from __future__ import annotations

import sys

import torch

from tgr_hub.config import load_config
from tgr_hub.data import load_split
from tgr_hub.distributed import Distributed, RankDivergenceError, make_accelerator
from tgr_hub.metamodel import create_meta_model
from tgr_hub.pipeline import prepare_pool
from tgr_hub.train import StepInfo, meta_train


def main(pool: str, run: str) -> int:
    dist = Distributed(make_accelerator("no"))
    cfg = load_config(preset="smoke", overrides=["train.iterations=3", "train.sync_check_every=1",
                                                 "train.eval_every=3", "train.val_episodes=2"])
    prepared = prepare_pool(pool, run, cfg, dist=dist, progress=False)
    val = load_split(cfg.data.dataset, "val", image_size=cfg.data.image_size, seed=cfg.data.seed)
    model = create_meta_model(cfg.train.arch, cfg.data.image_size, seed=cfg.seed)

    def on_step(info: StepInfo) -> None:
        if info.step == 1 and dist.rank == 1:
            with torch.no_grad():
                # the largest weight: Adam's next update (~lr) keeps it in its binade, so the ulp survives the
                # update exactly; a weight near a power of two could round the nudge away and hide the bug
                weight = next(info.model.parameters()).view(-1)
                i = int(weight.abs().argmax())
                weight[i] = torch.nextafter(weight[i], torch.tensor(float("inf"), dtype=weight.dtype))

    try:
        meta_train(model, prepared.members, prepared.bank, prepared.groups, cfg.train, val_split=val, seed=cfg.seed,
                   progress=False, dist=dist, on_step=on_step)
    except RankDivergenceError as error:
        # one write per line: print() writes the text and the newline apart, and the two ranks share
        # one pipe, so their lines could run together (seen once in the full suite)
        sys.stdout.write(f"rank {dist.rank}: RankDivergenceError: {error}\n")
        sys.stdout.flush()
        return 3
    sys.stdout.write(f"rank {dist.rank}: finished\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    sys.exit(main(*sys.argv[1:3]))
