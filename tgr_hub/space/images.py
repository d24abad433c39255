"""Image intake of the few-shot app: files people upload become validated image tensors.

Every problem with the input raises :class:`~tgr_hub.errors.ImageInputError` with a message
that names the class or file at fault and says how to fix it; the app shows that message as
is, so nothing here may leak a traceback or an internal detail to the user. Also here: class
names and labels (:func:`parse_labels`, :func:`group_by_label`) and the built-in glyph
examples the demo offers.
"""

from __future__ import annotations

import io
import logging
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

from .. import seeds
from ..errors import ImageInputError
from ..io import atomic_path

logger = logging.getLogger(__name__)

#: What an image can be given as: a file path, raw file bytes, a PIL image, or an
#: ``[H, W]`` / ``[H, W, C]`` uint8 array.
ImageSource = Union[str, os.PathLike, bytes, bytearray, Image.Image, np.ndarray]  # noqa: UP007 (runtime alias)


@dataclass(frozen=True)
class InputLimits:
    """Limits on what a person may submit (sized for a 2-vCPU Space).

    Attributes:
        min_classes: fewest classes of a task (classification needs two).
        max_classes: most classes of a task.
        max_images_per_class: most support images of one class.
        max_support_images: most support images in total.
        max_query_images: most images classified in one call.
        max_pixels: most pixels (width x height) of one image; larger ones are refused,
            smaller ones are downscaled to the model's input size.
        max_file_bytes: largest accepted file.
        max_name_length: longest class name (characters).
    """

    min_classes: int = 2
    max_classes: int = 10
    max_images_per_class: int = 20
    max_support_images: int = 100
    max_query_images: int = 50
    max_pixels: int = 20_000_000
    max_file_bytes: int = 20 * 1024 * 1024
    max_name_length: int = 64

    def describe(self) -> str:
        """One line for users: the limits in words."""
        return (
            f"{self.min_classes} to {self.max_classes} classes, at most {self.max_images_per_class} images per class "
            f"and {self.max_support_images} in total, at most {self.max_query_images} query images; "
            f"each image at most {self.max_pixels / 1e6:g} megapixels and {self.max_file_bytes // (1024 * 1024)} MB"
        )


DEFAULT_LIMITS = InputLimits()


# Image modes PIL reads that hold more than 8 bits per channel: scaled, not clipped, to 8 bits.
_WIDE_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def _source_name(source: Any, index: int) -> str:
    """A short name for messages: the file's base name, or ``image #i`` for in-memory images."""
    if isinstance(source, (str, os.PathLike)):
        return Path(source).name or str(source)
    name = getattr(source, "filename", None) or getattr(source, "name", None)  # PIL images, file objects
    if isinstance(name, str) and name:
        return Path(name).name
    return f"image #{index + 1}"


def _read_bytes(source: ImageSource, name: str, limits: InputLimits) -> bytes | Image.Image | np.ndarray:
    """Read a path/bytes source (size-checked); pass in-memory images through."""
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ImageInputError(f"{name}: file not found or not a regular file")
        size = path.stat().st_size
        if size > limits.max_file_bytes:
            raise ImageInputError(
                f"{name}: file is too large ({size / 2**20:.1f} MB; the limit is {limits.max_file_bytes // 2**20} MB)",
                hint="downscale or compress it first",
            )
        data = path.read_bytes()
    elif isinstance(source, (Image.Image, np.ndarray)):
        return source
    else:
        raise ImageInputError(
            f"{name}: unsupported input of type {type(source).__name__}; give a file path or image bytes"
        )
    if len(data) == 0:
        raise ImageInputError(f"{name}: file is empty, not an image")
    if len(data) > limits.max_file_bytes:
        raise ImageInputError(
            f"{name}: file is too large ({len(data) / 2**20:.1f} MB; the limit is {limits.max_file_bytes // 2**20} MB)",
            hint="downscale or compress it first",
        )
    return data


def _array_to_pil(array: np.ndarray, name: str) -> Image.Image:
    """``[H, W]``, ``[H, W, 1|3|4]`` arrays (uint8, or float in [0, 1]) to a PIL image."""
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ImageInputError(f"{name}: array of shape {array.shape} is not an image; expected [H, W] or [H, W, 3|4]")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.number):
            raise ImageInputError(f"{name}: array of dtype {array.dtype} is not an image")
        array = np.clip(np.nan_to_num(array.astype(np.float64)) * 255.0, 0, 255).round().astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(array))


