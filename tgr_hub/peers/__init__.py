"""The data-free meta-learning methods tgr-hub compares TGR with, built from tgr-hub's own parts.

- :mod:`tgr_hub.peers.purer`: PURER (Hu et al., CVPR 2023): a learnable pixel memory instead of a
  generator, one inversion step per meta-iteration, MAML on tasks drawn from it, and a curriculum
  that makes those tasks harder.
- :mod:`tgr_hub.peers.bidf`: BiDf-MKD (Hu et al., ICML 2023), white-box: support and query sets from
  fresh generators, MAML with distillation in both loops, the query set pushed to the adapted
  student's boundary, and replay.
- :mod:`tgr_hub.peers.free`: FREE (Wei et al., CVPR 2024): a meta-generator adapted to each teacher
  in a few steps, sequential distillation with a Reptile step, and MAML replay from a memory.

:mod:`tgr_hub.peers.loop` holds what their runs share (meta-validation, checkpoints, the loop).

Each is written from its paper and a reading of the public code; where tgr-hub departs from that
code (a defect kept only as an option, a different parametrisation, selection on meta-validation),
its module says so. :func:`run_peer` is what ``tgr-hub benchmark`` calls for a ``peer`` method.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..config import RunConfig
    from .loop import PeerResult

__all__ = ["PEER_METHODS", "PEER_SECTIONS", "run_peer"]

#: the peer methods ``tgr-hub benchmark`` can run, each with its own config section
PEER_SECTIONS = {"purer": "purer", "free": "free", "bidf-mkd": "bidf_mkd"}
PEER_METHODS = tuple(PEER_SECTIONS)


def run_peer(
    name: str, repo_list: str | Path, run_dir: str | Path, cfg: RunConfig, *, seed: int, progress: bool = True
) -> PeerResult:
    """Meta-train peer method ``name`` on the pool ``repo_list`` with ``cfg`` (its own section, the
    meta-model's ``train.arch`` and ``data.image_size``, the ``data`` section's meta-validation
    split), checkpointing into ``run_dir`` and resuming from it. Meta-validation is a TGR run's
    (``train.val_*`` and ``train.learner``), so the peers choose their checkpoint as TGR does.

    Returns:
        The run: its meta-model in the state meta-validation chose (on the CPU), that choice
        (:meth:`PeerResult.val`) and the history (``val_acc``: the meta-val curve).
    """
    from ..data import split_of
    from ..evaluate import ValSettings
    from ..pool import load_pool
    from .bidf import train_bidf_mkd
    from .free import train_free
    from .purer import train_purer

    trainers: dict[str, Callable[..., PeerResult]] = {
        "purer": train_purer,
        "free": train_free,
        "bidf-mkd": train_bidf_mkd,
    }
    if name not in trainers:
        raise ValueError(f"unknown peer method {name!r}; one of {', '.join(PEER_METHODS)}")
    members = load_pool(repo_list)
    result = trainers[name](
        members,
        getattr(cfg, PEER_SECTIONS[name]),
        arch=cfg.train.arch,
        image_size=cfg.data.image_size,
        val_split=split_of(cfg.data, "val"),
        seed=seed,
        checkpoint_dir=Path(run_dir) / "checkpoints",
        resume=True,
        progress=progress,
        validation=ValSettings.of(cfg.train),  # a TGR cell's: every method selects the same way
    )
    result.model = result.model.cpu()
    return result
