"""Few-shot learners: ProtoNet and MAML, written on :func:`torch.func.functional_call`.

Both learners share one API, in the style of learn2learn:

* ``adapt(model, support_x, support_y) -> AdaptedClassifier`` adapts to a task for
  *evaluation / inference* (no meta-gradient); ``predict_proba(query_x)`` gives ``[Q, way]``.
* ``episode_loss(model, support_x, support_y, query_x, query_y, params=None)`` is the
  *meta-training* loss: a scalar differentiable w.r.t. ``params``, the meta-model's
  parameters as a dict ``{name: tensor}`` (the names of ``model.named_parameters()``;
  buffer names may be included too). ``params=None`` uses the model's own parameters.
  This is what meta-training and IGR differentiate.

Labels are episode labels ``0..way-1``; ``way`` is ``support_y.max() + 1`` and every class
must appear in the support set.

BatchNorm policy
----------------
``episode_loss`` runs the model in whatever mode the caller put it in (meta-training uses
train mode: batch statistics, running statistics updated as usual).

``adapt``/``predict_proba`` follow the learner's ``bn`` setting, the same for every
method and baseline so that comparisons are fair:

* ``"batch"`` (default, used by :mod:`tgr_hub.evaluate`): *transductive* batch statistics,
  the MAML / learn2learn protocol. Every BatchNorm normalises with the statistics of the
  batch being forwarded: the support set during adaptation, the whole query set at
  prediction. Running statistics are never read nor modified (forwards run on copies).
  Why: a meta-model trained on pseudo-data with batch statistics is evaluated the way it
  was trained, the Random baseline has no meaningful running statistics, and the Average
  baseline's averaged running statistics do not match its averaged weights. Caveat:
  query predictions depend on the composition of the query batch (balanced in episodes),
  and a single image cannot be classified through a backbone whose last BatchNorm sees a
  1x1 map.
* ``"running"``: non-transductive, every module in eval mode (running statistics); use it
  to classify single images (e.g. in the demo).

Dropout and other train-time layers are always in eval mode in ``adapt``/``predict_proba``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from .errors import ConfigError, EpisodeError

logger = logging.getLogger(__name__)

__all__ = [
    "AdaptedClassifier",
    "FinetunedClassifier",
    "MAML",
    "PrototypeClassifier",
    "ProtoNet",
    "features",
    "make_learner",
    "squared_distances",
]

BNMode = Literal["batch", "running"]
_BN_MODES = ("batch", "running")


# --- helpers ---------------------------------------------------------------------------------


def _infer_way(support_y: Tensor) -> int:
    """Number of classes of an episode; every label 0..way-1 must occur in the support set."""
    if support_y.dim() != 1 or support_y.numel() == 0:
        raise EpisodeError(f"support labels must be a non-empty 1-D tensor, got shape {tuple(support_y.shape)}")
    if support_y.min() < 0:
        raise EpisodeError("support labels must be episode labels 0..way-1, got a negative label")
    way = int(support_y.max()) + 1
    counts = torch.bincount(support_y, minlength=way)
    if (counts == 0).any():
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise EpisodeError(
            f"episode classes {missing} have no support example; labels must be 0..way-1 with all present"
        )
    return way


def _unpack_episode(
    support_x: Any, support_y: Tensor | None, query_x: Tensor | None, query_y: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Accept either four tensors or an Episode-like object as the first argument."""
    if hasattr(support_x, "support_x") and support_y is None:
        ep = support_x
        return ep.support_x, ep.support_y, ep.query_x, ep.query_y
    if support_y is None or query_x is None or query_y is None:
        raise TypeError("episode_loss needs support_x, support_y, query_x, query_y (or an Episode)")
    return support_x, support_y, query_x, query_y


