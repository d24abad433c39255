"""Meta-training with implicit gradient regularisation inside teacher groups (ALGORITHM.md stage 3).

One iteration:

    group  ─► m teachers ─► one pseudo-task each (from the memory bank)
           ─► per-task losses L_i(θ) ─► IGR direction ─► Adam step
           ─► replay: episodes mixing classes across teachers ─► Adam step

Every ``eval_every`` steps the meta-model is evaluated on real episodes of the
meta-*validation* split and the best state is kept. β = 0 with a single group of all
teachers is the ERM baseline.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from .config import TrainConfig
from .data import ImageSplit
from .evaluate import evaluate_model
from .igr import igr_direction
from .learners import make_learner
from .metamodel import MetaModel
from .pool import PoolMember
from .recover import MemoryBank

logger = logging.getLogger(__name__)


@dataclass
class PseudoTask:
    """One teacher's recovered task, split for episodic losses.

    Attributes:
        support_x: [way*shot, 3, S, S] recovered images in [0, 1].
        support_y: [way*shot] labels 0..way-1.
        query_x: [way*q, 3, S, S].
        query_y: [way*q].
        teacher_probs: [way*q, way] the teacher's softened predictions on the query images,
            restricted to the task's classes (targets of the distillation term).
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    teacher_probs: Tensor


@dataclass
class TrainResult:
    """What meta-training produced."""

    best_state: dict[str, Tensor]
    best_step: int
    best_val_accuracy: float
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)


def make_pseudo_task(
    member: PoolMember,
    bank: MemoryBank,
    *,
    way: int,
    shot: int,
    query: int,
    temperature: float,
    rng: np.random.Generator,
) -> PseudoTask:
    """Draw a ``way``-way pseudo-task of one teacher from the memory bank.

    The classes are an N-way subset of the teacher's recovered classes (all of them for a
    5-way teacher); each class gives ``shot`` support and up to ``query`` query images.
    """
    available = bank.classes_of(member.name)
    classes = available if len(available) <= way else sorted(int(c) for c in rng.choice(available, way, replace=False))
    images, labels = bank.task_for(member.name, classes, shot + query, rng, allow_fewer=True)
    support_idx, query_idx = [], []
    for position, cls in enumerate(classes):
        idx = (labels == cls).nonzero().flatten().tolist()
        support_idx += idx[:shot]
        query_idx += idx[shot:shot + query]
    remap = {cls: position for position, cls in enumerate(classes)}
    task_labels = torch.tensor([remap[int(c)] for c in labels.tolist()], dtype=torch.long)
    support_idx_t, query_idx_t = torch.tensor(support_idx), torch.tensor(query_idx)
    query_x = images[query_idx_t]
    with torch.no_grad():
        teacher_logits = member.logits(query_x)[:, classes]
        teacher_probs = F.softmax(teacher_logits / temperature, dim=-1)
    return PseudoTask(images[support_idx_t], task_labels[support_idx_t], query_x, task_labels[query_idx_t], teacher_probs)


def pseudo_task_loss(
    learner,
    model: MetaModel,
    task: PseudoTask,
    params: dict[str, Tensor],
    *,
    kind: str,
    temperature: float,
) -> Tensor:
    """The meta-model's loss L_i(θ) on one pseudo-task, a function of ``params``.

    ``episodic``: the learner's own loss (CE on the query split after adapting on the
    support split). ``distill`` (the reference): that CE plus the KL divergence from the
    teacher's softened predictions to the adapted meta-model's, scaled by T².
    """
    logits = learner.logits(model, task.support_x, task.support_y, task.query_x, params=params)
    loss = F.cross_entropy(logits, task.query_y)
    if kind == "distill":
        log_student = F.log_softmax(logits / temperature, dim=-1)
        loss = loss + F.kl_div(log_student, task.teacher_probs, reduction="batchmean") * temperature**2
    return loss


def _choose_teachers(groups: list[list[int]], m: int, rng: np.random.Generator) -> list[int]:
    group = groups[int(rng.integers(len(groups)))]
    size = min(m, len(group))
    return [int(i) for i in rng.choice(group, size=size, replace=False)]


