"""Few-shot adaptation and prediction on people's own images: the library side of the Space.

The Gradio Space (``spaces_app/app.py``) and ``tgr-hub demo`` are thin layers over this
module, which does not import Gradio. It turns uploaded files into image tensors with
strict, explained validation, builds a few-shot task from named classes, adapts the
meta-model to it (prototypes for ProtoNet, a few fine-tuning steps for MAML) and returns
per-class probabilities for query images.

    app_model = load_app_model("me/my-meta-model")          # or a local meta-model folder
    session = FewShotSession.for_app_model(app_model)
    session.define_classes({"cat": ["cat1.jpg", "cat2.png"], "dog": ["dog1.jpg"]})
    session.adapt()
    session.classify(["query.jpg"])
    # -> [{"image": "query.jpg", "label": "cat", "confidence": 0.93, "probabilities": {"cat": 0.93, "dog": 0.07}}]

Every problem with the input raises :class:`~tgr_hub.errors.ImageInputError` with a message
that names the class or file at fault and says how to fix it; the app shows that message
as is, so nothing here may leak a traceback or an internal detail to the user.
"""

from __future__ import annotations

import copy
import io
import logging
import os
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor, nn

from .errors import ImageInputError, RepoIdError, RunFolderError
from .io import atomic_path
from .learners import BNMode
from .repo_id import parse_repo_ref
from .run_record import MemberRecord, RunRecord

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_LIMITS",
    "AppModel",
    "FewShotSession",
    "ImageSource",
    "InputLimits",
    "calibrate_batchnorm",
    "classify_episode",
    "group_by_label",
    "load_app_model",
    "load_image",
    "load_images",
    "model_summary_markdown",
    "parse_labels",
    "write_glyph_examples",
]

#: What an image can be given as: a file path, raw file bytes, a PIL image, or an
#: ``[H, W]`` / ``[H, W, C]`` uint8 array.
ImageSource = Union[str, os.PathLike, bytes, bytearray, Image.Image, np.ndarray]  # noqa: UP007 (runtime alias)

ProgressCallback = Callable[[int, int, str], None]
"""``progress_cb(done, total, description)``, called as adaptation advances."""

#: BatchNorm statistics of a session: the learners' modes (:data:`tgr_hub.learners.BNMode`), or
#: ``"support"``: running statistics re-estimated on the support images first.
SessionBNMode = Union[Literal["support"], BNMode]  # noqa: UP007 (runtime alias)


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


# --- images ------------------------------------------------------------------------------------


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
                f"{name}: file is too large ({size / 2**20:.1f} MB; the limit is "
                f"{limits.max_file_bytes // 2**20} MB)", hint="downscale or compress it first")
        data = path.read_bytes()
    elif isinstance(source, (Image.Image, np.ndarray)):
        return source
    else:
        raise ImageInputError(f"{name}: unsupported input of type {type(source).__name__}; "
                              "give a file path or image bytes")
    if len(data) == 0:
        raise ImageInputError(f"{name}: file is empty, not an image")
    if len(data) > limits.max_file_bytes:
        raise ImageInputError(
            f"{name}: file is too large ({len(data) / 2**20:.1f} MB; the limit is {limits.max_file_bytes // 2**20} MB)",
            hint="downscale or compress it first")
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
                f"{name}: image is far too large (more than {Image.MAX_IMAGE_PIXELS * 2 / 1e6:.0f} megapixels; "
                f"the limit is {limits.max_pixels / 1e6:g} MP)", hint="downscale it first") from None
        except UnidentifiedImageError:
            raise ImageInputError(
                f"{name}: not an image (the file format is not recognised)",
                hint="upload PNG, JPEG, GIF, BMP, TIFF or WebP images") from None
        except (OSError, ValueError, SyntaxError) as error:  # PIL plugins raise all of these on garbage
            raise ImageInputError(f"{name}: corrupt image ({error})", hint="re-export or re-download it") from None
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ImageInputError(
            f"{name}: image is too large ({width}x{height} = {width * height / 1e6:.1f} megapixels; the limit is "
            f"{limits.max_pixels / 1e6:g} MP)", hint="downscale it first")
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
        raise ImageInputError(f"{name}: decoded to an unexpected shape {array.shape}",
                              hint="re-export it as an RGB PNG or JPEG")
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


