"""Few-shot splits of any image-classification dataset, through the ``datasets`` library.

A source is one of

* a local folder of class sub-folders (``datasets``' ``imagefolder`` builder: ``root/cat/1.png``;
  ``root/train/cat/1.png`` works too);
* a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``;
* a Hub dataset id (``org/name``, optionally ``org/name@revision``) with an image column and a
  label column (needs the network, or the ``datasets`` cache with ``HF_HUB_OFFLINE=1``).

Few-shot learning needs *class*-disjoint meta-train / meta-val / meta-test splits. A class
split given explicitly (a JSON file or a built-in one, :mod:`.class_splits`) is used first; else,
if the dataset already has train / validation / test splits with disjoint label sets (a few-shot
benchmark, or a saved glyph benchmark) they are used as they are; otherwise every image is
pooled and the classes are split 60/20/20 with the seed. A Hub dataset is pinned to the commit
it resolves to (:mod:`.hub_datasets`). The decoded, resized images (uint8) are cached as
safetensors under ``<cache_dir>/datasets/``, keyed by content (a Hub commit), image size and split rule.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from ..errors import DatasetError, RepoIdError
from ..io import save_safetensors_atomic
from ..repo_id import parse_repo_ref
from .class_splits import read_class_split
from .episodes import ImageSplit, normalize_split, split_classes
from .hub_datasets import HubDataset, is_commit_id, resolve_hub_dataset

logger = logging.getLogger(__name__)

#: Bump when the conversion (resizing, split rule) changes: old caches are then ignored.
SOURCE_CACHE_VERSION = 2
#: Images decoded per batch: a batch's encoded images are the only memory beside the uint8 result.
DECODE_BATCH = 64
_IMAGE_NAMES = ("image", "img", "picture", "photo", "pixel_values")
_LABEL_NAMES = ("label", "labels", "fine_label", "class", "category", "target", "y")
_SPLIT_KEYS = {"train": ("train",), "val": ("validation", "val", "valid"), "test": ("test",)}


def _is_saved_dataset(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (
        (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file()
    )


def _folder_fingerprint(folder: Path) -> str:
    """Hash of every file's relative path, size and modification time (cheap, no reading)."""
    digest = hashlib.sha256(b"local\n")
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


@dataclass
class OpenedSource:
    """An opened dataset source.

    Attributes:
        name: a short name, used as the domain of its classes.
        fingerprint: identity of its content for caching (None when unknown); a Hub dataset's
            is its commit id, known before any shard is downloaded.
        key_source: what identifies the source in the cache key (a Hub dataset: ``org/name``
            without the revision, so ``@main`` and ``@<commit>`` share converted images).
        revision: the commit a Hub dataset resolved to (None for local folders).
    """

    name: str
    fingerprint: str | None
    key_source: str
    revision: str | None = None
    _splits: dict[str, Any] | None = field(default=None, repr=False)
    _hub: HubDataset | None = field(default=None, repr=False)

    @property
    def splits(self) -> dict[str, Any]:
        """``{split name: datasets.Dataset}`` (a Hub dataset's shards are downloaded on first use)."""
        if self._splits is None:
            assert self._hub is not None
            self._splits = self._hub.load()
            if self.fingerprint is None:  # no commit id: fall back to datasets' own fingerprints
                prints = [f"{k}:{getattr(v, '_fingerprint', None)}" for k, v in sorted(self._splits.items())]
                if not any(f.endswith(":None") for f in prints):
                    self.fingerprint = "hub:" + "|".join(prints)
        return self._splits


