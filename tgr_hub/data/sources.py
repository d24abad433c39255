"""Few-shot splits of any image-classification dataset, through the ``datasets`` library.

A source is one of

* a local folder of class sub-folders (``datasets``' ``imagefolder`` builder: ``root/cat/1.png``;
  ``root/train/cat/1.png`` works too);
* a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``;
* a Hub dataset id (``org/name``, optionally ``org/name@revision``) with an image column and a
  label column (needs the network, or the ``datasets`` cache with ``HF_HUB_OFFLINE=1``).

Few-shot learning needs *class*-disjoint meta-train / meta-val / meta-test splits. If the
dataset already has train / validation / test splits with disjoint label sets (a few-shot
benchmark, or a saved glyph benchmark) they are used as they are; otherwise every image is
pooled and the classes are split 60/20/20 with the seed. The decoded, resized images are
cached as safetensors under ``<cache_dir>/datasets/``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from ..errors import DatasetError, RepoIdError
from ..io import save_safetensors_atomic
from ..repo_id import parse_repo_ref
from .fewshot import ImageSplit, normalize_split, split_classes

logger = logging.getLogger(__name__)

#: Bump when the conversion (resizing, split rule) changes: old caches are then ignored.
SOURCE_CACHE_VERSION = 1
_IMAGE_NAMES = ("image", "img", "picture", "photo", "pixel_values")
_LABEL_NAMES = ("label", "labels", "fine_label", "class", "category", "target", "y")
_SPLIT_KEYS = {"train": ("train",), "val": ("validation", "val", "valid"), "test": ("test",)}


def _is_saved_dataset(folder: Path) -> bool:
    return (folder / "dataset_dict.json").is_file() or (
        (folder / "state.json").is_file() and (folder / "dataset_info.json").is_file())


def _folder_fingerprint(folder: Path) -> str:
    """Hash of every file's relative path, size and modification time (cheap, no reading)."""
    digest = hashlib.sha256(b"local\n")
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def open_source(source: str) -> tuple[dict[str, Any], str, str | None]:
    """Open a dataset source with ``datasets``.

    Args:
        source: a local imagefolder or ``save_to_disk`` folder, or a Hub dataset id.

    Returns:
        ``(splits, name, fingerprint)``: the dataset's splits (``{name: datasets.Dataset}``),
        a short name used as the domain of its classes, and a fingerprint of its content
        for caching (None when unknown).

    Raises:
        DatasetError: if the source cannot be found or loaded.
    """
    import datasets

    path = Path(source).expanduser()
    if path.exists():
        if not path.is_dir():
            raise DatasetError(f"dataset {source!r} is a file",
                               hint="pass a folder of class sub-folders, a save_to_disk folder or a Hub dataset id")
        name = path.resolve().name
        fingerprint = _folder_fingerprint(path)
        if _is_saved_dataset(path):
            try:
                loaded = datasets.load_from_disk(str(path))
            except Exception as error:  # noqa: BLE001 - any failure means the folder is unusable
                raise DatasetError(f"cannot load the saved dataset in {source}: {error}") from error
            splits = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"all": loaded}
            return splits, name, fingerprint
        try:
            loaded = datasets.load_dataset("imagefolder", data_dir=str(path))
        except Exception as error:  # noqa: BLE001
            raise DatasetError(f"cannot read {source} as an image folder: {error}",
                               hint="put the images of each class in their own sub-folder: ROOT/CLASS/IMAGE.png",
                               ) from error
        return dict(loaded), name, fingerprint
    try:
        ref = parse_repo_ref(source, namespace=False)
    except RepoIdError as error:
        raise DatasetError(f"dataset {source!r} is neither an existing folder nor a Hub dataset id ({error})",
                           hint="use 'glyphs', a local folder, or org/name") from None
    repo, revision = ref.repo_id, ref.revision
    try:
        loaded = datasets.load_dataset(repo, revision=revision or None)
    except Exception as error:  # noqa: BLE001 - network, auth, missing repo, bad format...
        raise DatasetError(
            f"cannot load Hub dataset {source!r} (and there is no local folder of that name): "
            f"{type(error).__name__}: {error}",
            hint="check the id and your network (offline, only datasets already in the cache load), "
                 "or pass a local folder") from error
    splits = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"all": loaded}
    fingerprints = [f"{k}:{getattr(v, '_fingerprint', None)}" for k, v in sorted(splits.items())]
    fingerprint = None if any(f.endswith(":None") for f in fingerprints) else "hub:" + "|".join(fingerprints)
    return splits, repo.split("/")[-1], fingerprint


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
        return sorted(names, key=lambda n: (preferred.index(n.lower()) if n.lower() in preferred else len(preferred)))

    images = [n for n, f in features.items() if isinstance(f, datasets.Image)]
    if not images:
        raise DatasetError(f"the dataset has no image column (columns: {', '.join(features)})",
                           hint="few-shot evaluation needs a datasets.Image column")
    class_labels = [n for n, f in features.items() if isinstance(f, datasets.ClassLabel)]
    plain = [n for n, f in features.items() if n.lower() in _LABEL_NAMES and isinstance(f, datasets.Value)
             and (f.dtype.startswith("int") or f.dtype in ("string", "large_string"))]
    labels = ranked(class_labels, _LABEL_NAMES) or ranked(plain, _LABEL_NAMES)
    if not labels:
        raise DatasetError(f"the dataset has no label column (columns: {', '.join(features)})",
                           hint="it needs a ClassLabel column, or an int/string column named label")
    return ranked(images, _IMAGE_NAMES)[0], labels[0]