# --- classes and labels ----------------------------------------------------------------------


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
            f"the limit is {limits.max_name_length})")
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
        raise ImageInputError(f"no labels given for the {len(images)} support images: give one label per image, "
                              "comma- or newline-separated")
    if len(labels) != len(images):
        raise ImageInputError(f"{len(labels)} labels given for {len(images)} support images: give exactly one label "
                              "per image, in the same order, comma- or newline-separated")
    groups: dict[str, tuple[str, list[ImageSource]]] = {}
    for i, (image, label) in enumerate(zip(images, labels)):
        if not label.strip():
            raise ImageInputError(f"support image {i + 1} ({_source_name(image, i)}) has an empty label: "
                                  "give it a class name")
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
            f"no classes defined: define at least {limits.min_classes} classes, each with a name and one or more "
            "images")
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
            raise ImageInputError(f"duplicate class name {name!r} (classes {seen[key]} and {position}): "
                                  "give each class a different name")
        seen[key] = position
        images = [images] if isinstance(images, (str, os.PathLike, bytes, bytearray)) else list(images or [])
        if not images:
            raise ImageInputError(f"class {name!r} has no images: add at least one image to it, or remove it")
        if len(images) > limits.max_images_per_class:
            raise ImageInputError(f"class {name!r} has {len(images)} images; the limit is "
                                  f"{limits.max_images_per_class} per class")
        cleaned.append((name, images))
    if len(cleaned) < limits.min_classes:
        raise ImageInputError(f"only one class ({cleaned[0][0]!r}): define at least {limits.min_classes} classes "
                              "to tell apart")
    if len(cleaned) > limits.max_classes:
        raise ImageInputError(f"too many classes: {len(cleaned)} defined, the limit is {limits.max_classes}")
    total = sum(len(images) for _, images in cleaned)
    if total > limits.max_support_images:
        raise ImageInputError(f"too many support images: {total} in all, the limit is {limits.max_support_images}")
    return cleaned


# --- adaptation ---------------------------------------------------------------------------------


