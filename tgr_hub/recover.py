"""Stage 1 of TGR: recover pseudo-tasks from teachers by model inversion (the bank that keeps them:
:mod:`tgr_hub.bank`).

For one teacher ``T`` and a set of its classes ``y``, a :class:`~tgr_hub.models.generator.Generator`
``G`` and latent codes ``Z`` are optimised together (Adam) so that the images ``X̂ = G(Z)``

* are classified by ``T`` as ``y``  (cross-entropy on augmented images), and
* look, to every BatchNorm layer of ``T``, like its training data: the batch mean and variance of
  the input of BN layer ``l`` match that layer's running statistics,

    L = CE(T(norm(aug(X̂))), y) + bn_weight · Σ_l ( ‖μ_l(X̂) − μ_l^BN‖₂ + ‖σ²_l(X̂) − σ²_l^BN‖₂ ).

``aug`` is a random crop with zero padding + horizontal flip. The reference pads by 4 pixels at
32×32; for other input sizes the padding is scaled with the image (``round(4·s/32)``, at least 1),
so the augmentation shifts by the same *fraction* of the image whatever the teacher's resolution.
``norm`` is the teacher's own normalisation (:meth:`PoolMember.normalize`). The iterate with the
lowest loss is kept (its images, not just its loss).

Recovered tasks go into a :class:`~tgr_hub.bank.MemoryBank` keyed by ``(teacher, class)``; it
counts the tasks recovered per teacher, so :func:`recover_teachers` on a saved bank continues
exactly where it stopped.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import seeds
from .bank import MemoryBank, RecoveredTask
from .config import RecoverConfig
from .errors import RecoverError
from .models.generator import Generator
from .progress import progress_bar
from .seeds import GENERATOR_INIT, META_START, RECOVER, seed_sequence, torch_seed

if TYPE_CHECKING:  # only for annotations: recover works with anything shaped like a PoolMember
    from .pool import PoolMember

logger = logging.getLogger(__name__)

__all__ = [
    "GeneratorsBySize",
    "MetaStart",
    "RecoverError",
    "WarmGenerator",
    "bn_layers",
    "crop_padding_for",
    "random_crop_flip",
    "recover_task",
    "recover_teachers",
    "recovery_quality",
    "sample_task_classes",
]

_BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


class WarmGenerator:
    """One teacher's generator and its Adam state, kept across recoveries (the online warm start).

    Only the teacher's own recoveries change it (:func:`recover_task` with ``warm=``), so its
    history depends on nothing but that teacher's sequence of recoveries: not on which process
    runs them. :meth:`state_tensors` / :meth:`load_state_tensors` save and restore it bitwise
    (generator parameters and BatchNorm buffers, Adam moments and step counts, the counter).

    Attributes:
        generator: the teacher's :class:`~tgr_hub.models.generator.Generator`.
        optimizer: Adam over the generator's parameters (``cfg.lr``, ``cfg.betas``).
        recoveries: recoveries run with it so far.
    """

    def __init__(self, generator: Generator, cfg: RecoverConfig) -> None:
        self.generator = generator
        self.optimizer = torch.optim.Adam(generator.parameters(), lr=cfg.lr, betas=cfg.betas)
        self.recoveries = 0

    @classmethod
    def fresh(cls, member: PoolMember, cfg: RecoverConfig, seed: int) -> WarmGenerator:
        """A newly initialised generator for ``member``'s input size, seeded by ``seed``."""
        _, height, width = (int(v) for v in member.input_size)
        generator = Generator(cfg.latent_dim, (height, width), channels=3, width=cfg.generator_width, seed=int(seed))
        return cls(generator.to(_device_of(member.model)), cfg)

    @classmethod
    def for_teacher(cls, member: PoolMember, cfg: RecoverConfig, run_seed: int, index: int) -> WarmGenerator:
        """Teacher ``index``'s generator before its first recovery (stream ``[run_seed, GENERATOR_INIT, index]``)."""
        return cls.fresh(member, cfg, int(seed_sequence(run_seed, GENERATOR_INIT, index).generate_state(1)[0]))

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Everything that makes the next recovery what it will be, as named CPU tensors."""
        tensors = generator_state_tensors(self.generator, self.optimizer)
        tensors["recoveries"] = torch.tensor(self.recoveries, dtype=torch.int64)
        return tensors

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_tensors` returned (in place)."""
        load_generator_state_tensors(self.generator, self.optimizer, tensors)
        self.recoveries = int(tensors["recoveries"])


