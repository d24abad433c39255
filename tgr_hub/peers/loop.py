"""What every peer method's run shares: the meta-model, meta-validation, checkpoints and the loop.

A peer's trainer subclasses :class:`PeerTrainer` and writes :meth:`PeerTrainer.outer_step` (its
method) and, for what it keeps beside the meta-model (a pixel memory, a meta-generator, a bank),
the three checkpoint hooks. :func:`train_peer` drives it: outer steps, meta-validation every
``eval_every`` steps (the best state is kept), checkpoints every ``checkpoint_every`` steps, and an
exact resume from the newest checkpoint. Meta-validation is :func:`tgr_hub.evaluate.meta_validate`,
as in a TGR run; the benchmark gives the peers a TGR cell's settings, so every method chooses its
checkpoint on the same episodes, adapted to the same way as at meta-test.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from ..bank import MemoryBank
from ..config import changed_settings
from ..data import ImageSplit
from ..distributed import (
    TRAINER_STATE,
    Distributed,
    clean_checkpoint_leftovers,
    latest_checkpoint,
    load_checkpoint,
    make_accelerator,
    save_checkpoint,
)
from ..errors import ConfigError, RecoverError, RunFolderError
from ..evaluate import ValSettings, chosen_validation, meta_validate
from ..io import save_safetensors_atomic, write_json_atomic
from ..learners import MAML
from ..metamodel import MetaModel, create_meta_model
from ..pool import PoolMember
from ..progress import progress_bar
from ..seeds import val_seed

__all__ = ["PeerResult", "PeerTrainer", "default_validation", "train_peer"]

logger = logging.getLogger(__name__)

_STATE, _BEST = TRAINER_STATE, "best_model.safetensors"  # a checkpoint is complete once its state file is in


@dataclass
class PeerResult:
    """A peer's run: the meta-model in its best state (on meta-validation) and what happened.

    ``extra`` holds the method's own record (PURER: the curriculum's steps); ``selection_noise``
    the standard error over episodes of the last meta-validation's accuracy."""

    model: MetaModel
    best_step: int
    best_val_accuracy: float
    history: dict[str, list[tuple[int, float]]]
    resumed_from: int
    extra: dict[str, Any]
    selection_noise: float = float("nan")

    def val(self) -> dict[str, float | int]:
        """The chosen step, its meta-validation accuracy (the mean it was chosen on, and each shot's)
        and the selection noise, as a TGR run records them."""
        return chosen_validation(self.history, self.best_step, self.best_val_accuracy, self.selection_noise)