def calibrate_batchnorm(model: nn.Module, images: Tensor) -> nn.Module:
    """A copy of ``model`` whose BatchNorm running statistics are those of ``images``.

    Why: the meta-model may have been trained on pseudo-data (model inversion) whose
    statistics differ from people's photos, and transductive batch statistics make a
    prediction depend on which other query images were sent with it. Normalising with the
    support set's statistics adapts BatchNorm to the task while classifying each query on
    its own.

    Args:
        model: the meta-model (not modified).
        images: ``[S, 3, H, W]`` support images in ``[0, 1]``.

    Returns:
        The calibrated copy, in eval mode, with no parameter requiring grad.
    """
    calibrated = copy.deepcopy(model)
    calibrated.eval()
    norms = [m for m in calibrated.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        if m.track_running_stats:
            m.reset_running_stats()
            m.momentum = None  # cumulative average: after one batch the statistics are that batch's
            m.train()
    if norms:
        with torch.no_grad():
            calibrated(images)
    calibrated.eval()
    for p in calibrated.parameters():
        p.requires_grad_(False)
    return calibrated


class FewShotSession:
    """One person's few-shot task: classes, then adaptation, then classification.

    Args:
        model: the meta-model (:class:`~tgr_hub.metamodel.MetaModel`: ``[B, 3, H, W]`` in
            ``[0, 1]`` to ``[B, D]`` features). It is never modified.
        learner: ``"protonet"`` (prototypes) or ``"maml"`` / ``"finetune"`` (fine-tuning).
        inner_steps: fine-tuning steps for MAML.
        inner_lr: fine-tuning step size for MAML.
        bn: BatchNorm statistics at adaptation and prediction: ``"support"`` (default:
            statistics of the support set, see :func:`calibrate_batchnorm`), ``"running"``
            (the model's stored statistics) or ``"batch"`` (transductive batch statistics).
        limits: input limits.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        learner: str = "protonet",
        inner_steps: int = 10,
        inner_lr: float = 0.01,
        bn: SessionBNMode = "support",
        limits: InputLimits = DEFAULT_LIMITS,
    ) -> None:
        from .learners import make_learner  # deferred: keeps this module importable on its own

        if bn not in ("support", "running", "batch"):
            raise ValueError(f"bn must be support, running or batch, got {bn!r}")
        self.model = model
        self.learner_name = learner.lower()
        self.bn = bn
        self.limits = limits
        learner_bn = "batch" if bn == "batch" else "running"
        kwargs: dict[str, Any] = {"bn": learner_bn}
        if self.learner_name != "protonet":
            kwargs.update(inner_steps=inner_steps, inner_lr=inner_lr, first_order=True)
        self.learner = make_learner(self.learner_name, **kwargs)
        self.class_names: list[str] = []
        self.notes: list[str] = []
        self._support_x: Tensor | None = None
        self._support_y: Tensor | None = None
        self._adapted: Any = None

    @classmethod
    def for_app_model(cls, app_model: AppModel, **kwargs: Any) -> FewShotSession:
        """A session with the learner and fine-tuning settings recorded with the model."""
        options = {"learner": app_model.learner, "inner_steps": app_model.inner_steps, "inner_lr": app_model.inner_lr}
        options.update(kwargs)
        return cls(app_model.model, **options)

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` the model takes."""
        input_size = getattr(self.model, "input_size", (3, 32, 32))
        return int(input_size[-2]), int(input_size[-1])

    @property
    def adapted(self) -> bool:
        """Whether :meth:`adapt` ran for the current classes."""
        return self._adapted is not None

    def define_classes(
        self, classes: Mapping[str, Sequence[ImageSource]] | Sequence[tuple[str, Sequence[ImageSource]]]
    ) -> list[str]:
        """Set the task's classes and load their images (any earlier adaptation is dropped).

        Args:
            classes: ``{name: [images...]}`` or ``[(name, [images...]), ...]``, in display order.

        Returns:
            Notes on conversions made (e.g. ``"x.png: converted from RGBA to RGB ..."``).

        Raises:
            ImageInputError: no/one/too many classes, a nameless or image-less class, duplicate
                names, too many images, or an image that is not valid.
        """
        checked = _validate_classes(classes, self.limits)
        self._adapted = None
        notes: list[str] = []
        batches, labels = [], []
        for index, (name, images) in enumerate(checked):
            try:
                batches.append(load_images(images, size=self.image_size, limits=self.limits, what="image", notes=notes))
            except ImageInputError as error:
                raise ImageInputError(f"class {name!r}: {error}") from None
            labels += [index] * len(images)
        self.class_names = [name for name, _ in checked]
        self._support_x = torch.cat(batches)
        self._support_y = torch.tensor(labels, dtype=torch.long)
        self.notes = notes
        logger.info("defined %d classes with %d support images", len(checked), len(labels))
        return notes

    def adapt(self, progress_cb: ProgressCallback | None = None) -> None:
        """Adapt the meta-model to the defined classes.

        ProtoNet computes one prototype per class; MAML fine-tunes a copy of the weights
        and a new linear head for ``inner_steps`` steps, calling ``progress_cb`` after each.

        Raises:
            ImageInputError: no classes were defined.
        """
        if self._support_x is None or self._support_y is None:
            raise ImageInputError("no classes defined yet: define at least 2 classes, each with a name and images, "
                                  "before adapting")
        sx, sy = self._support_x, self._support_y
        if self.bn == "support":
            model = calibrate_batchnorm(self.model, sx)
        elif self.bn == "running" and self.learner_name != "protonet":
            model = copy.deepcopy(self.model).eval()  # the step-by-step fine-tuning runs the model in its mode
        else:
            model = self.model  # the learner sets (and restores) the modes itself
        if progress_cb is not None:
            progress_cb(0, self._total_steps(), "adapting")
        if self.learner_name == "protonet":
            self._adapted = self.learner.adapt(model, sx, sy)
        else:
            self._adapted = self._finetune(model, sx, sy, progress_cb)
        if progress_cb is not None:
            progress_cb(self._total_steps(), self._total_steps(), "adapted")
        logger.info("adapted with %s to %d classes", self.learner_name, len(self.class_names))

    def _total_steps(self) -> int:
        return 1 if self.learner_name == "protonet" else max(1, self.learner.inner_steps)

    def _finetune(self, model: nn.Module, sx: Tensor, sy: Tensor, progress_cb: ProgressCallback | None) -> Any:
        """MAML adaptation (first order) step by step, so that progress can be shown."""
        from .learners import FinetunedClassifier, MAML

        learner: MAML = self.learner
        if self.bn == "batch":  # the learner's own loop handles transductive statistics
            return learner.adapt(model, sx, sy)
        start = {k: p.detach().clone().requires_grad_(True) for k, p in model.named_parameters()}
        fast = learner.clone(model, len(self.class_names), start)
        steps = learner.inner_steps
        with torch.enable_grad():
            for step in range(steps):
                fast = learner.adapt_step(model, fast, sx, sy, create_graph=False)
                fast = {k: v.detach().requires_grad_(True) for k, v in fast.items()}
                if progress_cb is not None:
                    progress_cb(step + 1, steps, f"fine-tuning step {step + 1}/{steps}")
        return FinetunedClassifier(model, {k: v.detach() for k, v in fast.items()}, "running")

    def predict_proba(self, images: Tensor) -> Tensor:
        """``[Q, 3, H, W]`` in ``[0, 1]`` to ``[Q, way]`` probabilities (after :meth:`adapt`)."""
        if self._adapted is None:
            raise ImageInputError("the model is not adapted yet: define the classes and adapt before classifying")
        return self._adapted.predict_proba(images)

    def classify(self, images: Sequence[ImageSource], *, notes: list[str] | None = None) -> list[dict[str, Any]]:
        """Classify query images.

        Args:
            images: file paths, bytes, PIL images or arrays.
            notes: conversion notes are appended here.

        Returns:
            One dict per image: ``{"image": name, "label": best class, "confidence": its
            probability, "probabilities": {class: probability}}`` (classes by decreasing
            probability).

        Raises:
            ImageInputError: not adapted yet, no/too many images, or an invalid image.
        """
        if self._adapted is None:
            raise ImageInputError("the model is not adapted yet: define the classes and adapt before classifying")
        images = list(images or [])
        if not images:
            raise ImageInputError("no query images given: upload at least one image to classify")
        query = load_images(images, size=self.image_size, limits=self.limits, what="query image",
                            max_count=self.limits.max_query_images, notes=notes)
        probabilities = self.predict_proba(query)
        names = _unique_names([_source_name(s, i) for i, s in enumerate(images)])
        return [self._result(name, row) for name, row in zip(names, probabilities)]

    def _result(self, image_name: str, row: Tensor) -> dict[str, Any]:
        order = torch.argsort(row, descending=True).tolist()
        probabilities = {self.class_names[c]: round(float(row[c]), 6) for c in order}
        best = order[0]
        return {"image": image_name, "label": self.class_names[best], "confidence": round(float(row[best]), 6),
                "probabilities": probabilities}


def classify_episode(
    model: nn.Module,
    support_images: Sequence[ImageSource],
    support_labels: str | Sequence[str],
    query_images: Sequence[ImageSource],
    **session_kwargs: Any,
) -> dict[str, Any]:
    """Adapt to labelled support images and classify query images in one call (the API).

    Args:
        model: the meta-model.
        support_images: the support images.
        support_labels: one label per support image (list, or text split by :func:`parse_labels`).
        query_images: images to classify.
        **session_kwargs: :class:`FewShotSession` options (learner, inner_steps, bn, limits...).

    Returns:
        ``{"classes": [names...], "predictions": [per-image dicts as in
        FewShotSession.classify], "notes": [conversion notes]}``.
    """
    limits = session_kwargs.get("limits", DEFAULT_LIMITS)
    labels = parse_labels(support_labels)
    classes = group_by_label(support_images, labels)
    session = FewShotSession(model, **session_kwargs)
    notes = session.define_classes(classes)
    # Check the queries before the (possibly slow) adaptation.
    query = list(query_images or [])
    if not query:
        raise ImageInputError("no query images given: upload at least one image to classify")
    if len(query) > limits.max_query_images:
        raise ImageInputError(f"too many query images: {len(query)} given, the limit is {limits.max_query_images}")
    session.adapt()
    predictions = session.classify(query, notes=notes)
    return {"classes": session.class_names, "predictions": predictions, "notes": notes}


# --- the model and its description -----------------------------------------------------------------


@dataclass
class AppModel:
    """A meta-model loaded for the app, with what the app shows about it.

    Attributes:
        model_id: what the user gave (Hub id or folder).
        model: the meta-model, eval mode.
        folder: local folder holding its files.
        tgr_config: contents of ``tgr_config.json`` (empty if absent).
        learner: adaptation method (``"protonet"`` or ``"maml"``).
        inner_steps: fine-tuning steps (MAML).
        inner_lr: fine-tuning step size (MAML).
        card_url: the model card's address (Hub ids) or ``None``.
        heatmap: path of the dissimilarity heatmap figure, if present.
    """

    model_id: str
    model: nn.Module
    folder: Path
    tgr_config: dict[str, Any] = field(default_factory=dict)
    learner: str = "protonet"
    inner_steps: int = 10
    inner_lr: float = 0.01
    card_url: str | None = None
    heatmap: Path | None = None


def _resolve_folder(model_id: str, revision: str | None) -> tuple[Path, str | None]:
    """A local folder for ``model_id``, and the Hub repo id when it was downloaded from the Hub."""
    path = Path(model_id).expanduser()
    if path.is_dir():
        return path, None
    looks_local = model_id.startswith((".", "/", "~")) or (str(path.parent) not in ("", ".") and path.parent.is_dir())
    if looks_local:
        raise RunFolderError(f"meta-model folder {model_id} does not exist",
                             hint="pass a meta-model folder, a run folder, or a Hub repo id (owner/name)")
    from . import hub  # the one place that talks to the Hub (HF_HUB_OFFLINE, HF_ENDPOINT, HF_TOKEN, pinning)

    try:
        ref = parse_repo_ref(model_id)
    except RepoIdError:
        raise RunFolderError(f"meta-model {model_id!r} is neither a local folder nor a Hub id (owner/name)",
                             hint="set TGR_MODEL_ID to a meta-model folder or a Hub repo id") from None
    return Path(hub.download_meta_model(ref.repo_id, revision or ref.revision)), ref.repo_id


def load_app_model(model_id: str, *, revision: str | None = None) -> AppModel:
    """Load the meta-model named by ``model_id`` (local folder or Hub id) for the app.

    Args:
        model_id: a meta-model folder (timm layout + ``tgr_config.json``) or a Hub repo id
            (``owner/name``, optionally ``@revision``).
        revision: Hub revision (branch, tag or commit).

    Returns:
        The :class:`AppModel`.
    """
    from .metamodel import load_meta_model

    if not model_id or not str(model_id).strip():
        raise RunFolderError("no meta-model given", hint="set TGR_MODEL_ID to a meta-model folder or a Hub repo id")
    model_id = str(model_id).strip()
    folder, repo_id = _resolve_folder(model_id, revision)
    model = load_meta_model(folder)
    model.eval()
    tgr_config: dict[str, Any] = dict(getattr(model, "tgr_config", None) or {})
    record = RunRecord.from_dict(tgr_config)
    learner = str(record.setting("train.learner", "protonet")).lower()
    method = str(record.setting("eval.method", "auto")).lower()
    if method in ("protonet", "finetune"):
        learner = "protonet" if method == "protonet" else "maml"
    if learner != "protonet":
        learner = "maml"  # maml, fomaml, maml2, finetune: all adapt by fine-tuning
    inner_steps = int(record.setting("eval.inner_steps", 10))
    inner_lr = float(record.setting("eval.inner_lr", 0.01))
    card_url = None
    if repo_id is not None:
        from .hub import hub_endpoint

        card_url = f"{hub_endpoint()}/{repo_id}"
        # hub.download_meta_model fetched the figures into the snapshot, at the weights' commit
        heatmap = folder / "dissimilarity.png" if (folder / "dissimilarity.png").is_file() else None
    else:
        places = [folder, folder / "figures"] + ([folder.parent] if folder.name == "meta_model" else [])  # run layout
        heatmap = next((p / "dissimilarity.png" for p in places if (p / "dissimilarity.png").is_file()), None)
    logger.info("loaded meta-model %s (%s adaptation)", model_id, learner)
    return AppModel(model_id=model_id, model=model, folder=folder, tgr_config=tgr_config, learner=learner,
                    inner_steps=inner_steps, inner_lr=inner_lr, card_url=card_url, heatmap=heatmap)


def _percent(value: Any) -> str:
    return f"{value * 100:.2f}%" if isinstance(value, (int, float)) and value <= 1.0 else str(value)


def _metric_lines(metrics: Mapping[str, Any]) -> list[str]:
    """Markdown bullets for the metrics recorded in tgr_config.json (test episodes first)."""
    lines = []
    test = metrics.get("test") if isinstance(metrics.get("test"), Mapping) else None
    for key, value in (test or {}).items():
        if isinstance(value, Mapping) and isinstance(value.get("mean"), (int, float)):
            way, shot, episodes = value.get("way"), value.get("shot"), value.get("episodes")
            what = f"{way}-way {shot}-shot" if way and shot else str(key)
            ci = value.get("ci95")
            text = f"- {what}: **{_percent(value['mean'])}**"
            if isinstance(ci, (int, float)):
                text += f" ± {ci * 100:.2f}"
            lines.append(text + (f" ({episodes} test episodes)" if episodes else ""))
    for key, value in metrics.items():
        if key == "test" and lines:
            continue
        if isinstance(value, Mapping):
            parts = [f"{k} {_percent(v['mean']) if isinstance(v, Mapping) and 'mean' in v else _percent(v)}"
                     for k, v in value.items() if isinstance(v, (int, float, Mapping)) and k != "best_step"]
            if parts:
                lines.append(f"- {key}: " + ", ".join(parts))
        elif isinstance(value, (int, float)):
            lines.append(f"- {key}: {_percent(value)}")
    return lines


def _member_name(member: MemberRecord, index: int) -> str:
    name = member.name or f"t{index:02d}"
    source = member.source
    if member.revision and "@" not in source:
        source = f"{source}@{str(member.revision)[:12]}"
    extra = ", ".join(str(x) for x in (source, member.architecture) if x)
    return f"{name} ({extra})" if extra else name


def model_summary_markdown(app_model: AppModel) -> str:
    """Markdown describing the model: architecture, adaptation, pool, groups, accuracy, card link."""
    model = app_model.model
    config = app_model.tgr_config
    arch = getattr(model, "architecture", type(model).__name__)
    input_size = tuple(getattr(model, "input_size", ()))
    lines = [f"**Meta-model:** `{app_model.model_id}`  ", f"**Backbone:** `{arch}`"
             + (f", input {input_size[-2]}x{input_size[-1]}" if len(input_size) == 3 else "")
             + (f", {model.feature_dim}-d features" if hasattr(model, "feature_dim") else "") + "  "]
    if app_model.learner == "protonet":
        lines.append("**Adaptation:** ProtoNet (class prototypes in feature space)  ")
    else:
        lines.append(f"**Adaptation:** MAML fine-tuning ({app_model.inner_steps} steps, lr {app_model.inner_lr:g})  ")
    record = RunRecord.from_dict(config)
    members = record.pool_members
    if members:
        lines += ["", f"**Teacher pool** ({len(members)} models, no training data used):", ""]
        lines += [f"- {_member_name(m, i)}" for i, m in enumerate(members)]
    if record.groups:
        lines += ["", f"**Task groups** ({len(record.groups)}, from the Fisher dissimilarity of the teachers):", ""]
        lines += [f"- G{g}: " + ", ".join(group) for g, group in enumerate(record.groups)]
    metric_lines = _metric_lines(record.metrics)
    if metric_lines:
        lines += ["", "**Few-shot accuracy** (mean ± 95% confidence interval):", "", *metric_lines]
    else:
        lines += ["", "_No few-shot accuracy recorded with this model._"]
    if app_model.card_url:
        lines += ["", f"[Model card]({app_model.card_url})"]
    return "\n".join(lines)


# --- built-in examples ---------------------------------------------------------------------------


def _file_stem(name: str) -> str:
    """A portable file name for a class name: ``greek/λ`` -> ``greek_u03bb``."""
    return "".join(c if c.isascii() and (c.isalnum() or c in "-_") else ("_" if c in "/ " else f"u{ord(c):04x}")
                   for c in name)


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
    from .data import load_split

    data = load_split("glyphs", split)
    rng = np.random.default_rng(seed)
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
