"""The paper's benchmarks as named recipes: CIFAR-FS (32 px), miniImageNet (84 px), CUB (84 px).

A recipe names the Hub dataset that holds the benchmark, the image size, the class split (the
dataset's own class-disjoint splits, or a built-in one), and the teacher pool of the paper
(ALGORITHM.md: 5-way teachers, 100 per dataset and architecture; the meta-model is a Conv4).
One flag applies it to ``make-pool``, ``train`` and ``evaluate``:

    tgr-hub make-pool --recipe cifar-fs --out pool/cifar-fs
    tgr-hub train --recipe cifar-fs --pool pool/cifar-fs/repo-list.txt --out runs/cifar-fs

It is applied over the preset (default ``paper``) and under config files, flags and ``--set``,
so ``--dataset`` or ``--set data.dataset=...`` points a recipe at another copy of the benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

#: ``pool.domains`` value meaning "every domain of the dataset" (a Hub benchmark has one: its name).
ALL_DOMAINS = "*"


@dataclass(frozen=True)
class Recipe:
    """One paper benchmark.

    Attributes:
        name: the ``--recipe`` name.
        title: the benchmark's name in the literature.
        dataset: the Hub dataset id used by default.
        image_size: side of the images (teachers, meta-model and evaluation).
        archs: teacher architectures.
        teachers: pool size (the paper: 100 per dataset and architecture).
        class_split: a built-in class split, or None to use the dataset's own class-disjoint splits.
        alternatives: other Hub ids known to hold the benchmark (``--dataset`` picks one).
        preset: the preset a recipe runs with unless ``--preset`` says otherwise.
    """

    name: str
    title: str
    dataset: str
    image_size: int
    archs: tuple[str, ...]
    teachers: int
    class_split: str | None = None
    alternatives: tuple[str, ...] = ()
    preset: str = "paper"

    def config_values(self) -> dict[str, Any]:
        """The recipe as config values (sections ``data``, ``pool``, ``train``)."""
        return {
            "data": {"dataset": self.dataset, "image_size": self.image_size, "class_split": self.class_split},
            "pool": {"archs": list(self.archs), "teachers": self.teachers, "way": 5, "domains": [ALL_DOMAINS]},
            "train": {"arch": "conv4"},
        }


RECIPES: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        Recipe("cifar-fs", "CIFAR-FS (64 / 16 / 20 classes)", "GATE-engine/cifarfs", 32, ("conv4",), 100),
        Recipe(
            "mini-imagenet", "miniImageNet (64 / 16 / 20 classes)", "GATE-engine/mini_imagenet", 84, ("conv4",), 100
        ),
        # CUB-200-2011 uploads carry the image-level train/test split, not a class split: the
        # built-in 100/50/50 one of Chen et al. 2019 is applied
        Recipe(
            "cub",
            "CUB-200-2011 (100 / 50 / 50 classes)",
            "bentrevett/caltech-ucsd-birds-200-2011",
            84,
            ("conv4",),
            100,
            class_split="cub-200",
        ),
    )
}


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name``.

    Raises:
        ConfigError: an unknown name (the message lists the known ones).
    """
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return RECIPES[name]
