"""PURER's data (Hu et al., CVPR 2023): a learnable memory of images, improved one step at a time.

PURER keeps no generator. Every class that some teacher of the pool knows gets ``per_class``
images of its own, all held in one tensor, and one Adam optimiser (never reset) improves that
tensor by a single step per meta-iteration. The step lowers, summed over the teachers ``t``,

    w_t · [ CE(f_t(x̃_t), y_t) + bn · BN_t(x̃_t) + tv · TV(x̂_t) + l2 · ‖x̂_t‖₂ ]

- ``x̃_t``: the images of teacher ``t``'s classes, all shifted by one random roll of up to
  ``jitter`` pixels (the same shift for the whole step), in [0, 1]; ``y_t`` their classes as the
  teacher numbers them;
- ``x̂_t``: the same images as teacher ``t`` sees them (resized to its input size and normalised
  with its mean and std): the two image priors act there, as in the public code, which keeps its
  images normalised;
- ``BN_t``: the distance of each BatchNorm input's batch statistics from the teacher's running
  ones (tgr-hub's recovery prior, :class:`tgr_hub.recover._BNStatisticsLoss`);
- ``TV``: the total variation, ‖·‖₂ of the differences between neighbouring pixels in four
  directions (right, down and both diagonals), summed;
- ``w_t``: 1 (``teacher_weights="equal"``), or the public code's weighting
  (``"running-sum"``): it adds each teacher's loss to a running sum and that running sum to the
  total after every teacher, so teacher ``i`` of ``n`` weighs ``n − i``. Kept as an option, not as
  the default.

Classes are pooled by name: two teachers that know ``latin/A`` share its images and both shape
them (the public code pools classes by their global id in the same way). A step may add an extra
loss on the images: PURER's curriculum subtracts the meta-learner's query loss on an episode drawn
from the memory, so that episodes get harder (see :meth:`PixelMemory.step`).

Where tgr-hub differs from the public code: the images are kept in [0, 1] (each teacher
normalises them itself, since a heterogeneous pool has no one normalisation) and clamped there
after every step; they start at ``0.5 + 0.25·N(0, 1)``, about what a standard normal draw in a
normalised space is in pixels. The data step's learning rate is given in normalised units, as the
public code's is, and the pixels' Adam takes it times the teachers' mean std.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor

from ..config import PurerConfig
from ..data import Episode
from ..errors import RecoverError
from ..io import save_safetensors_atomic
from ..learners import MAML, EpisodicLearner
from ..metamodel import MetaModel
from ..pool import PoolMember
from ..recover import _BNStatisticsLoss, frozen, load_optimizer_state_tensors, optimizer_state_tensors
from ..seeds import PEERS, numpy_rng, seed_sequence, torch_generator, torch_seed
from .loop import PeerResult, PeerTrainer, train_peer

__all__ = [
    "PixelMemory",
    "PixelMemoryConfig",
    "curriculum_loss",
    "memory_config",
    "total_variation",
    "train_purer",
]

logger = logging.getLogger(__name__)

#: the kinds of draw of a pixel memory in the ``PEERS`` stream: [seed, PEERS, PURER_INIT],
#: [seed, PEERS, PURER_JITTER, step] and [seed, PEERS, PURER_EPISODE, *key]
PURER_INIT, PURER_JITTER, PURER_EPISODE = 0, 1, 2


@dataclass(frozen=True)
class PixelMemoryConfig:
    """PURER's inversion settings (the public code's values)."""

    per_class: int = 20  # images per class (the public code: 16 or 20)
    lr: float = 0.25  # Adam's step in the teachers' normalised units (the public code's space; see PixelMemory)
    bn_weight: float = 0.01
    tv_weight: float = 1e-4
    l2_weight: float = 1e-5
    jitter: int = 2  # the largest roll, in pixels
    teacher_weights: Literal["equal", "running-sum"] = "equal"


def total_variation(x: Tensor) -> Tensor:
    """Σ over four directions (right, down, down-right, down-left) of ‖x[neighbour] − x‖₂.

    Args:
        x: ``[B, C, H, W]``.

    Returns:
        A scalar: four L2 norms, each over the whole batch, summed.
    """
    right = x[..., :, 1:] - x[..., :, :-1]
    down = x[..., 1:, :] - x[..., :-1, :]
    down_right = x[..., 1:, 1:] - x[..., :-1, :-1]
    down_left = x[..., 1:, :-1] - x[..., :-1, 1:]
    return sum((torch.linalg.vector_norm(d) for d in (right, down, down_right, down_left)), x.new_zeros(()))


class PixelMemory:
    """``per_class`` learnable images for every class the pool's teachers know (PURER's data).

    Attributes:
        class_names: the pooled classes, in the order the teachers name them first.
        images: ``[len(class_names) * per_class, 3, size, size]`` in [0, 1], a leaf tensor with
            ``requires_grad``; class ``c``'s images are rows ``c * per_class`` to ``(c + 1) * per_class``.
        labels: ``[len(images)]`` the class index of each row.
        steps: inversion steps taken so far.
    """

    def __init__(
        self,
        members: Sequence[PoolMember],
        image_size: int,
        cfg: PixelMemoryConfig | None = None,
        *,
        seed: int,
        device: torch.device | str = "cpu",
    ) -> None:
        if not members:
            raise RecoverError("a pixel memory needs at least one teacher")
        self.cfg = cfg or PixelMemoryConfig()
        if self.cfg.per_class < 1:
            raise RecoverError(f"a pixel memory needs at least one image per class, got {self.cfg.per_class}")
        self.members = list(members)
        self.class_names = list(dict.fromkeys(name for m in self.members for name in m.label_names))
        index = {name: c for c, name in enumerate(self.class_names)}
        # per teacher: the memory's class of each of its own classes
        self._teacher_classes = [torch.tensor([index[n] for n in m.label_names]) for m in self.members]
        per_class = self.cfg.per_class
        self.labels = torch.arange(len(self.class_names)).repeat_interleave(per_class)
        start = torch.randn(
            len(self.labels), 3, image_size, image_size, generator=torch_generator(torch_seed(seed, PEERS, PURER_INIT))
        )
        self.images = (0.5 + 0.25 * start).clamp_(0.0, 1.0).to(device).requires_grad_(True)
        # Adam moves a pixel by about its lr per step whatever the gradient's scale. The public code's
        # tensor lives in the teachers' normalised space, so its lr is in normalised units: in pixels,
        # that is lr × the teachers' std (0.25 normalised is 0.125 in pixels for a std of 0.5)
        stds = [sum(m.std) / len(m.std) for m in self.members]
        self.pixel_lr = self.cfg.lr * sum(stds) / len(stds)
        self.optimizer = torch.optim.Adam([self.images], lr=self.pixel_lr)
        self.seed = int(seed)
        self.steps = 0

    def teacher_batch(self, teacher: int) -> tuple[Tensor, Tensor]:
        """Teacher ``teacher``'s classes' images ``[K * per_class, 3, H, W]`` (differentiable) and the
        teacher's own class index of each ``[K * per_class]``."""
        classes = self._teacher_classes[teacher]  # [K] memory class of each teacher class
        rows = (classes[:, None] * self.cfg.per_class + torch.arange(self.cfg.per_class)).reshape(-1)
        targets = torch.arange(len(classes)).repeat_interleave(self.cfg.per_class)
        return self.images[rows.to(self.images.device)], targets.to(self.images.device)

    def episode(self, way: int, shot: int, query: int, *, key: Sequence[int], differentiable: bool = False) -> Episode:
        """An episode drawn from the memory: ``way`` of its classes, and for each, ``shot`` support and
        ``query`` query images among its ``per_class`` (distinct; PURER's tasks). ``key`` names the
        draw (e.g. the meta-iteration and the task's place in it). ``differentiable=True`` keeps the
        images attached to :attr:`images` (the curriculum differentiates the query loss through them).
        """
        per_class = self.cfg.per_class
        if shot < 1 or query < 0 or shot + query > per_class:
            raise RecoverError(
                f"an episode of {shot} support and {query} query images per class needs shot + query <= "
                f"{per_class} (the memory's images per class)"
            )
        if not 1 <= way <= len(self.class_names):
            raise RecoverError(f"the memory holds {len(self.class_names)} classes; cannot draw {way}-way episodes")
        rng = numpy_rng(seed_sequence(self.seed, PEERS, PURER_EPISODE, *key))
        classes = [int(c) for c in rng.choice(len(self.class_names), size=way, replace=False)]
        support_rows, query_rows = [], []
        for c in classes:
            order = rng.permutation(per_class)
            support_rows += [c * per_class + int(i) for i in order[:shot]]
            query_rows += [c * per_class + int(i) for i in order[shot : shot + query]]
        images = self.images if differentiable else self.images.detach()
        device = images.device
        return Episode(
            support_x=images[torch.tensor(support_rows, device=device)],
            support_y=torch.arange(way, device=device).repeat_interleave(shot),
            query_x=images[torch.tensor(query_rows, device=device)],
            query_y=torch.arange(way, device=device).repeat_interleave(query),
            classes=[self.class_names[c] for c in classes],
        )

    def teacher_weights(self) -> list[float]:
        """Each teacher's weight in the inversion loss (see the module doc)."""
        n = len(self.members)
        if self.cfg.teacher_weights == "running-sum":
            return [float(n - i) for i in range(n)]
        return [1.0] * n

    def inversion_loss(self, shift: tuple[int, int] = (0, 0)) -> tuple[Tensor, dict[str, float]]:
        """The weighted inversion loss of the current images, each rolled by ``shift`` (rows, columns).

        Returns:
            The loss (a scalar that back-propagates to :attr:`images`) and its four parts summed
            over the teachers, unweighted (``ce``, ``bn``, ``tv``, ``l2``).
        """
        cfg = self.cfg
        total = self.images.new_zeros(())
        parts = dict.fromkeys(("ce", "bn", "tv", "l2"), 0.0)
        for teacher, (member, weight) in enumerate(zip(self.members, self.teacher_weights())):
            images, targets = self.teacher_batch(teacher)
            shifted = torch.roll(images, shifts=shift, dims=(2, 3))
            seen = member.normalize(shifted)
            with _BNStatisticsLoss(member.model) as bn:
                ce = F.cross_entropy(member.model(seen), targets)
                bn_term = bn.pop(like=ce)
            tv = total_variation(seen)
            l2 = torch.linalg.vector_norm(seen)
            total = total + weight * (ce + cfg.bn_weight * bn_term + cfg.tv_weight * tv + cfg.l2_weight * l2)
            for key, value in (("ce", ce), ("bn", bn_term), ("tv", tv), ("l2", l2)):
                parts[key] += float(value.detach())
        return total, parts

    def jitter(self, step: int) -> tuple[int, int]:
        """The roll of step ``step``: two integers in ``[-jitter, jitter]``, from the run's seed."""
        if self.cfg.jitter == 0:
            return (0, 0)
        rng = torch_generator(torch_seed(self.seed, PEERS, PURER_JITTER, step))
        rows, cols = torch.randint(-self.cfg.jitter, self.cfg.jitter + 1, (2,), generator=rng).tolist()
        return int(rows), int(cols)

    def step(self, extra_loss: Callable[[Tensor], Tensor] | None = None) -> dict[str, float]:
        """One Adam step on the images: the inversion loss at this step's roll, plus ``extra_loss(images)``
        if given (PURER's curriculum passes minus the meta-learner's query loss on an episode drawn
        from the images). The images are clamped to [0, 1] afterwards.

        Returns:
            The loss before the step and its parts (``loss``, ``ce``, ``bn``, ``tv``, ``l2``, and
            ``extra`` when an extra loss was given).
        """
        with contextlib.ExitStack() as teachers:
            for member in self.members:
                teachers.enter_context(frozen(member.model))
            loss, parts = self.inversion_loss(self.jitter(self.steps))
            if extra_loss is not None:
                extra = extra_loss(self.images)
                parts["extra"] = float(extra.detach())
                loss = loss + extra
            if not math.isfinite(float(loss.detach())):
                raise RecoverError(f"the pixel memory's inversion loss is {float(loss.detach())} at step {self.steps}")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        with torch.no_grad():
            self.images.clamp_(0.0, 1.0)
        self.steps += 1
        return {"loss": float(loss.detach()), **parts}

    def state_tensors(self) -> dict[str, Tensor]:
        """The images, Adam's state and the step count as named CPU tensors (a safetensors file holds
        them): a memory restored from them continues bitwise."""
        return {
            "images": self.images.detach().cpu().clone(),
            **optimizer_state_tensors(self.optimizer),
            "steps": torch.tensor(self.steps, dtype=torch.int64),
        }

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        """Restore what :meth:`state_tensors` returned (in place)."""
        if tensors["images"].shape != self.images.shape:
            raise RecoverError(
                f"the saved pixel memory holds images of shape {tuple(tensors['images'].shape)}, this one "
                f"{tuple(self.images.shape)}: another pool, image size or images per class"
            )
        with torch.no_grad():
            self.images.copy_(tensors["images"])
        load_optimizer_state_tensors(self.optimizer, tensors)
        self.steps = int(tensors["steps"])


