"""The built-in offline few-shot benchmark: glyphs rendered from matplotlib's fonts.

Like Omniglot, but built on the spot with no network: every class is one character
(``latin/A``, ``greek/λ``, ``cyrillic/Ж``, ``symbols/⇒``), every instance is that
character drawn in one of the fonts that install with matplotlib (DejaVu Sans/Serif/Mono,
STIX General and Computer Modern, in several weights and slants) under a seeded
augmentation (scale, rotation, shear, placement, stroke width, blur, ink/paper colour).

Guarantees:

* only characters a font really has a glyph for are drawn with it (cmap lookup with
  fontTools, a non-empty outline, and a rendering different from the font's ``.notdef``
  box) - no tofu;
* glyphs are scale-normalised (the longest side fills a fixed part of the canvas), so a
  class is its shape; of two characters with the same shape in most fonts (``o``/``O``,
  ``⇢``/``→``) only the first is a class, and a character is not drawn in the fonts where
  it looks like an earlier class (``l`` is not drawn where it is an ``I``);
* meta-train / meta-val / meta-test are class-disjoint within each domain (60/20/20);
* the whole build is a deterministic function of ``(seed, image_size, instances)`` and
  the installed fonts, and is cached: ``build_glyphs`` writes a tensor cache (safetensors,
  what :func:`load_glyph_split` reads) and a ``datasets`` ``save_to_disk`` DatasetDict
  (``train``/``validation``/``test`` with ``image``, ``label``, ``domain`` columns).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import unicodedata
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from .. import seeds
from ..errors import DatasetError
from ..io import write_text_atomic
from .episodes import SPLIT_NAMES, ImageSplit, normalize_split, split_classes

logger = logging.getLogger(__name__)

#: Bump when the rendering, the character lists or the cache layout change.
GLYPH_VERSION = 2
#: The visual domains of the benchmark.
GLYPH_DOMAINS: tuple[str, ...] = ("latin", "greek", "cyrillic", "symbols")
#: Instances (font x augmentation) per class.
DEFAULT_INSTANCES = 30
#: Fewest fonts a character must be drawable in to become a class.
MIN_FONTS = 3
#: Look-alike test (see :func:`choose_glyphs`): resolution and tolerance (pixels) of the
#: shape comparison, and the thresholds on the part of a glyph the other does not come near,
#: in the closest shared font and in the median shared font.
SHAPE_RES = 64
SHAPE_TOLERANCE = 2.5
SHAPE_FONT_SIZE = 64
FONT_DUP = 0.01
DUP_MEDIAN = 0.03
#: Glyphs whose ink is smaller than this fraction of the em (dots, commas) are skipped:
#: scale normalisation would blow them up into blobs.
MIN_INK_EM = 0.3
#: Longest side of a glyph, as a fraction of the canvas, before scale jitter.
GLYPH_FILL = 0.68

_ALNUM = frozenset(map(ord, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"))
_LETTERS = frozenset(map(ord, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"))

# (file in matplotlib's fonts/ttf, allowed codepoints or None for "whatever the cmap has").
# The Computer Modern (BaKoMa) fonts use TeX encodings outside ASCII letters/digits, so
# only those are trusted; cmmi10's digits are old-style (a small 0 is an o), so letters only.
# cmsy10/cmex10 (symbol encodings), STIXNonUni (private use), STIXSiz* (big operators),
# the Display fonts (a handful of glyphs) and LastResort (placeholder boxes) are not used.
_FONTS: tuple[tuple[str, frozenset[int] | None], ...] = (
    ("DejaVuSans.ttf", None),
    ("DejaVuSans-Bold.ttf", None),
    ("DejaVuSans-Oblique.ttf", None),
    ("DejaVuSans-BoldOblique.ttf", None),
    ("DejaVuSansMono.ttf", None),
    ("DejaVuSansMono-Bold.ttf", None),
    ("DejaVuSansMono-Oblique.ttf", None),
    ("DejaVuSansMono-BoldOblique.ttf", None),
    ("DejaVuSerif.ttf", None),
    ("DejaVuSerif-Bold.ttf", None),
    ("DejaVuSerif-Italic.ttf", None),
    ("DejaVuSerif-BoldItalic.ttf", None),
    ("STIXGeneral.ttf", None),
    ("STIXGeneralBol.ttf", None),
    ("STIXGeneralItalic.ttf", None),
    ("STIXGeneralBolIta.ttf", None),
    ("cmr10.ttf", _ALNUM),
    ("cmb10.ttf", _ALNUM),
    ("cmss10.ttf", _ALNUM),
    ("cmtt10.ttf", _ALNUM),
    ("cmti10.ttf", _ALNUM),
    ("cmmi10.ttf", _LETTERS),
)


def _chars(*parts: str | tuple[int, int]) -> list[int]:
    out: list[int] = []
    for part in parts:
        if isinstance(part, tuple):
            out.extend(range(part[0], part[1] + 1))
        else:
            out.extend(map(ord, part))
    return list(dict.fromkeys(out))  # de-duplicated, order kept


# Candidate characters per domain, in priority order (the first of two look-alikes is kept).
_CANDIDATES: dict[str, list[int]] = {
    "latin": _chars(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz", "0123456789", "ßÆæŒœØøÞþÐðĦħŁłŊŋƏəƩʃƷʒƐɛƆɔ"
    ),
    "greek": _chars((0x391, 0x3A1), (0x3A3, 0x3A9), (0x3B1, 0x3C9), "ϑϕϖϰϱϵϜϝϞϟϠϡϚϛϘϙ"),
    "cyrillic": _chars((0x410, 0x44F), "ЂЄЅІЈЉЊЋЏђєѕіјљњћџ", "ҐґҒғҖҗҚқҢңҮүҰұҺһӘәӨөѢѣѲѳѴѵ"),
    "symbols": _chars((0x2190, 0x21FF), (0x2200, 0x22FF)),
}


@dataclass(frozen=True)
class GlyphClass:
    """One class of the benchmark: a character of a domain."""

    name: str  # "latin/A"
    domain: str
    codepoint: int
    fonts: tuple[str, ...]  # font files it is drawn in
    split: str  # "train" | "val" | "test"

    @property
    def char(self) -> str:
        return chr(self.codepoint)


# --- fonts -------------------------------------------------------------------------------


def font_dir() -> Path:
    """matplotlib's bundled TrueType folder."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def _available_fonts() -> list[tuple[str, frozenset[int] | None]]:
    folder = font_dir()
    fonts = [(name, allowed) for name, allowed in _FONTS if (folder / name).is_file()]
    missing = [name for name, _ in _FONTS if not (folder / name).is_file()]
    if missing:
        logger.warning("glyph fonts missing from %s: %s", folder, ", ".join(missing))
    if len(fonts) < MIN_FONTS:
        raise DatasetError(
            f"found only {len(fonts)} of the glyph benchmark's fonts in {folder}",
            hint="reinstall matplotlib, or use another dataset with --dataset",
        )
    return fonts


