"""The task gradients' agreement on a fixed probe of pseudo-tasks (the paper's Fig. 5 measurement).

P = (1/2m) Σ‖g_i − ḡ‖², the mean pairwise cosine and the relative spread of the m task
gradients, on a probe drawn once from the memory bank. ``tgr-hub analyze gradients`` measures
them along training runs of its own; ``train.analysis_every`` measures them inside any run
(:func:`gradient_measure`, recorded in the history as :data:`GRADIENT_HISTORY`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from .bank import MemoryBank
from .config import TrainConfig
from .errors import AnalysisError
from .learners import make_learner
from .metamodel import MetaModel
from .pool import PoolMember
from .seeds import ANALYZE, numpy_rng, seed_sequence
from .train import HEAD_BIAS, HEAD_WEIGHT, _choose_teachers, make_pseudo_task, make_task_head, pseudo_task_loss

__all__ = [
    "GRADIENT_HISTORY",
    "GradientProbe",
    "GradientStats",
    "gradient_measure",
    "gradient_spread",
    "make_gradient_probe",
    "probe_loss_fns",
    "probe_statistics",
]

#: The history keys of ``train.analysis_every``: P, the cosine and the relative spread.
GRADIENT_HISTORY = ("grad_P", "grad_cosine", "grad_spread")

# keys inside the analyses' seed stream for the gradient probe: [seed, ANALYZE, _GRADIENTS, 0, k] picks the
# teachers of probe group k, [seed, ANALYZE, _GRADIENTS, 1, k, i] draws task i of it (different second keys,
# so no stream pads into another)
_GRADIENTS = 4
_PROBE_CHOICE, _PROBE_TASK = 0, 1


@dataclass
class GradientStats:
    """How much the gradients of m tasks agree, at one parameter point.

    Every quantity is over the concatenation of all parameter tensors, in float64. With the m
    task gradients ``g_i`` and their mean ``ḡ``:

    Attributes:
        P: the gradient-variance penalty IGR descends, ``(1/2m) Σ_i ‖g_i − ḡ‖²``.
        cosine: the mean cosine similarity ``cos(g_i, g_j)`` over the ``m(m−1)/2`` pairs ``i < j``
            (``nan`` for m < 2 or a zero gradient).
        relative_spread: ``(1/m) Σ_i ‖g_i − ḡ‖ / ‖ḡ‖`` (``nan`` when ``ḡ = 0``): the spread with
            the overall gradient scale divided out (P falls as training shrinks every gradient).
        mean_norm: ``‖ḡ‖``.
        task_norm: ``(1/m) Σ_i ‖g_i‖``.
        loss: the mean task loss (probe statistics only; ``nan`` from :func:`gradient_spread`).
    """

    P: float
    cosine: float
    relative_spread: float
    mean_norm: float
    task_norm: float
    loss: float = float("nan")


def gradient_spread(task_grads: Sequence[Mapping[str, Tensor]]) -> GradientStats:
    """The spread of ``m`` task gradients: P, mean pairwise cosine and relative spread.

    P is :func:`tgr_hub.igr.gradient_variance` (the same ``1/(2m)`` normalisation), evaluated on
    float64 copies of the gradients.

    Args:
        task_grads: ``m`` gradients ``{name: tensor}``, the same names and shapes in each.

    Returns:
        :class:`GradientStats` (``loss`` is ``nan``).

    Raises:
        AnalysisError: no gradients, or gradients with different names or shapes.
    """
    from .igr import gradient_variance

    if len(task_grads) == 0:
        raise AnalysisError("gradient statistics need at least one task gradient")
    keys = list(task_grads[0])
    shapes = {k: tuple(task_grads[0][k].shape) for k in keys}
    for g in task_grads[1:]:
        if list(g) != keys or any(tuple(g[k].shape) != shapes[k] for k in keys):
            raise AnalysisError("the task gradients do not have the same parameters and shapes")
    grads64 = [{k: g[k].detach().to("cpu", torch.float64) for k in keys} for g in task_grads]
    flat = torch.stack([torch.cat([g[k].reshape(-1) for k in keys]) for g in grads64])  # [m, D]
    m = flat.shape[0]
    mean = flat.mean(dim=0)
    mean_norm = float(mean.norm())
    norms = flat.norm(dim=1)
    deviations = (flat - mean).norm(dim=1)
    if m >= 2 and bool((norms > 0).all()):
        unit = flat / norms[:, None]
        rows, cols = torch.triu_indices(m, m, offset=1)
        cosine = float((unit[rows] * unit[cols]).sum(dim=1).mean())
    else:
        cosine = float("nan")
    relative = float(deviations.mean() / mean_norm) if mean_norm > 0 else float("nan")
    return GradientStats(
        P=gradient_variance(grads64),
        cosine=cosine,
        relative_spread=relative,
        mean_norm=mean_norm,
        task_norm=float(norms.mean()),
    )


@dataclass
class GradientProbe:
    """A fixed set of pseudo-tasks the gradient statistics are measured on.

    Attributes:
        tasks: ``K`` groups of ``m`` :class:`tgr_hub.data.Episode` pseudo-tasks (on the CPU).
        teachers: ``[K][m]`` the teacher index of each task.
        head: the fixed shared N-way head of ``head`` losses (:func:`tgr_hub.train.make_task_head`),
            the same for every method measured: the head training starts from, never trained here.
    """

    tasks: list[list[Any]]
    teachers: list[list[int]]
    head: torch.nn.Linear


def make_gradient_probe(
    members: Sequence[PoolMember],
    bank: MemoryBank,
    groups: Sequence[Sequence[int]],
    cfg: TrainConfig,
    *,
    num_groups: int,
    feature_dim: int,
    seed: int,
    head_seed: int | None = None,
) -> GradientProbe:
    """Draw the probe: ``num_groups`` groups of ``cfg.teachers_per_step`` pseudo-tasks from the bank, once.

    Probe group ``k`` picks a group of ``groups`` and ``m`` of its teachers with replacement (as a
    training step does, :func:`tgr_hub.train._choose_teachers`) from the stream
    ``[seed, ANALYZE, 4, 0, k]``; task ``i`` is a ``replay_way``-way task of ``replay_shot`` +
    ``replay_query`` images per class from the bank (:func:`tgr_hub.train.make_pseudo_task`),
    stream ``[seed, ANALYZE, 4, 1, k, i]``. The same pool, bank, groups and seed give the same probe.

    Args:
        members: the teachers.
        bank: the pool's memory bank (the up-front recoveries).
        groups: teacher indices per group (the spectral groups, or one group of all teachers).
        cfg: the ``train`` section (m, way, shot, query, distillation temperature).
        num_groups: K.
        feature_dim: the meta-model's feature width (for the head).
        seed: the probe's seed.
        head_seed: seeds the fixed head (default ``seed``); meta-training's seed gives the head
            the trainer's shared head starts from.

    Raises:
        AnalysisError: K < 1 or no teachers in ``groups``.
    """
    if num_groups < 1:
        raise AnalysisError(f"the gradient probe needs at least 1 group of tasks, got {num_groups}")
    groups = [list(g) for g in groups if len(g)]
    if not groups:
        raise AnalysisError("the gradient probe got no teachers to draw tasks from")
    tasks, teachers = [], []
    for k in range(num_groups):
        chosen = _choose_teachers(
            groups,
            cfg.teachers_per_step,
            numpy_rng(seed_sequence(seed, ANALYZE, _GRADIENTS, _PROBE_CHOICE, k)),
        )
        row = []
        for i, t in enumerate(chosen):
            rng = numpy_rng(seed_sequence(seed, ANALYZE, _GRADIENTS, _PROBE_TASK, k, i))
            task = make_pseudo_task(
                members[t],
                bank,
                way=cfg.replay_way,
                shot=cfg.replay_shot,
                query=cfg.replay_query,
                temperature=cfg.distill_temperature,
                rng=rng,
            )
            row.append(task.to(torch.device("cpu")))
        tasks.append(row)
        teachers.append(chosen)
    head = make_task_head(feature_dim, cfg.replay_way, seed if head_seed is None else head_seed)
    return GradientProbe(tasks, teachers, head)


def probe_loss_fns(
    model: MetaModel,
    tasks: Sequence[Any],
    learner: Any,
    kind: Literal["head", "episodic"],
    head: torch.nn.Linear | None = None,
    *,
    distill_weight: float = 0.0,
    temperature: float = 4.0,
) -> list[Callable[[dict[str, Tensor]], Tensor]]:
    """One loss closure ``{name: tensor} -> L_i`` per task: the training step's loss with a fixed head.

    :func:`tgr_hub.train.pseudo_task_loss` with ``kind`` (``head``: the fixed ``head``, not
    differentiated; ``episodic``: the learner's support/query loss). Every call runs on fresh
    copies of the model's buffers, so measuring leaves the BatchNorm running statistics alone.
    The closures take the meta-model's parameters only.
    """
    if kind not in ("head", "episodic"):
        raise AnalysisError(f"the probe loss is 'head' or 'episodic', got {kind!r}")
    if kind == "head" and head is None:
        raise AnalysisError("a 'head' probe loss needs the probe's fixed head")
    device = next(model.parameters()).device
    fixed = (
        {} if head is None else {HEAD_WEIGHT: head.weight.detach().to(device), HEAD_BIAS: head.bias.detach().to(device)}
    )
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def loss_fn(task: Any) -> Callable[[dict[str, Tensor]], Tensor]:
        def compute(params: dict[str, Tensor]) -> Tensor:
            copies = {k: b.clone() for k, b in buffers.items()}
            return pseudo_task_loss(
                learner,
                model,
                task,
                {**params, **copies, **fixed},
                kind=kind,
                distill_weight=distill_weight,
                temperature=temperature,
            )

        return compute

    return [loss_fn(task.to(device)) for task in tasks]


def probe_statistics(
    model: MetaModel,
    probe: GradientProbe,
    learner: Any,
    kind: Literal["head", "episodic"] = "head",
    *,
    distill_weight: float = 0.0,
    temperature: float = 4.0,
) -> GradientStats:
    """The gradient statistics of the probe's task groups at the model's current parameters.

    For each of the K groups, the m task gradients w.r.t. the meta-model's parameters (the fixed
    head is not differentiated) go through :func:`gradient_spread`; every field is the mean over
    the groups. No parameter, buffer or ``.grad`` of the model changes; the model is measured in
    train mode (batch statistics, as the training step computes its losses) and its mode restored.

    Args:
        model: the meta-model.
        probe: :func:`make_gradient_probe`'s tasks and head.
        learner: the meta-learner (for ``episodic``).
        kind: ``head`` (the reference's shared-head CE, with the probe's fixed head) or ``episodic``.
        distill_weight, temperature: as the training step's loss.
    """
    from dataclasses import fields

    from .igr import task_gradients

    was_training = model.training
    model.train()
    try:
        params = {k: v.detach() for k, v in model.named_parameters()}
        rows = []
        for tasks in probe.tasks:
            fns = probe_loss_fns(
                model, tasks, learner, kind, probe.head, distill_weight=distill_weight, temperature=temperature
            )
            losses, grads = task_gradients(fns, params)
            stats = gradient_spread(grads)
            stats.loss = float(np.mean(losses))
            rows.append(stats)
    finally:
        model.train(was_training)
    names = [f.name for f in fields(GradientStats)]
    return GradientStats(**{f: float(np.mean([getattr(s, f) for s in rows])) for f in names})


def gradient_measure(
    members: Sequence[PoolMember],
    bank: MemoryBank,
    cfg: TrainConfig,
    *,
    seed: int,
) -> Callable[[MetaModel], dict[str, float]]:
    """``train.analysis_every``'s measurement: ``model -> {grad_P, grad_cosine, grad_spread}``.

    The probe is drawn once, now, from ``bank`` (the tasks recovered before training) with
    ``cfg.analysis_groups`` groups of ``m`` tasks from all teachers and a fixed head, all from
    ``seed``; a benchmark passes the seed its methods share (the validation seed), so every
    method of a seed is measured on the same tasks. Measuring draws no random number and changes
    no parameter, buffer or gradient of the model.
    """
    probe: GradientProbe | None = None  # drawn at the first measurement (the model gives the head's width)
    learner = make_learner(
        cfg.learner, inner_steps=cfg.inner_steps, inner_lr=cfg.inner_lr, first_order=cfg.maml_first_order
    )

    def measure(model: MetaModel) -> dict[str, float]:
        nonlocal probe
        if probe is None:
            probe = make_gradient_probe(
                members,
                bank,
                [list(range(len(members)))],
                cfg,
                num_groups=cfg.analysis_groups,
                feature_dim=model.feature_dim,
                seed=seed,
            )
        stats = probe_statistics(
            model, probe, learner, cfg.igr_loss, distill_weight=cfg.distill_weight, temperature=cfg.distill_temperature
        )
        return dict(zip(GRADIENT_HISTORY, (stats.P, stats.cosine, stats.relative_spread)))

    return measure
