"""Meta-training with implicit gradient regularisation inside teacher groups (docs/method.md, stage 3).

One iteration (step ``s``):

    group  ─► m teachers ─► one pseudo-task each: freshly recovered (online recovery, every
              ``recover.online_every`` steps) and added to the bank, else drawn from the bank
           ─► per-task losses L_i(θ) ─► IGR direction (:func:`tgr_hub.igr.igr_direction`) ─► Adam step
           ─► replay: episodes mixing classes across teachers, from the bank ─► Adam step

Every ``eval_every`` steps the meta-model is evaluated on real episodes of the
meta-*validation* split and the best state is kept. β = 0 with a single group of all
teachers is the ERM baseline.

Online recovery: teacher ``t``'s recovery at step ``s`` is seeded by the stream
``[seed, RECOVER_ONLINE, s, t]`` and runs on process ``t % world``, which also keeps the
teacher's warm-started generator (and its Adam state; ``recover.online_start = "warm"``); the
images are exchanged as uint8 and inserted in task order, so every process holds the same bank.
Checkpoints add the bank and the warm generators, so a resumed run continues exactly.

Several processes (Accelerate)
------------------------------
The same code runs on 1 or N processes and gives the same meta-model (see
:mod:`tgr_hub.distributed`):

* **Randomness is counter-based.** The group, teachers and images of step ``s`` come from
  ``numpy.random.default_rng([seed, 3, s, ...])`` streams, one per choice / task / replay
  episode, so every process can draw any task without drawing the others first, nothing
  depends on the number of processes, and resuming needs only the step number. Validation
  episodes come from their own seeded sampler and never touch the training streams.
* **Tasks are split across processes.** Task ``i`` of a step is computed by process
  ``i % world``. The step is :func:`tgr_hub.igr.igr_direction` itself, given the exact exchange
  (:meth:`Distributed.gather_rows`) as its ``gather``: every process forms ``ḡ`` in task order
  from the exchanged ``g_i``, displaces its own tasks ``θ_i' = θ + β(g_i − ḡ)``, and the
  displaced gradients are exchanged the same way: the IGR direction is bitwise the one a
  single process computes. β = 0 skips the second
  pass (the direction is exactly ḡ). Replay episodes are shared out the same way. The
  second-order variant couples all tasks through ḡ's graph, so it is computed by the main
  process and broadcast.
* **BatchNorm running statistics** (buffers, not trained; the learners evaluate with batch
  statistics, but the demo's single-image mode reads them) are updated as the *mean over the
  step's tasks* of the statistics each task's forward passes give from the step's starting
  value, and likewise over replay episodes. Each task runs on copies of the buffers, so the
  displaced (IGR) pass does not touch them, and the mean is formed in task order after the
  exact exchange: the buffers too are bitwise independent of the number of processes.
  ``num_batches_tracked`` counts these updates (one per IGR step and one per replay step).
* **Checkpoints** (``train.checkpoint_every``): Accelerate's ``save_state`` (model, optimiser,
  RNG states) plus ``trainer_state.json`` (step, history, best step, settings) and
  ``best_model.safetensors``; see :func:`meta_train`'s ``resume``.

Mixed precision (``train.mixed_precision``): the meta-model's forward runs under Accelerate's
autocast; with fp16 the losses are scaled by the accelerator's gradient scaler (and the IGR
displacement unscaled), and a step whose gradients overflow is skipped by the scaler.
"""

from __future__ import annotations

import functools
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from . import seeds
from .bank import MemoryBank, RecoveredTask, to_uint8
from .config import RecoverConfig, TrainConfig, changed_settings
from .data import Episode, ImageSplit
from .distributed import (
    TRAINER_STATE,
    Distributed,
    clean_checkpoint_leftovers,
    flatten,
    latest_checkpoint,
    load_checkpoint,
    make_accelerator,
    save_checkpoint,
    unflatten,
)
from .errors import ConfigError, RunFolderError
from .evaluate import ValSettings, meta_validate
from .igr import Gather, igr_direction, mean_gradient
from .io import save_safetensors_atomic, write_json_atomic
from .learners import MAML, ProtoNet, features, make_learner
from .metamodel import MetaModel
from .pool import PoolMember
from .progress import progress_bar
from .recover import (
    MetaStart,
    WarmGenerator,
    recover_task,
    recovery_quality,
    sample_task_classes,
)

logger = logging.getLogger(__name__)

__all__ = [
    "StepInfo",
    "TrainResult",
    "make_pseudo_task",
    "meta_train",
    "pseudo_task_loss",
    "step_rng",
]

_TRAIN_STREAM = seeds.TRAIN
_CHOICE, _TASK, _REPLAY = 0, 1, 2
_STATE_FORMAT = "tgr-hub-trainer-state"
BEST_MODEL = "best_model.safetensors"
BANK_FOLDER = "bank"  # inside a checkpoint: the memory bank as online recovery left it
GENERATORS_FOLDER = "generators"  # inside a checkpoint: t00003.safetensors per warm-started teacher
META_START_FILE = "meta_generators.safetensors"  # inside a checkpoint: the meta start's generators and Adam
QUALITY = ("agreement", "bn_loss", "ce", "diversity")  # logged per online recovery (recovery_quality)


@dataclass
class TrainResult:
    """What meta-training produced."""

    best_state: dict[str, Tensor]
    best_step: int
    best_val_accuracy: float
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    resumed_from: int = 0  # the checkpoint step training continued from (0: from scratch)
    bank: MemoryBank | None = None  # with online recovery: the bank as it ended (the input bank is left alone)
    val_std_error: float = float("nan")  # standard error over episodes of the last meta-validation accuracy


@dataclass
class StepInfo:
    """Passed to ``meta_train``'s ``on_step`` after every step (on every process).

    Attributes:
        step: steps done (1-based).
        model: the meta-model after the step.
        optimizer: the (Accelerate-wrapped) optimiser.
        direction: the IGR direction applied at this step ``{name: tensor}`` (before any
            mixed-precision unscaling).
        replay_direction: the replay gradient applied after it (``None`` without replay).
        task_losses: ``[m]`` the tasks' losses at θ, in task order.
    """

    step: int
    model: MetaModel
    optimizer: torch.optim.Optimizer
    direction: dict[str, Tensor]
    replay_direction: dict[str, Tensor] | None
    task_losses: list[float]