def curriculum_loss(
    memory: PixelMemory,
    learner: EpisodicLearner,
    model: torch.nn.Module,
    *,
    way: int,
    shot: int,
    query: int,
    key: Sequence[int],
    scale: float = 10.0,
) -> Callable[[Tensor], Tensor]:
    """PURER's curriculum term for :meth:`PixelMemory.step`: ``−scale ×`` the meta-learner's query loss on
    an episode drawn from the memory, differentiated through the inner loop into the images, so the
    step makes that episode harder. The meta-model's own parameters get no gradient from it (the
    learner adapts detached copies of them).
    """

    def extra(images: Tensor) -> Tensor:
        del images  # the episode reads memory.images, which is the tensor the step passes
        task = memory.episode(way, shot, query, key=key, differentiable=True)
        params = {name: p.detach().requires_grad_(True) for name, p in model.named_parameters()}
        return -scale * learner.episode_loss(model, task, params=params)

    return extra


# --- meta-training -----------------------------------------------------------------------------


def memory_config(cfg: PurerConfig) -> PixelMemoryConfig:
    """The pixel memory's settings in the ``purer`` config section."""
    return PixelMemoryConfig(
        per_class=cfg.per_class,
        lr=cfg.data_lr,
        bn_weight=cfg.bn_weight,
        tv_weight=cfg.tv_weight,
        l2_weight=cfg.l2_weight,
        jitter=cfg.jitter,
        teacher_weights=cfg.teacher_weights,
    )


