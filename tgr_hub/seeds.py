"""The seed streams of a run, defined once.

Every random choice of a run draws from ``numpy.random.SeedSequence([seed, STREAM, *key])``:
the run's seed, the stream's constant below, then the position inside the stream (teacher,
recovery, step, task...). Distinct streams differ in their second entry, so no two streams
can ever coincide. (A SeedSequence pads its entropy with zeros, so ``[a, b, c]`` and
``[a, b, c, 0]`` are the *same* stream: keys of different lengths do not separate streams,
a leading stream constant does.)
"""

from __future__ import annotations

import numpy as np

__all__ = ["ANALYZE", "EMBED", "GENERATOR_INIT", "HEAD_INIT", "RECOVER", "RECOVER_ONLINE", "TRAIN", "seed_sequence"]

RECOVER = 1  # up-front recovery: [seed, RECOVER, teacher, recovery]
EMBED = 2  # Fisher embedding's image choice: [seed, EMBED, teacher]
TRAIN = 3  # meta-training: [seed, TRAIN, step, kind, item] (see tgr_hub.train.step_rng)
RECOVER_ONLINE = 4  # recovery inside meta-training: [seed, RECOVER_ONLINE, step, teacher]
GENERATOR_INIT = 5  # a teacher's online generator at its first recovery: [seed, GENERATOR_INIT, teacher]
HEAD_INIT = 6  # the shared N-way head of `head` task losses: [seed, HEAD_INIT]
ANALYZE = 7  # tgr-hub analyze: ladder plans and probe images, [seed, ANALYZE, kind, ...]


def seed_sequence(seed: int, stream: int, *key: int) -> np.random.SeedSequence:
    """The SeedSequence of position ``key`` in ``stream`` of a run seeded with ``seed``."""
    return np.random.SeedSequence([int(seed), int(stream), *(int(k) for k in key)])