class GeneratorsBySize:
    """One generator per teacher input size, each with its own Adam: the meta-generators of FREE
    (:class:`tgr_hub.peers.free.MetaGenerator`) and of online recovery's ``meta`` start (:class:`MetaStart`).

    Args:
        sizes: the teachers' input sizes ``(H, W)`` (repeats are fine).
        latent_dim, width: the generators' settings.
        seeds: generator ``k`` of the sorted sizes is initialised from ``seeds(k)``.
        lr, betas: their Adam's.
    """

    def __init__(
        self,
        sizes: Sequence[tuple[int, int]],
        *,
        latent_dim: int,
        width: int,
        seeds: Callable[[int], int],
        lr: float,
        betas: tuple[float, float],
        device: torch.device | str = "cpu",
    ) -> None:
        self.sizes = sorted({(int(h), int(w)) for h, w in sizes})
        if not self.sizes:
            raise RecoverError("meta-generators need at least one teacher input size")
        self.generators = {
            size: Generator(latent_dim, size, channels=3, width=width, seed=seeds(k)).to(device)
            for k, size in enumerate(self.sizes)
        }
        self.optimizers = {
            size: torch.optim.Adam(generator.parameters(), lr=lr, betas=betas)
            for size, generator in self.generators.items()
        }

    @staticmethod
    def size_of(member: PoolMember) -> tuple[int, int]:
        """A teacher's input size ``(H, W)``."""
        return int(member.input_size[1]), int(member.input_size[2])

    def copy_for(self, member: PoolMember) -> Generator:
        """A copy of the generator of ``member``'s input size, to adapt to it."""
        return copy.deepcopy(self.generators[self.size_of(member)])

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The generators and their Adam states, as named CPU tensors (bitwise resume)."""
        tensors: dict[str, torch.Tensor] = {}
        for k, size in enumerate(self.sizes):
            tensors.update(generator_state_tensors(self.generators[size], self.optimizers[size], prefix=f"g{k}."))
        return tensors

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_tensors` returned (in place)."""
        for k, size in enumerate(self.sizes):
            if not any(n.startswith(f"g{k}.") for n in tensors):
                raise RecoverError(f"the saved meta-generators have none for {size} images (another pool?)")
            load_generator_state_tensors(self.generators[size], self.optimizers[size], tensors, prefix=f"g{k}.")


class MetaStart(GeneratorsBySize):
    """Online recovery's ``meta`` start (FREE's fast recovery, offered to TGR): a meta-generator per
    teacher input size, shared by the teachers of that size.

    Each online recovery continues a copy (:meth:`copy_for`, then :func:`recover_task` with
    ``generator=``); after the step's recoveries, each meta-generator takes a Reptile step: its
    Adam (the recovery's ``cfg.lr`` and ``cfg.betas``) follows ``θ − θ'``, summed over that step's copies
    of its size in task order (:meth:`step`). Every process holds the same meta-generators and
    applies the same sum, so a run's recoveries do not depend on the number of processes.
    """

    def __init__(self, members: Sequence[PoolMember], cfg: RecoverConfig, seed: int) -> None:
        super().__init__(
            [self.size_of(m) for m in members],
            latent_dim=cfg.latent_dim,
            width=cfg.generator_width,
            seeds=lambda k: torch_seed(seed, META_START, k),
            lr=cfg.lr,
            betas=cfg.betas,
            device=_device_of(members[0].model) if members else "cpu",
        )

    def displacement(self, member: PoolMember, adapted: Generator) -> torch.Tensor:
        """``θ − θ'``: the meta-generator's parameters minus ``adapted``'s, flattened (float32, CPU)."""
        pairs = zip(self.generators[self.size_of(member)].parameters(), adapted.parameters())
        return torch.cat([(p.detach() - q.detach()).float().reshape(-1).cpu() for p, q in pairs])

    def step(self, moves: Sequence[tuple[tuple[int, int], torch.Tensor]]) -> None:
        """One Reptile step per size: Adam on the sum of that size's displacements, in the order given."""
        for size, generator in self.generators.items():
            own = [move for s, move in moves if s == size]
            if not own:
                continue
            total = own[0].clone()
            for move in own[1:]:
                total += move
            offset = 0
            for p in generator.parameters():
                p.grad = total[offset : offset + p.numel()].view_as(p).to(p.device, p.dtype)
                offset += p.numel()
            self.optimizers[size].step()
            self.optimizers[size].zero_grad(set_to_none=True)