class PeerTrainer:
    """The state every peer's run has: the teachers, the meta-model (prepared by Accelerate), its best
    state on meta-validation and the history.

    Subclasses set ``name`` (for logs and errors) and ``section`` (their config section, whose
    settings a checkpoint records), build their own parts in :meth:`setup`, and write
    :meth:`outer_step`. ``cfg`` must have ``way``, ``inner_lr``, ``val_episodes``,
    ``val_inner_steps``, ``iterations``, ``eval_every`` and ``checkpoint_every``; ``validation``
    (default: :func:`default_validation` of ``cfg``) is how meta-validation scores a state.
    """

    name = "peer"
    section = "peer"
    learner: MAML  # the replaying trainers' (FREE, BiDf-MKD), for :meth:`replay_episode`
    bank: MemoryBank

    def __init__(
        self,
        members: Sequence[PoolMember],
        cfg: Any,
        *,
        arch: str,
        image_size: int,
        val_split: ImageSplit,
        seed: int,
        dist: Distributed,
        validation: ValSettings | None = None,
    ) -> None:
        self.members = list(members)
        if not self.members:
            raise RecoverError(f"{self.name} needs at least one teacher")
        for member in self.members:
            member.to(dist.device)
        self.cfg, self.val_split, self.seed, self.dist = cfg, val_split, int(seed), dist
        self.validation = validation or default_validation(cfg)
        self.val_std_error = float("nan")
        self.image_size = int(image_size)
        model = self.initial_model(arch, self.image_size)
        self.model = dist.accelerator.prepare_model(model, evaluation_mode=True)
        self.history: dict[str, list[tuple[int, float]]] = {"val_acc": []}
        self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.best_step, self.best_acc = 0, -math.inf
        self.setup()

    def initial_model(self, arch: str, image_size: int) -> MetaModel:
        """The meta-model's start: a fresh one from the run's seed."""
        return create_meta_model(arch, image_size, seed=self.seed)

    def setup(self) -> None:
        """Build the method's own parts (optimisers, memory, generators) once the model is prepared."""

    # --- the method ---

    def outer_step(self, step: int) -> dict[str, float]:
        """One outer step (0-based); returns the values to record in the history at ``step + 1``."""
        raise NotImplementedError

    def extra(self) -> dict[str, Any]:
        """The method's own record for :attr:`PeerResult.extra`."""
        return {}

    # --- checkpoint hooks: what the method keeps beside the meta-model ---

    def save_files(self, folder: Path) -> None:
        """Write what the method keeps beside the meta-model into ``folder`` (safetensors, no pickle)."""

    def state(self) -> dict[str, Any]:
        """JSON-able counters to save."""
        return {}

    def load_state(self, folder: Path, state: dict[str, Any]) -> None:
        """Restore what :meth:`save_files` wrote into ``folder`` and :meth:`state` returned."""

    def replay_episode(self, rng: np.random.Generator) -> tuple[torch.Tensor, float]:
        """One replay task (FREE, BiDf-MKD: trainers with a ``learner`` and a ``bank``): an episode of
        ``cfg.way`` classes of any teacher drawn from the bank, and the learner's query cross-entropy
        on it, differentiable into the meta-model, with its query accuracy."""
        cfg = self.cfg
        task = self.bank.sample_episode(cfg.way, cfg.shot, cfg.query, rng, self.image_size).to(self.dist.device)
        logits = self.learner.logits(self.model, task.support_x, task.support_y, task.query_x)
        return F.cross_entropy(logits, task.query_y), float((logits.argmax(1) == task.query_y).float().mean())

    # --- shared ---

    def validate(self, step: int) -> None:
        """Meta-validation on real images (:attr:`validation`); the best state is kept."""
        score = meta_validate(self.model, self.val_split, self.validation, seed=val_seed(self.seed), dist=self.dist)
        accuracy, self.val_std_error = score.accuracy, score.std_error
        score.record(self.history, step)
        if accuracy > self.best_acc:
            self.best_acc, self.best_step = accuracy, step
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        logger.info(
            "%s step %d: meta-val accuracy %.2f%% ± %.2f (best %.2f%% at step %d)",
            self.name,
            step,
            100 * accuracy,
            100 * self.val_std_error,
            100 * self.best_acc,
            self.best_step,
        )

    def checkpoint(self, folder: Path, step: int) -> None:
        """The models and optimisers through Accelerate; the method's files, the best state and the
        counters beside them."""

        def write(tmp: Path) -> None:
            self.save_files(tmp)
            save_safetensors_atomic(tmp / _BEST, self.best_state)
            record = {
                "format": f"tgr-hub-{self.section}-state",
                "version": 1,
                "step": step,
                "seed": self.seed,
                "settings": json.loads(json.dumps(asdict(self.cfg))),
                "validation": _as_json(self.validation),
                "best_step": self.best_step,
                "best_val_accuracy": self.best_acc,
                "val_std_error": self.val_std_error,
                "history": self.history,
                "method": self.state(),
            }
            write_json_atomic(tmp / _STATE, record)

        save_checkpoint(self.dist, folder, step, write, keep=2)

    def restore(self, folder: Path) -> int:
        """Continue from the newest checkpoint in ``folder``, if any; returns the outer step to start at."""
        if self.dist.is_main:
            clean_checkpoint_leftovers(folder)
        self.dist.barrier()
        found = latest_checkpoint(folder)
        if found is None:
            return 0
        record = json.loads((found / _STATE).read_text())
        changed = changed_settings(
            {self.section: record.get("settings", {})}, {self.section: asdict(self.cfg)}, "checkpoint"
        )
        if record.get("validation") != _as_json(self.validation):  # a history compares like with like only
            changed["meta-validation"] = (record.get("validation"), _as_json(self.validation))
        if record.get("format") != f"tgr-hub-{self.section}-state" or record.get("seed") != self.seed or changed:
            raise ConfigError(
                f"the checkpoint {found} was made with other settings ({', '.join(changed) or 'method or seed'})",
                hint="resume with the settings it was made with, or delete the folder to start over",
            )
        load_checkpoint(self.dist, found)
        self.load_state(found, record["method"])
        self.best_state = load_file(str(found / _BEST), device=str(self.dist.device))
        self.best_step, self.best_acc = int(record["best_step"]), float(record["best_val_accuracy"])
        self.history = {k: [(int(s), float(v)) for s, v in values] for k, values in record["history"].items()}
        self.val_std_error = float(record.get("val_std_error", math.nan))
        logger.info(
            "resuming %s from %s (outer step %d of %d)", self.name, found.name, record["step"], self.cfg.iterations
        )
        return int(record["step"])


