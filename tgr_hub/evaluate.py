"""Few-shot evaluation on real episodes, confidence intervals, and the Random / Average baselines.

Protocol (docs/method.md, "Evaluation"): N-way K-shot episodes from the meta-test (or
meta-val) classes, Q queries per class, accuracy averaged over episodes and reported with
a 95% confidence interval ``1.96 * std / sqrt(n)``. Episodes come from
:class:`~tgr_hub.data.episodes.EpisodeSampler` and are a deterministic function of
``(seed, index)``, so two evaluations with the same seed see the same episodes.

Adaptation ("method"):

* ``protonet``: nearest class mean in feature space;
* ``finetune``: MAML-style fine-tuning of the whole meta-model plus a zero-initialised
  linear head, 10 SGD steps with lr 0.01 on the support set (the reference's test-time
  adaptation);
* ``auto``: ``protonet`` for meta-models trained with ProtoNet (``tgr_config.json`` says
  ``train.learner = "protonet"``), ``finetune`` otherwise (MAML meta-models, baselines).

BatchNorm uses transductive batch statistics for every method and baseline (see
:mod:`tgr_hub.learners`).
"""

from __future__ import annotations

import copy
import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from .config import EvalConfig, TrainConfig
from .data.episodes import Episode, EpisodeSampler, ImageSplit
from .distributed import Distributed
from .errors import ConfigError, EmptyPoolError, EvaluationError
from .learners import MAML, ProtoNet, make_learner
from .metamodel import MetaModel, create_meta_model
from .progress import progress_bar

logger = logging.getLogger(__name__)

__all__ = [
    "EvaluationError",
    "average_baseline",
    "confidence_interval",
    "ValScore",
    "ValSettings",
    "chosen_validation",
    "eval_settings",
    "evaluate_model",
    "meta_validate",
    "random_baseline",
    "resolve_learner",
]

METHODS = ("auto", "protonet", "finetune")
# a meta-model trained with (FO)MAML is evaluated by fine-tuning
_ALIASES = {"maml": "finetune", "fomaml": "finetune", "maml2": "finetune"}


def confidence_interval(accuracies: Sequence[float] | np.ndarray | torch.Tensor) -> tuple[float, float]:
    """Mean and half-width of the 95% confidence interval of per-episode accuracies.

    Uses the few-shot literature's convention (MAML / ProtoNet reference code):
    ``1.96 * std / sqrt(n)`` with the *population* standard deviation (``ddof=0``,
    ``numpy.std``'s default). With n = 600 episodes ``ddof=1`` would widen the interval by a factor
    sqrt(600/599), i.e. 0.08% of its width.

    Args:
        accuracies: ``[n]`` per-episode accuracies (any scale: fractions or percent).

    Returns:
        ``(mean, ci95)``; ``ci95`` is 0 for a single episode.
    """
    if isinstance(accuracies, torch.Tensor):
        accuracies = accuracies.detach().cpu().numpy()
    values = np.asarray(accuracies, dtype=np.float64).ravel()
    if values.size == 0:
        raise EvaluationError("confidence_interval needs at least one accuracy")
    return float(values.mean()), float(1.96 * values.std(ddof=0) / math.sqrt(values.size))


