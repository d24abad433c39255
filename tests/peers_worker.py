"""Train every peer method at the smoke preset and record what it did, on every process.

Used by ``tests/test_distributed.py``: run once as ``python tests/peers_worker.py ...`` (one
process) and once under ``accelerate launch --num_processes 2``. For each peer, each process writes
``OUT/<peer>/rank<R>-of-<W>.json`` with the run's history, the method's own record and the SHA-256
digest of the final meta-model's state dict.

    python tests/peers_worker.py POOL_LIST OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tgr_hub.config import load_config
from tgr_hub.data import split_of
from tgr_hub.distributed import Distributed, make_accelerator, tensor_digest
from tgr_hub.peers import PEER_SECTIONS
from tgr_hub.peers.bidf import train_bidf_mkd
from tgr_hub.peers.free import train_free
from tgr_hub.peers.purer import train_purer
from tgr_hub.pool import load_pool

TRAINERS = {"purer": train_purer, "free": train_free, "bidf-mkd": train_bidf_mkd}


def main(pool: str, out: str) -> None:
    dist = Distributed(make_accelerator("no"))
    cfg = load_config(preset="smoke")
    members = load_pool(pool)
    for name, section in PEER_SECTIONS.items():
        result = TRAINERS[name](members, getattr(cfg, section), arch=cfg.train.arch, image_size=cfg.data.image_size,
                                val_split=split_of(cfg.data, "val"), seed=0, progress=False, dist=dist,
                                checkpoint_dir=Path(out) / name / f"checkpoints-{dist.world}")
        record = {"history": result.history, "extra": result.extra, "best_step": result.best_step,
                  "model": tensor_digest(result.model.state_dict())}
        folder = Path(out) / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"rank{dist.rank}-of-{dist.world}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(*sys.argv[1:])