class _PurerTrainer(PeerTrainer):
    """A PURER run's state beyond the meta-model: its Adam, the pixel memory and the curriculum's counters."""

    name, section = "PURER", "purer"

    def initial_model(self, arch: str, image_size: int) -> MetaModel:
        return _initial_model(self.members, arch, image_size, seed=self.seed, average=self.cfg.average_init)

    def setup(self) -> None:
        cfg, dist = self.cfg, self.dist
        self.optimizer = dist.accelerator.prepare_optimizer(torch.optim.Adam(self.model.parameters(), lr=cfg.outer_lr))
        self.memory = PixelMemory(self.members, self.image_size, memory_config(cfg), seed=self.seed, device=dist.device)
        self.learner = MAML(inner_steps=cfg.inner_steps, inner_lr=cfg.inner_lr, first_order=cfg.first_order)
        # the curriculum: due at the next data step; the best batch accuracy since the last one, and
        # how many outer steps have not beaten it
        self.curriculum_due, self.best_batch_acc, self.stalls = False, -math.inf, 0
        self.curriculum_steps: list[int] = []

    def outer_step(self, step: int) -> dict[str, float]:
        """PURER's meta-iteration: a data step on the memory, then MAML on tasks drawn from it."""
        cfg = self.cfg
        extra = None
        if self.curriculum_due:
            extra = curriculum_loss(
                self.memory,
                self.learner,
                self.model,
                way=cfg.way,
                shot=cfg.shot,
                query=cfg.query,
                key=(step, cfg.episode_batch),
                scale=cfg.curriculum_scale,
            )
            self.curriculum_steps.append(step)
        data = self.memory.step(extra_loss=extra)

        self.model.train()
        losses, correct = [], []
        for b in range(cfg.episode_batch):
            task = self.memory.episode(cfg.way, cfg.shot, cfg.query, key=(step, b))
            logits = self.learner.logits(self.model, task.support_x, task.support_y, task.query_x)
            losses.append(F.cross_entropy(logits, task.query_y))
            correct.append((logits.argmax(1) == task.query_y).float().mean())
        loss = torch.stack(losses).sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

        accuracy = float(torch.stack(correct).mean())
        self.update_curriculum(step + 1, accuracy, ran=extra is not None)
        return {"task_loss": float(loss.detach()) / cfg.episode_batch, "task_acc": accuracy, "data_loss": data["loss"]}

    def update_curriculum(self, done: int, accuracy: float, *, ran: bool) -> None:
        """The public code's trigger: due after outer step ``curriculum_start``, then whenever the batch
        accuracy has not beaten its best since the last curriculum step for ``curriculum_patience`` steps."""
        cfg = self.cfg
        if ran:
            self.curriculum_due, self.best_batch_acc, self.stalls = False, -math.inf, 0
        if cfg.curriculum_start <= 0 or done < cfg.curriculum_start:
            return
        if done == cfg.curriculum_start:
            self.curriculum_due = True
        elif not self.curriculum_due:
            if accuracy > self.best_batch_acc:
                self.best_batch_acc, self.stalls = accuracy, 0
            else:
                self.stalls += 1
                if self.stalls == cfg.curriculum_patience:
                    self.curriculum_due = True

    def extra(self) -> dict[str, Any]:
        return {"curriculum_steps": self.curriculum_steps}

    def save_files(self, folder: Path) -> None:
        save_safetensors_atomic(folder / _MEMORY, self.memory.state_tensors())

    def state(self) -> dict[str, Any]:
        return {
            "due": self.curriculum_due,
            "best_batch_acc": self.best_batch_acc,
            "stalls": self.stalls,
            "steps": self.curriculum_steps,
        }

    def load_state(self, folder: Path, state: dict[str, Any]) -> None:
        self.memory.load_state_tensors(load_file(str(folder / _MEMORY), device=str(self.dist.device)))
        self.curriculum_due, self.best_batch_acc, self.stalls = (
            bool(state["due"]),
            float(state["best_batch_acc"]),
            int(state["stalls"]),
        )
        self.curriculum_steps = [int(s) for s in state["steps"]]