def _open(source: ImageSource, name: str, limits: InputLimits) -> Image.Image:
    """Open (lazily: header only) and check the pixel count before decoding anything big."""
    raw = _read_bytes(source, name, limits)
    if isinstance(raw, np.ndarray):
        image = _array_to_pil(raw, name)
    elif isinstance(raw, Image.Image):
        image = raw
    else:
        try:
            with warnings.catch_warnings():
                # PIL warns about "decompression bombs" at ~89 MP; we refuse far below that.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(raw))
        except Image.DecompressionBombError:
            raise ImageInputError(
                f"{name}: image is far too large (more than {(Image.MAX_IMAGE_PIXELS or 0) * 2 / 1e6:.0f} megapixels; "
                f"the limit is {limits.max_pixels / 1e6:g} MP)",
                hint="downscale it first",
            ) from None
        except UnidentifiedImageError:
            raise ImageInputError(
                f"{name}: not an image (the file format is not recognised)",
                hint="upload PNG, JPEG, GIF, BMP, TIFF or WebP images",
            ) from None
        except (OSError, ValueError, SyntaxError) as error:  # PIL plugins raise all of these on garbage
            raise ImageInputError(f"{name}: corrupt image ({error})", hint="re-export or re-download it") from None
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ImageInputError(
            f"{name}: image is too large ({width}x{height} = {width * height / 1e6:.1f} megapixels; the limit is "
            f"{limits.max_pixels / 1e6:g} MP)",
            hint="downscale it first",
        )
    if width < 1 or height < 1:
        raise ImageInputError(f"{name}: image has no pixels ({width}x{height})")
    return image


def _to_rgb(image: Image.Image, name: str, notes: list[str] | None) -> Image.Image:
    """Convert any PIL mode to RGB; transparency is flattened onto white."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _WIDE_MODES:
        array = np.asarray(image, dtype=np.float64)
        if mode.startswith("I") and array.max() > 255:
            peak = 65535.0  # 16-bit data
        elif mode == "F" and array.max() <= 1:
            peak = 1.0  # float data in [0, 1]
        else:
            peak = 255.0
        image = Image.fromarray(np.clip(array / peak * 255.0, 0, 255).round().astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba).convert("RGB")
        how = "transparent pixels flattened onto white"
    else:
        image = image.convert("RGB")
        how = "grey level copied to the 3 channels" if mode in ("1", "L", *_WIDE_MODES) else "colours converted"
    if notes is not None:
        notes.append(f"{name}: converted from {mode} to RGB ({how})")
    logger.info("%s: converted from %s to RGB", name, mode)
    return image


def load_image(
    source: ImageSource,
    *,
    size: int | tuple[int, int] = 32,
    limits: InputLimits = DEFAULT_LIMITS,
    name: str | None = None,
    notes: list[str] | None = None,
) -> Tensor:
    """Validate, decode and convert one image to the model's input size.

    Grayscale, palette, 16-bit, CMYK and transparent images are converted to RGB
    (transparency flattened onto white); the EXIF orientation is applied; animated images
    use their first frame. The whole image is resized (bilinear, antialiased) to ``size``
    without cropping. Anything else is refused with an :class:`ImageInputError` naming the image.

    Args:
        source: a file path, the file's bytes, a PIL image, or a uint8 ``[H, W(, C)]`` array.
        size: output ``H`` (= ``W``) or ``(H, W)``.
        limits: file size and pixel limits.
        name: how messages call the image (default: the file name).
        notes: if given, one line is appended per conversion made (for the user to see).

    Returns:
        ``[3, H, W]`` float32 in ``[0, 1]``.
    """
    name = name or _source_name(source, 0)
    height, width = (size, size) if isinstance(size, int) else size
    image = _open(source, name, limits)
    try:
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)
            if notes is not None:
                notes.append(f"{name}: animated image, only its first frame is used")
        if image.format == "JPEG":
            image.draft("RGB", (width * 2, height * 2))  # decode big JPEGs at reduced scale: faster, less memory
        transposed = ImageOps.exif_transpose(image)
        image = transposed if transposed is not None else image
        image = _to_rgb(image, name, notes)
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.BILINEAR)
        array = np.asarray(image, dtype=np.uint8)
    except ImageInputError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError, IndexError) as error:
        # Truncated or inconsistent data only shows when the pixels are decoded.
        raise ImageInputError(f"{name}: corrupt image ({error})", hint="re-export or re-download it") from None
    if array.shape != (height, width, 3):  # a decoder quirk must not reach the model
        raise ImageInputError(
            f"{name}: decoded to an unexpected shape {array.shape}", hint="re-export it as an RGB PNG or JPEG"
        )
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def load_images(
    sources: Sequence[ImageSource],
    *,
    size: int | tuple[int, int] = 32,
    limits: InputLimits = DEFAULT_LIMITS,
    what: str = "image",
    max_count: int | None = None,
    notes: list[str] | None = None,
) -> Tensor:
    """Validate and load several images (see :func:`load_image`).

    Args:
        sources: file paths, bytes, PIL images or arrays.
        size: output ``H`` (= ``W``) or ``(H, W)``.
        limits: per-image limits.
        what: what the images are, for messages (``"query image"``...).
        max_count: most images accepted (``None``: no count limit).
        notes: conversion notes are appended here.

    Returns:
        ``[N, 3, H, W]`` float32 in ``[0, 1]``.
    """
    sources = list(sources or [])
    if not sources:
        raise ImageInputError(f"no {what}s given: upload at least one")
    if max_count is not None and len(sources) > max_count:
        raise ImageInputError(f"too many {what}s: {len(sources)} given, the limit is {max_count}")
    names = _unique_names([_source_name(s, i) for i, s in enumerate(sources)])
    return torch.stack([load_image(s, size=size, limits=limits, name=n, notes=notes) for s, n in zip(sources, names)])


def _unique_names(names: list[str]) -> list[str]:
    """Disambiguate equal display names (``a.png``, ``a.png (2)``) so messages point at one file."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return out


