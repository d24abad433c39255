"""The memory bank of recovered pseudo-tasks: what model inversion (:mod:`tgr_hub.recover`) fills
and what replay samples.

A :class:`RecoveredTask` is one teacher's recovered pseudo-task. The :class:`MemoryBank` keeps its
images keyed by ``(teacher, class)``, at most ``bank_size`` recoveries per key, overwritten
cyclically. Images are stored as ``uint8`` (value ``round(255·x)``): a quarter of float32 memory,
exactly what an 8-bit image would hold, and an error of at most 1/510 per pixel, far below what
changes a teacher's prediction. A bank saves to / loads from ``X.safetensors`` + ``X.json`` (or a
folder holding ``bank.safetensors`` + ``bank.json``), and counts the tasks recovered per teacher,
so a resumed run reuses its recoveries.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open

from .data.episodes import Episode
from .errors import EpisodeError, MemoryBankError, RunFolderError
from .io import save_safetensors_atomic, write_json_atomic
from .models.generator import Generator

logger = logging.getLogger(__name__)

__all__ = [
    "BANK_INDEX",
    "BANK_TENSORS",
    "MemoryBank",
    "MemoryBankError",
    "RecoveredTask",
    "bank_files",
    "to_uint8",
]

_BANK_FORMAT = "tgr-hub-memory-bank"
_BANK_VERSION = 1
BANK_TENSORS = "bank.safetensors"
BANK_INDEX = "bank.json"


@dataclass
class RecoveredTask:
    """One teacher's pseudo-task, as recovered by :func:`recover_task`.

    Attributes:
        images: ``[n, 3, H, W]`` float32 in [0, 1], ``(H, W)`` = the teacher's input size; the
            images of each class are contiguous, in the order of ``classes``.
        labels: ``[n]`` int64 teacher class ids (not re-indexed).
        teacher: the teacher's name.
        loss: the lowest total loss reached (that of the kept images).
        ce_history: cross-entropy at every step.
        bn_history: BN-statistics loss (unweighted) at every step; zeros for a teacher without BN.
        classes: the teacher class ids of the task, in order.
        class_names: the teacher's label names of ``classes`` (empty strings when unknown).
        best_step: the step whose images were kept.
        generator: the generator after optimisation when it is meant to be reused
            (``cfg.reuse_generator`` or a generator was passed in); otherwise ``None``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    teacher: str
    loss: float
    ce_history: list[float] = field(default_factory=list)
    bn_history: list[float] = field(default_factory=list)
    classes: list[int] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    best_step: int = 0
    generator: Generator | None = field(default=None, repr=False)


# --- the bank ---------------------------------------------------------------------------


def bank_files(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(tensors, index)`` paths of a bank saved at ``path`` (a ``.safetensors`` file or a folder)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return path, path.with_suffix(".json")
    return path / BANK_TENSORS, path / BANK_INDEX


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def _to_float(images: torch.Tensor) -> torch.Tensor:
    return images.float() / 255


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    if images.shape[-2:] == (size, size):
        return images
    # antialias: a bank image may be larger than the episode size (e.g. an 84-px teacher into 32-px episodes)
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)