def default_validation(cfg: Any) -> ValSettings:
    """A peer's own meta-validation when it runs outside the benchmark: ``cfg.val_episodes`` 5-way
    episodes of 1 and 5 shots, 15 queries, adapted to by fine-tuning (``cfg.val_inner_steps`` steps
    at ``cfg.inner_lr``), as the peers' public code validates."""
    return ValSettings(
        way=cfg.way,
        shots=(1, 5),
        query=15,
        episodes=cfg.val_episodes,
        learner="finetune",
        inner_steps=cfg.val_inner_steps,
        inner_lr=cfg.inner_lr,
    )


def _as_json(settings: ValSettings) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(settings)))


def train_peer(
    trainer_class: type[PeerTrainer],
    members: Sequence[PoolMember],
    cfg: Any,
    *,
    arch: str,
    image_size: int,
    val_split: ImageSplit,
    seed: int,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    dist: Distributed | None = None,
    validation: ValSettings | None = None,
) -> PeerResult:
    """Meta-train a meta-model with the peer ``trainer_class`` on ``members`` for ``cfg.iterations``
    outer steps and return it in the state meta-validation chose.

    Args:
        members: the teachers (any architectures and input sizes).
        cfg: the method's settings (its config section).
        arch, image_size: the meta-model.
        val_split: real meta-validation images; the best state on them is returned.
        validation: how meta-validation scores a state (default: :func:`default_validation`).
        seed: every draw of the run and the meta-model's start.
        checkpoint_dir: where ``cfg.checkpoint_every`` checkpoints go; ``resume`` continues the newest.
        dist: the processes (default: this one).

    Raises:
        ConfigError: checkpoints without a folder, or a checkpoint made with other settings.
        RunFolderError: checkpoints exist and ``resume`` is False.
    """
    dist = dist or Distributed(make_accelerator("no"))
    trainer = trainer_class(
        members, cfg, arch=arch, image_size=image_size, val_split=val_split, seed=seed, dist=dist, validation=validation
    )
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if cfg.checkpoint_every > 0 and folder is None:
        raise ConfigError(f"{trainer.name}'s checkpoint_every needs a checkpoint folder", hint="pass checkpoint_dir")
    start = 0
    if folder is not None:
        if not resume and latest_checkpoint(folder) is not None:
            raise RunFolderError(
                f"{folder} holds checkpoints of an earlier {trainer.name} run",
                hint="pass resume=True to continue it, or delete that folder to start over",
            )
        start = trainer.restore(folder) if resume else 0
    if start == 0:
        trainer.validate(0)
    bar = progress_bar(
        range(start, cfg.iterations),
        desc=trainer.name,
        disable=not (progress and dist.is_main),
        initial=start,
        total=cfg.iterations,
    )
    for step in bar:
        done = step + 1
        values = trainer.outer_step(step)
        for key, value in values.items():
            trainer.history.setdefault(key, []).append((done, value))
        bar.set_postfix(
            {k: f"{v:.3f}" for k, v in list(values.items())[:2]}
            | {"best_val": f"{100 * max(trainer.best_acc, 0):.1f}%"}
        )
        if done % cfg.eval_every == 0 or done == cfg.iterations:
            trainer.validate(done)
        if (
            folder is not None
            and cfg.checkpoint_every > 0
            and (done % cfg.checkpoint_every == 0 or done == cfg.iterations)
        ):
            trainer.checkpoint(folder, done)
    bar.close()
    trainer.model.load_state_dict(trainer.best_state)
    return PeerResult(
        trainer.model,
        trainer.best_step,
        trainer.best_acc,
        trainer.history,
        resumed_from=start,
        extra=trainer.extra(),
        selection_noise=trainer.val_std_error,
    )