_MEMORY = "pixel_memory.safetensors"


def _initial_model(members: Sequence[PoolMember], arch: str, image_size: int, *, seed: int, average: bool) -> MetaModel:
    """The teachers' average when ``average`` and some teacher has the meta-model's architecture and
    input size (PURER's start), else a fresh meta-model from ``seed``."""
    from ..evaluate import average_baseline
    from ..metamodel import create_meta_model

    fresh = create_meta_model(arch, image_size, seed=seed)
    same = [m for m in members if m.architecture == arch and tuple(m.input_size)[1:] == (image_size, image_size)]
    if not average or not same:
        if average:
            logger.warning("PURER: no teacher is a %s at %d px; starting from a fresh meta-model", arch, image_size)
        return fresh
    averaged = average_baseline(same)
    fresh.load_state_dict(averaged.state_dict())
    return fresh.train()


def train_purer(members: Sequence[PoolMember], cfg: PurerConfig, **run: Any) -> PeerResult:
    """Meta-train a meta-model with PURER on ``members`` (no data: the pixel memory is all it sees; the
    best state on meta-validation is returned, where the public code chose on meta-test); ``run``: the
    meta-model, validation, seed and checkpoints, as :func:`~tgr_hub.peers.loop.train_peer` takes them."""
    return train_peer(_PurerTrainer, members, cfg, **run)
