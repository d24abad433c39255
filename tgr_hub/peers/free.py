"""FREE (Wei et al., CVPR 2024): a meta-generator that recovers a task in a few steps, a meta-learner
that distils the step's teachers one after the other, and replay from a memory.

One outer step:

1. **Fast recovery.** Draw ``teachers_per_step`` teachers (with replacement). For each, copy the
   meta-generator ``G_φ`` and adapt the copy for ``adapt_steps`` Adam steps, with fresh codes ``z``,
   on  CE(T(aug(G(z))), y) + bn · BN_T + adv · L_adv  (``L_adv``: :func:`adversarial_loss`
   against the meta-learner, after the warm-up). The images of the last step are the teacher's task.
   The meta-generator moves first-order across teachers: the gradients of each copy's last step,
   summed over the step's teachers, go to ``G_φ``'s own Adam (MAML over teachers).
2. **Sequential distillation** (after ``warmup`` outer steps). A copy ``θ'`` of the meta-model and
   its shared N-way head takes ``distill_steps`` Adam steps on each task in turn, lowering
   :func:`distill_loss` against that task's teacher; the meta-model's Adam then steps along the
   pseudo-gradient ``θ − θ'`` (Reptile).
3. **Replay.** The tasks go into a :class:`~tgr_hub.bank.MemoryBank`. Batches of ``episode_batch``
   episodes that mix classes of every teacher seen so far train the meta-model with MAML (the
   query cross-entropy, summed over the batch), until the batch accuracy has not improved for
   ``replay_patience`` batches (at most ``replay_max_batches``).

Where tgr-hub differs from the public code, and why:

- The KL terms take log-probabilities (a proper KL). The public code passes probabilities to
  ``kl_div``; ``kl_on_probabilities=True`` reproduces that.
- Every teacher's task is banked. The public code banks only the last teacher's of each step;
  ``bank_last_teacher_only=True`` reproduces that.
- The meta-generator's Adam keeps its state across steps (the public code makes a new one per
  step, so its steps are about ``lr`` per parameter). The meta-learner's Adam is shared by Reptile
  and replay as in the public code, and sees ``reptile_scale · (θ − θ')`` (67, as there): the two
  feed one second-moment estimate, so the scale sets how far the Reptile step moves against the
  replay steps (unscaled, it was about 2% of a replay step's size).
- A heterogeneous pool: one meta-generator per teacher input size, and the meta-learner sees each
  task resized to its own input size. The adversarial term compares the teacher with the
  meta-learner's shared head (the public code uses the model left by the last replay task).
- The replay loop has a cap (``replay_max_batches``), so a step's cost is bounded.
- The best state is chosen on meta-validation (the public code chose on meta-test).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor

from ..bank import MemoryBank, RecoveredTask
from ..config import FreeConfig
from ..io import save_safetensors_atomic
from ..learners import MAML, _features_eval
from ..pool import PoolMember
from ..recover import (
    GeneratorsBySize,
    crop_padding_for,
    frozen,
    random_crop_flip,
    sample_task_classes,
)
from ..seeds import PEERS, numpy_rng, seed_int, seed_sequence, torch_generator, torch_seed
from ..train import make_task_head
from .inversion import GENERATOR_BETAS, distill_loss, invert, resized
from .loop import PeerResult, PeerTrainer, train_peer

__all__ = ["MetaGenerator", "meta_generator_for", "train_free"]

#: the kinds of draw of a FREE run in the ``PEERS`` stream (PURER's are 0 to 2): [seed, PEERS, kind, ...]
FREE_GENERATOR, FREE_TEACHERS, FREE_RECOVER, FREE_DISTILL, FREE_REPLAY, FREE_HEAD = 10, 11, 12, 13, 14, 15


class MetaGenerator(GeneratorsBySize):
    """FREE's meta-generator: one :class:`~tgr_hub.models.generator.Generator` per teacher input
    size, each with its own Adam (the meta-optimiser, ``lr = meta_lr``), adapted to one teacher at
    a time by :meth:`adapt` and moved first-order by :meth:`meta_step`.

    Args:
        sizes: the teachers' input sizes ``(H, W)``.
        latent_dim, width: the generators' settings.
        seed: initialises generator ``k`` (of the sorted sizes) from ``[seed, PEERS, FREE_GENERATOR, k]``.
        meta_lr: Adam's learning rate on the meta-generators.
    """

    def __init__(
        self,
        sizes: Sequence[tuple[int, int]],
        *,
        latent_dim: int = 256,
        width: int = 128,
        seed: int = 0,
        meta_lr: float = 1e-3,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(
            sizes,
            latent_dim=latent_dim,
            width=width,
            seeds=lambda k: torch_seed(seed, PEERS, FREE_GENERATOR, k),
            lr=meta_lr,
            betas=GENERATOR_BETAS,
            device=device,
        )

    def adapt(
        self,
        member: PoolMember,
        classes: Sequence[int],
        *,
        steps: int,
        images_per_class: int,
        seed: int,
        meta_gradient: bool = True,
        **inversion: Any,
    ) -> RecoveredTask:
        """Adapt a copy of the meta-generator to ``member`` by :func:`~tgr_hub.peers.inversion.invert`
        (``inversion``: its loss settings) and return the task. With ``meta_gradient``, the copy's
        gradients at its last step are added to the meta-generator's ``.grad`` (:meth:`meta_step`
        applies them)."""
        meta = self.generators[self.size_of(member)]
        fast = self.copy_for(member)

        def gather() -> None:
            for p, q in zip(meta.parameters(), fast.parameters()):
                if q.grad is not None:
                    p.grad = q.grad.detach().clone() if p.grad is None else p.grad + q.grad.detach()

        return invert(
            fast,
            member,
            classes,
            steps=steps,
            images_per_class=images_per_class,
            seed=seed,
            on_last_backward=gather if meta_gradient else None,
            **inversion,
        )

    def meta_step(self) -> None:
        """Apply the meta-gradients :meth:`adapt` gathered (to every size that has some) and clear them."""
        for size, generator in self.generators.items():
            if any(p.grad is not None for p in generator.parameters()):
                self.optimizers[size].step()
            self.optimizers[size].zero_grad(set_to_none=True)


def meta_generator_for(members: Sequence[PoolMember], cfg: FreeConfig, *, seed: int, device: Any) -> MetaGenerator:
    """The meta-generator of a FREE run on ``members`` with ``cfg``'s settings."""
    return MetaGenerator(
        [GeneratorsBySize.size_of(m) for m in members],
        latent_dim=cfg.latent_dim,
        width=cfg.generator_width,
        seed=seed,
        meta_lr=cfg.meta_generator_lr,
        device=device,
    )