def open_source(source: str) -> OpenedSource:
    """Open a dataset source with ``datasets``.

    Args:
        source: a local imagefolder or ``save_to_disk`` folder, or a Hub dataset id.

    Returns:
        The opened source: local folders are loaded, Hub datasets resolved to a commit (their
        shards are downloaded when ``.splits`` is first read).

    Raises:
        DatasetError: if the source cannot be found or loaded.
    """
    import datasets

    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise DatasetError(
                f"dataset {source!r} is a file",
                hint="pass a folder of class sub-folders, a save_to_disk folder or a Hub dataset id",
            )
        name = path.resolve().name
        fingerprint = _folder_fingerprint(path)
        if _is_saved_dataset(path):
            try:
                loaded = datasets.load_from_disk(str(path))
            except Exception as error:  # noqa: BLE001 - any failure means the folder is unusable
                raise DatasetError(f"cannot load the saved dataset in {source}: {error}") from error
            splits = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"all": loaded}
            return OpenedSource(name, fingerprint, str(path.resolve()), _splits=splits)
        try:
            loaded = datasets.load_dataset("imagefolder", data_dir=str(path))
        except Exception as error:  # noqa: BLE001
            raise DatasetError(
                f"cannot read {source} as an image folder: {error}",
                hint="put the images of each class in their own sub-folder: ROOT/CLASS/IMAGE.png",
            ) from error
        return OpenedSource(name, fingerprint, str(path.resolve()), _splits=dict(loaded))
    try:
        ref = parse_repo_ref(source, namespace=False)
    except RepoIdError as error:
        raise DatasetError(
            f"dataset {source!r} is neither an existing folder nor a Hub dataset id ({error})",
            hint="use 'glyphs', a local folder, or org/name",
        ) from None
    hub = resolve_hub_dataset(ref.repo_id, ref.revision)
    return OpenedSource(
        ref.name, f"hub:{hub.revision}" if hub.revision else None, ref.repo_id, revision=hub.revision, _hub=hub
    )


def find_columns(features: Any) -> tuple[str, str]:
    """The image column and the label column of a dataset's features.

    The image column is a ``datasets.Image`` feature (preferring the usual names); the
    label column is a ``ClassLabel`` (preferring ``label``, then ``fine_label``...), else an
    integer or string column with a usual label name.

    Raises:
        DatasetError: if either is missing.
    """
    import datasets

    def ranked(names: list[str], preferred: tuple[str, ...]) -> list[str]:
        return sorted(names, key=lambda n: preferred.index(n.lower()) if n.lower() in preferred else len(preferred))

    images = [n for n, f in features.items() if isinstance(f, datasets.Image)]
    if not images:
        raise DatasetError(
            f"the dataset has no image column (columns: {', '.join(features)})",
            hint="few-shot evaluation needs a datasets.Image column",
        )
    class_labels = [n for n, f in features.items() if isinstance(f, datasets.ClassLabel)]
    plain = [
        n
        for n, f in features.items()
        if n.lower() in _LABEL_NAMES
        and isinstance(f, datasets.Value)
        and (f.dtype.startswith("int") or f.dtype in ("string", "large_string"))
    ]
    labels = ranked(class_labels, _LABEL_NAMES) or ranked(plain, _LABEL_NAMES)
    if not labels:
        raise DatasetError(
            f"the dataset has no label column (columns: {', '.join(features)})",
            hint="it needs a ClassLabel column, or an int/string column named label",
        )
    return ranked(images, _IMAGE_NAMES)[0], labels[0]


def _label_values(dataset: Any, column: str) -> np.ndarray:
    # only the label column: no image is decoded
    return np.asarray(dataset.select_columns([column]).with_format("numpy")[:][column])


