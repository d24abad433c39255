"""Grouping teachers by task dissimilarity (docs/method.md stage 2).

Spectral clustering with the *dissimilarity* matrix as the affinity: teachers that see the
world differently end up in the same group, which is what the IGR regulariser needs (it
penalises the spread of the gradients within a group). This is deliberate, not a mix-up of
similarity and dissimilarity.

Strategies:

- ``"spectral"`` (reference): ``sklearn.cluster.SpectralClustering(affinity="precomputed")``,
  ``n_init`` k-means restarts, fixed seed.
- ``"random"``: seeded random groups of (near-)equal size (the "IGR with random groups"
  ablation).
- ``"none"``: one group holding every teacher (ERM / "no grouping").

The result is a list of groups, each a sorted list of teacher indices; groups are ordered by
their smallest member so the same partition always prints the same way.
"""

from __future__ import annotations

import logging
import warnings
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from . import seeds
from .errors import GroupingError

logger = logging.getLogger(__name__)

__all__ = ["GroupingError", "group_teachers", "groups_to_labels"]

Strategy = Literal["spectral", "random", "none"]


def _as_matrix(dissimilarity: Tensor | np.ndarray) -> np.ndarray:
    """Validate and convert to a float64 numpy ``[N, N]`` array."""
    if isinstance(dissimilarity, Tensor):
        mat = dissimilarity.detach().cpu().double().numpy()
    else:
        try:
            mat = np.asarray(dissimilarity, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise GroupingError(f"the dissimilarity matrix is not numeric: {exc}") from exc
    if mat.ndim != 2 or mat.shape[0] != mat.shape[1]:
        raise GroupingError(f"the dissimilarity matrix must be square [N, N], got shape {mat.shape}")
    if mat.shape[0] == 0:
        raise GroupingError("the dissimilarity matrix is empty: there are no teachers to group")
    if not np.isfinite(mat).all():
        raise GroupingError(
            "the dissimilarity matrix has NaN or infinite entries",
            hint="check the Fisher embeddings for overflow or empty tasks",
        )
    if (mat < 0).any():
        raise GroupingError(f"the dissimilarity matrix has negative entries (min {mat.min():.3g})")
    scale = max(float(np.abs(mat).max()), 1.0)
    if not np.allclose(mat, mat.T, rtol=0.0, atol=1e-6 * scale):
        raise GroupingError("the dissimilarity matrix is not symmetric", hint="symmetrise it, e.g. (D + D.T) / 2")
    return 0.5 * (mat + mat.T)  # remove rounding-level asymmetry before sklearn sees it


def _canonical(labels: np.ndarray) -> list[list[int]]:
    groups: dict[int, list[int]] = {}
    for index, label in enumerate(labels.tolist()):
        groups.setdefault(int(label), []).append(index)
    return sorted((sorted(g) for g in groups.values() if g), key=lambda g: g[0])


def _random_groups(n: int, num_groups: int, seed: int) -> list[list[int]]:
    perm = seeds.random_groups_rng(seed).permutation(n)
    labels = np.empty(n, dtype=np.int64)
    labels[perm] = np.arange(n) % num_groups  # teacher perm[k] joins group k mod num_groups
    return _canonical(labels)


def _spectral_groups(mat: np.ndarray, num_groups: int, n_init: int, seed: int) -> list[list[int]] | None:
    """Spectral clustering; ``None`` where it cannot produce a usable partition."""
    from sklearn.cluster import SpectralClustering  # heavy import, only where needed

    model = SpectralClustering(
        n_clusters=num_groups, affinity="precomputed", n_init=n_init, random_state=seed, assign_labels="kmeans"
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            labels = model.fit_predict(mat)
        except (ValueError, np.linalg.LinAlgError, ArithmeticError) as exc:
            logger.warning("spectral clustering failed (%s)", exc)
            return None
    for w in caught:
        # e.g. "Graph is not fully connected": the embedding is still usable, but say so.
        logger.warning("spectral clustering: %s", w.message)
    groups = _canonical(np.asarray(labels))
    if len(groups) != num_groups:
        logger.warning("spectral clustering produced %d non-empty groups instead of %d", len(groups), num_groups)
    return groups


def group_teachers(
    dissimilarity: Tensor | np.ndarray,
    num_groups: int,
    *,
    n_init: int = 30,
    seed: int = 0,
    strategy: Strategy = "spectral",
    min_size: int = 1,
) -> list[list[int]]:
    """Partition teachers into groups of mutually dissimilar tasks.

    Args:
        dissimilarity: ``[N, N]`` symmetric, non-negative, finite matrix (e.g. from
            :func:`tgr_hub.embed.dissimilarity_matrix`); used directly as the affinity.
        num_groups: Number of groups; clipped to ``N`` (with a warning) when larger.
        n_init: k-means restarts inside spectral clustering.
        seed: Seeds spectral clustering's k-means and the ``"random"`` strategy.
        strategy: ``"spectral"``, ``"random"`` or ``"none"`` (one group of all teachers).
        min_size: spectral groups smaller than this are merged, smallest first, into the group
            whose members are on average most dissimilar to theirs (:func:`merge_small_groups`).

    Returns:
        Groups of teacher indices: every index in ``0..N-1`` exactly once, each group sorted,
        groups ordered by their first member.

    Raises:
        GroupingError: Not square / symmetric / non-negative / finite, ``num_groups < 1``,
            ``n_init < 1`` or an unknown strategy.

    Degenerate cases: ``N == 1`` or ``num_groups == 1`` gives one group; ``num_groups == N``
    gives singletons; an all-zero matrix (no affinity at all, nothing to cluster on) and a
    failed spectral clustering fall back to ``"random"`` groups with a warning.
    """
    if strategy not in ("spectral", "random", "none"):
        raise GroupingError(f"unknown grouping strategy {strategy!r}", hint="use 'spectral', 'random' or 'none'")
    if isinstance(num_groups, bool) or not isinstance(num_groups, (int, np.integer)) or num_groups < 1:
        raise GroupingError(f"num_groups must be an integer >= 1, got {num_groups!r}")
    if n_init < 1:
        raise GroupingError(f"n_init must be >= 1, got {n_init}")
    mat = _as_matrix(dissimilarity)
    n = mat.shape[0]
    num_groups = int(num_groups)
    if num_groups > n:
        logger.warning("num_groups=%d is more than the %d teachers in the pool: using %d groups", num_groups, n, n)
        num_groups = n

    if strategy == "none" or num_groups == 1:
        return [list(range(n))]
    if num_groups == n:
        return [[i] for i in range(n)]
    if strategy == "random":
        return _random_groups(n, num_groups, seed)

    if not mat.any():
        logger.warning(
            "the dissimilarity matrix is all zeros (identical tasks?): spectral clustering has "
            "nothing to go on, falling back to random groups (seed %d)",
            seed,
        )
        return _random_groups(n, num_groups, seed)
    groups = _spectral_groups(mat, num_groups, n_init, seed)
    if groups is None:
        logger.warning("falling back to random groups (seed %d)", seed)
        return _random_groups(n, num_groups, seed)
    return merge_small_groups(groups, mat, min_size)


def merge_small_groups(groups: list[list[int]], dissimilarity: np.ndarray, min_size: int) -> list[list[int]]:
    """Merge every group smaller than ``min_size`` into the group most dissimilar to it.

    IGR aligns the gradients of *different* teachers, so a group of one has nothing to align
    (spectral clustering has no size control). The smallest group (lowest first member on ties)
    joins the other group with the highest mean dissimilarity to its members, which keeps the
    method's intent of grouping teachers that see the world differently; repeat until every
    group has ``min_size`` members or one group is left.

    Args:
        groups: a partition of ``0..N-1`` (as :func:`group_teachers` returns it).
        dissimilarity: ``[N, N]``.
        min_size: the smallest group kept as it is.

    Returns:
        The merged partition, each group sorted, groups ordered by their first member.
    """
    groups = [sorted(g) for g in groups]
    while len(groups) > 1:
        small = min(range(len(groups)), key=lambda k: (len(groups[k]), groups[k][0]))
        if len(groups[small]) >= min_size:
            break
        others = [k for k in range(len(groups)) if k != small]
        target = max(others, key=lambda k: (float(dissimilarity[np.ix_(groups[small], groups[k])].mean()), -k))
        logger.info(
            "group %s has fewer than %d teachers: merged into the most dissimilar group %s",
            groups[small],
            min_size,
            groups[target],
        )
        merged = sorted(groups[small] + groups[target])
        groups = [g for k, g in enumerate(groups) if k not in (small, target)] + [merged]
    return sorted(groups, key=lambda g: g[0])


def groups_to_labels(groups: list[list[int]], n: int) -> torch.Tensor:
    """Inverse view of a partition: ``[N]`` int64 group id of every teacher."""
    labels = torch.full((n,), -1, dtype=torch.long)
    for gid, members in enumerate(groups):
        labels[members] = gid
    missing = (labels < 0).nonzero().flatten().tolist()
    if missing:
        raise GroupingError(
            f"the groups do not cover the teachers {missing} (of {n})",
            hint="every teacher index 0..N-1 must be in exactly one group",
        )
    return labels