def _class_key(name: str) -> str:
    """Names that differ only in spacing are the same class; case counts (``latin/E`` is not ``latin/e``)."""
    return " ".join(name.split())


def _clean_name(name: Any, position: int, limits: InputLimits) -> str:
    if name is None:
        name = ""
    if not isinstance(name, str):
        raise ImageInputError(f"class {position}: its name must be text, got {type(name).__name__}")
    cleaned = " ".join(name.split())
    if not cleaned:
        raise ImageInputError(f"class {position} has no name: give every class a name")
    if len(cleaned) > limits.max_name_length:
        raise ImageInputError(
            f"class {position}: name {cleaned[:20]!r}... is too long ({len(cleaned)} characters; "
            f"the limit is {limits.max_name_length})"
        )
    return cleaned


def parse_labels(labels: str | Sequence[str] | None) -> list[str]:
    """Split a label text into labels: one per line, or comma-separated.

    Args:
        labels: ``"cat, cat, dog"``, ``"cat\\ncat\\ndog"`` or a list of strings. Surrounding
            spaces are dropped; empty entries between separators are kept (as ``""``) so
            that the count still matches the images and the message can point at them.

    Returns:
        The labels, in order.
    """
    if labels is None:
        return []
    if isinstance(labels, str):
        text = labels.strip()
        if not text:
            return []
        parts = re.split(r"[,\n;]", text.replace("\r", ""))
        return [p.strip() for p in parts]
    return [str(p).strip() for p in labels]


def group_by_label(images: Sequence[ImageSource], labels: Sequence[str]) -> list[tuple[str, list[ImageSource]]]:
    """Group support images into classes by their labels (one label per image).

    Classes are ordered by first appearance; labels are compared after collapsing spaces
    (case matters: ``latin/E`` and ``latin/e`` are two classes).

    Returns:
        ``[(class name, [images...]), ...]``.
    """
    images = list(images or [])
    labels = list(labels)
    if not images and not labels:
        raise ImageInputError("no classes defined: give support images of at least 2 classes and one label per image")
    if not images:
        raise ImageInputError(f"no support images given for the {len(labels)} labels: upload one image per label")
    if not labels:
        raise ImageInputError(
            f"no labels given for the {len(images)} support images: give one label per image, "
            "comma- or newline-separated"
        )
    if len(labels) != len(images):
        raise ImageInputError(
            f"{len(labels)} labels given for {len(images)} support images: give exactly one label "
            "per image, in the same order, comma- or newline-separated"
        )
    groups: dict[str, tuple[str, list[ImageSource]]] = {}
    for i, (image, label) in enumerate(zip(images, labels)):
        if not label.strip():
            raise ImageInputError(
                f"support image {i + 1} ({_source_name(image, i)}) has an empty label: give it a class name"
            )
        name = _class_key(label)
        groups.setdefault(name, (name, []))[1].append(image)
    return list(groups.values())