def _to_rgb_array(image: Image.Image, size: int) -> np.ndarray:
    """Centre crop to a square and resize (bicubic, antialiased): ``[size, size, 3]`` uint8."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit / float greyscale: stretch to 8 bits
        values = np.asarray(image.convert("F"), dtype=np.float32)
        low, high = float(values.min()), float(values.max())
        image = Image.fromarray(np.clip((values - low) * 255.0 / ((high - low) or 1.0), 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))  # transparent -> white
        image = Image.alpha_composite(background, image)
    image = ImageOps.fit(image.convert("RGB"), (size, size), method=Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.uint8)


def _cache_path(cache_dir: str | os.PathLike | None, key: dict[str, Any]) -> Path:
    from .glyphs import default_cache_root

    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(key["name"]))[:40]
    return root / "datasets" / f"{slug}-{digest}.safetensors"


def _read_cache(path: Path) -> ImageSplit | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            images, labels = handle.get_tensor("images"), handle.get_tensor("labels")
        return ImageSplit(
            images=images,
            labels=labels,
            class_names=json.loads(meta["class_names"]),
            class_domains=json.loads(meta["class_domains"]),
            revision=meta.get("revision") or None,
            class_split=meta.get("class_split") or None,
        )
    except (OSError, KeyError, ValueError, AssertionError, RuntimeError) as error:
        if path.exists():
            logger.warning("ignoring unreadable dataset cache %s: %s", path, error)
        return None


def _write_cache(path: Path, split: ImageSplit) -> None:
    try:
        save_safetensors_atomic(
            path,
            {"images": split.images, "labels": split.labels},
            metadata={
                "class_names": json.dumps(split.class_names, ensure_ascii=False),
                "class_domains": json.dumps(split.class_domains, ensure_ascii=False),
                "revision": split.revision or "",
                "class_split": split.class_split or "",
            },
        )
    except OSError as error:  # a read-only cache only costs time
        logger.warning("could not cache the converted dataset at %s: %s", path, error)


def _numbered_per_split(labels: dict[str, np.ndarray]) -> bool:
    """True when the dataset has exactly a train, a validation and a test split of integer labels, each
    split's labels are exactly ``0..n-1``, and the counts ``n`` are not all equal: the splits number
    their classes separately (a few-shot upload such as CIFAR-FS as 64 / 16 / 20 classes), rather than
    sharing one numbering (an image-level split of the same classes, or a global numbering)."""
    canonical = {k: next((c for c, keys in _SPLIT_KEYS.items() if k.lower() in keys), None) for k in labels}
    if sorted(filter(None, canonical.values())) != ["test", "train", "val"] or len(labels) != 3:
        return False
    counts = []
    for values in labels.values():
        if values.size == 0 or not np.issubdtype(values.dtype, np.integer):
            return False
        present = np.unique(values)
        if present[0] != 0 or present[-1] != len(present) - 1:
            return False
        counts.append(len(present))
    return len(set(counts)) > 1


def _predefined_splits(splits: dict[str, Any], labels: dict[str, np.ndarray]) -> dict[str, str] | None:
    """``{"train": key, "val": key, "test": key}`` if the dataset's own splits are class-disjoint."""
    chosen: dict[str, str] = {}
    for canonical, keys in _SPLIT_KEYS.items():
        found = [k for k in splits if k.lower() in keys]
        if not found:
            return None
        chosen[canonical] = found[0]
    sets = [set(labels[chosen[c]].tolist()) for c in ("train", "val", "test")]
    if any(not s for s in sets) or sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2]:
        return None
    return chosen


def source_cache_key(
    source_id: str,
    split: str,
    *,
    fingerprint: str | None,
    name: str,
    image_size: int,
    domains: list[str] | None = None,
    seed: int = 0,
    class_split: str | None = None,
) -> dict[str, Any]:
    """The identity of one converted split in the image cache.

    Args:
        source_id: a local folder's resolved path, or a Hub dataset's ``org/name`` (no revision).
        split: canonical split name.
        fingerprint: the content's identity: a local folder's file listing hash, or ``hub:<commit>``
            for a Hub dataset (so each dataset revision gets its own entry).
        name: the dataset's short name (readable part of the file name).
        image_size: side of the converted images (each size its own entry).
        domains, seed, class_split: what else decides which images and classes the split holds
            (``class_split`` is :attr:`ClassSplit.key`).
    """
    return {
        "version": SOURCE_CACHE_VERSION,
        "source": source_id,
        "split": split,
        "domains": sorted(domains) if domains else None,
        "image_size": int(image_size),
        "seed": int(seed),
        "class_split": class_split,
        "name": name,
        "fingerprint": fingerprint,
    }


def source_cache_path(cache_dir: str | os.PathLike | None, key: dict[str, Any]) -> Path:
    """Where the converted split of :func:`source_cache_key` ``key`` is cached (a safetensors file)."""
    return _cache_path(cache_dir, key)