def step_rng(seed: int, step: int, *key: int) -> np.random.Generator:
    """The random stream of one choice of meta-training step ``step`` (0-based).

    ``key`` is ``(0,)`` for the group/teacher choice, ``(1, i)`` for task ``i`` and ``(2, e)``
    for replay episode ``e``: a pure function of its arguments (see the module docstring).
    """
    return seeds.numpy_rng(seeds.seed_sequence(seed, _TRAIN_STREAM, step, *key))


def make_pseudo_task(
    member: PoolMember,
    bank: MemoryBank,
    *,
    way: int,
    shot: int,
    query: int,
    temperature: float,
    rng: np.random.Generator,
) -> Episode:
    """Draw a ``way``-way pseudo-task of one teacher from the memory bank.

    The classes are an N-way subset of the teacher's recovered classes (all of them for a
    5-way teacher); each class gives ``shot`` support and up to ``query`` query images. The
    teacher's predictions are computed on the teacher's device; tensors come back there.
    """
    available = bank.classes_of(member.name)
    classes = available if len(available) <= way else sorted(int(c) for c in rng.choice(available, way, replace=False))
    images, labels = bank.task_for(member.name, classes, shot + query, rng, allow_fewer=True)
    support_idx, query_idx = [], []
    for cls in classes:
        idx = (labels == cls).nonzero().flatten().tolist()
        support_idx += idx[:shot]
        query_idx += idx[shot : shot + query]
    remap = {cls: position for position, cls in enumerate(classes)}
    task_labels = torch.tensor([remap[int(c)] for c in labels.tolist()], dtype=torch.long)
    support_idx_t, query_idx_t = torch.tensor(support_idx, dtype=torch.long), torch.tensor(query_idx, dtype=torch.long)
    device = next(iter(member.model.parameters()), torch.empty(0)).device
    support_x, query_x = images[support_idx_t].to(device), images[query_idx_t].to(device)
    with torch.no_grad():
        teacher_logits = member.logits(torch.cat([support_x, query_x]))[:, classes]
        teacher_probs = F.softmax(teacher_logits.float() / temperature, dim=-1)
    return Episode(
        support_x,
        task_labels[support_idx_t].to(device),
        query_x,
        task_labels[query_idx_t].to(device),
        classes=list(classes),
        teacher_probs=teacher_probs,
    )


HEAD_WEIGHT, HEAD_BIAS = "__task_head__.weight", "__task_head__.bias"  # the shared N-way head of `head` losses


def pseudo_task_loss(
    learner: ProtoNet | MAML,
    model: MetaModel,
    task: Episode,
    params: dict[str, Tensor],
    *,
    kind: str,
    distill_weight: float,
    temperature: float,
) -> Tensor:
    """The meta-model's loss L_i(θ) on one pseudo-task, a function of ``params``.

    ``head`` (the reference): every image of the task (support and query) through the
    meta-model and the **shared** N-way head ``params[HEAD_WEIGHT] [way_max, D]``,
    ``params[HEAD_BIAS] [way_max]`` (its first ``way`` rows), cross-entropy against the
    teacher's own label order, no inner adaptation. Teachers that order different classes
    alike pull the shared parameters apart: the conflict IGR regularises.
    ``episodic``: the learner's own loss, CE on the query split after adapting on the support.

    With ``distill_weight`` w > 0 the loss adds ``w · T² · KL(p_teacher,T ‖ p_model,T)`` on the
    same images (T² keeps the KL's gradient scale independent of T).
    """
    if task.teacher_probs is None:
        raise ValueError("a pseudo-task carries its teacher's predictions (make_pseudo_task sets teacher_probs)")
    body = {k: v for k, v in params.items() if k not in (HEAD_WEIGHT, HEAD_BIAS)}
    n_support = task.support_y.numel()
    if kind == "head":
        way = task.teacher_probs.shape[1]
        feats = features(model, torch.cat([task.support_x, task.query_x]), body)
        logits = (feats @ params[HEAD_WEIGHT][:way].T + params[HEAD_BIAS][:way]).float()
        labels, targets = torch.cat([task.support_y, task.query_y]), task.teacher_probs
    elif kind == "episodic":
        logits = learner.logits(model, task.support_x, task.support_y, task.query_x, params=body).float()
        labels, targets = task.query_y, task.teacher_probs[n_support:]
    else:
        raise ConfigError(f"unknown task loss {kind!r}", hint="train.igr_loss is head or episodic")
    loss = F.cross_entropy(logits, labels)
    if distill_weight > 0:
        log_student = F.log_softmax(logits / temperature, dim=-1)
        loss = loss + distill_weight * temperature**2 * F.kl_div(log_student, targets, reduction="batchmean")
    return loss


def _choose_teachers(groups: Sequence[Sequence[int]], m: int, rng: np.random.Generator) -> list[int]:
    """A random group, then ``m`` of its teachers drawn **with replacement** (the reference): every
    step has ``m`` tasks, whatever the group's size; a teacher drawn twice gives two fresh tasks."""
    group = groups[int(rng.integers(len(groups)))]
    return [int(i) for i in rng.choice(group, size=m, replace=True)]


def make_task_head(feature_dim: int, way: int, seed: int) -> nn.Linear:
    """The shared ``way``-way head of ``head`` task losses, initialised as ``nn.Linear`` is, from its own stream."""
    head = nn.Linear(feature_dim, way)
    generator = seeds.torch_generator(seeds.torch_seed(seed, seeds.HEAD_INIT))
    bound = 1 / math.sqrt(feature_dim)
    with torch.no_grad():
        head.weight.uniform_(-bound, bound, generator=generator)
        head.bias.uniform_(-bound, bound, generator=generator)
    return head


