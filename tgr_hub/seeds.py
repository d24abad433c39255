"""Every random stream of tgr-hub, defined once.

The code outside this module never builds a random generator or seeds torch itself: it asks for
a named stream here (``tests/test_seeds.py`` fails on a draw that bypasses this module). Two
kinds of stream:

- **Run streams**: ``numpy.random.SeedSequence([seed, STREAM, *key])``: the run's seed, the
  stream's constant below, then the position inside the stream (teacher, recovery, step,
  task...). Distinct streams differ in their second entry, so no two streams can coincide. (A
  SeedSequence pads its entropy with zeros, so ``[a, b, c]`` and ``[a, b, c, 0]`` are the *same*
  stream: keys of different lengths do not separate streams, a leading stream constant does.)
- **Older streams**, kept because changing them would change every published number: the
  glyph renderer, class splits and episodes (keyed by the data seed and their own position), the
  teachers of ``make-pool`` and their training, the meta-model's and the probes' initialisation,
  and the meta-validation episodes (``seed + 1``). Each has its function below, with its key.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch

__all__ = [
    "ANALYZE",
    "EMBED",
    "GENERATOR_INIT",
    "HEAD_INIT",
    "PEERS",
    "META_START",
    "RECOVER",
    "RECOVER_ONLINE",
    "TRAIN",
    "class_split_rng",
    "episode_rng",
    "fisher_head_generator",
    "fisher_label_generator",
    "glyph_class_rng",
    "glyph_domain_seed",
    "numpy_rng",
    "random_groups_rng",
    "recovery_seeds",
    "seed_int",
    "same_domain_ladder_seed",
    "seed_global_torch",
    "seed_sequence",
    "seeded_torch",
    "space_examples_rng",
    "teacher_batches_generator",
    "teacher_heldout_generator",
    "teacher_plan_generator",
    "teacher_seed",
    "torch_generator",
    "torch_seed",
    "val_seed",
]

# --- run streams: [seed, STREAM, *key] -------------------------------------------------------------

RECOVER = 1  # up-front recovery: [seed, RECOVER, teacher, recovery]
EMBED = 2  # Fisher embedding's image choice: [seed, EMBED, teacher]
TRAIN = 3  # meta-training: [seed, TRAIN, step, kind, item] (tgr_hub.train.step_rng); item torch seeds
RECOVER_ONLINE = 4  # recovery inside meta-training: [seed, RECOVER_ONLINE, step, teacher]
GENERATOR_INIT = 5  # a teacher's online generator at its first recovery: [seed, GENERATOR_INIT, teacher]
HEAD_INIT = 6  # the shared N-way head of `head` task losses: [seed, HEAD_INIT]
ANALYZE = 7  # tgr-hub analyze: ladder plans and probe images, [seed, ANALYZE, kind, ...]
PEERS = 8  # the peer methods (tgr_hub.peers): [seed, PEERS, kind, ...], the kinds named by each method
META_START = 9  # online recovery's meta-generators (recover.online_start = "meta"): [seed, META_START, size index]


def seed_sequence(seed: int, stream: int, *key: int) -> np.random.SeedSequence:
    """The SeedSequence of position ``key`` in ``stream`` of a run seeded with ``seed``."""
    return np.random.SeedSequence([int(seed), int(stream), *(int(k) for k in key)])


def numpy_rng(entropy: np.random.SeedSequence | Sequence[int] | int) -> np.random.Generator:
    """A NumPy generator on ``entropy`` (a :func:`seed_sequence`, or an older stream's key)."""
    if isinstance(entropy, np.random.SeedSequence):
        return np.random.default_rng(entropy)
    if isinstance(entropy, int | np.integer):
        return np.random.default_rng(int(entropy))
    return np.random.default_rng([int(k) for k in entropy])


def seed_int(sequence: np.random.SeedSequence) -> int:
    """One 32-bit seed drawn from ``sequence`` (for a torch generator, or a function taking an int)."""
    return int(sequence.generate_state(1)[0])


def torch_seed(seed: int, stream: int, *key: int) -> int:
    """:func:`seed_int` of ``[seed, stream, *key]``: e.g. a meta-training item's dropout draws."""
    return seed_int(seed_sequence(seed, stream, *key))


def torch_generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed`` (draw on the CPU, then move the tensor)."""
    return torch.Generator(device="cpu").manual_seed(int(seed))


@contextlib.contextmanager
def seeded_torch(seed: int, devices: Sequence[torch.device] = ()) -> Iterator[None]:
    """Run the block on torch's global RNG seeded with ``seed``, restoring the caller's state after.

    For code that draws from the global RNG and takes no generator (timm's model initialisation,
    dropout in a forward pass). ``devices``: the CUDA devices whose RNG is forked too.
    """
    with torch.random.fork_rng(devices=[d for d in devices if d.type == "cuda"]):
        torch.manual_seed(int(seed))
        yield


# --- older streams, each keyed as published --------------------------------------------------------


def recovery_seeds(seed: int) -> tuple[int, int, int]:
    """One recovery's ``(generator init, latent codes, augmentation)`` seeds from its task seed."""
    gen_seed, z_seed, aug_seed = (int(s) for s in np.random.SeedSequence(int(seed)).generate_state(3))
    return gen_seed, z_seed, aug_seed


def seed_global_torch(seed: int) -> None:
    """A run seeds torch's global RNG once at its start (draws that no stream here covers start the same)."""
    torch.manual_seed(int(seed))


def same_domain_ladder_seed(seed: int) -> int:
    """``analyze fisher``: the seed of the same-domain, other-architecture pairs' ladder."""
    return int(seed) + 1


def val_seed(seed: int) -> int:
    """The meta-validation episodes' seed of a run seeded with ``seed`` (the training streams' neighbour)."""
    return int(seed) + 1


def episode_rng(seed: int, index: int) -> np.random.Generator:
    """Episode ``index`` of an episode sampler seeded with ``seed``: independent of the episodes before it."""
    return np.random.default_rng([int(seed), int(index)])


def class_split_rng(seed: int) -> np.random.Generator:
    """The shuffle of a dataset's classes into train / val / test (the data seed)."""
    return np.random.default_rng(int(seed))


def glyph_domain_seed(seed: int, domain_index: int) -> int:
    """The built-in glyph dataset: one domain's font and class choices (the data seed)."""
    return int(np.random.SeedSequence([int(seed), int(domain_index)]).generate_state(1)[0])


def glyph_class_rng(seed: int, domain_index: int, codepoint: int) -> np.random.Generator:
    """The built-in glyph dataset: one class's images, keyed by its character (stable as classes change)."""
    return np.random.default_rng([int(seed), int(domain_index), int(codepoint)])


def teacher_seed(seed: int, index: int) -> int:
    """``make-pool``: teacher ``index``'s own seed (its classes, initialisation, split and batches)."""
    return (int(seed) * 1_000_003 + 7919 * (index + 1)) % (2**31 - 1)


def teacher_plan_generator(teacher: int) -> torch.Generator:
    """``make-pool``: the class subset of the teacher seeded ``teacher`` (:func:`teacher_seed`)."""
    return torch_generator(teacher)


def teacher_heldout_generator(teacher: int) -> torch.Generator:
    """``make-pool``: the held-out images of the teacher seeded ``teacher``."""
    return torch_generator(teacher)


def teacher_batches_generator(teacher: int) -> torch.Generator:
    """``make-pool``: the batches and augmentations of the teacher seeded ``teacher``."""
    return torch_generator(int(teacher) + 1)


def fisher_head_generator(seed: int) -> torch.Generator:
    """The Fisher probe's random head (``embed``)."""
    return torch_generator(seed)


def fisher_label_generator(seed: int) -> torch.Generator:
    """The Fisher probe's sampled labels (``embed``)."""
    return torch_generator(int(seed) + 1)


def random_groups_rng(seed: int) -> np.random.Generator:
    """The ``igr-random-groups`` ablation's assignment of teachers to groups."""
    return np.random.default_rng(int(seed))


def space_examples_rng(seed: int) -> np.random.Generator:
    """The Space's built-in glyph examples."""
    return np.random.default_rng(int(seed))