def load_source_split(
    source: str,
    split: str = "test",
    *,
    domains: list[str] | None = None,
    image_size: int = 32,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    class_split: str | None = None,
) -> ImageSplit:
    """One class-disjoint split of an image-classification dataset.

    The classes are assigned to train / val / test by, in order: ``class_split`` if given, the
    dataset's own train / validation / test splits if their classes are disjoint, else a
    seeded 60/20/20 split of all classes; the log says which, and so does the result's
    ``class_split``. Converted images are cached, keyed by the dataset's content (a Hub
    dataset's commit), the image size and the split rule; a Hub dataset asked for at a full
    commit id is read from that cache without contacting the Hub.

    Args:
        source: local imagefolder / ``save_to_disk`` folder, or Hub dataset id (see module doc).
        split: ``train``, ``val`` (or ``validation``) or ``test``.
        domains: keep only classes of these domains (a ``domain`` column if the dataset has
            one, else the dataset's name is the domain of every class).
        image_size: side of the (centre-cropped, resized) RGB images.
        seed: seeds the class split (used only by the 60/20/20 fallback).
        cache_dir: cache root of the converted images.
        class_split: a built-in split name (e.g. ``cub-200``) or a JSON file of class lists
            (see :mod:`tgr_hub.data.class_splits`).

    Returns:
        The split: ``images`` ``[N, 3, H, W]`` uint8 (decoded straight into one uint8 buffer),
        classes in label order, labels ``0..C-1``, ``revision`` the Hub commit (if any).

    Raises:
        DatasetError: unreadable source or class split, missing columns, or no class in the split.
    """
    split = normalize_split(split)
    if image_size < 8:
        raise DatasetError(f"image_size must be >= 8, got {image_size}")
    rule = read_class_split(class_split) if class_split else None
    local = Path(source).expanduser()

    def key_of(source_id: str, name: str, fingerprint: str | None) -> dict[str, Any]:
        return source_cache_key(
            source_id,
            split,
            fingerprint=fingerprint,
            name=name,
            image_size=image_size,
            domains=domains,
            seed=seed,
            class_split=rule.key if rule else None,
        )

    # found without opening the dataset: a local folder (by its file listing), a Hub dataset at a commit id
    early: Path | None = None
    if local.is_dir():
        early = _cache_path(cache_dir, key_of(str(local.resolve()), local.resolve().name, _folder_fingerprint(local)))
    elif "@" in source and is_commit_id(source.partition("@")[2]):
        repo, _, commit = source.partition("@")
        early = _cache_path(cache_dir, key_of(repo, repo.split("/")[-1], f"hub:{commit}"))
    if early is not None and early.is_file():
        cached = _read_cache(early)
        if cached is not None:
            logger.info("%s %s: converted images from the cache %s", source, split, early)
            return cached
    opened = open_source(source)
    path = (
        _cache_path(cache_dir, key_of(opened.key_source, opened.name, opened.fingerprint))
        if opened.fingerprint
        else None
    )
    if path is not None and path.is_file():
        cached = _read_cache(path)
        if cached is not None:
            logger.info("%s %s: converted images from the cache %s", source, split, path)
            return cached
    splits, name = opened.splits, opened.name
    if path is None and opened.fingerprint:  # a fingerprint known only once loaded
        path = _cache_path(cache_dir, key_of(opened.key_source, opened.name, opened.fingerprint))
    if not splits or all(len(d) == 0 for d in splits.values()):
        raise DatasetError(f"dataset {source!r} has no images")
    first = next(iter(splits.values()))
    image_column, label_column = find_columns(first.features)
    for split_key, part in splits.items():
        if image_column not in part.features or label_column not in part.features:
            raise DatasetError(
                f"split {split_key!r} of {source!r} lacks the {image_column!r} or {label_column!r} column"
            )

    import datasets

    # class names, shared by all splits
    labels = {k: _label_values(part, label_column) for k, part in splits.items()}
    feature = first.features[label_column]
    ids: list[int] | None
    if isinstance(feature, datasets.ClassLabel):
        names = list(feature.names)
        codes = {k: v.astype(np.int64) for k, v in labels.items()}
        ids = list(range(len(names)))
    elif _numbered_per_split(labels):
        # train / validation / test each number their own classes 0..n-1 (e.g. 64 / 16 / 20): label 3 of
        # the test split is another class than label 3 of train, so a class is (split, label)
        names, codes, offset = [], {}, 0
        for key, values in labels.items():
            count = int(values.max()) + 1
            names += [f"{key}/{v}" for v in range(count)]
            codes[key] = values.astype(np.int64) + offset
            offset += count
        ids = None
        logger.info(
            "%s: the splits number their classes separately (%s): classes are taken per split",
            source,
            ", ".join(f"{k} 0..{int(v.max())}" for k, v in labels.items()),
        )
    else:
        distinct = sorted(
            {v.item() if hasattr(v, "item") else v for arr in labels.values() for v in arr.tolist()},
            key=lambda v: (str(type(v)), v),
        )
        index = {v: i for i, v in enumerate(distinct)}
        names = [str(v) for v in distinct]
        codes = {k: np.array([index[v] for v in arr.tolist()], dtype=np.int64) for k, arr in labels.items()}
        ids = [int(v) for v in distinct] if all(isinstance(v, int) for v in distinct) else None
    if any(((c < 0) | (c >= len(names))).any() for c in codes.values()):
        raise DatasetError(f"dataset {source!r} has labels outside its {len(names)} classes (e.g. -1 for unlabelled)")

    # domain of each class: the `domain` column if there is one, else the dataset's name
    class_domain = {c: name for c in range(len(names))}
    if "domain" in first.features:
        seen: dict[int, str] = {}
        for k, part in splits.items():
            for c, d in zip(codes[k].tolist(), part.select_columns(["domain"])["domain"]):
                seen.setdefault(c, str(d))  # first image of a class decides
        class_domain.update(seen)

    present = sorted({int(c) for arr in codes.values() for c in arr.tolist()})
    predefined = _predefined_splits(splits, codes) if rule is None else None
    if rule is not None:
        assignment = rule.assign(names, ids)
        with_images = set(present)
        members = [c for c in assignment[split] if c in with_images]
        used = rule.name
    elif predefined is not None:
        members = sorted({int(c) for c in codes[predefined[split]].tolist()})
        used = "dataset"
    else:
        assignment = split_classes(len(present), seed=seed)
        members = [present[i] for i in assignment[split]]
        used = f"seeded-60/20/20:{seed}"
    if rule is not None:
        described = f"the class split {rule.name}"
    elif predefined is not None:
        described = f"its own class-disjoint splits {predefined}"
    else:
        described = f"a seeded 60/20/20 class split (seed {seed}), as it has no class-disjoint train/validation/test"
    logger.info("%s: %s split of %d classes, from %s", source, split, len(members), described)
    if domains:
        lacking = sorted(set(domains) - set(class_domain.values()))
        if lacking:  # not silently dropped: the split would hold fewer domains than asked for
            raise DatasetError(
                f"dataset {source!r} has no {split} classes in domains {lacking} "
                f"(its domains: {', '.join(sorted(set(class_domain.values())))})",
                hint="name domains the dataset has, or drop the domain filter",
            )
        members = [c for c in members if class_domain[c] in set(domains)]
    if not members:
        known = sorted(set(class_domain.values()))
        raise DatasetError(
            f"dataset {source!r} has no {split} classes"
            + (f" in domains {list(domains)} (its domains: {', '.join(known)})" if domains else ""),
            hint="it needs at least 3 classes for class-disjoint train/val/test splits"
            if not domains
            else "drop the domain filter (make-pool: --domains '*' takes every domain)",
        )

    relabel = {c: i for i, c in enumerate(members)}
    parts = [predefined[split]] if predefined is not None else list(splits)
    from ..progress import progress_bar

    rows_of = {k: np.nonzero(np.isin(codes[k], members))[0] for k in parts}
    total = sum(len(rows) for rows in rows_of.values())
    # one uint8 buffer, filled image by image: an 84 px split never exists as float32 or as a list + stacked copy
    images = np.empty((total, 3, image_size, image_size), dtype=np.uint8)
    new_labels = np.empty(total, dtype=np.int64)
    filled = 0
    with progress_bar(total=total, desc=f"decoding {name} {split} ({image_size}px)", unit="img", disable=None) as bar:
        for k in parts:
            rows = rows_of[k]
            if len(rows) == 0:
                continue
            subset = splits[k].select(rows.tolist()).select_columns([image_column])
            for batch_start, batch in zip(range(0, len(rows), DECODE_BATCH), subset.iter(batch_size=DECODE_BATCH)):
                for offset, image in enumerate(batch[image_column]):
                    if image is None:
                        raise DatasetError(f"dataset {source!r} has an empty image in split {k!r}")
                    images[filled] = _to_rgb_array(image, image_size).transpose(2, 0, 1)
                    new_labels[filled] = relabel[int(codes[k][rows[batch_start + offset]])]
                    filled += 1
                bar.update(len(batch[image_column]))
    assert filled == total, f"decoded {filled} of {total} images"
    result = ImageSplit(
        images=torch.from_numpy(images),
        labels=torch.from_numpy(new_labels),
        class_names=[names[c] for c in members],
        class_domains=[class_domain[c] for c in members],
        revision=opened.revision,
        class_split=used,
    )
    if path is not None:
        _write_cache(path, result)
    return result