class _FreeTrainer(PeerTrainer):
    """A FREE run's state beyond the meta-model: its shared head and Adam, the meta-generator and the bank."""

    name, section = "FREE", "free"

    def setup(self) -> None:
        cfg, dist = self.cfg, self.dist
        head = make_task_head(self.model.feature_dim, cfg.way, torch_seed(self.seed, PEERS, FREE_HEAD))
        self.head = dist.accelerator.prepare_model(head.to(dist.device), evaluation_mode=True)
        self.trained = [*self.model.parameters(), *self.head.parameters()]
        self.optimizer = dist.accelerator.prepare_optimizer(torch.optim.Adam(self.trained, lr=cfg.outer_lr))
        self.meta_generator = meta_generator_for(self.members, cfg, seed=self.seed, device=dist.device)
        self.bank = MemoryBank(cfg.bank_size)
        self.learner = MAML(inner_steps=cfg.inner_steps, inner_lr=cfg.inner_lr, first_order=cfg.first_order)

    # --- one outer step ---

    def outer_step(self, step: int) -> dict[str, float]:
        """FREE's iteration: fast recovery from the step's teachers, then (after the warm-up)
        sequential distillation and replay."""
        cfg = self.cfg
        learning = step >= cfg.warmup
        tasks = self.recover(step, adversarial=learning)
        values = {"recover_ce": float(np.mean([t.ce_history[-1] for t in tasks]))}
        if not learning:
            return values
        for task in tasks[-1:] if cfg.bank_last_teacher_only else tasks:
            self.bank.add(task)
        values["distill_loss"] = self.distill(step, tasks)
        values.update(self.replay(step))
        return values

    def recover(self, step: int, *, adversarial: bool) -> list[RecoveredTask]:
        """One task from each of the step's teachers, by adapting the meta-generator; then its meta-step."""
        cfg = self.cfg
        rng = numpy_rng(seed_sequence(self.seed, PEERS, FREE_TEACHERS, step))
        chosen = [int(t) for t in rng.integers(len(self.members), size=cfg.teachers_per_step)]
        tasks = []
        for k, t in enumerate(chosen):
            member = self.members[t]
            classes = sample_task_classes(member, cfg.way, rng)
            tasks.append(
                self.meta_generator.adapt(
                    member,
                    classes,
                    steps=cfg.adapt_steps,
                    images_per_class=cfg.images_per_class,
                    seed=seed_int(seed_sequence(self.seed, PEERS, FREE_RECOVER, step, k)),
                    lr=cfg.generator_lr,
                    bn_weight=cfg.bn_weight,
                    student=self.student(len(classes)) if adversarial else None,
                    adversarial_weight=cfg.adversarial_weight,
                    kl_on_probabilities=cfg.kl_on_probabilities,
                )
            )
        self.meta_generator.meta_step()
        return tasks

    def student(self, way: int) -> Callable[[Tensor], Tensor]:
        """The meta-learner as the adversarial term sees it: the meta-model and its shared head,
        BatchNorm on the batch's statistics (its running ones untouched)."""

        def logits(images: Tensor) -> Tensor:
            feats = _features_eval(self.model, resized(images, self.image_size), None, "batch")
            return self.head(feats)[:, :way]

        return logits

    def distill(self, step: int, tasks: Sequence[RecoveredTask]) -> float:
        """Reptile over the step's teachers: a copy distils each task in turn (:meth:`distilled_copy`),
        then the meta-model's Adam steps along ``reptile_scale · (θ − θ')``. Returns the mean
        distillation loss."""
        fast, loss = self.distilled_copy(step, tasks)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for p, q in zip(self.trained, fast):
                p.grad = self.cfg.reptile_scale * (p.detach() - q.detach())
        self.optimizer.step()
        return loss

    def distilled_copy(self, step: int, tasks: Sequence[RecoveredTask]) -> tuple[Sequence[torch.Tensor], float]:
        """θ': a copy of the meta-model and its head after distilling each task in turn (one fresh Adam
        for the step, ``distill_steps`` steps per task), in the order of :attr:`trained`; and the mean
        distillation loss. The meta-model is not touched."""
        cfg = self.cfg
        fast_model, fast_head = copy.deepcopy(self.model).train(), copy.deepcopy(self.head)
        fast = [*fast_model.parameters(), *fast_head.parameters()]
        optimizer = torch.optim.Adam(fast, lr=cfg.distill_lr)
        aug_rng = torch_generator(torch_seed(self.seed, PEERS, FREE_DISTILL, step))
        by_name = {m.name: m for m in self.members}
        losses = []
        for task in tasks:
            member = by_name[task.teacher]
            images = task.images.to(self.dist.device)
            columns = torch.tensor(task.classes, device=images.device)
            pad = crop_padding_for(min(images.shape[-2:]))
            for _ in range(cfg.distill_steps):
                augmented = random_crop_flip(images, pad, aug_rng)
                with torch.no_grad(), frozen(member.model):
                    teacher = member.model(member.normalize(augmented))[:, columns]
                student = fast_head(fast_model(resized(augmented, self.image_size)))[:, : len(task.classes)]
                loss = distill_loss(
                    student, teacher, temperature=cfg.temperature, on_probabilities=cfg.kl_on_probabilities
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
        return fast, float(np.mean(losses))

    def replay(self, step: int) -> dict[str, float]:
        """MAML on episodes from the bank, a batch at a time, until the batch accuracy stalls."""
        cfg = self.cfg
        if self.bank.episode_classes(cfg.shot + cfg.query) < cfg.way:
            return {"replay_batches": 0.0}
        rng = numpy_rng(seed_sequence(self.seed, PEERS, FREE_REPLAY, step))
        self.model.train()
        best, stalls, batches, accuracy, loss = -math.inf, 0, 0, 0.0, 0.0
        while stalls < cfg.replay_patience and batches < cfg.replay_max_batches:
            tasks = [self.replay_episode(rng) for _ in range(cfg.episode_batch)]
            total = torch.stack([task_loss for task_loss, _ in tasks]).sum()
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            self.optimizer.step()
            batches += 1
            accuracy, loss = float(np.mean([a for _, a in tasks])), float(total.detach()) / cfg.episode_batch
            if accuracy > best:
                best, stalls = accuracy, 0
            else:
                stalls += 1
        return {"task_loss": loss, "task_acc": accuracy, "replay_batches": float(batches)}

    # --- checkpoint hooks ---

    def save_files(self, folder: Path) -> None:
        save_safetensors_atomic(folder / _META_GENERATOR, self.meta_generator.state_tensors())
        if len(self.bank):
            self.bank.save(folder / _BANK)

    def load_state(self, folder: Path, state: dict[str, Any]) -> None:
        self.meta_generator.load_state_tensors(load_file(str(folder / _META_GENERATOR), device=str(self.dist.device)))
        self.bank = (
            MemoryBank.load(folder / _BANK, bank_size=self.cfg.bank_size)
            if (folder / _BANK).is_file()
            else MemoryBank(self.cfg.bank_size)
        )


_META_GENERATOR, _BANK = "meta_generator.safetensors", "bank.safetensors"


def train_free(members: Sequence[PoolMember], cfg: FreeConfig, **run: Any) -> PeerResult:
    """Meta-train a meta-model with FREE on ``members`` (no data: the meta-generator's tasks are all it
    sees); ``run``: the meta-model, validation, seed and checkpoints, as
    :func:`~tgr_hub.peers.loop.train_peer` takes them."""
    return train_peer(_FreeTrainer, members, cfg, **run)
