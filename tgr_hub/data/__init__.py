"""Few-shot data: class-disjoint splits, N-way K-shot episodes, the built-in glyph benchmark.

Example::

    split = load_split("glyphs", "test")                  # the offline benchmark
    split = load_split("./my_images", "val", seed=1)      # any imagefolder / save_to_disk / Hub dataset
    sampler = EpisodeSampler(split, way=5, shot=1, query=15, seed=0)
    episode = sampler.episode(0)
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .episodes import SPLIT_NAMES, Episode, EpisodeSampler, ImageSplit, normalize_split, split_classes
from .glyphs import (
    GLYPH_DOMAINS,
    build_glyphs,
    default_cache_root,
    glyph_cache_dir,
    glyph_classes,
    load_glyph_dataset,
    load_glyph_split,
)

#: The name of the built-in benchmark for ``--dataset``.
GLYPHS = "glyphs"

if TYPE_CHECKING:
    from ..config import DataConfig

__all__ = [
    "GLYPHS",
    "GLYPH_DOMAINS",
    "SPLIT_NAMES",
    "Episode",
    "EpisodeSampler",
    "ImageSplit",
    "build_glyphs",
    "default_cache_root",
    "glyph_cache_dir",
    "glyph_classes",
    "load_glyph_dataset",
    "load_glyph_split",
    "load_split",
    "split_of",
    "normalize_split",
    "split_classes",
]


def load_split(
    dataset: str = GLYPHS,
    split: str = "test",
    *,
    domains: list[str] | None = None,
    image_size: int = 32,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    class_split: str | None = None,
) -> ImageSplit:
    """One class-disjoint split (meta-train, meta-val or meta-test) of a dataset.

    Args:
        dataset: ``"glyphs"`` (the built-in offline benchmark; a local folder of that name
            is ``"./glyphs"``), a local imagefolder or ``save_to_disk`` folder, or a Hub
            dataset id (``org/name[@revision]``).
        split: ``train``, ``val`` (or ``validation``) or ``test``.
        domains: glyphs: a subset of :data:`GLYPH_DOMAINS`; other datasets: values of their
            ``domain`` column, if any. None keeps every class.
        image_size: side H = W of the images.
        seed: glyphs: the benchmark's seed (class split and augmentations); other datasets:
            the seed of their class split.
        cache_dir: cache root (default ``$TGR_HUB_CACHE`` or ``~/.cache/tgr_hub``).
        class_split: not for glyphs: a built-in class split (``cub-200``) or a JSON file of
            class lists, used instead of the dataset's own splits or the seeded 60/20/20 one.

    Returns:
        The split: ``images`` ``[N, 3, H, W]`` uint8, ``labels`` ``[N]`` in ``0..C-1``.

    Raises:
        DatasetError: unknown split or domain, unreadable dataset, or no class in the split.
    """
    if dataset == GLYPHS:
        if class_split:
            from ..errors import DatasetError

            raise DatasetError(
                "the glyph benchmark has its own class split; --class-split is for other datasets",
                hint="drop --class-split (data.class_split) or pick another --dataset",
            )
        return load_glyph_split(split, domains=domains, image_size=image_size, seed=seed, cache_dir=cache_dir)
    from .sources import load_source_split  # imports `datasets` only when needed

    return load_source_split(
        dataset, split, domains=domains, image_size=image_size, seed=seed, cache_dir=cache_dir, class_split=class_split
    )


def split_of(data: DataConfig, split: str) -> ImageSplit:
    """The ``split`` (``train``, ``val`` or ``test``) of a run's ``data`` section: its dataset, domains,
    image size, seed, cache and class split, as every stage that needs real images loads it."""
    return load_split(
        data.dataset,
        split,
        domains=data.domains,
        image_size=data.image_size,
        seed=data.seed,
        cache_dir=data.cache_dir,
        class_split=data.class_split,
    )
