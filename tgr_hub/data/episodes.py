"""Class-disjoint image splits and N-way K-shot episodes drawn from them.

An :class:`ImageSplit` holds every image of one split (meta-train, meta-val or
meta-test) as a uint8 tensor; an :class:`EpisodeSampler` draws episodes from it as a
pure function of ``(seed, index)``, so episode 17 is the same episode whichever
episodes were drawn before it (evaluations are reproducible and resumable).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import seeds
from ..errors import DatasetError, EpisodeError

logger = logging.getLogger(__name__)

#: Canonical split names; "val" and "validation" are the same split.
SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")
_SPLIT_ALIASES = {
    "train": "train",
    "meta-train": "train",
    "meta_train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "meta-val": "val",
    "meta_val": "val",
    "test": "test",
    "meta-test": "test",
    "meta_test": "test",
}
#: Fractions of the classes of a domain (or dataset) in train / val / test.
SPLIT_FRACTIONS: tuple[float, float, float] = (0.6, 0.2, 0.2)


def normalize_split(split: str) -> str:
    """Map a split name (``train``, ``val``/``validation``, ``test``) to its canonical form.

    Raises:
        DatasetError: for any other name.
    """
    key = str(split).strip().lower()
    if key not in _SPLIT_ALIASES:
        raise DatasetError(f"unknown split {split!r}", hint="use train, val (or validation) or test")
    return _SPLIT_ALIASES[key]


def split_classes(
    num_classes: int,
    seed: int,
    fractions: tuple[float, float, float] = SPLIT_FRACTIONS,
) -> dict[str, list[int]]:
    """Assign classes ``0..num_classes-1`` to train / val / test, class-disjointly.

    The classes are shuffled with ``numpy.random.default_rng(seed)``; val and test get
    ``round(fraction * num_classes)`` classes each (at least one each once there are 3
    classes), train gets the rest: train is the first part of the permutation, then val,
    then test. Each list is sorted.

    Args:
        num_classes: number of classes to split.
        seed: seed of the shuffle.
        fractions: (train, val, test) fractions; only val and test are used, train takes the rest.

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, disjoint, covering every class.
    """
    if num_classes < 0:
        raise DatasetError(f"cannot split {num_classes} classes", hint="num_classes must be >= 0")
    if min(fractions[1:]) < 0 or fractions[1] + fractions[2] > 1:
        raise DatasetError(
            f"class split fractions {tuple(fractions)} are invalid",
            hint="val and test fractions are >= 0 and together at most 1",
        )
    n_val = int(round(fractions[1] * num_classes))
    n_test = int(round(fractions[2] * num_classes))
    if num_classes >= 3:  # every split gets at least one class
        n_val, n_test = max(n_val, 1), max(n_test, 1)
    n_train = num_classes - n_val - n_test
    if n_train < 0:
        raise DatasetError(
            f"{num_classes} classes are too few for a train, a val and a test split with fractions {tuple(fractions)}",
            hint="use a dataset with more classes",
        )
    order = seeds.class_split_rng(seed).permutation(num_classes)
    return {
        "train": sorted(int(c) for c in order[:n_train]),
        "val": sorted(int(c) for c in order[n_train : n_train + n_val]),
        "test": sorted(int(c) for c in order[n_train + n_val :]),
    }


def channel_stats(images: torch.Tensor, chunk: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (unbiased) std of uint8 images, as values in [0, 1].

    Accumulated in float64 over chunks of ``chunk`` images, so memory stays at one float chunk
    whatever the number and size of the images.

    Args:
        images: ``[N, C, H, W]`` uint8, N * H * W >= 2.

    Returns:
        ``(mean [C], std [C])`` float64.
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise DatasetError(f"channel_stats expects [N, C, H, W] uint8 images, got {tuple(images.shape)} {images.dtype}")
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros(images.shape[1], dtype=torch.float64)
    for start in range(0, images.shape[0], chunk):
        block = images[start : start + chunk].to(torch.float64).div_(255.0)
        total += block.sum(dim=(0, 2, 3))
        squares += block.square().sum(dim=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    variance = (squares - count * mean.square()) / max(count - 1, 1)
    return mean, variance.clamp_min(0).sqrt()


@dataclass
class ImageSplit:
    """All images of one class-disjoint split.

    Attributes:
        images: ``[N, 3, H, W]`` uint8.
        labels: ``[N]`` int64, class index within this split, in ``0..C-1``.
        class_names: ``[C]`` names, e.g. ``"latin/A"``.
        class_domains: ``[C]`` domain of each class, e.g. ``"latin"``.
        revision: the commit a Hub dataset resolved to (None otherwise).
        class_split: how its classes were assigned to train / val / test (``dataset`` for the
            dataset's own splits, ``seeded-60/20/20:SEED``, ``builtin:NAME``, ``file:PATH``; None: unknown).
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    class_domains: list[str]
    revision: str | None = None
    class_split: str | None = None
    _by_class: list[torch.Tensor] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise DatasetError(f"images must be [N, 3, H, W] uint8, got {tuple(images.shape)} {images.dtype}")
        if labels.dtype != torch.int64 or labels.shape != (images.shape[0],):
            raise DatasetError(
                f"labels must be [N] = [{images.shape[0]}] int64, got {tuple(labels.shape)} {labels.dtype}"
            )
        if len(self.class_names) != len(self.class_domains):
            raise DatasetError(f"{len(self.class_names)} class names but {len(self.class_domains)} class domains")
        if labels.numel() and not (int(labels.min()) >= 0 and int(labels.max()) < len(self.class_names)):
            raise DatasetError(
                f"labels must lie in 0..{len(self.class_names) - 1}, got {int(labels.min())}..{int(labels.max())}"
            )

    @property
    def num_classes(self) -> int:
        """Number of classes C."""
        return len(self.class_names)

    @property
    def image_size(self) -> int:
        """Height H (images are square)."""
        return int(self.images.shape[-2])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def indices_of(self, c: int) -> torch.Tensor:
        """Image indices of class ``c``: ``[n_c]`` int64, ascending."""
        if self._by_class is None:
            # one stable sort, then slices: cheap per episode afterwards
            order = torch.argsort(self.labels, stable=True)
            counts = torch.bincount(self.labels, minlength=self.num_classes).tolist()
            self._by_class = list(torch.split(order, counts))
        if not 0 <= c < self.num_classes:
            raise IndexError(f"class {c} out of range 0..{self.num_classes - 1}")
        return self._by_class[c]

    def class_counts(self) -> torch.Tensor:
        """Images per class: ``[C]`` int64."""
        return torch.bincount(self.labels, minlength=self.num_classes)

    def select_classes(self, classes: list[int]) -> ImageSplit:
        """The sub-split of ``classes``, relabelled ``0..len(classes)-1`` in the given order."""
        classes = [int(c) for c in classes]
        if len(set(classes)) != len(classes):
            raise DatasetError(f"select_classes got repeated classes: {classes}")
        for c in classes:
            if not 0 <= c < self.num_classes:
                raise DatasetError(f"class {c} out of range 0..{self.num_classes - 1}")
        mapping = torch.full((self.num_classes,), -1, dtype=torch.int64)
        mapping[torch.tensor(classes, dtype=torch.int64)] = torch.arange(len(classes))
        keep = torch.nonzero(mapping[self.labels] >= 0).flatten()
        return ImageSplit(
            images=self.images[keep],
            labels=mapping[self.labels[keep]],
            class_names=[self.class_names[c] for c in classes],
            class_domains=[self.class_domains[c] for c in classes],
        )

    def float_images(self, idx: torch.Tensor) -> torch.Tensor:
        """Images ``idx`` as float32 in [0, 1]: ``[n, 3, H, W]``."""
        return self.images[idx].to(torch.float32).div_(255.0)

    def domains(self) -> list[str]:
        """The distinct domains of this split, in class order."""
        return list(dict.fromkeys(self.class_domains))


@dataclass
class Episode:
    """One N-way K-shot task: the one type of training, replay, validation and test episodes.

    Support and query are ordered by episode class, then by draw:
    ``support_y = [0]*shot + [1]*shot + ...``.

    Attributes:
        support_x: ``[way*shot, 3, H, W]`` float32 in [0, 1].
        support_y: ``[way*shot]`` int64 in ``0..way-1``.
        query_x: ``[way*query, 3, H, W]`` float32 in [0, 1].
        query_y: ``[way*query]`` int64 in ``0..way-1``.
        classes: what each episode label is (position = label): a split's class ids (real
            episodes), ``(teacher, class id)`` keys (replay episodes from the memory bank), or one
            teacher's class ids (a pseudo-task, :func:`tgr_hub.train.make_pseudo_task`).
        support_idx: ``[way*shot]`` indices of the support images in the split (real episodes).
        query_idx: ``[way*query]`` indices of the query images in the split (real episodes).
        teacher_probs: ``[way*(shot+query), way]`` a pseudo-task's teacher's softened predictions on
            the support then the query images, restricted to its classes (the distillation targets).
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    classes: list[Any]
    support_idx: torch.Tensor | None = None
    query_idx: torch.Tensor | None = None
    teacher_probs: torch.Tensor | None = None

    def to(self, device: torch.device) -> Episode:
        """The episode's tensors on ``device``."""
        probs = self.teacher_probs
        return dataclasses.replace(
            self,
            support_x=self.support_x.to(device),
            support_y=self.support_y.to(device),
            query_x=self.query_x.to(device),
            query_y=self.query_y.to(device),
            teacher_probs=probs.to(device) if probs is not None else None,
        )

    @property
    def way(self) -> int:
        return len(self.classes)


class EpisodeSampler:
    """Draws N-way K-shot episodes with Q queries per class from one split.

    Episode ``index`` is a deterministic function of ``(seed, index)`` only. Classes
    with fewer than ``shot + query`` images are never drawn (a warning is logged);
    there must be at least ``way`` classes left.

    Args:
        split: the split to draw from.
        way: classes per episode (N).
        shot: support images per class (K).
        query: query images per class (Q); 0 gives support-only episodes.
        seed: seed of the episode stream.

    Raises:
        EpisodeError: if way/shot/query are invalid, or fewer than ``way`` classes have
            ``shot + query`` images.
    """

    def __init__(self, split: ImageSplit, way: int, shot: int, query: int, seed: int = 0) -> None:
        if way < 1 or shot < 1 or query < 0:
            raise EpisodeError(
                f"invalid episode shape way={way}, shot={shot}, query={query}",
                hint="way and shot must be >= 1 and query >= 0",
            )
        if seed < 0:
            raise EpisodeError(f"seed must be >= 0, got {seed}")
        self.split, self.way, self.shot, self.query, self.seed = split, int(way), int(shot), int(query), int(seed)
        need = self.shot + self.query
        counts = split.class_counts()
        self.eligible: list[int] = [c for c in range(split.num_classes) if int(counts[c]) >= need]
        if split.num_classes < self.way:
            raise EpisodeError(
                f"a {way}-way episode needs {way} classes but the split has only {split.num_classes}",
                hint="lower the way or use a split/dataset with more classes",
            )
        if len(self.eligible) < self.way:
            smallest = int(counts.min()) if counts.numel() else 0
            raise EpisodeError(
                f"a {way}-way {shot}-shot episode with {query} queries needs {need} images in each of {way} "
                f"classes, but only {len(self.eligible)} of {split.num_classes} classes have that many "
                f"(smallest class: {smallest} images)",
                hint="lower shot/query or the way",
            )
        if len(self.eligible) < split.num_classes:
            logger.warning(
                "%d of %d classes have fewer than %d images and are never drawn",
                split.num_classes - len(self.eligible),
                split.num_classes,
                need,
            )

    def indices(self, index: int) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """The classes and the support / query image indices of episode ``index``.

        Returns:
            ``(classes, support_idx [way*shot], query_idx [way*query])``.
        """
        if index < 0:
            raise EpisodeError(f"episode index must be >= 0, got {index}")
        # a fresh generator per episode: independent of which episodes were drawn before
        rng = seeds.episode_rng(self.seed, index)
        picked = rng.choice(len(self.eligible), size=self.way, replace=False)
        classes = [self.eligible[int(i)] for i in picked]
        support, query = [], []
        for c in classes:
            pool = self.split.indices_of(c)
            chosen = pool[torch.from_numpy(rng.choice(len(pool), size=self.shot + self.query, replace=False))]
            support.append(chosen[: self.shot])
            query.append(chosen[self.shot :])
        return classes, torch.cat(support), torch.cat(query)

    def episode(self, index: int) -> Episode:
        """Episode ``index`` (a deterministic function of ``(seed, index)``)."""
        classes, support_idx, query_idx = self.indices(index)
        labels = torch.arange(self.way, dtype=torch.int64)
        return Episode(
            support_x=self.split.float_images(support_idx),
            support_y=labels.repeat_interleave(self.shot),
            query_x=self.split.float_images(query_idx),
            query_y=labels.repeat_interleave(self.query),
            classes=classes,
            support_idx=support_idx,
            query_idx=query_idx,
        )

    def __iter__(self) -> Iterator[Episode]:
        """Infinite stream ``episode(0), episode(1), ...``."""
        index = 0
        while True:
            yield self.episode(index)
            index += 1