@contextlib.contextmanager
def _eval_modes(model: nn.Module, bn: str) -> Iterator[None]:
    """Put ``model`` in evaluation mode, with BatchNorm in train mode for ``bn="batch"``; restore after."""
    if bn not in _BN_MODES:
        raise ConfigError(f"bn must be one of {_BN_MODES}, got {bn!r}")
    previous = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        if bn == "batch":
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.train()
        yield
    finally:
        for m, training in previous:
            m.training = training


def features(model: nn.Module, x: Tensor, params: dict[str, Tensor] | None = None) -> Tensor:
    """Forward ``x`` through ``model``, with ``params`` substituted when given.

    Args:
        model: the meta-model (or any feature extractor), ``[B, ...] -> [B, D]``.
        x: input batch ``[B, 3, H, W]``.
        params: ``{name: tensor}`` replacing some of the model's parameters/buffers
            (names not listed keep the module's own tensors).

    Returns:
        ``[B, D]`` features.
    """
    if params is None:
        return model(x)
    return functional_call(model, params, (x,), strict=False)


def _features_eval(model: nn.Module, x: Tensor, params: dict[str, Tensor] | None, bn: str) -> Tensor:
    """Forward for adaptation/prediction under the BatchNorm policy ``bn``.

    For ``bn="batch"`` the buffers are passed as copies so the running statistics of
    the model are left untouched by train-mode BatchNorm.
    """
    with _eval_modes(model, bn):
        if bn == "batch":
            own = {name: b.clone() for name, b in model.named_buffers()}
            return functional_call(model, {**own, **(params or {})}, (x,), strict=False)
        return features(model, x, params)


def squared_distances(queries: Tensor, prototypes: Tensor) -> Tensor:
    """Squared Euclidean distances, computed exactly (no expansion trick).

    Args:
        queries: ``[Q, D]``.
        prototypes: ``[way, D]``.

    Returns:
        ``[Q, way]`` with entry ``(i, c) = ||queries[i] - prototypes[c]||^2``.
    """
    return (queries[:, None, :] - prototypes[None, :, :]).pow(2).sum(-1)


def _prototypes(support_features: Tensor, support_y: Tensor, way: int) -> Tensor:
    """Class means ``[way, D]`` of ``support_features [S, D]``."""
    one_hot = F.one_hot(support_y, way).to(support_features.dtype)  # [S, way]
    return (one_hot.T @ support_features) / one_hot.sum(0)[:, None]


# --- adapted classifiers --------------------------------------------------------------------


class AdaptedClassifier:
    """A classifier adapted to one task; ``predict_proba`` maps query images to class probabilities."""

    way: int

    def logits(self, query_x: Tensor) -> Tensor:
        """``[Q, 3, H, W] -> [Q, way]`` logits."""
        raise NotImplementedError

    def predict_proba(self, query_x: Tensor) -> Tensor:
        """``[Q, 3, H, W] -> [Q, way]`` class probabilities (rows sum to 1)."""
        with torch.no_grad():
            return self.logits(query_x).softmax(-1)

    def predict(self, query_x: Tensor) -> Tensor:
        """``[Q, 3, H, W] -> [Q]`` predicted episode labels."""
        return self.predict_proba(query_x).argmax(-1)


class PrototypeClassifier(AdaptedClassifier):
    """Nearest class mean in feature space; logits are negative squared distances."""

    def __init__(self, model: nn.Module, prototypes: Tensor, bn: str = "batch") -> None:
        self.model = model
        self.prototypes = prototypes  # [way, D]
        self.way = prototypes.shape[0]
        self.bn = bn

    def logits(self, query_x: Tensor) -> Tensor:
        with torch.no_grad():
            q = _features_eval(self.model, query_x, None, self.bn)
        return -squared_distances(q, self.prototypes)


class FinetunedClassifier(AdaptedClassifier):
    """The meta-model with fine-tuned (fast) weights and a linear head."""

    def __init__(self, model: nn.Module, fast: dict[str, Tensor], bn: str = "batch") -> None:
        self.model = model
        self.fast = fast
        self.way = fast[MAML.HEAD_WEIGHT].shape[0]
        self.bn = bn

    def logits(self, query_x: Tensor) -> Tensor:
        with torch.no_grad():
            body = {k: v for k, v in self.fast.items() if not k.startswith(MAML.HEAD_PREFIX)}
            f = _features_eval(self.model, query_x, body, self.bn)
            return MAML.head_logits(f, self.fast)


