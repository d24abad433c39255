"""Confidence intervals and paired comparisons for the benchmark (pure numpy + scipy).

Two kinds of interval, and what each one covers:

* **Per method, over episodes** (:func:`episode_interval`): the few-shot literature's
  ``mean ± 1.96·std/√n`` (population std), the same figure ``tgr-hub evaluate`` and the
  quickstart print (:func:`tgr_hub.evaluate.confidence_interval`). It covers only the sampling of
  evaluation episodes: the trained meta-model (pool, recovery, training) is held fixed.
* **t-intervals** (:func:`t_interval`): ``mean ± t_{0.975, n−1}·s/√n`` with the sample std
  (``ddof=1``) and a two-sided one-sample t-test of "mean = 0". Used for

  - the **paired difference per seed** (:func:`paired_difference`): per-episode accuracy of a
    method minus that of the reference on the *same* episodes, n = episodes. It covers episode
    sampling for the two models of one seed; pairing removes the episode-difficulty variance both
    methods share, which is why it is much narrower than two overlapping per-method intervals;
  - **across seeds** (:func:`across_seeds`): one value per seed (a seed's mean accuracy, or its
    mean paired difference), n = seeds. Each seed draws its own teacher pool, recovered tasks,
    meta-training randomness and episode set, so this interval covers all of those; with 3 seeds
    it has 2 degrees of freedom (t = 4.30), and is honest rather than narrow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as _scipy_stats

from .errors import StatsError

__all__ = [
    "StatsError",
    "TInterval",
    "across_seeds",
    "episode_interval",
    "paired_difference",
    "t_interval",
]

CONFIDENCE = 0.95


@dataclass(frozen=True)
class TInterval:
    """A mean with its t-interval and the two-sided p-value of "mean = 0".

    Attributes:
        mean: the sample mean.
        low, high: the 95% interval ``mean ∓ half``; ``nan`` for a single value.
        half: ``t_{0.975, n−1} · sd / √n``.
        sd: sample standard deviation (``ddof=1``; ``nan`` for one value).
        t: the t statistic ``mean / (sd / √n)`` (±inf when sd = 0 and mean ≠ 0).
        p: two-sided p-value with n − 1 degrees of freedom (``nan`` for one value).
        n: number of values.
    """

    mean: float
    low: float
    high: float
    half: float
    sd: float
    t: float
    p: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (``nan`` and infinities become ``None``)."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def _values(values: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).ravel()
    if array.size == 0:
        raise StatsError(f"{what} needs at least one value")
    if not np.isfinite(array).all():
        raise StatsError(f"{what} got NaN or infinite values")
    return array


def episode_interval(accuracies: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """``(mean, half-width)`` over episodes, the literature's ``1.96·std/√n`` (see the module doc)."""
    from .evaluate import confidence_interval  # the one definition of the per-method episode CI

    return confidence_interval(_values(accuracies, "episode_interval"))


def t_interval(values: Sequence[float] | np.ndarray, confidence: float = CONFIDENCE) -> TInterval:
    """Mean, t-interval and two-sided one-sample t-test against 0.

    Args:
        values: ``[n]`` observations (differences, or one value per seed).
        confidence: coverage of the interval.
    """
    x = _values(values, "t_interval")
    n = int(x.size)
    mean = float(x.mean())
    if n == 1:
        nan = float("nan")
        return TInterval(mean, nan, nan, nan, nan, nan, nan, 1)
    sd = float(x.std(ddof=1))
    se = sd / math.sqrt(n)
    df = n - 1
    half = float(_scipy_stats.t.ppf(0.5 + confidence / 2, df)) * se
    if se == 0.0:  # every value equal: the test is degenerate, decided by the mean alone
        t = 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
        p = 1.0 if mean == 0.0 else 0.0
    else:
        t = mean / se
        p = float(2 * _scipy_stats.t.sf(abs(t), df))
    return TInterval(mean, mean - half, mean + half, half, sd, t, p, n)


def paired_difference(
    method: Sequence[float] | np.ndarray, reference: Sequence[float] | np.ndarray, confidence: float = CONFIDENCE
) -> TInterval:
    """The paired difference ``method − reference`` over identical episodes (paired t).

    Args:
        method: ``[n]`` per-episode accuracies of a method.
        reference: ``[n]`` per-episode accuracies of the reference, episode for episode the same.

    Raises:
        StatsError: the arrays differ in length (they were not scored on the same episodes).
    """
    a, b = _values(method, "paired_difference"), _values(reference, "paired_difference")
    if a.shape != b.shape:
        raise StatsError(f"paired values must come from the same episodes; got {a.size} and {b.size} accuracies")
    return t_interval(a - b, confidence)


def across_seeds(per_seed: Sequence[float] | np.ndarray, confidence: float = CONFIDENCE) -> TInterval:
    """t-interval over one value per seed (df = seeds − 1); see the module docstring for what it covers."""
    return t_interval(per_seed, confidence)