# --- BatchNorm running statistics ------------------------------------------------------------


def _bn_buffer_names(model: nn.Module) -> tuple[list[str], list[str]]:
    """``(float names, counter names)`` of the running-statistics buffers of every BatchNorm."""
    floats: list[str] = []
    counters: list[str] = []
    for prefix, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            for name, buffer in module.named_buffers(recurse=False):
                if buffer is None:
                    continue
                full = f"{prefix}.{name}" if prefix else name
                (floats if buffer.is_floating_point() else counters).append(full)
    return floats, counters


def _has_randomness(model: nn.Module) -> bool:
    """Whether the forward pass draws random numbers in train mode (dropout, drop-path)."""
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            return True
        if float(getattr(module, "drop_prob", 0.0) or 0.0) > 0:
            return True
    return False


class _ItemLoss:
    """One task's (or replay episode's) loss as a function of the meta-model's parameters.

    Every call runs on fresh copies of the BatchNorm buffers (``start``); the copies of the
    first call (the pass at θ) are kept in ``buffers_after`` for the running-statistics update,
    later calls (the displaced pass) leave no trace. With a stochastic model (dropout), every
    call draws from the item's own torch seed, so the item is the same function at θ and θ'
    and on whichever process computes it.
    """

    def __init__(
        self,
        compute: Callable[[dict[str, Tensor]], Tensor],
        start: Mapping[str, Tensor],
        scale: float,
        torch_seed: int | None,
        device: torch.device,
    ) -> None:
        self.compute = compute
        self.start = start
        self.scale = scale
        self.torch_seed = torch_seed
        self.device = device
        self.buffers_after: dict[str, Tensor] | None = None

    def __call__(self, params: dict[str, Tensor]) -> Tensor:
        copies = {k: b.clone() for k, b in self.start.items()}
        if self.torch_seed is None:
            loss = self.compute({**params, **copies})
        else:
            with seeds.seeded_torch(self.torch_seed, [self.device]):
                loss = self.compute({**params, **copies})
        if self.buffers_after is None:
            self.buffers_after = copies
        return loss * self.scale if self.scale != 1.0 else loss


@dataclass
class _Combined:
    direction: dict[str, Tensor]
    losses: list[float]
    buffers: dict[str, Tensor]  # mean over items of the BN buffers after each item's θ pass