# --- learners ---------------------------------------------------------------------------------


class EpisodicLearner:
    """What both learners share: the episode loss is cross-entropy of the query logits.

    Subclasses implement ``logits(model, support_x, support_y, query_x, params=None) -> [Q, way]``,
    differentiable w.r.t. ``params``.
    """

    def logits(
        self,
        model: nn.Module,
        support_x: Tensor,
        support_y: Tensor,
        query_x: Tensor,
        params: dict[str, Tensor] | None = None,
    ) -> Tensor:
        raise NotImplementedError

    def episode_loss(
        self,
        model: nn.Module,
        support_x: Tensor | Any,
        support_y: Tensor | None = None,
        query_x: Tensor | None = None,
        query_y: Tensor | None = None,
        params: dict[str, Tensor] | None = None,
    ) -> Tensor:
        """Cross-entropy of the queries after adapting on the support set (meta-training loss).

        Args:
            model: the meta-model, in the mode the caller chose (train mode in meta-training).
            support_x: ``[S, 3, H, W]`` (or an Episode, with the next three arguments omitted).
            support_y: ``[S]``.
            query_x: ``[Q, 3, H, W]``.
            query_y: ``[Q]``.
            params: meta-model parameters to differentiate w.r.t. (default: the model's own);
                buffers may be included.

        Returns:
            Scalar loss.
        """
        sx, sy, qx, qy = _unpack_episode(support_x, support_y, query_x, query_y)
        return F.cross_entropy(self.logits(model, sx, sy, qx, params), qy)


class ProtoNet(EpisodicLearner):
    """Prototypical networks (Snell et al., 2017).

    Prototypes are the class means of the support features; logits are negative squared
    Euclidean distances to the prototypes; the episode loss is cross-entropy on the queries.

    Args:
        bn: BatchNorm policy of :meth:`adapt` (see the module docstring).
    """

    name = "protonet"

    def __init__(self, bn: BNMode = "batch") -> None:
        if bn not in _BN_MODES:
            raise ConfigError(f"bn must be one of {_BN_MODES}, got {bn!r}")
        self.bn = bn

    def adapt(self, model: nn.Module, support_x: Tensor, support_y: Tensor) -> PrototypeClassifier:
        """Compute prototypes from the support set.

        Args:
            model: feature extractor ``[B, 3, H, W] -> [B, D]``.
            support_x: ``[S, 3, H, W]`` images.
            support_y: ``[S]`` labels in ``0..way-1``.
        """
        way = _infer_way(support_y)
        with torch.no_grad():
            f = _features_eval(model, support_x, None, self.bn)
        return PrototypeClassifier(model, _prototypes(f, support_y, way), self.bn)

    def logits(
        self,
        model: nn.Module,
        support_x: Tensor,
        support_y: Tensor,
        query_x: Tensor,
        params: dict[str, Tensor] | None = None,
    ) -> Tensor:
        """Differentiable query logits ``[Q, way]`` (support and query forwarded as separate batches)."""
        way = _infer_way(support_y)
        protos = _prototypes(features(model, support_x, params), support_y, way)
        return -squared_distances(features(model, query_x, params), protos)