def optimizer_state_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """An optimiser's per-parameter state (Adam's moments and step counts) as named CPU tensors,
    ``adam.{parameter index}.{key}``: a safetensors file holds it, no pickle. Its settings (learning
    rate, betas) are not included: they come from the config."""
    tensors = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"adam.{index}.{key}"] = torch.as_tensor(value).detach().cpu().clone()
    return tensors


def load_optimizer_state_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    """Restore the state :func:`optimizer_state_tensors` returned (other keys of ``tensors`` are ignored)."""
    saved = optimizer.state_dict()
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("adam."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value.clone()
    saved["state"] = state
    optimizer.load_state_dict(saved)


def generator_state_tensors(
    generator: Generator, optimizer: torch.optim.Optimizer, prefix: str = ""
) -> dict[str, torch.Tensor]:
    """A generator and its Adam as named CPU tensors, ``{prefix}generator.{name}`` and
    ``{prefix}adam.{index}.{key}`` (:func:`optimizer_state_tensors`): what a warm or meta start keeps."""
    tensors = {f"{prefix}generator.{k}": v.detach().cpu().clone() for k, v in generator.state_dict().items()}
    tensors.update({f"{prefix}{k}": v for k, v in optimizer_state_tensors(optimizer).items()})
    return tensors


def load_generator_state_tensors(
    generator: Generator, optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], prefix: str = ""
) -> None:
    """Restore (in place) what :func:`generator_state_tensors` returned with the same ``prefix``."""
    own = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
    generator.load_state_dict({k.removeprefix("generator."): v for k, v in own.items() if k.startswith("generator.")})
    load_optimizer_state_tensors(optimizer, own)


class _Both:
    """Two optimisers stepped as one (a warm generator's Adam and the fresh codes' Adam)."""

    def __init__(self, *optimizers: torch.optim.Optimizer) -> None:
        self.optimizers = optimizers

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()