class _StepMechanics:
    """Everything a meta-training step does besides its algorithm, for one set of trained parameters.

    The step itself (:meth:`_MetaTrainer.task_step`) reads: choose tasks, ``loss`` of each,
    ``direction`` (:func:`tgr_hub.igr.igr_direction`), ``apply``. Behind those four calls:

    - **several processes**: item ``i`` is computed on process ``i % world`` (``shard``); the
      exact exchange (:meth:`Distributed.gather_rows`) is injected into ``igr_direction``, so the
      direction is bitwise the one a single process computes. Second-order IGR couples all
      items through ḡ's graph: the main process computes them all and broadcasts the result;
    - **BatchNorm running statistics**: every loss runs on fresh copies of the buffers; ``apply``
      sets them to the mean, in item order, of what each item's pass at θ left, and counts one
      update in ``num_batches_tracked``;
    - **mixed precision**: under fp16 each loss is multiplied by the gradient scaler's S, so the
      displacement uses β / S and the reported losses are divided by S;
    - **stochastic models** (dropout): each item draws from its own torch seed
      ``[seed, TRAIN, *key]``, so it is the same function at θ and θ' and on any process.
    """

    def __init__(
        self,
        dist: Distributed,
        model: nn.Module,
        params: Mapping[str, Tensor],
        *,
        seed: int = 0,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        self.dist, self.optimizer, self.seed = dist, optimizer, seed
        self.keys = list(params)
        self.params = params
        self.buffers = dict(model.named_buffers())
        self.bn_keys, self.bn_counters = _bn_buffer_names(model)
        self.torch_seeded = _has_randomness(model)
        self.dtype = next(iter(params.values())).dtype
        self.grad_size = sum(p.numel() for p in params.values())
        self.bn_size = sum(self.buffers[k].numel() for k in self.bn_keys)

    # --- the four calls of a step --------------------------------------------------------------

    def shard(self, n: int, *, beta: float = 0.0, order: str = "first") -> Sequence[int]:
        """The items of ``n`` this process computes for ``direction`` with the same β and order."""
        if order == "second" and beta != 0:  # coupled through ḡ's graph: all on the main process
            return range(n) if self.dist.is_main else range(0)
        return self.dist.shard(n)

    def loss(self, compute: Callable[[dict[str, Tensor]], Tensor], *key: int) -> _ItemLoss:
        """``compute`` (params -> loss) as an item of this step; ``key`` names its torch seed."""
        start_buffers = {k: self.buffers[k].detach() for k in (*self.bn_keys, *self.bn_counters)}
        torch_seed = None
        if self.torch_seeded:
            torch_seed = seeds.torch_seed(self.seed, _TRAIN_STREAM, *key)
        return _ItemLoss(compute, start_buffers, self.loss_scale(), torch_seed, self.dist.device)

    def direction(self, items: Mapping[int, _ItemLoss], n: int, *, beta: float, order: str = "first") -> _Combined:
        """The IGR direction of ``n`` items (``items``: this process's), the plain mean at β = 0."""
        if order == "second" and beta != 0:
            return self._second_order(items, n, beta=beta, scale=self.loss_scale())
        return self.combine(items, n, beta=beta, scale=self.loss_scale())

    def apply(self, combined: _Combined, scale: float = 1) -> None:
        """An optimiser step along ``scale`` × the direction (the items' sum for ``scale`` = n); BatchNorm
        buffers to the items' mean."""
        assert self.optimizer is not None, "apply needs the optimiser"
        self.optimizer.zero_grad(set_to_none=True)  # a parameter without direction stays
        for name, parameter in self.params.items():
            if name in combined.direction:
                direction = combined.direction[name].detach()
                parameter.grad = direction.clone() if scale == 1 else scale * direction
        self.optimizer.step()
        with torch.no_grad():
            for name, value in combined.buffers.items():
                self.buffers[name].copy_(value)
            for name in self.bn_counters:
                self.buffers[name].add_(1)

    # --- behind them -----------------------------------------------------------------------------

    def loss_scale(self) -> float:
        scaler = self.dist.accelerator.scaler
        return float(scaler.get_scale()) if scaler is not None else 1.0

    def _exchange_losses(self, own: Sequence[int], losses: Sequence[float], n: int) -> list[float]:
        rows = {i: torch.tensor([loss], dtype=torch.float64) for i, loss in zip(own, losses)}
        return self.dist.gather_rows(rows, n, 1, torch.float64)[:, 0].tolist()

    def gather(self, n: int) -> Gather:
        """The exact exchange :func:`igr_direction` is given: own ``{i: g_i}`` -> all n, in task order."""

        def exchange(rows: Mapping[int, Mapping[str, Tensor]]) -> list[dict[str, Tensor]]:
            flat = {i: flatten(g, self.keys, self.dtype) for i, g in rows.items()}
            table = self.dist.gather_rows(flat, n, self.grad_size, self.dtype)
            return [unflatten(table[i], self.params, self.keys) for i in range(n)]

        return exchange

    def combine(self, items: Mapping[int, _ItemLoss], n: int, *, beta: float, scale: float) -> _Combined:
        """First-order IGR (β > 0) or the plain mean (β = 0) over ``n`` items, ``items`` being this process's.

        :func:`igr_direction` itself, with the exact cross-process exchange injected: bitwise what
        it gives on one process. With a loss scale S the closures return S·L_i, so the
        displacement uses β / S (the true gradients' displacement).
        """
        own = sorted(items)
        params = {k: self.params[k] for k in self.keys}
        result = igr_direction({i: items[i] for i in own}, params, beta / scale, gather=self.gather(n))
        buffers: dict[str, Tensor] = {}
        if self.bn_keys:  # the BatchNorm statistics each item's pass at θ left, averaged in item order
            rows = {i: flatten(items[i].buffers_after or {}, self.bn_keys, self.dtype) for i in own}
            table = self.dist.gather_rows(rows, n, self.bn_size, self.dtype)
            buffers = mean_gradient([unflatten(table[i], self.buffers, self.bn_keys) for i in range(n)])
        losses = self._exchange_losses(own, [v / scale for v in result.losses], n)
        return _Combined(result.direction, losses, buffers)

    def _second_order(self, items: Mapping[int, _ItemLoss], n: int, *, beta: float, scale: float) -> _Combined:
        """The authors' second-order IGR: computed on the main process (``items`` = all n) and broadcast.

        With a loss scale S the closures return S·L_i, so the displacement uses β / S.
        """
        params = {k: self.params[k] for k in self.keys}
        rows: dict[int, Tensor] = {}
        if self.dist.is_main:
            result = igr_direction([items[i] for i in range(n)], params, beta / scale, order="second")
            bns = [flatten(items[i].buffers_after or {}, self.bn_keys, self.dtype) for i in range(n)]
            rows[0] = torch.cat(
                [
                    flatten(result.direction, self.keys, self.dtype),
                    torch.tensor(result.losses, dtype=self.dtype, device=self.dist.device),
                    *[b.to(self.dist.device) for b in bns],
                ]
            )
        size = self.grad_size + n + n * self.bn_size
        row = self.dist.gather_rows(rows, 1, size, self.dtype)[0]
        direction = unflatten(row[: self.grad_size], params, self.keys)
        losses = (row[self.grad_size : self.grad_size + n].double() / scale).tolist()
        start = self.grad_size + n
        all_bn = [
            unflatten(row[start + i * self.bn_size : start + (i + 1) * self.bn_size], self.buffers, self.bn_keys)
            for i in range(n)
        ]
        return _Combined(direction, losses, mean_gradient(all_bn) if self.bn_keys else {})


# --- checkpoint state ----------------------------------------------------------------------------


def _settings(cfg: TrainConfig, seed: int, recover: RecoverConfig | None = None) -> dict[str, Any]:
    """The settings a checkpoint records, as config sections (``recover``: with online recovery);
    what must match to resume from it is :data:`tgr_hub.config.MAY_CHANGE` ``["checkpoint"]``."""
    settings: dict[str, Any] = {"seed": int(seed), "train": asdict(cfg)}
    if recover is not None:
        settings["recover"] = asdict(recover)
    return settings


def _as_sections(saved: dict[str, Any], seed: int) -> dict[str, Any]:
    """A checkpoint's settings as config sections.

    Older checkpoints recorded the train section flat beside the run seed, whose ``seed`` key the
    train section's own ``seed`` overwrote: the run seed was not recorded, and is taken as ``seed``.
    """
    if "train" in saved:
        return saved
    flat = {k: v for k, v in saved.items() if k != "recover"}
    return {"seed": int(seed), "train": flat, **({"recover": saved["recover"]} if "recover" in saved else {})}


def _bank_summary(bank: MemoryBank) -> dict[str, int]:
    return {"images": len(bank), "classes": bank.num_classes, "teachers": len(bank.teachers())}


def _read_trainer_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads((path / TRAINER_STATE).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise RunFolderError(f"checkpoint {path} has no readable {TRAINER_STATE}: {error}") from None
    if state.get("format") != _STATE_FORMAT:
        raise RunFolderError(f"{path / TRAINER_STATE} is not a tgr-hub trainer state")
    return state


def _check_resumable(
    state: dict[str, Any],
    cfg: TrainConfig,
    seed: int,
    bank_summary: dict[str, int],
    path: Path,
    recover: RecoverConfig | None = None,
) -> None:
    saved = _as_sections(state.get("settings", {}), seed)
    changed = changed_settings(saved, _settings(cfg, seed, recover), "checkpoint")
    if changed:
        detail = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
        raise ConfigError(
            f"cannot resume from {path}: the settings changed ({detail})",
            hint="resume with the interrupted run's settings, or delete the checkpoints to start over",
        )
    if state.get("bank") != bank_summary:
        raise ConfigError(
            f"cannot resume from {path}: the memory bank changed since it was saved "
            f"({state.get('bank')} -> {bank_summary})",
            hint="delete the checkpoints to start meta-training over",
        )


# --- the loop ------------------------------------------------------------------------------------


class _MetaTrainer:
    """The state of one meta-training run and its phases; :func:`meta_train` drives it.

    Holds the prepared model and optimiser, the best-on-val state and the history (what a
    checkpoint saves besides Accelerate's state), and the step mechanics of the IGR and replay steps.
    """

    def __init__(
        self,
        model: MetaModel,
        members: list[PoolMember],
        bank: MemoryBank,
        groups: list[list[int]],
        cfg: TrainConfig,
        *,
        val_split: ImageSplit,
        seed: int,
        dist: Distributed,
        checkpoint_dir: Path | None,
        recover: RecoverConfig | None = None,
        generators: Mapping[int, Mapping[str, Tensor]] | None = None,
        val_seed: int | None = None,
    ) -> None:
        self.members, self.groups, self.cfg = members, groups, cfg
        # online recovery: the bank grows during training (on a copy: the caller's bank is left alone)
        self.online = recover if recover is not None and recover.online_every > 0 else None
        self.initial_bank = _bank_summary(bank)
        self.bank = bank.copy() if self.online is not None else bank
        self.warm: dict[int, WarmGenerator] = {}  # warm-started generators of the teachers this process owns
        self.last_quality: dict[str, float] | None = None  # of the last step's online recoveries
        self.recoveries = [0] * len(members)  # online recoveries per teacher (every process counts all)

        self.val_split, self.seed, self.dist, self.checkpoint_dir = val_split, seed, dist, checkpoint_dir
        self.val_seed = seeds.val_seed(seed) if val_seed is None else val_seed
        self.accelerator = dist.accelerator
        self.learner = make_learner(
            cfg.learner, inner_steps=cfg.inner_steps, inner_lr=cfg.inner_lr, first_order=cfg.maml_first_order
        )
        # No DDP: prepare_model(evaluation_mode=True) only places the model and adds autocast;
        # gradients are combined explicitly (functional_call would bypass DDP's hooks anyway).
        self.model = self.accelerator.prepare_model(model, evaluation_mode=True)
        # `head` task losses train a shared N-way head beside the meta-model (not part of it)
        self.head = make_task_head(model.feature_dim, cfg.replay_way, seed) if cfg.igr_loss == "head" else None
        trained = [*self.model.parameters()]
        if self.head is not None:
            self.head = self.accelerator.prepare_model(self.head, evaluation_mode=True)
            trained += [*self.head.parameters()]
        self.optimizer = self.accelerator.prepare_optimizer(torch.optim.Adam(trained, lr=cfg.lr))
        for member in members:
            member.to(dist.device)
        # the meta start: every process holds the same meta-generators (seeded; moved by the same sums)
        self.meta_start = (
            MetaStart(members, self.online, seed)
            if self.online is not None and self.online.online_start == "meta"
            else None
        )
        if self.online is not None and self.online.online_start == "warm":
            # the generators the up-front recovery left, if any (on the teachers' device)
            for t in self._owned_teachers():
                if generators is not None and t in generators:
                    self.warm[t] = self._fresh_warm(t)
                    self.warm[t].load_state_tensors(dict(generators[t]))
        dist.broadcast_module(self.model)  # identical start on every process, whatever each one built
        if self.head is not None:
            dist.broadcast_module(self.head)

        self.history: dict[str, list[tuple[int, float]]] = {"task_loss": [], "replay_loss": [], "val_acc": []}
        if self.online is not None:
            self.history.update({f"recover_{k}": [] for k in QUALITY})

        self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.best_step, self.best_acc = 0, -math.inf
        self.val_std_error = float("nan")

        self.params = dict(self.model.named_parameters())  # θ: what replay trains
        self.task_params = dict(self.params)  # what the IGR step trains: θ and the shared head, if any
        if self.head is not None:
            self.task_params.update({HEAD_WEIGHT: self.head.weight, HEAD_BIAS: self.head.bias})
        # the IGR step trains θ and the shared head, if any; replay trains θ
        self.igr = _StepMechanics(dist, self.model, self.task_params, seed=seed, optimizer=self.optimizer)
        self.replay = _StepMechanics(dist, self.model, self.params, seed=seed, optimizer=self.optimizer)

    # --- checkpoints ---------------------------------------------------------------------------

    def restore(self, resume: bool) -> int:
        """Load the newest checkpoint when resuming; returns the step to start from."""
        folder, dist = self.checkpoint_dir, self.dist
        if folder is None:
            return 0
        if dist.is_main:
            clean_checkpoint_leftovers(folder)
        dist.barrier()
        found = latest_checkpoint(folder)
        if found is not None and not resume:
            raise RunFolderError(
                f"{folder} holds checkpoints of an earlier meta-training (newest: {found.name})",
                hint="pass --resume to continue it, or delete that folder to start over",
            )
        if found is None:
            if resume:
                logger.info("no checkpoint in %s: meta-training starts from step 0", folder)
            return 0
        state = _read_trainer_state(found)
        _check_resumable(state, self.cfg, self.seed, self.initial_bank, found, self.online)
        load_checkpoint(dist, found)
        if self.online is not None:
            self._restore_online(found, state)
        start = int(state["step"])
        self.history = {k: [(int(s), float(v)) for s, v in values] for k, values in state["history"].items()}
        self.best_step, self.best_acc = int(state["best_step"]), float(state["best_val_accuracy"])
        self.best_state = {k: v.to(dist.device) for k, v in load_file(str(found / BEST_MODEL)).items()}
        logger.info("resuming meta-training from %s (step %d of %d)", found.name, start, self.cfg.iterations)
        return start

    def _restore_online(self, found: Path, state: dict[str, Any]) -> None:
        """The bank, the per-teacher recovery counts and this process's warm generators of a checkpoint."""
        self.bank = MemoryBank.load(found / BANK_FOLDER)
        if self.meta_start is not None:
            self.meta_start.load_state_tensors(load_file(str(found / META_START_FILE), device=str(self.dist.device)))
        self.recoveries = [int(r) for r in state["online"]["recoveries"]]
        self.warm = {}
        for t in self._owned_teachers():
            path = found / GENERATORS_FOLDER / f"t{t:05d}.safetensors"
            if path.is_file():
                warm = self._fresh_warm(t)
                warm.load_state_tensors(load_file(str(path)))
                self.warm[t] = warm

    def checkpoint(self, step: int) -> None:
        assert self.checkpoint_dir is not None  # meta_train checks it
        save_checkpoint(
            self.dist,
            self.checkpoint_dir,
            step,
            lambda folder: self._write_state(folder, step),
            keep=self.cfg.keep_checkpoints,
            write_own=self._write_generators if self.warm else None,
        )

    def _write_generators(self, folder: Path) -> None:
        """Every process writes the warm generators of the teachers it owns (into the temp folder)."""
        target = folder / GENERATORS_FOLDER
        target.mkdir(exist_ok=True)
        for t, warm in sorted(self.warm.items()):
            save_safetensors_atomic(target / f"t{t:05d}.safetensors", warm.state_tensors())

    def _write_state(self, folder: Path, step: int) -> None:
        save_safetensors_atomic(folder / BEST_MODEL, self.best_state)
        state = {
            "format": _STATE_FORMAT,
            "version": 1,
            "step": step,
            "iterations": self.cfg.iterations,
            "world_size": self.dist.world,
            "settings": _settings(self.cfg, self.seed, self.online),
            "bank": self.initial_bank,
            "sampling": "counter-based: numpy default_rng([seed, 3, step, ...]); the step is the position",
            "best_step": self.best_step,
            "best_val_accuracy": self.best_acc,
            "history": self.history,
        }
        if self.online is not None:
            self.bank.save(folder / BANK_FOLDER)
            state["online"] = {"recoveries": self.recoveries}
        if self.meta_start is not None:
            save_safetensors_atomic(folder / META_START_FILE, self.meta_start.state_tensors())
        write_json_atomic(folder / TRAINER_STATE, state)  # inside the temp folder

    # --- one step --------------------------------------------------------------------------------

    def validate(self, step: int) -> None:
        """Meta-validation on real episodes with its own settings (``val_way``, each of ``val_shots``,
        ``val_query``); the checkpoint is chosen on the mean accuracy over the shots."""
        cfg = self.cfg
        score = meta_validate(self.model, self.val_split, ValSettings.of(cfg), seed=self.val_seed, dist=self.dist)
        accuracy, self.val_std_error = score.accuracy, score.std_error
        score.record(self.history, step)
        if accuracy > self.best_acc:
            self.best_acc, self.best_step = accuracy, step
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.accelerator.log({"val_acc": accuracy}, step=step)
        logger.info(
            "step %d: meta-val %d-way %s-shot accuracy %.2f%% ± %.2f (best %.2f%% at step %d)",
            step,
            cfg.val_way,
            "/".join(map(str, cfg.val_shots)),
            100 * accuracy,
            100 * self.val_std_error,
            100 * self.best_acc,
            self.best_step,
        )

    def task_step(self, step: int) -> _Combined:
        """The TGR step: one group's m teachers, a pseudo-task of each, their IGR direction, one Adam step."""
        cfg = self.cfg
        self.model.train()
        teachers = _choose_teachers(self.groups, cfg.teachers_per_step, step_rng(self.seed, step, _CHOICE))
        self.last_quality = None  # recover_fresh sets it
        fresh = self.recover_fresh(step, teachers) if self._online_step(step) else None
        losses = {}
        for i in self.igr.shard(len(teachers), beta=cfg.beta, order=cfg.igr_order):
            # a fresh recovery is this step's task; without online recovery the task comes from the bank
            source = self.bank if fresh is None else MemoryBank.holding(fresh[i])
            task = make_pseudo_task(
                self.members[teachers[i]],
                source,
                way=cfg.replay_way,
                shot=cfg.replay_shot,
                query=cfg.replay_query,
                temperature=cfg.distill_temperature,
                rng=step_rng(self.seed, step, _TASK, i),
            ).to(self.dist.device)
            loss_of_task = functools.partial(
                pseudo_task_loss,
                self.learner,
                self.model,
                task,
                kind=cfg.igr_loss,
                distill_weight=cfg.distill_weight,
                temperature=cfg.distill_temperature,
            )
            losses[i] = self.igr.loss(loss_of_task, step, _TASK, i)
        combined = self.igr.direction(losses, len(teachers), beta=cfg.beta, order=cfg.igr_order)
        self.igr.apply(combined)
        return combined

    # --- online recovery ---------------------------------------------------------------------------

    def _online_step(self, step: int) -> bool:
        return self.online is not None and step % self.online.online_every == 0

    def _owned_teachers(self) -> list[int]:
        """Teachers whose recoveries (and warm generator) live on this process: ``t % world == rank``."""
        return self.dist.shard(len(self.members))

    def _fresh_warm(self, t: int) -> WarmGenerator:
        assert self.online is not None
        return WarmGenerator.for_teacher(self.members[t], self.online, self.seed, t)

    def recover_fresh(self, step: int, chosen: list[int]) -> list[RecoveredTask]:
        """Recover a fresh pseudo-task from each chosen teacher and add them to the bank, in task order.

        Teacher ``t``'s recovery runs on process ``t % world`` from the stream
        ``[seed, RECOVER_ONLINE, step, t]`` (warm: continuing the teacher's own generator and
        Adam state); the images are exchanged as uint8 (exactly what the bank stores), so every
        process inserts the same images in the same order and holds the same bank.

        Returns:
            The tasks in ``chosen`` order, images as the bank holds them (uint8 / 255).
        """
        cfg, dist = self.online, self.dist
        assert cfg is not None
        plans = []
        for i, t in enumerate(chosen):
            # a teacher drawn twice in one step gets a second stream: [.., t, 1] (the first, [.., t], is [.., t, 0])
            sequence = seeds.seed_sequence(self.seed, seeds.RECOVER_ONLINE, step, t, chosen[:i].count(t))
            classes = sample_task_classes(self.members[t], cfg.max_way, seeds.numpy_rng(sequence.spawn(1)[0]))
            plans.append((t, classes, int(sequence.generate_state(1)[0])))
        shapes = [
            (len(classes) * cfg.images_per_class, 3, *(int(v) for v in self.members[t].input_size[1:]))
            for t, classes, _ in plans
        ]
        size = max(math.prod(shape) for shape in shapes)
        rows, quality_rows, moves = {}, {}, {}
        for i, (t, classes, task_seed) in enumerate(plans):
            if t % dist.world != dist.rank:
                continue
            member = self.members[t]
            if cfg.online_start == "warm":
                warm = self.warm.get(t)
                if warm is None:
                    warm = self.warm[t] = self._fresh_warm(t)
                steps = cfg.steps if warm.recoveries == 0 else cfg.online_steps  # a new generator starts cold
                task = recover_task(member, classes, cfg, seed=task_seed, warm=warm, steps=steps)
            elif self.meta_start is not None:
                adapted = self.meta_start.copy_for(member)
                task = recover_task(member, classes, cfg, seed=task_seed, generator=adapted, steps=cfg.online_steps)
                moves[i] = self.meta_start.displacement(member, adapted)
            else:
                task = recover_task(member, classes, cfg, seed=task_seed, steps=cfg.online_steps)
            quality = recovery_quality(member, task)
            flat = to_uint8(task.images).reshape(-1)
            rows[i] = torch.cat([flat, flat.new_zeros(size - flat.numel())])
            quality_rows[i] = torch.tensor([quality[k] for k in QUALITY], dtype=torch.float64)
        images = dist.gather_rows(rows, len(plans), size, torch.uint8).cpu()
        qualities = dist.gather_rows(quality_rows, len(plans), len(QUALITY), torch.float64).cpu()
        if self.meta_start is not None:  # every process sums the same displacements, in task order
            sizes = [MetaStart.size_of(self.members[t]) for t, _, _ in plans]
            lengths = {size: sum(p.numel() for p in self.meta_start.generators[size].parameters()) for size in sizes}
            width = max(lengths.values())
            padded = {i: torch.cat([m, m.new_zeros(width - m.numel())]) for i, m in moves.items()}
            gathered = dist.gather_rows(padded, len(plans), width, torch.float32).cpu()
            self.meta_start.step([(size, gathered[i, : lengths[size]]) for i, size in enumerate(sizes)])
        tasks = []
        for i, ((t, classes, _), shape) in enumerate(zip(plans, shapes)):
            member = self.members[t]
            names = list(member.label_names or [])
            task = RecoveredTask(
                images=images[i, : math.prod(shape)].view(shape).float() / 255,
                labels=torch.tensor(classes, dtype=torch.int64).repeat_interleave(cfg.images_per_class),
                teacher=member.name,
                loss=float("nan"),
                classes=classes,
                class_names=[str(names[c]) if c < len(names) else "" for c in classes],
            )
            self.bank.add(task)
            self.recoveries[t] += 1
            tasks.append(task)
        self.last_quality = {f"recover_{k}": float(qualities[:, j].mean()) for j, k in enumerate(QUALITY)}
        return tasks

    def replay_step(self, step: int, round_step: int = 0) -> _Combined | None:
        """Replay optimiser step ``round_step`` of step ``step``: episodes mixing classes across
        teachers, their mean gradient applied."""
        cfg = self.cfg
        if not (cfg.replay and cfg.replay_batch > 0):
            return None
        episodes = {}
        for e in self.replay.shard(cfg.replay_batch):
            stream = step_rng(self.seed, step, _REPLAY, round_step * cfg.replay_batch + e)
            ep = self.bank.sample_episode(
                cfg.replay_way, cfg.replay_shot, cfg.replay_query, stream, resize_to=self.model.input_size[-1]
            )
            tensors = [t.to(self.dist.device) for t in (ep.support_x, ep.support_y, ep.query_x, ep.query_y)]
            episodes[e] = self.replay.loss(
                # mypy types neither a lambda's default nor the length of *ep
                lambda p, ep=tensors: self.learner.episode_loss(self.model, *ep, params=p).float(),  # type: ignore[misc]
                step,
                _REPLAY,
                e,
            )
        replayed = self.replay.direction(episodes, cfg.replay_batch, beta=0.0)
        self.replay.apply(replayed, scale=cfg.replay_batch if cfg.replay_reduction == "sum" else 1)
        return replayed

    def replay_round(self, step: int) -> tuple[_Combined | None, list[float]]:
        """The replay loop after step ``step``'s IGR step: ``replay_steps`` optimiser steps, then (with
        ``replay_patience`` > 0) more while the batch's mean replay loss improved within the last
        ``replay_patience`` batches, up to ``replay_max_steps``. Every process sees the same exchanged
        losses, so all take the same number of steps.

        Returns:
            The last replay step's combined direction (``None`` without replay) and every episode loss.
        """
        cfg = self.cfg
        last: _Combined | None = None
        losses: list[float] = []
        best, since_best, done = math.inf, 0, 0
        while done < cfg.replay_steps or (
            cfg.replay_patience > 0 and since_best < cfg.replay_patience and done < cfg.replay_max_steps
        ):
            replayed = self.replay_step(step, done)
            if replayed is None:
                break
            last, losses = replayed, losses + replayed.losses
            mean = float(np.mean(replayed.losses))
            best, since_best = (mean, 0) if mean < best else (best, since_best + 1)
            done += 1
        return last, losses

    def record(self, step: int, losses: dict[str, float]) -> None:
        for name, value in losses.items():
            self.history.setdefault(name, []).append((step, value))
        self.accelerator.log(losses, step=step)

    def result(self, resumed_from: int) -> TrainResult:
        best_acc = self.best_acc
        if best_acc == -math.inf:  # no validation ran (resumed from a finished run that never validated)
            best_acc = float("nan")
        unwrapped = self.accelerator.unwrap_model(self.model, keep_fp32_wrapper=False)
        assert unwrapped is self.model or isinstance(unwrapped, MetaModel)
        return TrainResult(
            self.best_state,
            self.best_step,
            best_acc,
            self.history,
            resumed_from=resumed_from,
            bank=self.bank if self.online is not None else None,
            val_std_error=self.val_std_error,
        )


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
    dist: Distributed | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    on_step: Callable[[StepInfo], None] | None = None,
    recover: RecoverConfig | None = None,
    generators: Mapping[int, Mapping[str, Tensor]] | None = None,
    val_seed: int | None = None,
    measure: Callable[[MetaModel], dict[str, float]] | None = None,
) -> TrainResult:
    """Meta-train ``model`` in place with IGR inside teacher groups, then replay episodes.

    Call it on every process of a run with the same arguments; the processes share out the
    tasks and end with identical models (see the module docstring).

    Args:
        model: the meta-model (features [B, D]); trained in place (moved to the accelerator's
            device), best state returned.
        members: the teacher pool, indexed by ``groups`` (moved to the accelerator's device).
        bank: recovered pseudo-tasks keyed by (teacher name, class).
        groups: teacher indices per group (one group of all teachers for ERM).
        cfg: the ``train`` section of the run config.
        val_split: real meta-validation images for checkpoint selection.
        seed: seeds teacher/task/episode choice, online recovery and the shared head (the training seed).
        progress: show a progress bar (on the main process).
        dist: the processes (default: a fresh single-process view with ``cfg.mixed_precision``).
            With checkpoints, give each ``meta_train`` call its own accelerator: ``save_state``
            saves every model prepared with it.
        checkpoint_dir: where ``cfg.checkpoint_every`` checkpoints go (required for those).
        resume: continue from the newest complete checkpoint in ``checkpoint_dir``, if any.
            Without ``resume``, an existing checkpoint is an error (nothing is overwritten).
        on_step: called with a :class:`StepInfo` after every step, on every process.
        recover: the recovery settings, for online recovery (``recover.online_every > 0``): every
            ``online_every`` steps each chosen teacher's task is recovered afresh, used for the
            IGR step and added to (a copy of) ``bank``; ``None`` or ``online_every = 0``: every
            task comes from ``bank`` as given. The recovery quality goes into the history
            (``recover_agreement``, ``recover_bn_loss``, ``recover_ce``, ``recover_diversity``).
        generators: with warm online recovery, ``{teacher index: WarmGenerator.state_tensors()}``
            the up-front recovery left (see :func:`tgr_hub.pipeline.recover_pool`): those teachers'
            online recoveries continue them; a teacher without one starts a new generator, whose
            first recovery runs ``recover.steps`` steps instead of ``recover.online_steps``.
        val_seed: seeds the meta-validation episodes (default ``seed + 1``); the benchmark keeps it
            on the run seed when only the training seed changes, so every run selects on the same episodes.
        measure: ``model -> {name: value}``, recorded in the history before training and every
            ``cfg.analysis_every`` steps (:func:`tgr_hub.probe.gradient_measure`); it must change nothing.

    Raises:
        ConfigError: checkpointing without ``checkpoint_dir``, or resuming with other settings.
        RunFolderError: checkpoints exist and ``resume`` is False.
    """
    dist = dist or Distributed(make_accelerator(cfg.mixed_precision))
    progress = progress and dist.is_main
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if cfg.checkpoint_every > 0 and checkpoint_dir is None:
        raise ConfigError("train.checkpoint_every needs a checkpoint folder", hint="pass checkpoint_dir")
    trainer = _MetaTrainer(
        model,
        members,
        bank,
        groups,
        cfg,
        val_split=val_split,
        seed=seed,
        dist=dist,
        checkpoint_dir=checkpoint_dir,
        recover=recover,
        generators=generators,
        val_seed=val_seed,
    )
    start = trainer.restore(resume)
    if start == 0:
        trainer.validate(0)
        if measure is not None and cfg.analysis_every > 0:
            trainer.record(0, measure(trainer.model))

    bar = progress_bar(
        range(start, cfg.iterations),
        desc="meta-train",
        disable=not progress,
        dynamic_ncols=True,
        initial=start,
        total=cfg.iterations,
    )
    for step in bar:
        done = step + 1
        combined = trainer.task_step(step)
        losses = {"task_loss": float(np.mean(combined.losses))}
        if trainer.last_quality is not None:
            losses.update(trainer.last_quality)
        replayed, replay_losses = trainer.replay_round(step)
        if replay_losses:
            losses["replay_loss"] = float(np.mean(replay_losses))
        trainer.record(done, losses)
        bar.set_postfix(task_loss=f"{losses['task_loss']:.3f}", best_val=f"{100 * max(trainer.best_acc, 0):.1f}%")

        if done % cfg.eval_every == 0 or done == cfg.iterations:
            trainer.validate(done)
        if (
            measure is not None
            and cfg.analysis_every > 0
            and (done % cfg.analysis_every == 0 or done == cfg.iterations)
        ):
            trainer.record(done, measure(trainer.model))
        if dist.world > 1 and cfg.sync_check_every > 0 and (done % cfg.sync_check_every == 0 or done == cfg.iterations):
            dist.check_in_sync(
                {**trainer.model.state_dict(), **{f"direction/{k}": v for k, v in combined.direction.items()}},
                f"the meta-model after step {done}",
            )
        if (
            checkpoint_dir is not None
            and cfg.checkpoint_every > 0
            and (done % cfg.checkpoint_every == 0 or done == cfg.iterations)
        ):
            trainer.checkpoint(done)
        if on_step is not None:
            on_step(
                StepInfo(
                    done,
                    trainer.model,
                    trainer.optimizer,
                    combined.direction,
                    replayed.direction if replayed is not None else None,
                    combined.losses,
                )
            )
    bar.close()
    return trainer.result(resumed_from=start)