def _validate_classes(
    classes: Mapping[str, Sequence[ImageSource]] | Sequence[tuple[str, Sequence[ImageSource]]],
    limits: InputLimits,
) -> list[tuple[str, list[ImageSource]]]:
    """Check names and counts (cheap checks, before any image is decoded)."""
    items = list(classes.items()) if isinstance(classes, Mapping) else list(classes or [])
    if not items:
        raise ImageInputError(
            f"no classes defined: define at least {limits.min_classes} classes, each with a name and one or more images"
        )
    cleaned: list[tuple[str, list[ImageSource]]] = []
    seen: dict[str, int] = {}
    for position, item in enumerate(items, start=1):
        try:
            raw_name, images = item
        except (TypeError, ValueError):
            raise ImageInputError(f"class {position}: expected a (name, images) pair") from None
        name = _clean_name(raw_name, position, limits)
        key = _class_key(name)
        if key in seen:
            raise ImageInputError(
                f"duplicate class name {name!r} (classes {seen[key]} and {position}): give each class a different name"
            )
        seen[key] = position
        images = [images] if isinstance(images, (str, os.PathLike, bytes, bytearray)) else list(images or [])
        if not images:
            raise ImageInputError(f"class {name!r} has no images: add at least one image to it, or remove it")
        if len(images) > limits.max_images_per_class:
            raise ImageInputError(
                f"class {name!r} has {len(images)} images; the limit is {limits.max_images_per_class} per class"
            )
        cleaned.append((name, images))
    if len(cleaned) < limits.min_classes:
        raise ImageInputError(
            f"only one class ({cleaned[0][0]!r}): define at least {limits.min_classes} classes to tell apart"
        )
    if len(cleaned) > limits.max_classes:
        raise ImageInputError(f"too many classes: {len(cleaned)} defined, the limit is {limits.max_classes}")
    total = sum(len(images) for _, images in cleaned)
    if total > limits.max_support_images:
        raise ImageInputError(f"too many support images: {total} in all, the limit is {limits.max_support_images}")
    return cleaned


def _file_stem(name: str) -> str:
    """A portable file name for a class name: ``greek/λ`` -> ``greek_u03bb``."""
    return "".join(
        c if c.isascii() and (c.isalnum() or c in "-_") else ("_" if c in "/ " else f"u{ord(c):04x}") for c in name
    )


def write_glyph_examples(
    folder: str | Path,
    *,
    classes: Sequence[str] | None = None,
    way: int = 5,
    shot: int = 5,
    query: int = 3,
    seed: int = 0,
    split: str = "test",
) -> tuple[list[tuple[str, list[Path]]], list[tuple[str, Path]]]:
    """Write a few-shot task from the offline glyph benchmark as PNG files.

    Args:
        folder: where the PNG files go (created).
        classes: glyph class names (e.g. ``"greek/alpha"``); default: ``way`` classes drawn with ``seed``.
        way: number of classes when ``classes`` is not given.
        shot: support images per class.
        query: held-out query images per class.
        seed: picks the classes (when not given) and the images.
        split: benchmark split.

    Returns:
        ``([(class name, [support PNGs]), ...], [(true class name, query PNG), ...])``.
    """
    from ..data import load_split

    data = load_split("glyphs", split)
    rng = seeds.space_examples_rng(seed)
    if classes:
        unknown = [c for c in classes if c not in data.class_names]
        if unknown:
            raise ImageInputError(f"unknown glyph classes {unknown}; pick from the {split} split's classes")
        chosen = [data.class_names.index(c) for c in classes]
    else:
        chosen = sorted(rng.choice(data.num_classes, size=min(way, data.num_classes), replace=False).tolist())
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    support: list[tuple[str, list[Path]]] = []
    queries: list[tuple[str, Path]] = []
    for c in chosen:
        name = data.class_names[c]
        idx = data.indices_of(c).numpy()
        picked = rng.choice(len(idx), size=min(shot + query, len(idx)), replace=False)
        files = []
        for i in idx[picked]:
            array = data.images[int(i)].permute(1, 2, 0).numpy()
            path = folder / f"{_file_stem(name)}_{int(i)}.png"
            if not path.exists():
                with atomic_path(path) as tmp:
                    Image.fromarray(array).save(tmp, format="PNG")
            files.append(path)
        support.append((name, files[:shot]))
        queries += [(name, p) for p in files[shot:]]
    return support, queries