def recovery_quality(member: PoolMember, task: RecoveredTask) -> dict[str, float]:
    """How good a recovered task is, as logged per online recovery.

    Returns:
        ``agreement``: fraction of the task's images the teacher classifies as their intended
        label (no augmentation); ``bn_loss``: the BN-statistics loss of the kept iterate;
        ``ce``: its cross-entropy; ``diversity``: mean pairwise Euclidean distance between the
        teacher's penultimate features of the images (its logits when it has no
        ``forward_features``/``forward_head``), over distinct pairs.
    """
    model: Any = member.model  # a timm model: forward_features/forward_head are not declared by nn.Module
    device = _device_of(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            x = member.normalize(task.images.to(device))
            if hasattr(model, "forward_features") and hasattr(model, "forward_head"):
                hidden = model.forward_features(x)
                features, logits = model.forward_head(hidden, pre_logits=True), model.forward_head(hidden)
            else:
                logits = model(x)
                features = logits
    finally:
        model.train(was_training)
    agreement = float((logits.argmax(dim=1).cpu() == task.labels).double().mean())
    features = features.float().flatten(1)
    n = features.shape[0]
    distances = torch.cdist(features, features)
    diversity = float(distances.sum() / (n * (n - 1))) if n > 1 else 0.0
    step = task.best_step
    bn = task.bn_history[step] if task.bn_history else float("nan")
    ce = task.ce_history[step] if task.ce_history else float("nan")
    return {"agreement": agreement, "bn_loss": float(bn), "ce": float(ce), "diversity": diversity}


# --- pieces of the loss ------------------------------------------------------------------


def crop_padding_for(size: int) -> int:
    """Zero padding of the random crop for a ``size``-pixel image: 4 at 32, scaled with the size."""
    return max(1, int(round(4 * size / 32)))


def random_crop_flip(images: torch.Tensor, padding: int, rng: torch.Generator) -> torch.Tensor:
    """Batched, differentiable random crop (zero padding) + random horizontal flip.

    Each image gets its own offset in ``[0, 2·padding]²`` and its own coin for the flip, as
    torchvision's ``RandomCrop(size, padding)`` + ``RandomHorizontalFlip()`` would, but for the
    whole batch in one ``gather`` (whose backward is a scatter-add, so gradients reach ``images``).

    Args:
        images: ``[B, C, H, W]``.
        padding: pixels of zero padding on every side.
        rng: a CPU ``torch.Generator`` that draws the offsets and flips.

    Returns:
        ``[B, C, H, W]``, same dtype and device.
    """
    b, c, h, w = images.shape
    offsets = torch.randint(0, 2 * padding + 1, (b, 2), generator=rng)
    flips = torch.rand(b, generator=rng) < 0.5
    device = images.device
    offsets, flips = offsets.to(device), flips.to(device)
    padded = F.pad(images, (padding, padding, padding, padding))
    wp = w + 2 * padding
    rows = offsets[:, :1] + torch.arange(h, device=device)  # [B, H] rows of the padded image
    base = torch.arange(w, device=device)
    cols = offsets[:, 1:] + torch.where(flips[:, None], w - 1 - base, base)  # [B, W]; flip = read right to left
    flat = (rows[:, :, None] * wp + cols[:, None, :]).reshape(b, 1, h * w).expand(b, c, h * w)
    return padded.reshape(b, c, -1).gather(2, flat).reshape(b, c, h, w)


def bn_layers(model: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers of ``model`` that carry running statistics (1d, 2d, 3d, sync; timm's
    ``BatchNormAct2d`` is a ``BatchNorm2d``)."""
    return [
        m
        for m in model.modules()
        if isinstance(m, _BN_TYPES) and m.running_mean is not None and m.running_var is not None
    ]


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode (BN normalises with its running statistics and does not update them)
    with its parameters frozen (gradients flow to the inputs only) for the block; its mode and
    ``requires_grad`` flags are restored afterwards, also on error."""
    was_training = model.training
    grad_flags = [p.requires_grad for p in model.parameters()]
    try:
        model.eval().requires_grad_(False)
        yield model
    finally:
        for p, flag in zip(model.parameters(), grad_flags):
            p.requires_grad_(flag)
        model.train(was_training)


class _BNStatisticsLoss:
    """Forward hooks that compare the batch statistics of each BN layer's input with its running ones.

    Use as a context manager; the hooks are removed on exit, also when an error is raised.
    After each forward pass, :meth:`pop` returns Σ_l ‖μ_l − μ_l^BN‖₂ + ‖σ²_l − σ²_l^BN‖₂.
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = bn_layers(model)
        self._terms: list[torch.Tensor] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        x = inputs[0]
        dims = [d for d in range(x.dim()) if d != 1]  # every dim but channels: [N,C], [N,C,L], [N,C,H,W]...
        var, mean = torch.var_mean(x, dim=dims, correction=0)  # biased variance, as BN normalises with
        self._terms.append(
            torch.linalg.vector_norm(mean - cast(torch.Tensor, module.running_mean))
            + torch.linalg.vector_norm(var - cast(torch.Tensor, module.running_var))
        )

    def __enter__(self) -> _BNStatisticsLoss:
        self._handles = [layer.register_forward_hook(self._hook) for layer in self.layers]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._terms = []

    def pop(self, like: torch.Tensor) -> torch.Tensor:
        terms, self._terms = self._terms, []
        return torch.stack(terms).sum() if terms else like.new_zeros(())


# --- recovery ----------------------------------------------------------------------------


def sample_task_classes(member: PoolMember, max_way: int, rng: np.random.Generator) -> list[int]:
    """Pick the classes of one pseudo-task of ``member``.

    Args:
        member: the teacher.
        max_way: the largest task; teachers with at most this many classes give all of them.
        rng: draws the subset for many-class teachers.

    Returns:
        Sorted teacher class ids (``N = min(num_classes, max_way)`` of them).
    """
    if max_way < 1:
        raise RecoverError(f"max_way must be >= 1, got {max_way}")
    n = int(member.num_classes)
    if n <= max_way:
        return list(range(n))
    return sorted(int(c) for c in rng.choice(n, size=max_way, replace=False))


def _most_on_label(
    member: PoolMember, images: torch.Tensor, labels: torch.Tensor, per_class: int, keep: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class, the ``keep`` images the teacher gives the highest probability of their own label.

    Args:
        images: ``[C*G, 3, H, W]`` in [0, 1], class by class (``G`` per class).
        labels: ``[C*G]`` teacher class ids, ``repeat_interleave``-ordered.
        per_class: ``G``.
        keep: images kept per class (``<= G``).

    Returns:
        ``(images [C*keep, ...], labels [C*keep])``, class by class, each class's images in
        generation order (no reordering beyond the choice).
    """
    model = member.model
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            log_probs = F.log_softmax(model(member.normalize(images)).float(), dim=1)
    finally:
        model.train(was_training)
    own = log_probs.gather(1, labels.to(log_probs.device)[:, None])[:, 0].cpu()
    chosen = []
    for start in range(0, labels.numel(), per_class):
        top = torch.topk(own[start : start + per_class], keep).indices.sort().values
        chosen.append(start + top)
    index = torch.cat(chosen)
    return images[index.to(images.device)], labels[index]


def _check_classes(member: PoolMember, classes: Sequence[int]) -> list[int]:
    classes = [int(c) for c in classes]
    if not classes:
        raise RecoverError(f"no classes given to recover from teacher {member.name!r}")
    if len(set(classes)) != len(classes):
        raise RecoverError(f"classes to recover from teacher {member.name!r} repeat: {classes}")
    bad = [c for c in classes if not 0 <= c < member.num_classes]
    if bad:
        raise RecoverError(
            f"teacher {member.name!r} has {member.num_classes} classes (ids 0..{member.num_classes - 1}); "
            f"cannot recover class(es) {bad}"
        )
    return classes


def _device_of(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for buffer in model.buffers():
        return buffer.device
    return torch.device("cpu")


def recover_task(
    member: PoolMember,
    classes: Sequence[int],
    cfg: RecoverConfig,
    *,
    seed: int,
    generator: Generator | None = None,
    warm: WarmGenerator | None = None,
    steps: int | None = None,
    progress: bool = False,
    padding: int | None = None,
) -> RecoveredTask:
    """Synthesise a pseudo-task of ``member`` by model inversion (see the module doc for the loss).

    ``cfg.images_per_class`` images are generated per class; ``G`` and ``Z`` are optimised with
    ``Adam(cfg.lr, cfg.betas)`` for ``cfg.steps`` steps, and the images of the lowest-loss step
    are returned. The teacher is used in eval mode with its parameters frozen (both restored
    afterwards); its BN hooks are removed afterwards, also on error. A teacher without BatchNorm
    layers gives a warning and is inverted with the cross-entropy alone.

    Args:
        member: the teacher (a :class:`~tgr_hub.pool.PoolMember` or anything with ``name``,
            ``model``, ``num_classes``, ``label_names``, ``input_size`` and ``normalize``).
        classes: teacher class ids to recover (see :func:`sample_task_classes`).
        cfg: the recovery settings.
        seed: seeds the generator's initialisation, the latent codes and the augmentation.
        generator: a generator to continue optimising (per-teacher reuse); it is updated in place
            and returned in ``RecoveredTask.generator``. ``None``: a fresh one from ``seed``.
        warm: a teacher's :class:`WarmGenerator` (generator *and* its Adam state) to continue: the
            warm start of online recovery. Its generator and optimiser are updated in place and
            its ``recoveries`` counter incremented; the latent codes are fresh (from ``seed``) and
            get an Adam of their own. Excludes ``generator``.
        steps: optimisation steps; default ``cfg.steps``.
        progress: show a tqdm bar over the steps.
        padding: crop padding in pixels; default :func:`crop_padding_for` of the input size.

    Returns:
        The :class:`RecoveredTask` (images on CPU).
    """
    classes = _check_classes(member, classes)
    _, height, width = (int(v) for v in member.input_size)
    device = _device_of(member.model)
    gen_seed, z_seed, aug_seed = seeds.recovery_seeds(seed)

    steps = cfg.steps if steps is None else int(steps)
    if steps < 1:
        raise RecoverError(f"a recovery needs at least one step, got {steps}")
    if warm is not None:
        if generator is not None:
            raise RecoverError("pass either generator or warm to recover_task, not both")
        generator = warm.generator
    if generator is None:
        generator = Generator(cfg.latent_dim, (height, width), channels=3, width=cfg.generator_width, seed=gen_seed)
        keep_generator = cfg.reuse_generator
    else:
        if not isinstance(generator, Generator):
            raise RecoverError(f"generator must be a tgr_hub Generator, got {type(generator).__name__}")
        if generator.latent_dim != cfg.latent_dim or generator.image_size != (height, width):
            raise RecoverError(
                f"the generator passed in makes {generator.image_size} images from {generator.latent_dim}-d codes, "
                f"but teacher {member.name!r} needs {(height, width)} images and recover.latent_dim is "
                f"{cfg.latent_dim}",
                hint="reuse a generator only with the teacher it was made for",
            )
        keep_generator = True
    generator = generator.to(device).train()

    per_class = cfg.images_per_class
    generated = math.ceil(per_class * cfg.oversample)  # per class; the most on-label `per_class` are kept
    n = generated * len(classes)
    labels = torch.tensor(classes, dtype=torch.int64).repeat_interleave(generated)
    z_rng = seeds.torch_generator(z_seed)
    z = torch.randn(n, cfg.latent_dim, generator=z_rng).to(device).requires_grad_(True)
    aug_rng = seeds.torch_generator(aug_seed)
    pad = crop_padding_for(min(height, width)) if padding is None else int(padding)
    target = labels.to(device)
    optimizer: torch.optim.Optimizer | _Both
    if warm is None:
        optimizer = torch.optim.Adam([*generator.parameters(), z], lr=cfg.lr, betas=cfg.betas)
    else:  # the generator's Adam carries over between recoveries; the fresh codes start their own
        optimizer = _Both(warm.optimizer, torch.optim.Adam([z], lr=cfg.lr, betas=cfg.betas))

    model = member.model
    bn_loss = _BNStatisticsLoss(model)
    if not bn_loss.layers:
        logger.warning(
            "teacher %r has no BatchNorm layers: no BN-statistics prior, recovering with the cross-entropy only",
            member.name,
        )

    # Bookkeeping stays on the device (no .item() per step), so a GPU never waits for the host.
    ce_values: list[torch.Tensor] = []
    bn_values: list[torch.Tensor] = []
    best_loss_t = torch.full((), math.inf, device=device)
    best_step_t = torch.zeros((), dtype=torch.int64, device=device)
    best_images: torch.Tensor | None = None
    start = time.perf_counter()
    with frozen(model), bn_loss:
        bar = progress_bar(range(steps), desc=f"recover {member.name}", disable=not progress, leave=False)
        for step in bar:
            images = generator(z)
            logits = model(member.normalize(random_crop_flip(images, pad, aug_rng)))
            ce = F.cross_entropy(logits, target)
            bn = bn_loss.pop(ce)
            loss = ce + cfg.bn_weight * bn
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

            with torch.no_grad():
                ce_values.append(ce.detach())
                bn_values.append(bn.detach())
                better = loss.detach() < best_loss_t  # False for NaN: a NaN step is never kept
                best_loss_t = torch.where(better, loss.detach(), best_loss_t)
                best_step_t = torch.where(better, step, best_step_t)
                # the images that produced this loss (before the update just made)
                images = images.detach()
                best_images = images.clone() if best_images is None else torch.where(better, images, best_images)
            if progress and step % 10 == 0:
                bar.set_postfix(ce=f"{float(ce):.3f}", bn=f"{float(bn):.3f}")

    ce_history = torch.stack(ce_values).float().cpu().tolist()
    bn_history = torch.stack(bn_values).float().cpu().tolist()
    best_loss, best_step = float(best_loss_t), int(best_step_t)
    assert best_images is not None  # steps >= 1
    if warm is not None:
        warm.recoveries += 1
    if not math.isfinite(best_loss):  # only when every loss was NaN (or infinite)
        raise RecoverError(
            f"recovery from teacher {member.name!r} gave a NaN loss at every step",
            hint="check that the teacher's outputs are finite; try a lower recover.lr",
        )
    logger.debug(
        "recovered %d images of %d classes from %r in %.1fs: best loss %.4f at step %d (ce %.4f, bn %.4f)",
        n,
        len(classes),
        member.name,
        time.perf_counter() - start,
        best_loss,
        best_step,
        ce_history[best_step],
        bn_history[best_step],
    )
    if generated > per_class:
        best_images, labels = _most_on_label(member, best_images, labels, generated, per_class)
    names = list(getattr(member, "label_names", None) or [])
    class_names = [str(names[c]) if c < len(names) else "" for c in classes]
    return RecoveredTask(
        images=best_images.float().cpu(),
        labels=labels,
        teacher=member.name,
        loss=best_loss,
        ce_history=ce_history,
        bn_history=bn_history,
        classes=classes,
        class_names=class_names,
        best_step=best_step,
        generator=generator if (keep_generator and warm is None) else None,
    )


def recover_teachers(
    members: Sequence[PoolMember],
    cfg: RecoverConfig,
    bank: MemoryBank,
    *,
    seed: int,
    recoveries: int | None = None,
    skip: Collection[str] = (),
    return_generators: bool = False,
    progress: bool = False,
    on_task: Callable[[RecoveredTask], None] | None = None,
    warm: dict[str, WarmGenerator] | None = None,
) -> dict[str, Generator]:
    """Bring every teacher to ``recoveries`` (default ``cfg.recoveries_per_teacher``) recoveries in ``bank``.

    Teachers are done one after the other. Recovery ``r`` of teacher ``i`` (its index in
    ``members``) is seeded by the stream ``[seed, seeds.RECOVER, i, r]``, and its classes are drawn with
    :func:`sample_task_classes` from the same seed. Recoveries the bank already counts for a
    teacher (:meth:`MemoryBank.tasks_of`) are not redone, so calling this again on a bank saved
    by ``on_task`` resumes an interrupted run and gives the same bank as an uninterrupted one
    (with ``cfg.reuse_generator``, a teacher interrupted midway continues with a fresh generator).

    Args:
        members: the teachers.
        cfg: the recovery settings.
        bank: receives every recovered task.
        seed: the run's seed.
        recoveries: recoveries each teacher should have in the bank.
        skip: names of teachers to leave alone.
        return_generators: return each teacher's generator (with ``cfg.reuse_generator``);
            otherwise each is dropped once its teacher is done, to bound memory.
        progress: a tqdm bar over the recoveries to run.
        on_task: called with each task after it is added (e.g. to save the bank).
        warm: warm-start mode (online recovery's): every recovery of a teacher continues its
            :class:`WarmGenerator` ``warm[name]`` (generator and Adam state), created with
            :meth:`WarmGenerator.for_teacher` when missing; the dict is updated in place, so the
            caller can hand the generators on to meta-training. Takes precedence over
            ``cfg.reuse_generator``.

    Returns:
        The per-teacher generators if ``return_generators`` and ``cfg.reuse_generator``, else ``{}``.
    """
    count = cfg.recoveries_per_teacher if recoveries is None else int(recoveries)
    skipped = set(skip)
    plan = [
        (i, m, r) for i, m in enumerate(members) if m.name not in skipped for r in range(bank.tasks_of(m.name), count)
    ]
    kept: dict[str, Generator] = {}
    bar = progress_bar(total=len(plan), desc="recover", disable=not progress)
    try:
        for i, member, r in plan:
            seq = seed_sequence(seed, RECOVER, i, r)
            class_rng = seeds.numpy_rng(seq.spawn(1)[0])
            task_seed = seeds.seed_int(seq)
            classes = sample_task_classes(member, cfg.max_way, class_rng)
            if warm is not None:
                if member.name not in warm:
                    warm[member.name] = WarmGenerator.for_teacher(member, cfg, seed, i)
                task = recover_task(member, classes, cfg, seed=task_seed, warm=warm[member.name])
                bank.add(task)
                if on_task is not None:
                    on_task(task)
                bar.update(1)
                continue
            generator = None
            if cfg.reuse_generator:
                generator = kept.get(member.name)
                if not return_generators:
                    kept.clear()  # the previous teacher is done: let its generator go
            task = recover_task(member, classes, cfg, seed=task_seed, generator=generator)
            if cfg.reuse_generator and task.generator is not None:
                kept[member.name] = task.generator
            task.generator = None  # the bank keeps images only
            bank.add(task)
            if on_task is not None:
                on_task(task)
            bar.update(1)
    finally:
        bar.close()
    return kept if (cfg.reuse_generator and return_generators) else {}
