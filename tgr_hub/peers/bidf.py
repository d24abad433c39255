"""BiDf-MKD (Hu et al., ICML 2023), white-box: recover a teacher's support and query sets with fresh
generators, meta-learn with knowledge distillation in both MAML loops, the query set pushed towards
the adapted student's decision boundary, and replay tasks mixing teachers in between.

Each outer step is a batch of ``episode_batch`` tasks whose losses are summed into one Adam step:

- **A distillation task**, first in the batch when a recovery is due. One teacher (drawn with
  replacement) and its classes; a fresh generator recovers the support set (``recover_steps`` Adam
  steps, CE on augmented images, ``images_per_class`` per class); MAML adapts the meta-model to it
  with ``kd_inner_steps`` SGD steps on :func:`~tgr_hub.peers.inversion.distill_loss` against the
  teacher; a second fresh generator recovers the query set, adding the boundary term
  (:func:`~tgr_hub.peers.inversion.adversarial_loss`) against that adapted student once
  ``adversarial_start`` outer steps have passed; the task's loss is the adapted student's
  distillation loss on the query set, differentiated through the inner loop. Both sets go into
  the memory bank.
- **Replay tasks** fill the batch: episodes drawn from the bank (classes of any teacher seen so
  far) with MAML's query cross-entropy.

A recovery is due at the first step, and again whenever the batch's training accuracy has not
beaten its best since the last recovery for ``recover_patience`` outer steps.

Where tgr-hub differs from the public code, and why:

- The KL terms take log-probabilities (a proper KL); ``kl_on_probabilities=True`` reproduces the
  public code's ``kl_div`` on probabilities.
- Each image of a set gets its own crop and flip (the public code draws one for the whole batch),
  drawn once and kept for the task's inner steps, as there.
- A recovery keeps the images of its last step (the public code keeps its lowest-loss step's).
- The MAML head starts at zero for every task, as for tgr-hub's MAML learner (the public code
  meta-learns a head).
- The best state is chosen on meta-validation (the public code chose on meta-test).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..bank import MemoryBank, RecoveredTask
from ..config import BidfMkdConfig
from ..learners import MAML, _features_eval
from ..models.generator import Generator
from ..pool import PoolMember
from ..recover import crop_padding_for, frozen, random_crop_flip, sample_task_classes
from ..seeds import PEERS, numpy_rng, seed_int, seed_sequence, torch_generator, torch_seed
from .inversion import distill_loss, invert, resized
from .loop import PeerResult, PeerTrainer, train_peer

__all__ = ["train_bidf_mkd"]

#: the kinds of draw of a BiDf-MKD run in the ``PEERS`` stream (PURER's 0-2, FREE's 10-15)
BIDF_TEACHER, BIDF_SUPPORT, BIDF_QUERY, BIDF_AUGMENT, BIDF_REPLAY = 20, 21, 22, 23, 24


class _BidfTrainer(PeerTrainer):
    """A BiDf-MKD run's state beyond the meta-model: its Adam, the bank and the recovery trigger."""

    name, section = "BiDf-MKD", "bidf_mkd"

    def setup(self) -> None:
        cfg, dist = self.cfg, self.dist
        self.optimizer = dist.accelerator.prepare_optimizer(torch.optim.Adam(self.model.parameters(), lr=cfg.outer_lr))
        self.bank = MemoryBank(cfg.bank_size)
        self.learner = MAML(inner_steps=cfg.inner_steps, inner_lr=cfg.inner_lr, first_order=cfg.first_order)
        self.kd_learner = MAML(inner_steps=cfg.kd_inner_steps, inner_lr=cfg.inner_lr, first_order=cfg.first_order)
        # the trigger: a recovery is due; the best batch accuracy since the last one, and how many
        # outer steps have not beaten it
        self.recover_due, self.best_batch_acc, self.stalls = True, -math.inf, 0
        self.recoveries: list[int] = []  # the outer steps that recovered

    def outer_step(self, step: int) -> dict[str, float]:
        """One batch: a distillation task first when a recovery is due, then replay tasks."""
        cfg = self.cfg
        self.model.train()
        losses: list[Tensor] = []
        accuracies: list[float] = []
        values: dict[str, float] = {}
        if self.recover_due:
            kd_loss, kd_acc = self.distillation_task(step)
            losses.append(kd_loss)
            accuracies.append(kd_acc)
            values["kd_loss"] = float(kd_loss.detach())
            self.recoveries.append(step)
        if self.bank.episode_classes(cfg.shot + cfg.query) >= cfg.way:
            rng = numpy_rng(seed_sequence(self.seed, PEERS, BIDF_REPLAY, step))
            while len(losses) < cfg.episode_batch:
                loss, accuracy = self.replay_episode(rng)
                losses.append(loss)
                accuracies.append(accuracy)
        total = torch.stack(losses).sum()
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        accuracy = float(np.mean(accuracies))
        self.update_trigger(accuracy, recovered=self.recover_due)
        values.update({"task_loss": float(total.detach()) / len(losses), "task_acc": accuracy})
        return values

    def distillation_task(self, step: int) -> tuple[Tensor, float]:
        """Recover one teacher's support and query sets; MAML with distillation in both loops.

        Returns:
            The query distillation loss after the inner loop (differentiable into the meta-model)
            and the adapted student's accuracy on the query set's intended labels.
        """
        cfg = self.cfg
        rng = numpy_rng(seed_sequence(self.seed, PEERS, BIDF_TEACHER, step))
        member = self.members[int(rng.integers(len(self.members)))]
        classes = sample_task_classes(member, cfg.way, rng)
        columns = torch.tensor(classes, device=self.dist.device)
        augment = torch_generator(torch_seed(self.seed, PEERS, BIDF_AUGMENT, step))

        def teacher_and_view(task: RecoveredTask) -> tuple[Tensor, Tensor]:
            """The set's images cropped and flipped once, at the meta-model's size, and the teacher's
            logits on them over the task's classes."""
            images = task.images.to(self.dist.device)
            augmented = random_crop_flip(images, crop_padding_for(min(images.shape[-2:])), augment)
            with torch.no_grad(), frozen(member.model):
                teacher = member.model(member.normalize(augmented))[:, columns]
            return resized(augmented, self.image_size), teacher

        support = self.recover(member, classes, seed_int(seed_sequence(self.seed, PEERS, BIDF_SUPPORT, step)))
        support_x, support_teacher = teacher_and_view(support)

        def support_loss(logits: Tensor) -> Tensor:
            return distill_loss(
                logits, support_teacher, temperature=cfg.temperature, on_probabilities=cfg.kl_on_probabilities
            )

        fast = self.kd_learner.clone(self.model, len(classes))
        with torch.enable_grad():
            fast = self.kd_learner.adapt_fast(
                self.model, fast, support_x, None, create_graph=not cfg.first_order, loss_of=support_loss
            )
        adversarial = step >= cfg.adversarial_start
        query = self.recover(
            member,
            classes,
            seed_int(seed_sequence(self.seed, PEERS, BIDF_QUERY, step)),
            student=self.student(fast) if adversarial else None,
        )
        query_x, query_teacher = teacher_and_view(query)
        logits = self.kd_learner.fast_logits(self.model, fast, query_x)
        loss = distill_loss(
            logits, query_teacher, temperature=cfg.temperature, on_probabilities=cfg.kl_on_probabilities
        )
        intended = torch.repeat_interleave(torch.arange(len(classes), device=logits.device), cfg.images_per_class)
        for task in (support, query):
            self.bank.add(task)
        return loss, float((logits.argmax(1) == intended).float().mean())

    def recover(
        self, member: PoolMember, classes: Sequence[int], seed: int, student: Callable[[Tensor], Tensor] | None = None
    ) -> RecoveredTask:
        """One set of ``member``'s ``classes`` from a freshly initialised generator."""
        cfg = self.cfg
        _, height, width = (int(v) for v in member.input_size)
        generator = Generator(cfg.latent_dim, (height, width), width=cfg.generator_width, seed=seed)
        return invert(
            generator.to(self.dist.device),
            member,
            classes,
            steps=cfg.recover_steps,
            images_per_class=cfg.images_per_class,
            seed=seed,
            lr=cfg.generator_lr,
            bn_weight=cfg.bn_weight,
            student=student,
            adversarial_weight=cfg.adversarial_weight,
            kl_on_probabilities=cfg.kl_on_probabilities,
        )

    def student(self, fast: dict[str, Tensor]) -> Callable[[Tensor], Tensor]:
        """The student adapted on the support set, as the query's boundary term sees it (a constant;
        BatchNorm on the batch, the meta-model's running statistics untouched)."""
        frozen_fast = {k: v.detach() for k, v in fast.items()}
        body = {k: v for k, v in frozen_fast.items() if not k.startswith(MAML.HEAD_PREFIX)}

        def logits(images: Tensor) -> Tensor:
            feats = _features_eval(self.model, resized(images, self.image_size), body, "batch")
            return MAML.head_logits(feats, frozen_fast)

        return logits

    def update_trigger(self, accuracy: float, *, recovered: bool) -> None:
        """A recovery is due when the batch accuracy has not beaten its best since the last recovery
        for ``recover_patience`` outer steps."""
        if recovered:
            self.recover_due, self.best_batch_acc, self.stalls = False, accuracy, 0
            return
        if accuracy > self.best_batch_acc:
            self.best_batch_acc, self.stalls = accuracy, 0
        else:
            self.stalls += 1
            if self.stalls >= self.cfg.recover_patience:
                self.recover_due = True

    def extra(self) -> dict[str, Any]:
        return {"recoveries": self.recoveries}

    # --- checkpoint hooks ---

    def save_files(self, folder: Path) -> None:
        if len(self.bank):
            self.bank.save(folder / _BANK)

    def state(self) -> dict[str, Any]:
        return {
            "due": self.recover_due,
            "best_batch_acc": self.best_batch_acc,
            "stalls": self.stalls,
            "recoveries": self.recoveries,
        }

    def load_state(self, folder: Path, state: dict[str, Any]) -> None:
        self.bank = (
            MemoryBank.load(folder / _BANK, bank_size=self.cfg.bank_size)
            if (folder / _BANK).is_file()
            else MemoryBank(self.cfg.bank_size)
        )
        self.recover_due, self.best_batch_acc, self.stalls = (
            bool(state["due"]),
            float(state["best_batch_acc"]),
            int(state["stalls"]),
        )
        self.recoveries = [int(s) for s in state["recoveries"]]


_BANK = "bank.safetensors"


def train_bidf_mkd(members: Sequence[PoolMember], cfg: BidfMkdConfig, **run: Any) -> PeerResult:
    """Meta-train a meta-model with BiDf-MKD (white-box) on ``members``; ``run``: the meta-model,
    validation, seed and checkpoints, as :func:`~tgr_hub.peers.loop.train_peer` takes them."""
    return train_peer(_BidfTrainer, members, cfg, **run)