class MAML(EpisodicLearner):
    """Model-agnostic meta-learning (Finn et al., 2017), first- or second-order.

    A linear head ``[way, D]`` on top of the meta-model's features is zero-initialised for
    every task (so the learner works for any ``way`` and the head is not meta-learned; with
    a zero head the first inner step only moves the head). The inner loop runs
    ``inner_steps`` steps of plain SGD with ``inner_lr`` on the support cross-entropy,
    adapting every parameter of the meta-model and the head.

    Args:
        inner_steps: SGD steps on the support set.
        inner_lr: SGD step size.
        first_order: drop the second-order terms (FOMAML): inner gradients are treated as
            constants. Second order differentiates through them (``create_graph=True``).
        bn: BatchNorm policy of :meth:`adapt` (see the module docstring).
    """

    name = "maml"
    HEAD_PREFIX = "__head__."
    HEAD_WEIGHT = "__head__.weight"
    HEAD_BIAS = "__head__.bias"

    def __init__(
        self, inner_steps: int = 5, inner_lr: float = 0.01, first_order: bool = True, bn: BNMode = "batch"
    ) -> None:
        if inner_steps < 0:
            raise ConfigError(f"inner_steps must be >= 0, got {inner_steps}")
        if inner_lr <= 0:
            raise ConfigError(f"inner_lr must be > 0, got {inner_lr}")
        if bn not in _BN_MODES:
            raise ConfigError(f"bn must be one of {_BN_MODES}, got {bn!r}")
        self.inner_steps = inner_steps
        self.inner_lr = inner_lr
        self.first_order = first_order
        self.bn = bn

    # --- fast weights ---

    @staticmethod
    def head_logits(feats: Tensor, fast: dict[str, Tensor]) -> Tensor:
        """Linear head: ``[B, D] -> [B, way]``."""
        return feats @ fast[MAML.HEAD_WEIGHT].T + fast[MAML.HEAD_BIAS]

    def clone(
        self, model: nn.Module, way: int, params: dict[str, Tensor] | None = None, feature_dim: int | None = None
    ) -> dict[str, Tensor]:
        """Fast weights: the meta-model's parameters plus a zero ``way``-way head.

        Args:
            model: the meta-model.
            way: number of classes of the task.
            params: parameters to start from (default: ``model.named_parameters()``); the
                returned dict holds these very tensors, so gradients flow back to them.
            feature_dim: ``D``; default ``model.feature_dim`` (or ``model.num_features``).

        Returns:
            ``{name: tensor}`` including ``__head__.weight [way, D]`` and ``__head__.bias [way]``.
        """
        if feature_dim is None:
            feature_dim = getattr(model, "feature_dim", None) or getattr(model, "num_features", None)
        if feature_dim is None:
            raise TypeError("MAML.clone needs feature_dim for a model without feature_dim/num_features")
        base = dict(model.named_parameters()) if params is None else dict(params)
        ref = next(iter(base.values()))
        fast = dict(base)
        fast[self.HEAD_WEIGHT] = torch.zeros(way, feature_dim, device=ref.device, dtype=ref.dtype, requires_grad=True)
        fast[self.HEAD_BIAS] = torch.zeros(way, device=ref.device, dtype=ref.dtype, requires_grad=True)
        return fast

    def fast_logits(self, model: nn.Module, fast: dict[str, Tensor], x: Tensor) -> Tensor:
        """Logits ``[B, way]`` of ``x [B, 3, H, W]`` under fast weights (current module modes)."""
        body = {k: v for k, v in fast.items() if not k.startswith(self.HEAD_PREFIX)}
        return self.head_logits(features(model, x, body), fast)

    def adapt_step(
        self,
        model: nn.Module,
        fast: dict[str, Tensor],
        x: Tensor,
        y: Tensor | None,
        create_graph: bool,
        loss_of: Callable[[Tensor], Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """One inner SGD step on ``(x, y)``: ``w <- w - inner_lr * grad CE``.

        Only tensors that require grad are updated (frozen ones stay as they are).
        With ``create_graph=False`` the gradients are detached constants (first order).
        ``loss_of``: another inner loss, of the logits ``[B, way]`` (BiDf-MKD distils there), instead
        of the cross-entropy with ``y``.
        """
        names = [k for k, v in fast.items() if v.requires_grad]
        logits = self.fast_logits(model, fast, x)
        if loss_of is not None:
            loss = loss_of(logits)
        elif y is not None:
            loss = F.cross_entropy(logits, y)
        else:
            raise ValueError("an inner step needs the labels y or a loss_of")
        grads = torch.autograd.grad(loss, [fast[k] for k in names], create_graph=create_graph, allow_unused=True)
        new = dict(fast)
        for k, g in zip(names, grads):
            if g is not None:  # unused parameter: gradient is zero
                new[k] = fast[k] - self.inner_lr * g
        return new

    def adapt_fast(
        self,
        model: nn.Module,
        fast: dict[str, Tensor],
        support_x: Tensor,
        support_y: Tensor | None,
        create_graph: bool,
        loss_of: Callable[[Tensor], Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """Run ``inner_steps`` inner steps from ``fast`` (current module modes; ``loss_of``: see :meth:`adapt_step`)."""
        for _ in range(self.inner_steps):
            fast = self.adapt_step(model, fast, support_x, support_y, create_graph, loss_of)
        return fast

    # --- public API ---

    def adapt(self, model: nn.Module, support_x: Tensor, support_y: Tensor) -> FinetunedClassifier:
        """Fine-tune a copy of the meta-model's weights (and a zero head) on the support set.

        The meta-model itself is not modified; the inner loop is first order (no
        meta-gradient is needed at evaluation).

        Args:
            model: the meta-model ``[B, 3, H, W] -> [B, D]``.
            support_x: ``[S, 3, H, W]``.
            support_y: ``[S]`` labels in ``0..way-1``.
        """
        way = _infer_way(support_y)
        start = {k: p.detach().clone().requires_grad_(True) for k, p in model.named_parameters()}
        fast = self.clone(model, way, start)
        with torch.enable_grad(), _eval_modes(model, self.bn):
            own = {name: b.clone() for name, b in model.named_buffers()} if self.bn == "batch" else {}
            fast_with_buffers = {**own, **fast}
            for _ in range(self.inner_steps):
                fast_with_buffers = self.adapt_step(model, fast_with_buffers, support_x, support_y, create_graph=False)
                fast_with_buffers = {
                    k: v.detach().requires_grad_(v.requires_grad) for k, v in fast_with_buffers.items()
                }
        adapted = {k: fast_with_buffers[k].detach() for k in fast}
        return FinetunedClassifier(model, adapted, self.bn)

    def logits(
        self,
        model: nn.Module,
        support_x: Tensor,
        support_y: Tensor,
        query_x: Tensor,
        params: dict[str, Tensor] | None = None,
    ) -> Tensor:
        """Differentiable query logits ``[Q, way]`` after the inner loop on the support set."""
        fast = self.clone(model, _infer_way(support_y), params)
        with torch.enable_grad():
            fast = self.adapt_fast(model, fast, support_x, support_y, create_graph=not self.first_order)
            return self.fast_logits(model, fast, query_x)


def make_learner(name: str, **kwargs: Any) -> ProtoNet | MAML:
    """Build a learner by name.

    Args:
        name: ``"protonet"``, ``"maml"`` (``first_order`` from kwargs, default True),
            ``"fomaml"`` (first order), ``"maml2"`` (second order) or ``"finetune"``
            (MAML's adaptation; evaluation defaults 10 steps, lr 0.01).
        **kwargs: constructor arguments (``inner_steps``, ``inner_lr``, ``first_order``, ``bn``).
    """
    key = name.lower()
    if key == "protonet":
        kwargs = {k: v for k, v in kwargs.items() if k == "bn"}  # ProtoNet has no inner loop
        return ProtoNet(**kwargs)
    if key == "maml":
        return MAML(**kwargs)
    if key == "fomaml":
        return MAML(**{**kwargs, "first_order": True})
    if key == "maml2":
        return MAML(**{**kwargs, "first_order": False})
    if key == "finetune":
        defaults = {"inner_steps": 10, "inner_lr": 0.01}
        return MAML(**{**defaults, **kwargs})
    raise ConfigError(f"unknown learner {name!r}; choose protonet, maml, fomaml, maml2 or finetune")