def resolve_learner(
    method: str | ProtoNet | MAML,
    model: MetaModel | nn.Module,
    *,
    inner_steps: int = 10,
    inner_lr: float = 0.01,
    bn: str = "batch",
) -> tuple[ProtoNet | MAML, str]:
    """The learner used to adapt ``model`` at test time.

    Args:
        method: ``"auto"``, ``"protonet"``, ``"finetune"`` (aliases ``"maml"``, ``"fomaml"``,
            ``"maml2"``), or a learner object (used as is).
        model: the meta-model (``auto`` reads ``model.learner``, from its tgr_config.json).
        inner_steps, inner_lr: fine-tuning schedule (reference: 10 steps, lr 0.01).
        bn: BatchNorm policy (``"batch"``: transductive, the default for all methods).

    Returns:
        ``(learner, method name)``.
    """
    if isinstance(method, (ProtoNet, MAML)):
        return method, "protonet" if isinstance(method, ProtoNet) else "finetune"
    method = _ALIASES.get(str(method).lower(), str(method).lower())
    if method not in METHODS:
        raise ConfigError(f"unknown evaluation method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "auto":
        method = "protonet" if getattr(model, "learner", None) == "protonet" else "finetune"
    if method == "protonet":
        return make_learner("protonet", bn=bn), method
    return make_learner("finetune", inner_steps=inner_steps, inner_lr=inner_lr, bn=bn), method


def eval_settings(cfg: EvalConfig, trained_with: str) -> dict[str, Any]:
    """The :func:`evaluate_model` keyword arguments a run's ``eval`` section sets.

    ``eval.method = "auto"`` means the meta-model's own learner, ``trained_with``
    (``train.learner``: ProtoNet, or fine-tuning for MAML); ``eval.inner_steps`` and
    ``eval.inner_lr`` are the fine-tuning schedule. Every evaluation a run makes (the final test
    of ``tgr-hub train``, every method and baseline of the benchmark and so the quickstart) uses
    these; ``tgr-hub evaluate`` takes the same settings from its own flags instead.
    """
    return {
        "way": cfg.way,
        "shots": list(cfg.shots),
        "query": cfg.query,
        "episodes": cfg.episodes,
        "learner": trained_with if cfg.method == "auto" else cfg.method,
        "inner_steps": cfg.inner_steps,
        "inner_lr": cfg.inner_lr,
    }


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def evaluate_model(
    model: MetaModel | nn.Module,
    split: ImageSplit,
    *,
    way: int = 5,
    shots: Sequence[int] = (1, 5),
    query: int = 15,
    episodes: int = 600,
    learner: str | ProtoNet | MAML = "auto",
    seed: int = 0,
    inner_steps: int = 10,
    inner_lr: float = 0.01,
    progress: bool = True,
    keep_accuracies: bool = False,
    episode_lists: Mapping[int, Sequence[Episode]] | None = None,
    dist: Distributed | None = None,
    desc: str = "evaluate",
) -> dict[str, dict[str, Any]]:
    """Mean few-shot accuracy with 95% confidence intervals, for each number of shots.

    For each ``shot``, episodes ``0..episodes-1`` of ``EpisodeSampler(split, way, shot,
    query, seed)`` are adapted to with the learner and scored on their queries. The model
    is not modified (its running statistics included); it runs on the device its
    parameters are on.

    Args:
        model: the meta-model, ``[B, 3, H, W]`` in [0, 1] -> ``[B, D]``.
        split: the evaluation split (meta-test, or meta-val for model selection).
        way: classes per episode.
        shots: support images per class, one result each.
        query: query images per class.
        episodes: episodes per setting.
        learner: ``"auto"``, ``"protonet"``, ``"finetune"`` or a learner object.
        seed: seed of the episode stream.
        inner_steps, inner_lr: fine-tuning schedule for ``finetune``.
        progress: show a tqdm bar.
        keep_accuracies: also return the per-episode accuracies.
        episode_lists: ``{shot: episodes}``, a fixed list of episodes per shot count, used
            instead of drawing them (``shots``, ``episodes`` and ``seed`` are then ignored, and
            ``way`` / ``query`` are read from the episodes). The benchmark passes the same lists
            to every method, so all of them are scored on identical episodes.
        dist: several processes (call on every one): episode ``j`` is scored by process
            ``j % world`` and the accuracies are exchanged exactly, so every process returns
            the same dict, equal to the one-process result (with ``episode_lists`` too).
        desc: the progress bar's label.

    Returns:
        ``{"<shot>shot": {"mean", "ci95", "std", "episodes", "way", "shot", "query", "method"}}``
        (e.g. ``results["5shot"]["mean"]``);
        ``mean`` and ``ci95`` are fractions in [0, 1] (multiply by 100 for percent).
        With ``keep_accuracies``, each entry also has ``"accuracies"`` (list of floats).
    """
    if episode_lists is not None:
        if not episode_lists or any(len(listed) < 1 for listed in episode_lists.values()):
            raise EvaluationError("episode_lists needs at least one episode for each shot count")
        sources: dict[int, Any] = {int(shot): listed for shot, listed in episode_lists.items()}
        counts = {shot: len(listed) for shot, listed in sources.items()}
    else:
        if episodes < 1:
            raise EvaluationError(f"episodes must be >= 1, got {episodes}")
        if not shots:
            raise EvaluationError("give at least one shot count")
        sources = {int(shot): EpisodeSampler(split, way, int(shot), query, seed=seed) for shot in shots}
        counts = {shot: episodes for shot in sources}
    adapt_with, method = resolve_learner(learner, model, inner_steps=inner_steps, inner_lr=inner_lr)
    device = _model_device(model)
    results: dict[str, dict[str, Any]] = {}
    label = f"{desc} ({method})" if episode_lists is not None else f"{desc} {way}-way ({method})"
    shares = {shot: (dist.shard(count) if dist is not None else list(range(count))) for shot, count in counts.items()}
    bar = progress_bar(
        total=sum(len(mine) for mine in shares.values()), desc=label, disable=not progress, unit="ep", leave=False
    )
    try:
        for shot, source in sources.items():
            episodes = counts[shot]
            rows = {}
            for index in shares[shot]:
                if episode_lists is not None:
                    # each listed episode is fetched once, in order (the benchmark hashes what it hands out)
                    episode = source[index]
                    way, query = episode.way, len(episode.query_y) // episode.way  # recorded with the results
                else:
                    episode = source.episode(index)
                classifier = adapt_with.adapt(model, episode.support_x.to(device), episode.support_y.to(device))
                predicted = classifier.predict(episode.query_x.to(device))
                rows[index] = torch.tensor(
                    [float((predicted.cpu() == episode.query_y).double().mean())], dtype=torch.float64
                )
                bar.update(1)
            if dist is not None:
                accuracies = dist.gather_rows(rows, episodes, 1, torch.float64)[:, 0].cpu().numpy()
            else:
                accuracies = torch.cat([rows[i] for i in range(episodes)]).numpy()
            accuracies = np.asarray(accuracies, dtype=np.float64)
            mean, ci95 = confidence_interval(accuracies)
            key = f"{shot}shot"
            results[key] = {
                "mean": mean,
                "ci95": ci95,
                "std": float(accuracies.std()),
                "episodes": episodes,
                "way": way,
                "shot": shot,
                "query": query,
                "method": method,
            }
            if method == "finetune":
                results[key].update(inner_steps=int(inner_steps), inner_lr=float(inner_lr))
            if keep_accuracies:
                results[key]["accuracies"] = accuracies.tolist()
            logger.debug(
                "%d-way %d-shot (%s): %.2f%% +- %.2f%% over %d episodes",
                way,
                shot,
                method,
                100 * mean,
                100 * ci95,
                episodes,
            )
    finally:
        bar.close()
    return results


# --- meta-validation: how every method chooses its checkpoint -----------------------------------


@dataclass(frozen=True)
class ValSettings:
    """How meta-validation scores a state of the meta-model: ``episodes`` real episodes of each of
    ``shots`` (``way`` classes, ``query`` queries per class), adapted to with ``learner`` (and the
    fine-tuning schedule ``inner_steps`` / ``inner_lr``); a state is chosen on the mean over shots."""

    way: int = 5
    shots: tuple[int, ...] = (1, 5)
    query: int = 15
    episodes: int = 200
    learner: str = "protonet"
    inner_steps: int = 10
    inner_lr: float = 0.01

    @classmethod
    def of(cls, train: TrainConfig) -> ValSettings:
        """A TGR run's meta-validation (``train.val_*`` and its learner); the benchmark gives every
        method this one, so all choose their checkpoint on the same episodes, the same way."""
        return cls(train.val_way, tuple(train.val_shots), train.val_query, train.val_episodes, train.learner)


@dataclass(frozen=True)
class ValScore:
    """One meta-validation: ``accuracy`` (the mean over shots, a fraction), each shot's mean, and the
    standard error over episodes of ``accuracy``: how far selection noise can move a choice."""

    accuracy: float
    per_shot: dict[int, float]
    std_error: float

    def record(self, history: dict[str, list[tuple[int, float]]], step: int) -> None:
        """Append this score at ``step`` to a run's ``history``: ``val_acc``, ``val_acc_{shot}shot`` and
        ``val_std_error`` (the mean's standard error over the validation episodes)."""
        history.setdefault("val_acc", []).append((step, self.accuracy))
        history.setdefault("val_std_error", []).append((step, self.std_error))
        for shot, accuracy in self.per_shot.items():
            history.setdefault(f"val_acc_{shot}shot", []).append((step, accuracy))


def chosen_validation(
    history: dict[str, list[tuple[int, float]]], best_step: int, best_accuracy: float, selection_noise: float
) -> dict[str, float | int]:
    """What a run records of the state meta-validation chose: its step, the mean it was chosen on,
    each shot's accuracy at that step (from ``history``, as :meth:`ValScore.record` wrote it) and the
    selection noise: that step's standard error from ``history``, or ``selection_noise`` where the
    history lacks it (a run resumed from a checkpoint older than that record)."""
    chosen: dict[str, float | int] = {"best_step": best_step, "accuracy": best_accuracy}
    for key, values in history.items():
        if key.startswith("val_acc_") and key.endswith("shot"):
            chosen[key.removeprefix("val_acc_")] = dict(values)[best_step]
    chosen["selection_noise"] = dict(history.get("val_std_error", [])).get(best_step, selection_noise)
    return chosen


def meta_validate(
    model: MetaModel | nn.Module,
    split: ImageSplit,
    settings: ValSettings,
    *,
    seed: int,
    dist: Distributed | None = None,
) -> ValScore:
    """Score ``model`` on the meta-validation ``split`` as ``settings`` say (episodes from ``seed``)."""
    metrics = evaluate_model(
        model,
        split,
        way=settings.way,
        shots=list(settings.shots),
        query=settings.query,
        episodes=settings.episodes,
        learner=settings.learner,
        inner_steps=settings.inner_steps,
        inner_lr=settings.inner_lr,
        seed=seed,
        dist=dist,
        progress=False,
    )
    per_shot = [metrics[f"{shot}shot"] for shot in settings.shots]
    # the shots' episodes are independent: the variance of their mean is the mean of the variances / shots
    std_error = float(np.sqrt(np.sum([(m["ci95"] / 1.96) ** 2 for m in per_shot])) / len(per_shot))
    return ValScore(
        accuracy=float(np.mean([m["mean"] for m in per_shot])),
        per_shot={shot: float(m["mean"]) for shot, m in zip(settings.shots, per_shot)},
        std_error=std_error,
    )


# --- baselines -----------------------------------------------------------------------------------


def random_baseline(arch: str = "conv4", image_size: int = 32, seed: int = 0) -> MetaModel:
    """The Random baseline: a randomly initialised backbone (adapted at test time).

    Args:
        arch: timm architecture (``conv4`` or a timm name).
        image_size: input size.
        seed: initialisation seed.
    """
    model = create_meta_model(arch, image_size=image_size, seed=seed)
    model.eval()
    return model


def _backbone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A teacher's state dict without its classifier head (the modules ``get_classifier()`` returns)."""
    if not hasattr(model, "get_classifier"):
        raise EvaluationError(f"{type(model).__name__} has no get_classifier; the average baseline needs timm models")
    heads = cast(Any, model).get_classifier()  # timm's method, not declared by nn.Module
    heads = heads if isinstance(heads, (tuple, list)) else (heads,)
    prefixes = tuple(f"{name}." for name, module in model.named_modules() if name and any(module is h for h in heads))
    return {k: v for k, v in model.state_dict().items() if not (prefixes and k.startswith(prefixes))}


def average_baseline(members: Sequence[Any]) -> MetaModel:
    """The Average baseline: the parameter average of same-architecture teachers' backbones.

    Teachers are grouped by architecture (and backbone tensor shapes, which must agree to be
    averaged); the largest group is used (ties: the group that appears first). Classifier
    heads are dropped; floating-point parameters *and* BatchNorm running statistics are
    averaged element-wise; integer buffers (``num_batches_tracked``) are taken from the first
    teacher. Teachers of other architectures are ignored with a warning.

    Args:
        members: pool members (``PoolMember``: ``model``, ``architecture``, ``input_size``,
            ``mean``, ``std``, ``name``).

    Returns:
        The averaged meta-model (eval mode), with the input size and normalisation of the
        first teacher of the chosen group.

    Raises:
        EmptyPoolError: no teachers.
    """
    if not members:
        raise EmptyPoolError("the average baseline needs at least one teacher; the pool is empty")
    states = [_backbone_state(m.model) for m in members]
    signatures = [
        (m.architecture, tuple(m.input_size), tuple((k, tuple(v.shape)) for k, v in s.items()))
        for m, s in zip(members, states)
    ]
    counts = Counter(signatures)
    best = max(counts, key=lambda sig: (counts[sig], -signatures.index(sig)))
    chosen = [i for i, sig in enumerate(signatures) if sig == best]
    ignored = [i for i in range(len(members)) if i not in chosen]
    if ignored:
        logger.warning(
            "average baseline: averaging %d %s teachers; ignoring %d teacher(s) of other architectures/shapes: %s",
            len(chosen),
            best[0],
            len(ignored),
            ", ".join(f"{members[i].name} ({members[i].architecture})" for i in ignored),
        )
    averaged: dict[str, torch.Tensor] = {}
    for key, first in states[chosen[0]].items():
        if first.is_floating_point():
            stacked = torch.stack([states[i][key].detach().to(torch.float64) for i in chosen])
            averaged[key] = stacked.mean(0).to(first.dtype)
        else:
            averaged[key] = first.detach().clone()
    lead = members[chosen[0]]
    backbone = copy.deepcopy(lead.model)  # only the lead is copied: pools can be large
    backbone.reset_classifier(0)
    try:
        backbone.load_state_dict(averaged, strict=True)
    except RuntimeError as error:
        raise EvaluationError(
            f"cannot rebuild a {lead.architecture} backbone from the averaged teachers: {error}"
        ) from None
    backbone.requires_grad_(True)
    model = MetaModel(
        backbone,
        lead.architecture,
        tuple(lead.input_size),
        tuple(lead.mean),
        tuple(lead.std),
        model_args=dict(getattr(lead, "config", {}).get("model_args") or {}),
    )
    model.eval()
    logger.info(
        "average baseline: %d %s teachers averaged (%s)",
        len(chosen),
        lead.architecture,
        ", ".join(members[i].name for i in chosen),
    )
    return model