def meta_train(
    model: MetaModel,
    members: list[PoolMember],
    bank: MemoryBank,
    groups: list[list[int]],
    cfg: TrainConfig,
    *,
    val_split: ImageSplit,
    seed: int,
    progress: bool = True,
    on_step: Callable[[int, MetaModel, torch.optim.Optimizer], None] | None = None,
) -> TrainResult:
    """Meta-train ``model`` in place with IGR inside teacher groups, then replay episodes.

    Args:
        model: the meta-model (features [B, D]); trained in place, best state returned.
        members: the teacher pool, indexed by ``groups``.
        bank: recovered pseudo-tasks keyed by (teacher name, class).
        groups: teacher indices per group (one group of all teachers for ERM).
        cfg: the ``train`` section of the run config.
        val_split: real meta-validation images for checkpoint selection.
        seed: seeds teacher/task/episode choice.
        on_step: called after every step (checkpointing).
    """
    learner = make_learner(cfg.learner, inner_steps=cfg.inner_steps, inner_lr=cfg.inner_lr,
                           first_order=cfg.maml_first_order)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    rng = np.random.default_rng(seed)
    history: dict[str, list[tuple[int, float]]] = {"task_loss": [], "replay_loss": [], "val_acc": []}
    best_state = copy.deepcopy(model.state_dict())
    best_step, best_acc = 0, -math.inf
    val_shot = cfg.replay_shot

    def validate(step: int) -> None:
        nonlocal best_state, best_step, best_acc
        metrics = evaluate_model(model, val_split, way=cfg.replay_way, shots=[val_shot], query=cfg.replay_query,
                                 episodes=cfg.val_episodes, learner=cfg.learner, seed=seed + 1, progress=False)
        accuracy = metrics[f"{val_shot}shot"]["mean"]
        history["val_acc"].append((step, accuracy))
        if accuracy > best_acc:
            best_acc, best_step = accuracy, step
            best_state = copy.deepcopy(model.state_dict())
        logger.info("step %d: meta-val %d-way %d-shot accuracy %.2f%% (best %.2f%% at step %d)",
                    step, cfg.replay_way, val_shot, 100 * accuracy, 100 * best_acc, best_step)

    validate(0)
    bar = tqdm(range(cfg.iterations), desc="meta-train", disable=not progress, dynamic_ncols=True)
    for step in bar:
        model.train()
        chosen = _choose_teachers(groups, cfg.teachers_per_step, rng)
        tasks = [make_pseudo_task(members[i], bank, way=cfg.replay_way, shot=cfg.replay_shot,
                                  query=cfg.replay_query, temperature=cfg.distill_temperature, rng=rng)
                 for i in chosen]
        params = dict(model.named_parameters())
        loss_fns = [
            (lambda p, t=task: pseudo_task_loss(learner, model, t, p, kind=cfg.task_loss,
                                                temperature=cfg.distill_temperature))
            for task in tasks
        ]
        result = igr_direction(loss_fns, params, beta=cfg.beta, order=cfg.igr_order)
        optimizer.zero_grad(set_to_none=True)
        for name, parameter in params.items():
            parameter.grad = result.direction[name].detach().clone()
        optimizer.step()
        task_loss = float(np.mean(result.losses))
        history["task_loss"].append((step + 1, task_loss))

        if cfg.replay and cfg.replay_batch > 0:
            optimizer.zero_grad(set_to_none=True)
            replay_loss = 0.0
            for _ in range(cfg.replay_batch):
                episode = bank.sample_episode(cfg.replay_way, cfg.replay_shot, cfg.replay_query, rng,
                                              resize_to=model.input_size[-1])
                loss = learner.episode_loss(model, episode.support_x, episode.support_y,
                                            episode.query_x, episode.query_y) / cfg.replay_batch
                loss.backward()
                replay_loss += float(loss)
            optimizer.step()
            history["replay_loss"].append((step + 1, replay_loss))

        bar.set_postfix(task_loss=f"{task_loss:.3f}", best_val=f"{100 * max(best_acc, 0):.1f}%")
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.iterations:
            validate(step + 1)
        if on_step is not None:
            on_step(step + 1, model, optimizer)
    return TrainResult(best_state, best_step, best_acc, history)
