"""Meta-train on a prepared run folder and record what every step did, on every process.

Used by ``tests/test_distributed.py``: run once as ``python tests/dist_worker.py ...`` (one
process) and once under ``accelerate launch --num_processes 2`` (two gloo processes on the CPU).
For each training variant, each process writes ``OUT/<variant>/rank<R>-of-<W>.json`` with, per
step, the SHA-256 digests of the IGR direction, the replay gradient and the whole state dict
(parameters and BatchNorm buffers) after the step, and the task losses; the main process also
writes the final state dict as ``OUT/<variant>/final-<W>.safetensors``.

    python tests/dist_worker.py POOL_LIST RUN_FOLDER OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from tgr_hub.config import load_config
from tgr_hub.data import load_split
from tgr_hub.distributed import Distributed, make_accelerator, tensor_digest
from tgr_hub.metamodel import create_meta_model
from tgr_hub.pipeline import load_generators, prepare_pool
from tgr_hub.train import StepInfo, meta_train

# Uneven shares on purpose: 3 tasks and 3 replay episodes over 2 processes (2 + 1 each).
COMMON = ["train.iterations=3", "train.teachers_per_step=3", "train.replay_batch=3", "train.eval_every=3",
          "train.val_episodes=3", "train.sync_check_every=1"]
# The smoke preset recovers online (warm, every step); "offline" is the up-front bank only.
VARIANTS = {
    "igr": [],
    "offline": ["recover.online_every=0"],
    "online-cold": ["recover.online_start=cold", "recover.online_every=2"],
    "online-meta": ["recover.online_start=meta", "recover.online_every=2"],
    "erm": ["train.beta=0"],
    "maml": ["train.learner=maml", "train.beta=0.01"],
    "second-order": ["train.igr_order=second", "train.beta=0.01", "train.replay=false"],
}


def main(pool: str, run: str, out: str) -> None:
    dist = Distributed(make_accelerator("no"))
    for name, overrides in VARIANTS.items():
        cfg = load_config(preset="smoke", overrides=COMMON + overrides)
        prepared = prepare_pool(pool, run, cfg, dist=dist, progress=False)
        val = load_split(cfg.data.dataset, "val", image_size=cfg.data.image_size, seed=cfg.data.seed)
        model = create_meta_model(cfg.train.arch, cfg.data.image_size, seed=cfg.seed)
        records: list[dict] = []

        def on_step(info: StepInfo) -> None:
            records.append({
                "step": info.step,
                "direction": tensor_digest(info.direction),
                "replay": tensor_digest(info.replay_direction) if info.replay_direction is not None else None,
                "state": tensor_digest(info.model.state_dict()),
                "task_losses": info.task_losses,
            })

        everyone = [list(range(len(prepared.members)))]  # one group: every step has 3 tasks
        result = meta_train(model, prepared.members, prepared.bank, everyone, cfg.train, val_split=val, seed=cfg.seed,
                            progress=False, dist=dist, on_step=on_step, recover=cfg.recover,
                            generators=load_generators(Path(run) / "recovered" / "bank.safetensors", prepared.members))
        records.append({"history": result.history})
        folder = Path(out) / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"rank{dist.rank}-of-{dist.world}.json").write_text(json.dumps(records, indent=1))
        if dist.is_main:
            save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                      str(folder / f"final-{dist.world}.safetensors"))
        dist.barrier()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(*sys.argv[1:4])