def _font_fingerprint(fonts: list[tuple[str, frozenset[int] | None]]) -> str:
    """Hash of the font files used: a different matplotlib may draw different glyphs."""
    return _fingerprint_of(tuple(name for name, _ in fonts))


@lru_cache(maxsize=4)
def _fingerprint_of(names: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for name in names:
        path = font_dir() / name
        digest.update(name.encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


@lru_cache(maxsize=256)
def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(font_dir() / name), size=size)


@lru_cache(maxsize=64)
def _cmap(name: str) -> dict[int, str]:
    from fontTools.ttLib import TTFont

    with TTFont(str(font_dir() / name), lazy=True) as ttf:
        return dict(ttf.getBestCmap() or {})


def _render_mask(name: str, codepoint: int, size: int) -> np.ndarray | None:
    """The glyph's ink, tightly cropped: ``[h, w]`` uint8, or None if it has no ink."""
    font = _font(name, size)
    text = chr(codepoint)
    left, top, right, bottom = font.getbbox(text)
    if right <= left or bottom <= top:
        return None
    pad = 2
    image = Image.new("L", (int(right - left + 2 * pad), int(bottom - top + 2 * pad)), 0)
    ImageDraw.Draw(image).text((pad - left, pad - top), text, font=font, fill=255)
    box = image.getbbox()
    if box is None:
        return None
    return np.asarray(image.crop(box))


@lru_cache(maxsize=64)
def _notdef_mask(name: str, size: int) -> bytes:
    """The font's .notdef rendering (drawn for a private-use codepoint no font maps)."""
    mask = _render_mask(name, 0x10FFFD, size)
    return b"" if mask is None else mask.tobytes() + bytes(str(mask.shape), "ascii")


def _glyph_mask(name: str, allowed: frozenset[int] | None, codepoint: int, size: int) -> np.ndarray | None:
    """The glyph's cropped ink if font ``name`` really draws ``codepoint``, else None (no tofu)."""
    if allowed is not None and codepoint not in allowed:
        return None
    glyph = _cmap(name).get(codepoint)
    if glyph is None or glyph == ".notdef":
        return None
    mask = _render_mask(name, codepoint, size)
    if mask is None:  # blank glyph (spaces, unfinished entries)
        return None
    if mask.tobytes() + bytes(str(mask.shape), "ascii") == _notdef_mask(name, size):
        return None
    return mask


# --- drawing -----------------------------------------------------------------------------


def _place(
    mask: np.ndarray,
    canvas: int,
    *,
    scale: float = 1.0,
    rotation: float = 0.0,
    shear: float = 0.0,
    offset: tuple[float, float] = (0.0, 0.0),
) -> Image.Image:
    """Draw a cropped glyph mask on a ``canvas``-sized square with an affine transform.

    The glyph's longest side becomes ``GLYPH_FILL * scale * canvas``; rotation (radians)
    and shear are about the glyph centre, then the centre moves to the canvas centre plus
    ``offset`` (fractions of the canvas).
    """
    h, w = mask.shape
    k = GLYPH_FILL * scale * canvas / max(h, w)
    cos, sin = np.cos(rotation), np.sin(rotation)
    forward = k * np.array([[cos, -sin], [sin, cos]]) @ np.array([[1.0, shear], [0.0, 1.0]])
    inverse = np.linalg.inv(forward)
    centre_out = np.array([canvas / 2 + offset[0] * canvas, canvas / 2 + offset[1] * canvas])
    centre_in = np.array([w / 2, h / 2])
    # PIL maps each output pixel to an input pixel: in = inverse @ (out - centre_out) + centre_in
    shift = centre_in - inverse @ centre_out
    coeffs = (inverse[0, 0], inverse[0, 1], shift[0], inverse[1, 0], inverse[1, 1], shift[1])
    return Image.fromarray(mask).transform(
        (canvas, canvas), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR
    )


def _supersample(image_size: int) -> int:
    """Drawing resolution factor: fine strokes for small images, bounded cost for big ones."""
    return max(1, min(4, 128 // image_size))


def _font_size(image_size: int) -> int:
    return max(24, int(round(image_size * _supersample(image_size) * 0.75)))


def _augment(mask: np.ndarray, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw a cropped glyph mask as one augmented ``[S, S, 3]`` uint8 RGB instance."""
    factor = _supersample(image_size)
    canvas = image_size * factor
    placed = _place(
        mask,
        canvas,
        scale=float(rng.uniform(0.8, 1.05)),
        rotation=float(np.deg2rad(rng.uniform(-12.0, 12.0))),
        shear=float(rng.uniform(-0.2, 0.2)),
        offset=(float(rng.uniform(-0.07, 0.07)), float(rng.uniform(-0.07, 0.07))),
    )
    # stroke width, in 1/128 of the canvas: thin a little, or thicken up to ~1/2 px at 32x32
    # (more turns bold fonts' intricate symbols into blobs)
    stroke = int(rng.choice([-1, 0, 0, 1, 1, 2]))
    radius = max(1, int(round(abs(stroke) * canvas / 128))) if stroke else 0
    if stroke:
        from scipy import ndimage

        # square min/max filters are separable in scipy: far cheaper than PIL's rank filter
        morph = ndimage.minimum_filter if stroke < 0 else ndimage.maximum_filter
        placed = Image.fromarray(morph(np.asarray(placed), size=2 * radius + 1))
    if factor > 1:
        placed = placed.reduce(factor)  # box filter: anti-aliased downsampling
    if rng.random() < 0.5:
        placed = placed.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.2, 0.8)) * image_size / 32))
    ink = np.asarray(placed, dtype=np.float32)[..., None] / 255.0
    paper = rng.uniform(0.75, 1.0, size=3).astype(np.float32)  # light, slightly tinted paper
    pen = rng.uniform(0.0, 0.35, size=3).astype(np.float32)  # dark, slightly tinted ink
    rgb = paper + (pen - paper) * ink
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def _shapes(masks: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Thickness-tolerant shapes of un-augmented glyphs, for finding look-alikes.

    Args:
        masks: cropped glyph masks (any sizes).

    Returns:
        ``(ink, far)``: ``[n, R*R]`` float32 each, ``R = SHAPE_RES``. ``ink`` is the
        binarised, scale-normalised glyph; ``far`` marks pixels farther than
        ``SHAPE_TOLERANCE`` from any ink. ``ink_a @ far_b / ink_a.sum()`` is the part of
        glyph a that glyph b does not come near: 0 for the same shape in another stroke width.
    """
    from scipy import ndimage

    ink = np.stack([np.asarray(_place(m, SHAPE_RES)) >= 128 for m in masks])  # [n, R, R]
    r = int(np.floor(SHAPE_TOLERANCE))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disk = (yy**2 + xx**2 <= SHAPE_TOLERANCE**2)[None]  # dilate each image, not across the batch
    far = ~ndimage.binary_dilation(ink, structure=disk)
    n = len(masks)
    return ink.reshape(n, -1).astype(np.float32), far.reshape(n, -1).astype(np.float32)


def _pair_distances(inks: np.ndarray, fars: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Per-font look-alike distances of the candidates of one domain.

    Args:
        inks, fars: ``[F, C, R*R]`` from :func:`_shapes` (zeros where absent).
        present: ``[F, C]`` bool, font f draws candidate c.

    Returns:
        ``[F, C, C]``: ``max(part of a far from b, part of b far from a)`` in font f, NaN
        where f lacks a or b.
    """
    distance = np.full((present.shape[0], present.shape[1], present.shape[1]), np.nan, dtype=np.float32)
    for f in range(present.shape[0]):
        idx = np.nonzero(present[f])[0]
        if len(idx) == 0:
            continue
        ink, far = torch.from_numpy(inks[f, idx]), torch.from_numpy(fars[f, idx])
        part = (ink @ far.T) / ink.sum(1, keepdim=True).clamp_min(1.0)  # [c, c]: part of a far from b
        distance[f, idx[:, None], idx[None, :]] = torch.maximum(part, part.T).numpy()
    return distance


# --- choosing the classes ----------------------------------------------------------------


def select_classes(seed: int = 0, *, cache_dir: str | os.PathLike | None = None) -> list[GlyphClass]:
    """The classes of the benchmark, with their fonts and split.

    The choice of characters and fonts (:func:`choose_glyphs`) does not depend on the
    seed and is cached in ``cache_dir`` for the installed fonts; the classes of each domain
    are then split 60/20/20 into train/val/test by :func:`~tgr_hub.data.episodes.split_classes`,
    seeded with ``(seed, domain index)``.

    Args:
        seed: seeds the class split.
        cache_dir: cache root (default :func:`default_cache_root`).

    Returns:
        The classes, domain by domain, in candidate order.
    """
    chosen = _cached_choice(cache_dir)
    classes: list[GlyphClass] = []
    for domain_index, domain in enumerate(GLYPH_DOMAINS):
        members = [(codepoint, fonts) for d, codepoint, fonts in chosen if d == domain]
        assignment = split_classes(len(members), seed=_domain_seed(seed, domain_index))
        split_of = {position: split for split, positions in assignment.items() for position in positions}
        for position, (codepoint, fonts) in enumerate(members):
            classes.append(
                GlyphClass(
                    name=f"{domain}/{chr(codepoint)}",
                    domain=domain,
                    codepoint=codepoint,
                    fonts=tuple(fonts),
                    split=split_of[position],
                )
            )
    return classes


def choice_cache_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where :func:`select_classes` caches :func:`choose_glyphs` for the installed fonts."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
    return root / f"glyph-choice-v{GLYPH_VERSION}-{_font_fingerprint(_available_fonts())}.json"


def _cached_choice(cache_dir: str | os.PathLike | None) -> list[tuple[str, int, tuple[str, ...]]]:
    path = choice_cache_path(cache_dir)
    root = path.parent
    try:
        return [(d, int(c), tuple(f)) for d, c, f in json.loads(path.read_text(encoding="utf-8"))]
    except (OSError, ValueError, TypeError):
        pass
    chosen = choose_glyphs()
    try:
        root.mkdir(parents=True, exist_ok=True)
        # atomic: readers see the old file or the whole new one
        write_text_atomic(path, json.dumps([[d, c, list(f)] for d, c, f in chosen]))
    except OSError as error:  # a read-only cache only costs time
        logger.warning("could not cache the glyph choice in %s: %s", root, error)
    return chosen


def choose_glyphs() -> list[tuple[str, int, tuple[str, ...]]]:
    """Choose the characters of each domain, and the fonts each is drawn in.

    Candidates are taken in order (uppercase before lowercase). Two glyphs are
    *look-alikes* in a font if, scale-normalised, all but ``FONT_DUP`` of each lies within
    ``SHAPE_TOLERANCE`` pixels (at ``SHAPE_RES``) of the other: stroke width does not
    count, structure does (``o``/``O`` are look-alikes, ``Н``/``И`` are not). A candidate

    * is dropped if its median distance to an earlier class over their shared fonts is
      at most ``DUP_MEDIAN`` (the same shape in most fonts);
    * otherwise loses the fonts in which it is a look-alike of an earlier class (``l`` is
      not drawn in the fonts where it is an ``I``), so no instance of one class is the
      glyph of another class in the same font;
    * and becomes a class if :data:`MIN_FONTS` fonts are left and its ink is not tiny.

    Returns:
        ``(domain, codepoint, fonts)`` for each class, domain by domain, in candidate order.
    """
    fonts = _available_fonts()
    font_names = [name for name, _ in fonts]
    size = SHAPE_FONT_SIZE
    chosen: list[tuple[str, int, tuple[str, ...]]] = []
    for domain in GLYPH_DOMAINS:
        candidates: list[int] = []
        masks: list[np.ndarray] = []
        where: list[tuple[int, int]] = []  # (font index, candidate index) of each mask
        for codepoint in _CANDIDATES[domain]:
            found = [(f, _glyph_mask(name, allowed, codepoint, size)) for f, (name, allowed) in enumerate(fonts)]
            drawn = [(f, m) for f, m in found if m is not None]
            if len(drawn) < MIN_FONTS or max(drawn[0][1].shape) < MIN_INK_EM * size:  # rare, or a dot
                continue
            for f, mask in drawn:
                masks.append(mask)
                where.append((f, len(candidates)))
            candidates.append(codepoint)
        ink, far = _shapes(masks)
        inks = np.zeros((len(fonts), len(candidates), ink.shape[1]), dtype=np.float32)
        fars = np.zeros_like(inks)
        present = np.zeros((len(fonts), len(candidates)), dtype=bool)
        for row, (f, c) in enumerate(where):
            inks[f, c], fars[f, c], present[f, c] = ink[row], far[row], True
        distance = _pair_distances(inks, fars, present)
        kept: list[int] = []  # candidate indices
        kept_fonts = np.zeros_like(present)  # [F, C]: fonts each kept class is drawn in
        for c, codepoint in enumerate(candidates):
            reason = ""
            own = present[:, c].copy()
            if kept:
                d = distance[:, c, kept]  # [F, K]
                shared = present[:, c, None] & kept_fonts[:, kept]
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN column: nothing shared
                    median = np.nanmedian(np.where(shared, d, np.nan), axis=0)
                twins = np.nonzero(median <= DUP_MEDIAN)[0]
                if len(twins):
                    reason = f"looks like {chr(candidates[kept[twins[0]]])}"
                own &= ~np.any(shared & (d <= FONT_DUP), axis=1)
            if not reason and own.sum() < MIN_FONTS:
                reason = f"only {int(own.sum())} fonts where it looks like no other class"
            if reason:
                logger.debug("%s: %s skipped (%s)", domain, chr(codepoint), reason)
            else:
                kept.append(c)
                kept_fonts[:, c] = own
        for c in kept:
            chosen.append((domain, candidates[c], tuple(font_names[f] for f in np.nonzero(kept_fonts[:, c])[0])))
    return chosen


def _domain_seed(seed: int, domain_index: int) -> int:
    return seeds.glyph_domain_seed(seed, domain_index)


# --- build and cache ---------------------------------------------------------------------


def default_cache_root() -> Path:
    """``$TGR_HUB_CACHE``, else ``$XDG_CACHE_HOME/tgr_hub``, else ``~/.cache/tgr_hub``."""
    if os.environ.get("TGR_HUB_CACHE"):
        return Path(os.environ["TGR_HUB_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "tgr_hub"


def glyph_cache_dir(
    seed: int = 0, image_size: int = 32, instances: int = DEFAULT_INSTANCES, cache_dir: str | os.PathLike | None = None
) -> Path:
    """Folder of one glyph build: ``<cache_dir>/glyphs-v<version>-seed<seed>-<size>px-<instances>x``."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
    return root / f"glyphs-v{GLYPH_VERSION}-seed{seed}-{image_size}px-{instances}x"


def _check_args(seed: int, image_size: int, instances: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DatasetError(f"glyph seed must be a non-negative integer, got {seed!r}")
    if image_size < 8 or image_size > 512:
        raise DatasetError(f"glyph image_size must be in 8..512, got {image_size}")
    if instances < 1:
        raise DatasetError(f"glyph instances per class must be >= 1, got {instances}")


def _render_all(
    classes: list[GlyphClass],
    seed: int,
    image_size: int,
    instances: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw every instance: ``([N, S, S, 3] uint8, [N] int64 class ids)``, class by class."""
    from ..progress import progress_bar

    images = np.empty((len(classes) * instances, image_size, image_size, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(len(classes), dtype=np.int64), instances)
    domain_index = {d: i for i, d in enumerate(GLYPH_DOMAINS)}
    row = 0
    for cls in progress_bar(classes, desc="rendering glyphs", unit="class", disable=None):
        # one stream per class, keyed by the character (not its position): stable classes keep their images
        rng = seeds.glyph_class_rng(seed, domain_index[cls.domain], cls.codepoint)
        first = int(rng.integers(len(cls.fonts)))
        masks: dict[str, np.ndarray] = {}
        for i in range(instances):
            font = cls.fonts[(first + i) % len(cls.fonts)]  # fonts in turn: every font is used
            if font not in masks:
                mask = _render_mask(font, cls.codepoint, _font_size(image_size))
                assert mask is not None, "classes are only drawn in fonts that have their glyph"
                masks[font] = mask
            images[row] = _augment(masks[font], image_size, rng)
            row += 1
    assert row == len(labels)
    return images, labels


def _write_hf(folder: Path, images: np.ndarray, labels: np.ndarray, classes: list[GlyphClass]) -> None:
    """Save a ``datasets`` DatasetDict (train/validation/test) of the build."""
    import datasets

    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=[c.name for c in classes]),
            "domain": datasets.Value("string"),
        }
    )
    split_of = np.array([SPLIT_NAMES.index(c.split) for c in classes])
    parts = {}
    for split_index, split in enumerate(SPLIT_NAMES):
        rows = np.nonzero(split_of[labels] == split_index)[0]
        parts["validation" if split == "val" else split] = datasets.Dataset.from_dict(
            {
                "image": [Image.fromarray(images[r]) for r in rows],
                "label": labels[rows].tolist(),
                "domain": [classes[int(labels[r])].domain for r in rows],
            },
            features=features,
        )
    datasets.DatasetDict(parts).save_to_disk(str(folder))


def build_glyphs(
    seed: int = 0,
    image_size: int = 32,
    *,
    instances: int = DEFAULT_INSTANCES,
    cache_dir: str | os.PathLike | None = None,
    with_hf: bool = True,
    force: bool = False,
) -> Path:
    """Build the benchmark once and cache it; return its folder.

    The folder holds ``meta.json`` (classes, fonts, splits), ``images.safetensors``
    (``images`` ``[N, 3, S, S]`` uint8, ``labels`` ``[N]`` int64 global class ids) and
    ``hf/`` (a ``datasets`` DatasetDict saved with ``save_to_disk``). Concurrent builders
    are safe: each builds in a private temporary folder and renames it into place.

    Args:
        seed: seeds the class split and the augmentations.
        image_size: side S of the square images.
        instances: instances per class.
        cache_dir: cache root (default :func:`default_cache_root`).
        with_hf: also write the ``datasets`` copy (a cache built without it is rebuilt when
            it is asked for).
        force: rebuild even if a valid cache exists.
    """
    _check_args(seed, image_size, instances)
    seed, image_size, instances = int(seed), int(image_size), int(instances)
    folder = glyph_cache_dir(seed, image_size, instances, cache_dir)
    fonts = _available_fonts()
    fingerprint = _font_fingerprint(fonts)
    if not force and _valid_cache(folder, fingerprint, need_hf=with_hf):
        return folder
    start = time.perf_counter()
    logger.info("building the glyph benchmark in %s (once)", folder)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    except OSError as error:
        raise DatasetError(
            f"cannot write the glyph benchmark cache in {folder.parent}: {error}",
            hint="set TGR_HUB_CACHE or data.cache_dir to a writable folder",
        ) from error
    shutil.rmtree(tmp)  # only probed: the folder is made again once the images exist
    classes = select_classes(seed, cache_dir=cache_dir)
    images, labels = _render_all(classes, seed, image_size, instances)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        from safetensors.torch import save_file

        save_file(
            {"images": torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), "labels": torch.from_numpy(labels)},
            str(tmp / "images.safetensors"),
        )
        if with_hf:
            _write_hf(tmp / "hf", images, labels, classes)
        meta = {
            "version": GLYPH_VERSION,
            "seed": seed,
            "image_size": image_size,
            "instances": instances,
            "font_fingerprint": fingerprint,
            "domains": list(GLYPH_DOMAINS),
            "has_hf": with_hf,
            "build_seconds": round(time.perf_counter() - start, 2),
            "classes": [
                {
                    "name": c.name,
                    "domain": c.domain,
                    "codepoint": c.codepoint,
                    "unicode_name": unicodedata.name(c.char, ""),
                    "split": c.split,
                    "fonts": list(c.fonts),
                }
                for c in classes
            ],
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        _make_shareable(tmp)
        if folder.exists() and not force and _valid_cache(folder, fingerprint, need_hf=with_hf):
            # another process finished while we rendered; theirs is as good as ours (same inputs)
            logger.info("another process built %s first; using it", folder)
            return folder
        if folder.exists():  # stale (other fonts/version) or forced: move aside, then replace
            stale = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
            with contextlib.suppress(FileNotFoundError):
                os.replace(folder, stale / "old")
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, folder)
        except OSError:
            # another process finished first; theirs is as good as ours (same inputs)
            if not _valid_cache(folder, fingerprint, need_hf=with_hf):
                raise
            logger.info("another process built %s first; using it", folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info(
        "glyph benchmark: %d classes, %d images in %.1f s", len(classes), len(labels), time.perf_counter() - start
    )
    return folder


def _ensure_built(
    seed: int, image_size: int, instances: int, cache_dir: str | os.PathLike | None, *, need_hf: bool
) -> Path:
    """The folder of a valid build (tensors, and ``hf/`` if ``need_hf``), building it if needed."""
    _check_args(seed, image_size, instances)
    folder = glyph_cache_dir(int(seed), int(image_size), int(instances), cache_dir)
    if _valid_cache(folder, _font_fingerprint(_available_fonts()), need_hf=need_hf):
        return folder
    return build_glyphs(int(seed), int(image_size), instances=int(instances), cache_dir=cache_dir, with_hf=True)


def _make_shareable(folder: Path) -> None:
    """mkdtemp makes private folders; a cache is readable by everyone, like ~/.cache/huggingface."""
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def _read_meta(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _valid_cache(folder: Path, fingerprint: str | None, *, need_hf: bool = False) -> bool:
    meta = _read_meta(folder)
    if meta is None or meta.get("version") != GLYPH_VERSION or not (folder / "images.safetensors").is_file():
        return False
    if fingerprint is not None and meta.get("font_fingerprint") != fingerprint:
        logger.info("fonts changed since %s was built; rebuilding", folder)
        return False
    return bool(meta.get("has_hf")) or not need_hf


@lru_cache(maxsize=2)
def _load_tensors(path: str, mtime: float) -> tuple[torch.Tensor, torch.Tensor]:
    from safetensors.torch import load_file

    del mtime  # part of the cache key only: a rebuilt file is re-read
    tensors = load_file(path)
    return tensors["images"], tensors["labels"]


def _checked_domains(domains: list[str] | tuple[str, ...] | None) -> list[str]:
    if domains is None:
        return list(GLYPH_DOMAINS)
    if isinstance(domains, str):
        domains = [domains]
    unknown = [d for d in domains if d not in GLYPH_DOMAINS]
    if unknown or not domains:
        raise DatasetError(
            f"unknown glyph domain(s) {unknown or domains}", hint=f"choose from {', '.join(GLYPH_DOMAINS)}"
        )
    return list(dict.fromkeys(domains))


def load_glyph_split(
    split: str = "test",
    *,
    domains: list[str] | None = None,
    image_size: int = 32,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    instances: int = DEFAULT_INSTANCES,
) -> ImageSplit:
    """One class-disjoint split of the glyph benchmark (built and cached on first use).

    Args:
        split: ``train``, ``val`` (or ``validation``) or ``test``.
        domains: subset of :data:`GLYPH_DOMAINS` (default: all).
        image_size: side of the images.
        seed: the benchmark's seed (class split and augmentations).
        cache_dir: cache root.
        instances: instances per class.

    Returns:
        The split; classes in benchmark order (domain by domain), labels ``0..C-1``.
    """
    split = normalize_split(split)
    wanted = _checked_domains(domains)
    _check_args(seed, image_size, instances)
    folder = _ensure_built(seed, image_size, instances, cache_dir, need_hf=False)
    meta = _read_meta(folder)
    assert meta is not None
    path = folder / "images.safetensors"
    images, labels = _load_tensors(str(path), path.stat().st_mtime)
    chosen = [i for i, c in enumerate(meta["classes"]) if c["split"] == split and c["domain"] in wanted]
    if not chosen:
        raise DatasetError(f"the glyph benchmark has no {split} classes in domains {wanted}")
    mapping = torch.full((len(meta["classes"]),), -1, dtype=torch.int64)
    mapping[torch.tensor(chosen)] = torch.arange(len(chosen))
    rows = torch.nonzero(mapping[labels] >= 0).flatten()
    return ImageSplit(
        images=images[rows],
        labels=mapping[labels[rows]],
        class_names=[meta["classes"][i]["name"] for i in chosen],
        class_domains=[meta["classes"][i]["domain"] for i in chosen],
    )


def load_glyph_dataset(
    *,
    image_size: int = 32,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    instances: int = DEFAULT_INSTANCES,
):
    """The benchmark as a ``datasets.DatasetDict`` (``train``/``validation``/``test``).

    Columns: ``image`` (``datasets.Image``), ``label`` (``ClassLabel`` named like
    ``latin/A``; ids are global, shared by the three splits), ``domain`` (string).
    """
    import datasets

    folder = build_glyphs(seed, image_size, instances=instances, cache_dir=cache_dir, with_hf=True)
    return datasets.load_from_disk(str(folder / "hf"))


def glyph_classes(
    *,
    image_size: int = 32,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    instances: int = DEFAULT_INSTANCES,
) -> list[dict[str, Any]]:
    """The class table of a build (name, domain, codepoint, unicode_name, split, fonts)."""
    folder = _ensure_built(seed, image_size, instances, cache_dir, need_hf=False)
    meta = _read_meta(folder)
    assert meta is not None
    return meta["classes"]