class MemoryBank:
    """Recovered images keyed by ``(teacher, class)``, at most ``bank_size`` recoveries per key.

    Each :meth:`add` of a task stores, for every class of the task, that recovery's images of the
    class as one *slot*; once a key holds ``bank_size`` slots the oldest is overwritten (cyclic
    buffer, as the reference). Images are kept as ``uint8`` tensors on CPU at the teacher's
    resolution.

    ``len(bank)`` is the number of images stored.
    """

    def __init__(self, bank_size: int = 20) -> None:
        if int(bank_size) < 1:
            raise MemoryBankError(f"bank_size must be >= 1, got {bank_size}")
        self.bank_size = int(bank_size)
        self._slots: dict[tuple[str, int], list[torch.Tensor]] = {}  # uint8 [k, 3, H, W] per recovery
        self._written: dict[tuple[str, int], int] = {}  # recoveries ever added (cursor = written % bank_size)
        self._names: dict[tuple[str, int], str] = {}
        self._tasks: dict[str, int] = {}  # tasks ever added per teacher (what recover_teachers resumes from)

    @classmethod
    def holding(cls, task: RecoveredTask) -> MemoryBank:
        """A bank of one recovery: what a pseudo-task of exactly that recovery is drawn from."""
        bank = cls(1)
        bank.add(task)
        return bank

    def copy(self) -> MemoryBank:
        """An independent bank with the same content (slots are never changed in place, so shared)."""
        twin = MemoryBank(self.bank_size)
        twin._slots = {k: list(v) for k, v in self._slots.items()}
        twin._written, twin._names, twin._tasks = dict(self._written), dict(self._names), dict(self._tasks)
        return twin

    def subset(self, teachers: Collection[str]) -> MemoryBank:
        """An independent bank holding only the recoveries of ``teachers`` (what replay may then draw)."""
        keep = set(teachers)
        twin = self.copy()
        for key in [k for k in twin._slots if k[0] not in keep]:
            del twin._slots[key]
            twin._written.pop(key, None)
            twin._names.pop(key, None)
        twin._tasks = {t: n for t, n in twin._tasks.items() if t in keep}
        return twin

    # -- content ------------------------------------------------------------------------

    def add(self, task: RecoveredTask) -> None:
        """Store ``task``'s images, one slot per class (overwriting the oldest slot when full)."""
        images, labels = task.images, task.labels
        if images.dim() != 4 or images.shape[0] != labels.shape[0]:
            raise MemoryBankError(
                f"task of {task.teacher!r} has images {tuple(images.shape)} and labels {tuple(labels.shape)}; "
                "expected [n, C, H, W] and [n]"
            )
        classes = task.classes or sorted(int(c) for c in labels.unique())
        names = dict(zip(classes, task.class_names)) if task.class_names else {}
        for c in classes:
            chosen = images[labels == c]
            if chosen.shape[0] == 0:
                continue
            key = (task.teacher, int(c))
            slot = to_uint8(chosen)
            slots = self._slots.setdefault(key, [])
            if slots and slots[0].shape[1:] != slot.shape[1:]:
                raise MemoryBankError(
                    f"bank images of {key} are {tuple(slots[0].shape[1:])}, the new ones {tuple(slot.shape[1:])}",
                    hint="a teacher's recoveries must all have its input size",
                )
            self._add_slot(key, slot)
            if names.get(c):
                self._names[key] = str(names[c])
        self._tasks[task.teacher] = self._tasks.get(task.teacher, 0) + 1

    def teachers(self) -> list[str]:
        """Teacher names, in the order they were first added."""
        return list(dict.fromkeys(t for t, _ in self._slots))

    def classes_of(self, teacher: str) -> list[int]:
        """Sorted class ids of ``teacher`` held in the bank (empty for an unknown teacher)."""
        return sorted(c for t, c in self._slots if t == teacher)

    def tasks_of(self, teacher: str) -> int:
        """How many recovered tasks of ``teacher`` were ever added (also those since overwritten)."""
        return self._tasks.get(teacher, 0)

    def keys(self) -> list[tuple[str, int]]:
        """All ``(teacher, class)`` keys, in insertion order."""
        return list(self._slots)

    def class_name(self, teacher: str, cls: int) -> str:
        """The teacher's label name of ``cls`` ('' when unknown)."""
        return self._names.get((teacher, int(cls)), "")

    def recoveries(self, teacher: str, cls: int) -> int:
        """Number of slots (recoveries) currently held for ``(teacher, cls)``."""
        return len(self._slots.get((teacher, int(cls)), []))

    def images_of(self, teacher: str, cls: int) -> torch.Tensor:
        """All stored images of ``(teacher, cls)`` as ``uint8 [m, 3, H, W]`` (slot order)."""
        key = (teacher, int(cls))
        if key not in self._slots:
            raise MemoryBankError(f"the memory bank holds no images of class {cls} of teacher {teacher!r}")
        return torch.cat(self._slots[key])

    @property
    def num_classes(self) -> int:
        """Number of ``(teacher, class)`` keys."""
        return len(self._slots)

    def __len__(self) -> int:
        return sum(s.shape[0] for slots in self._slots.values() for s in slots)

    def __repr__(self) -> str:
        return (
            f"MemoryBank(teachers={len(self.teachers())}, classes={self.num_classes}, images={len(self)}, "
            f"bank_size={self.bank_size})"
        )

    # -- sampling -----------------------------------------------------------------------

    def task_for(
        self,
        teacher: str,
        classes: Sequence[int] | None,
        per_class: int | None,
        rng: np.random.Generator,
        *,
        allow_fewer: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A pseudo-task of one teacher from the bank.

        Args:
            teacher: the teacher's name.
            classes: its class ids to include; ``None``: every class it has in the bank.
            per_class: images per class, drawn without replacement; ``None``: all stored images.
            rng: draws the images.
            allow_fewer: a class with fewer than ``per_class`` images gives all it has, instead of
                raising :class:`~tgr_hub.errors.EpisodeError`.

        Returns:
            ``images [n, 3, H, W]`` float32 in [0, 1] (grouped by class, in ``classes`` order) and
            ``labels [n]`` int64 teacher class ids.
        """
        if teacher not in self.teachers():
            raise MemoryBankError(f"the memory bank holds nothing of teacher {teacher!r}; it has {self.teachers()}")
        chosen = self.classes_of(teacher) if classes is None else [int(c) for c in classes]
        xs, ys = [], []
        for c in chosen:
            stored = self.images_of(teacher, c)
            if per_class is not None:
                if per_class > stored.shape[0] and not allow_fewer:
                    raise EpisodeError(
                        f"class {c} of teacher {teacher!r} has {stored.shape[0]} images in the memory bank, "
                        f"{per_class} were asked for"
                    )
                take = min(per_class, stored.shape[0])
                stored = stored[torch.from_numpy(rng.choice(stored.shape[0], size=take, replace=False))]
            xs.append(stored)
            ys.append(torch.full((stored.shape[0],), c, dtype=torch.int64))
        if not xs:
            raise MemoryBankError(f"no classes asked for from teacher {teacher!r}")
        return _to_float(torch.cat(xs)), torch.cat(ys)

    def episode_classes(self, need: int) -> int:
        """How many classes an episode could draw that need ``need`` images each: keys holding that
        many, counted once per label name (as :meth:`sample_episode` counts them)."""
        return len({self._names.get(k) or str(k) for k in self._keys_holding(need)})

    def _keys_holding(self, need: int) -> list[tuple[str, int]]:
        """The keys holding at least ``need`` images, in insertion order."""
        return [k for k, slots in self._slots.items() if sum(s.shape[0] for s in slots) >= need]

    def sample_episode(
        self,
        way: int,
        shot: int,
        query: int,
        rng: np.random.Generator,
        resize_to: int,
        *,
        distinct_names: bool = True,
    ) -> Episode:
        """An N-way K-shot episode whose classes are ``(teacher, class)`` keys from across the bank.

        The ``way`` classes are drawn uniformly among the keys holding at least ``shot + query``
        images, so an episode mixes teachers; two keys with the same label name (two teachers
        that share a class) never appear in one episode, since they are one class.

        Args:
            way, shot, query: classes, support and query images per class.
            rng: draws the classes and images.
            resize_to: side of the episode's images (teachers' input sizes may differ).
            distinct_names: skip keys whose label name is already in the episode.

        Returns:
            An :class:`~tgr_hub.data.Episode` whose ``classes[i]`` is the ``(teacher, class id)`` key
            behind label ``i``; support/query grouped by class, labels ``0..way-1``.
        """
        if way < 1 or shot < 1 or query < 0:
            raise EpisodeError(f"way and shot must be >= 1 and query >= 0, got way={way}, shot={shot}, query={query}")
        need = shot + query
        candidates = self._keys_holding(need)
        chosen: list[tuple[str, int]] = []
        seen: set[str] = set()
        for index in rng.permutation(len(candidates)):
            key = candidates[int(index)]
            name = self._names.get(key, "")
            if distinct_names and name:
                if name in seen:
                    continue
                seen.add(name)
            chosen.append(key)
            if len(chosen) == way:
                break
        if len(chosen) < way:
            raise EpisodeError(
                f"the memory bank has {len(chosen)} distinct classes with at least {need} images; "
                f"a {way}-way {shot}-shot episode with {query} queries needs {way}",
                hint="recover more teachers/classes or lower the episode size",
            )
        sx, qx = [], []
        for key in chosen:
            stored = self.images_of(*key)
            pick = torch.from_numpy(rng.choice(stored.shape[0], size=need, replace=False))
            images = _resize(_to_float(stored[pick]), resize_to)
            sx.append(images[:shot])
            qx.append(images[shot:])
        labels = torch.arange(way, dtype=torch.int64)
        return Episode(
            support_x=torch.cat(sx),
            support_y=labels.repeat_interleave(shot),
            query_x=torch.cat(qx),
            query_y=labels.repeat_interleave(query),
            classes=chosen,
        )

    # -- persistence --------------------------------------------------------------------

    def _chronological(self, key: tuple[str, int]) -> list[torch.Tensor]:
        slots, written = self._slots[key], self._written[key]
        if written <= self.bank_size:
            return list(slots)
        start = written % self.bank_size  # the oldest slot is the next one to be overwritten
        return slots[start:] + slots[:start]

    def save(self, path: str | os.PathLike) -> None:
        """Write the bank to ``path``, atomically.

        ``path`` is either a ``.safetensors`` file (the index goes beside it, same name with
        ``.json``) or a folder (``bank.safetensors`` + ``bank.json`` inside it).

        Each file is written under a temporary name and renamed; both carry the same random
        ``generation`` token, and :meth:`load` refuses a pair whose tokens differ (a save that
        stopped between the two renames).
        """
        tensors_path, index_path = bank_files(path)
        tensors_path.parent.mkdir(parents=True, exist_ok=True)
        generation = secrets.token_hex(8)
        tensors: dict[str, torch.Tensor] = {}
        entries = []
        for i, key in enumerate(self._slots):
            slots = self._slots[key]
            for j, slot in enumerate(slots):
                tensors[f"k{i}.s{j}"] = slot.contiguous()
            entries.append(
                {
                    "teacher": key[0],
                    "class": key[1],
                    "name": self._names.get(key, ""),
                    "written": self._written[key],
                    "slots": len(slots),
                    "images": [int(s.shape[0]) for s in slots],
                    "shape": list(slots[0].shape[1:]),
                }
            )
        index = {
            "format": _BANK_FORMAT,
            "version": _BANK_VERSION,
            "generation": generation,
            "bank_size": self.bank_size,
            "storage": "uint8 (value = round(255 * x), x in [0, 1])",
            "num_images": len(self),
            "tasks": dict(self._tasks),
            "entries": entries,
        }
        save_safetensors_atomic(tensors_path, tensors, {"format": _BANK_FORMAT, "generation": generation})
        write_json_atomic(index_path, index)

    @classmethod
    def load(cls, path: str | os.PathLike, *, bank_size: int | None = None) -> MemoryBank:
        """Read a bank written by :meth:`save`.

        Args:
            path: the ``.safetensors`` file or the folder given to :meth:`save`.
            bank_size: a new cap; ``None`` keeps the saved one. When smaller, the most recent
                recoveries of each key are kept.
        """
        tensors_path, index_path = bank_files(path)
        for needed in (index_path, tensors_path):
            if not needed.is_file():
                raise RunFolderError(
                    f"memory bank file {needed} does not exist", hint="was the bank saved with MemoryBank.save?"
                )
        try:
            index = json.loads(index_path.read_text())
        except json.JSONDecodeError as error:
            raise MemoryBankError(f"{index_path} is not valid JSON: {error}") from None
        if not isinstance(index, dict) or index.get("format") != _BANK_FORMAT:
            raise MemoryBankError(f"{index_path} is not a tgr-hub memory bank index")
        if index.get("version") != _BANK_VERSION:
            raise MemoryBankError(
                f"{index_path} has bank format version {index.get('version')}; this tgr-hub reads {_BANK_VERSION}"
            )
        with safe_open(str(tensors_path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            if metadata.get("generation") != index.get("generation"):
                raise MemoryBankError(
                    f"{tensors_path} and {index_path} come from different saves",
                    hint="the save was interrupted; delete both files to recover again",
                )
            saved = cls(int(index["bank_size"]))
            saved._tasks = {str(t): int(n) for t, n in (index.get("tasks") or {}).items()}
            for i, entry in enumerate(index["entries"]):
                key = (str(entry["teacher"]), int(entry["class"]))
                slots = [handle.get_tensor(f"k{i}.s{j}") for j in range(int(entry["slots"]))]
                if any(s.dtype != torch.uint8 or list(s.shape[1:]) != list(entry["shape"]) for s in slots):
                    raise MemoryBankError(f"{tensors_path}: tensors of {key} do not match the index")
                saved._slots[key] = slots
                saved._written[key] = int(entry["written"])
                if entry.get("name"):
                    saved._names[key] = str(entry["name"])
        if bank_size is None or int(bank_size) == saved.bank_size:
            return saved
        resized = cls(int(bank_size))
        resized._tasks = dict(saved._tasks)
        for key in saved._slots:
            for slot in saved._chronological(key):  # re-add oldest first: the newest survive a smaller cap
                resized._add_slot(key, slot)
            if key in saved._names:
                resized._names[key] = saved._names[key]
        return resized

    def _add_slot(self, key: tuple[str, int], slot: torch.Tensor) -> None:
        slots = self._slots.setdefault(key, [])
        written = self._written.get(key, 0)
        if written < self.bank_size:
            slots.append(slot)
        else:
            slots[written % self.bank_size] = slot
        self._written[key] = written + 1