def _label_values(dataset: Any, column: str) -> np.ndarray:
    # only the label column: no image is decoded
    return np.asarray(dataset.select_columns([column]).with_format("numpy")[:][column])


def _to_rgb_array(image: Image.Image, size: int) -> np.ndarray:
    """Centre crop to a square and resize (bicubic, antialiased): ``[size, size, 3]`` uint8."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit / float greyscale: stretch to 8 bits
        values = np.asarray(image.convert("F"), dtype=np.float32)
        low, high = float(values.min()), float(values.max())
        image = Image.fromarray(np.uint8(np.clip((values - low) * 255.0 / ((high - low) or 1.0), 0, 255)))
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
        return ImageSplit(images=images, labels=labels, class_names=json.loads(meta["class_names"]),
                          class_domains=json.loads(meta["class_domains"]))
    except (OSError, KeyError, ValueError, AssertionError, RuntimeError) as error:
        if path.exists():
            logger.warning("ignoring unreadable dataset cache %s: %s", path, error)
        return None


def _write_cache(path: Path, split: ImageSplit) -> None:
    try:
        save_safetensors_atomic(path, {"images": split.images, "labels": split.labels},
                                metadata={"class_names": json.dumps(split.class_names, ensure_ascii=False),
                                          "class_domains": json.dumps(split.class_domains, ensure_ascii=False)})
    except OSError as error:  # a read-only cache only costs time
        logger.warning("could not cache the converted dataset at %s: %s", path, error)


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


def load_source_split(source: str, split: str = "test", *, domains: list[str] | None = None, image_size: int = 32,
                      seed: int = 0, cache_dir: str | os.PathLike | None = None) -> ImageSplit:
    """One class-disjoint split of an image-classification dataset.

    Args:
        source: local imagefolder / ``save_to_disk`` folder, or Hub dataset id (see module doc).
        split: ``train``, ``val`` (or ``validation``) or ``test``.
        domains: keep only classes of these domains (a ``domain`` column if the dataset has
            one, else the dataset's name is the domain of every class).
        image_size: side of the (centre-cropped, resized) RGB images.
        seed: seeds the class split (unused when the dataset's own splits are class-disjoint).
        cache_dir: cache root of the converted images.

    Returns:
        The split; classes in label order, labels ``0..C-1``.

    Raises:
        DatasetError: unreadable source, missing columns, or no class in the split.
    """
    split = normalize_split(split)
    if image_size < 8:
        raise DatasetError(f"image_size must be >= 8, got {image_size}")
    local = Path(source).expanduser()
    key = {"version": SOURCE_CACHE_VERSION, "source": str(local.resolve()) if local.is_dir() else source,
           "split": split, "domains": sorted(domains) if domains else None, "image_size": image_size, "seed": seed}
    if local.is_dir():  # a local folder's cache is found without loading it with `datasets`
        path = _cache_path(cache_dir, {**key, "name": local.resolve().name, "fingerprint": _folder_fingerprint(local)})
        cached = _read_cache(path) if path.is_file() else None
        if cached is not None:
            return cached
    splits, name, fingerprint = open_source(source)
    path = _cache_path(cache_dir, {**key, "name": name, "fingerprint": fingerprint}) if fingerprint else None
    if path is not None and path.is_file():
        cached = _read_cache(path)
        if cached is not None:
            return cached
    if not splits or all(len(d) == 0 for d in splits.values()):
        raise DatasetError(f"dataset {source!r} has no images")
    first = next(iter(splits.values()))
    image_column, label_column = find_columns(first.features)
    for split_key, part in splits.items():
        if image_column not in part.features or label_column not in part.features:
            raise DatasetError(
                f"split {split_key!r} of {source!r} lacks the {image_column!r} or {label_column!r} column")

    import datasets

    # class names, shared by all splits
    labels = {k: _label_values(part, label_column) for k, part in splits.items()}
    feature = first.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        names = list(feature.names)
        codes = {k: v.astype(np.int64) for k, v in labels.items()}
    else:
        values = sorted({v.item() if hasattr(v, "item") else v for arr in labels.values() for v in arr.tolist()},
                        key=lambda v: (str(type(v)), v))
        index = {v: i for i, v in enumerate(values)}
        names = [str(v) for v in values]
        codes = {k: np.array([index[v] for v in arr.tolist()], dtype=np.int64) for k, arr in labels.items()}
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
    predefined = _predefined_splits(splits, codes)
    if predefined is not None:
        logger.info("%s: using its own class-disjoint splits %s", source, predefined)
        members = sorted({int(c) for c in codes[predefined[split]].tolist()})
    else:
        assignment = split_classes(len(present), seed=seed)
        members = [present[i] for i in assignment[split]]
    if domains:
        members = [c for c in members if class_domain[c] in set(domains)]
    if not members:
        known = sorted(set(class_domain.values()))
        raise DatasetError(f"dataset {source!r} has no {split} classes"
                           + (f" in domains {list(domains)} (its domains: {', '.join(known)})" if domains else ""),
                           hint="it needs at least 3 classes for class-disjoint train/val/test splits"
                           if not domains else "drop the domain filter for non-glyph datasets")

    relabel = {c: i for i, c in enumerate(members)}
    images: list[np.ndarray] = []
    new_labels: list[int] = []
    parts = [predefined[split]] if predefined is not None else list(splits)
    from tqdm.auto import tqdm

    total = sum(int(np.isin(codes[k], members).sum()) for k in parts)
    with tqdm(total=total, desc=f"decoding {name} {split}", unit="img", disable=None) as bar:
        for k in parts:
            rows = np.nonzero(np.isin(codes[k], members))[0]
            if len(rows) == 0:
                continue
            subset = splits[k].select(rows.tolist()).select_columns([image_column])
            for batch_start, batch in zip(range(0, len(rows), 256), subset.iter(batch_size=256)):
                for offset, image in enumerate(batch[image_column]):
                    if image is None:
                        raise DatasetError(f"dataset {source!r} has an empty image in split {k!r}")
                    images.append(_to_rgb_array(image, image_size))
                    new_labels.append(relabel[int(codes[k][rows[batch_start + offset]])])
                bar.update(len(batch[image_column]))
    result = ImageSplit(
        images=torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous(),
        labels=torch.tensor(new_labels, dtype=torch.int64),
        class_names=[names[c] for c in members],
        class_domains=[class_domain[c] for c in members],
    )
    if path is not None:
        _write_cache(path, result)
    return result
