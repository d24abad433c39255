"""A few-shot session: define classes from a few images, adapt the meta-model, classify.

    session = FewShotSession.for_app_model(app_model)
    session.define_classes({"cat": ["cat1.jpg", "cat2.png"], "dog": ["dog1.jpg"]})
    session.adapt()
    session.classify(["query.jpg"])
    # -> [{"image": "query.jpg", "label": "cat", "confidence": 0.93, "probabilities": {"cat": 0.93, "dog": 0.07}}]

ProtoNet adapts by class prototypes, MAML-style learners by a few fine-tuning steps.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Union, cast

import torch
from torch import Tensor, nn

from ..errors import ImageInputError
from ..learners import MAML, BNMode, FinetunedClassifier, make_learner
from .images import (
    DEFAULT_LIMITS,
    ImageSource,
    InputLimits,
    _source_name,
    _unique_names,
    _validate_classes,
    group_by_label,
    load_images,
    parse_labels,
)

if TYPE_CHECKING:
    from .summary import AppModel

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int, str], None]
"""``progress_cb(done, total, description)``, called as adaptation advances."""


#: BatchNorm statistics of a session: the learners' modes (:data:`tgr_hub.learners.BNMode`), or
#: ``"support"``: running statistics re-estimated on the support images first.
SessionBNMode = Union[Literal["support"], BNMode]  # noqa: UP007 (runtime alias)


def calibrate_batchnorm(model: nn.Module, images: Tensor) -> nn.Module:
    """A copy of ``model`` whose BatchNorm running statistics are those of ``images``.

    Why: the meta-model may have been trained on pseudo-data (model inversion) whose
    statistics differ from people's photos, and transductive batch statistics make a
    prediction depend on which other query images were sent with it. Normalising with the
    support set's statistics adapts BatchNorm to the task while classifying each query on
    its own.

    Args:
        model: the meta-model (not modified).
        images: ``[S, 3, H, W]`` support images in ``[0, 1]``.

    Returns:
        The calibrated copy, in eval mode, with no parameter requiring grad.
    """
    calibrated = copy.deepcopy(model)
    calibrated.eval()
    norms = [m for m in calibrated.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        if m.track_running_stats:
            m.reset_running_stats()
            m.momentum = None  # cumulative average: after one batch the statistics are that batch's
            m.train()
    if norms:
        with torch.no_grad():
            calibrated(images)
    calibrated.eval()
    for p in calibrated.parameters():
        p.requires_grad_(False)
    return calibrated


class FewShotSession:
    """One person's few-shot task: classes, then adaptation, then classification.

    Args:
        model: the meta-model (:class:`~tgr_hub.metamodel.MetaModel`: ``[B, 3, H, W]`` in
            ``[0, 1]`` to ``[B, D]`` features). It is never modified.
        learner: ``"protonet"`` (prototypes) or ``"maml"`` / ``"finetune"`` (fine-tuning).
        inner_steps: fine-tuning steps for MAML.
        inner_lr: fine-tuning step size for MAML.
        bn: BatchNorm statistics at adaptation and prediction: ``"support"`` (default:
            statistics of the support set, see :func:`calibrate_batchnorm`), ``"running"``
            (the model's stored statistics) or ``"batch"`` (transductive batch statistics).
        limits: input limits.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        learner: str = "protonet",
        inner_steps: int = 10,
        inner_lr: float = 0.01,
        bn: SessionBNMode = "support",
        limits: InputLimits = DEFAULT_LIMITS,
    ) -> None:
        if bn not in ("support", "running", "batch"):
            raise ValueError(f"bn must be support, running or batch, got {bn!r}")
        self.model = model
        self.learner_name = learner.lower()
        self.bn = bn
        self.limits = limits
        learner_bn = "batch" if bn == "batch" else "running"
        kwargs: dict[str, Any] = {"bn": learner_bn}
        if self.learner_name != "protonet":
            kwargs.update(inner_steps=inner_steps, inner_lr=inner_lr, first_order=True)
        self.learner = make_learner(self.learner_name, **kwargs)
        self.class_names: list[str] = []
        self.notes: list[str] = []
        self._support_x: Tensor | None = None
        self._support_y: Tensor | None = None
        self._adapted: Any = None

    @classmethod
    def for_app_model(cls, app_model: AppModel, **kwargs: Any) -> FewShotSession:
        """A session with the learner and fine-tuning settings recorded with the model."""
        options: dict[str, Any] = {
            "learner": app_model.learner,
            "inner_steps": app_model.inner_steps,
            "inner_lr": app_model.inner_lr,
        }
        options.update(kwargs)
        return cls(app_model.model, **options)

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` the model takes."""
        input_size = getattr(self.model, "input_size", (3, 32, 32))
        return int(input_size[-2]), int(input_size[-1])

    @property
    def adapted(self) -> bool:
        """Whether :meth:`adapt` ran for the current classes."""
        return self._adapted is not None

    def define_classes(
        self, classes: Mapping[str, Sequence[ImageSource]] | Sequence[tuple[str, Sequence[ImageSource]]]
    ) -> list[str]:
        """Set the task's classes and load their images (any earlier adaptation is dropped).

        Args:
            classes: ``{name: [images...]}`` or ``[(name, [images...]), ...]``, in display order.

        Returns:
            Notes on conversions made (e.g. ``"x.png: converted from RGBA to RGB ..."``).

        Raises:
            ImageInputError: no/one/too many classes, a nameless or image-less class, duplicate
                names, too many images, or an image that is not valid.
        """
        checked = _validate_classes(classes, self.limits)
        self._adapted = None
        notes: list[str] = []
        batches, labels = [], []
        for index, (name, images) in enumerate(checked):
            try:
                batches.append(load_images(images, size=self.image_size, limits=self.limits, what="image", notes=notes))
            except ImageInputError as error:
                raise ImageInputError(f"class {name!r}: {error}") from None
            labels += [index] * len(images)
        self.class_names = [name for name, _ in checked]
        self._support_x = torch.cat(batches)
        self._support_y = torch.tensor(labels, dtype=torch.long)
        self.notes = notes
        logger.info("defined %d classes with %d support images", len(checked), len(labels))
        return notes

    def adapt(self, progress_cb: ProgressCallback | None = None) -> None:
        """Adapt the meta-model to the defined classes.

        ProtoNet computes one prototype per class; MAML fine-tunes a copy of the weights
        and a new linear head for ``inner_steps`` steps, calling ``progress_cb`` after each.

        Raises:
            ImageInputError: no classes were defined.
        """
        if self._support_x is None or self._support_y is None:
            raise ImageInputError(
                "no classes defined yet: define at least 2 classes, each with a name and images, before adapting"
            )
        sx, sy = self._support_x, self._support_y
        if self.bn == "support":
            model = calibrate_batchnorm(self.model, sx)
        elif self.bn == "running" and self.learner_name != "protonet":
            model = copy.deepcopy(self.model).eval()  # the step-by-step fine-tuning runs the model in its mode
        else:
            model = self.model  # the learner sets (and restores) the modes itself
        if progress_cb is not None:
            progress_cb(0, self._total_steps(), "adapting")
        if self.learner_name == "protonet":
            self._adapted = self.learner.adapt(model, sx, sy)
        else:
            self._adapted = self._finetune(model, sx, sy, progress_cb)
        if progress_cb is not None:
            progress_cb(self._total_steps(), self._total_steps(), "adapted")
        logger.info("adapted with %s to %d classes", self.learner_name, len(self.class_names))

    def _total_steps(self) -> int:
        return 1 if self.learner_name == "protonet" else max(1, cast(MAML, self.learner).inner_steps)

    def _finetune(self, model: nn.Module, sx: Tensor, sy: Tensor, progress_cb: ProgressCallback | None) -> Any:
        """MAML adaptation (first order) step by step, so that progress can be shown."""
        learner = cast(MAML, self.learner)  # not protonet: make_learner gave a MAML
        if self.bn == "batch":  # the learner's own loop handles transductive statistics
            return learner.adapt(model, sx, sy)
        start = {k: p.detach().clone().requires_grad_(True) for k, p in model.named_parameters()}
        fast = learner.clone(model, len(self.class_names), start)
        steps = learner.inner_steps
        with torch.enable_grad():
            for step in range(steps):
                fast = learner.adapt_step(model, fast, sx, sy, create_graph=False)
                fast = {k: v.detach().requires_grad_(True) for k, v in fast.items()}
                if progress_cb is not None:
                    progress_cb(step + 1, steps, f"fine-tuning step {step + 1}/{steps}")
        return FinetunedClassifier(model, {k: v.detach() for k, v in fast.items()}, "running")

    def predict_proba(self, images: Tensor) -> Tensor:
        """``[Q, 3, H, W]`` in ``[0, 1]`` to ``[Q, way]`` probabilities (after :meth:`adapt`)."""
        if self._adapted is None:
            raise ImageInputError("the model is not adapted yet: define the classes and adapt before classifying")
        return self._adapted.predict_proba(images)

    def classify(self, images: Sequence[ImageSource], *, notes: list[str] | None = None) -> list[dict[str, Any]]:
        """Classify query images.

        Args:
            images: file paths, bytes, PIL images or arrays.
            notes: conversion notes are appended here.

        Returns:
            One dict per image: ``{"image": name, "label": best class, "confidence": its
            probability, "probabilities": {class: probability}}`` (classes by decreasing
            probability).

        Raises:
            ImageInputError: not adapted yet, no/too many images, or an invalid image.
        """
        if self._adapted is None:
            raise ImageInputError("the model is not adapted yet: define the classes and adapt before classifying")
        images = list(images or [])
        if not images:
            raise ImageInputError("no query images given: upload at least one image to classify")
        query = load_images(
            images,
            size=self.image_size,
            limits=self.limits,
            what="query image",
            max_count=self.limits.max_query_images,
            notes=notes,
        )
        probabilities = self.predict_proba(query)
        names = _unique_names([_source_name(s, i) for i, s in enumerate(images)])
        return [self._result(name, row) for name, row in zip(names, probabilities)]

    def _result(self, image_name: str, row: Tensor) -> dict[str, Any]:
        order = torch.argsort(row, descending=True).tolist()
        probabilities = {self.class_names[c]: round(float(row[c]), 6) for c in order}
        best = order[0]
        return {
            "image": image_name,
            "label": self.class_names[best],
            "confidence": round(float(row[best]), 6),
            "probabilities": probabilities,
        }


def classify_episode(
    model: nn.Module,
    support_images: Sequence[ImageSource],
    support_labels: str | Sequence[str],
    query_images: Sequence[ImageSource],
    **session_kwargs: Any,
) -> dict[str, Any]:
    """Adapt to labelled support images and classify query images in one call (the API).

    Args:
        model: the meta-model.
        support_images: the support images.
        support_labels: one label per support image (list, or text split by :func:`parse_labels`).
        query_images: images to classify.
        **session_kwargs: :class:`FewShotSession` options (learner, inner_steps, bn, limits...).

    Returns:
        ``{"classes": [names...], "predictions": [per-image dicts as in
        FewShotSession.classify], "notes": [conversion notes]}``.
    """
    limits = session_kwargs.get("limits", DEFAULT_LIMITS)
    labels = parse_labels(support_labels)
    classes = group_by_label(support_images, labels)
    session = FewShotSession(model, **session_kwargs)
    notes = session.define_classes(classes)
    # Check the queries before the (possibly slow) adaptation.
    query = list(query_images or [])
    if not query:
        raise ImageInputError("no query images given: upload at least one image to classify")
    if len(query) > limits.max_query_images:
        raise ImageInputError(f"too many query images: {len(query)} given, the limit is {limits.max_query_images}")
    session.adapt()
    predictions = session.classify(query, notes=notes)
    return {"classes": session.class_names, "predictions": predictions, "notes": notes}
