"""The paper's analyses of a teacher pool: CKA between teachers, a validation of the Fisher dissimilarity, and
the task-gradient dynamics of IGR against ERM.

Both work on any pool (Hub or local, any architectures) and reuse the run-folder stages of
:func:`tgr_hub.pipeline.prepare_pool` (recover, embed, dissimilarity, group), so an analysis in
the folder of an earlier ``tgr-hub inspect`` or ``train`` costs only its own part.

``cka`` (:func:`run_cka`)
    Linear CKA (Kornblith et al., 2019) between the penultimate features of every pair of
    teachers on one common probe set. By default the probe set is the images recovered from all
    teachers (data-free); with ``dataset`` real images are used instead. Every teacher sees the
    same images, each at its own input size and normalisation (:meth:`PoolMember.normalize`).
    The result sits beside the Fisher dissimilarity, with the Spearman correlation between
    ``1 − CKA`` and the dissimilarity over teacher pairs.

``fisher`` (:func:`run_fisher`)
    Does the Fisher dissimilarity measure what it should? On a pool whose teachers share known
    fractions of their classes (:func:`build_ladder_pool`: pairs sharing ``round(P·way)`` classes
    for P = 0, 0.2, ..., 1, pairs of different architectures on the same classes, pairs from
    different domains), or on any pool (class overlap read from the label names), it reports the
    dissimilarity against class overlap with Spearman's ρ, the mean within- and cross-domain
    dissimilarity, the stability of the spectral grouping over clustering seeds (adjusted Rand
    index) and the group sizes.

``gradients`` (:func:`run_gradients`)
    Does IGR align the task gradients (the paper's Fig. 5)? Each method (ERM, TGR, and the
    ablations of :data:`GRADIENT_METHODS`) is meta-trained from the same initialisation, and
    every few steps the gradients of a fixed probe of pseudo-tasks (K groups of m tasks drawn once
    from the recovered bank, :func:`make_gradient_probe`) are measured at the current parameters
    (:func:`probe_statistics`): the penalty IGR descends ``P = (1/2m) Σ‖g_i − ḡ‖²``, the mean
    pairwise cosine of the ``g_i`` and the relative spread ``mean ‖g_i − ḡ‖ / ‖ḡ‖``
    (:func:`gradient_spread`). The probe's ``head`` loss uses one fixed head (the shared head's
    initialisation), the same for every method; ``episodic`` needs none.

Each analysis returns a typed result and writes ``NAME.json`` + ``NAME.png`` into the folder
(atomically).

Random streams: the ladder plan and the probe-image choice draw from
``seed_sequence(seed, ANALYZE, kind, ...)`` (:data:`tgr_hub.seeds.ANALYZE`).
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .errors import AnalysisError
from .io import write_json_atomic
from .peers import PEER_SECTIONS
from .probe import (
    GradientProbe,
    GradientStats,
    gradient_spread,
    make_gradient_probe,
    probe_loss_fns,
    probe_statistics,
)
from .seeds import ANALYZE, numpy_rng, same_domain_ladder_seed, seed_sequence, torch_seed, val_seed

if TYPE_CHECKING:  # annotations only: importing the pipeline pulls in training
    from .bank import MemoryBank
    from .config import DataConfig, PoolBuildConfig, RunConfig
    from .metamodel import MetaModel
    from .pool import PoolMember
    from .teachers import TeacherSpec

logger = logging.getLogger(__name__)

__all__ = [
    "AnalysisError",
    "CkaResult",
    "DEFAULT_FRACTIONS",
    "FisherValidation",
    "GRADIENT_METHODS",
    "GainResult",
    "GradientProbe",
    "GradientStats",
    "GradientTrace",
    "GradientsResult",
    "LadderPair",
    "TeacherInfo",
    "build_ladder_pool",
    "cka_analysis",
    "cka_matrix",
    "class_overlap",
    "fisher_validation",
    "gradient_spread",
    "make_gradient_probe",
    "probe_loss_fns",
    "probe_statistics",
    "ladder_specs",
    "linear_cka",
    "plan_overlap_ladder",
    "probe_images_from_bank",
    "probe_images_from_dataset",
    "real_image_bank",
    "run_cka",
    "run_fisher",
    "run_gain",
    "run_gradients",
    "teacher_features",
    "teacher_info",
    "write_cka",
    "write_fisher",
    "write_gain",
    "write_gradients",
]

# the keys inside the analyses' seed stream (tgr_hub.seeds.ANALYZE)
_LADDER, _LADDER_TEACHER, _PROBE, _DOMAIN_PAIR = 0, 1, 2, 3

#: The class-overlap fractions of the ladder: 0, 0.2, ..., 1.
DEFAULT_FRACTIONS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def _none_if_nan(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _jsonable(data: Any) -> Any:
    """``data`` with every non-finite float as ``None`` (JSON has no NaN)."""
    if isinstance(data, dict):
        return {k: _jsonable(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_jsonable(v) for v in data]
    if isinstance(data, (float, np.floating)):
        return _none_if_nan(float(data))
    if isinstance(data, np.integer):
        return int(data)
    return data


def _spearman(x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
    """Spearman's ρ and its two-sided p-value; ``None`` for both when undefined (< 3 pairs or a constant)."""
    from scipy import stats

    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        logger.warning(
            "Spearman's rho is undefined on %d pairs%s", a.size, "" if a.size < 3 else " (one of the two is constant)"
        )
        return {"rho": None, "p": None, "pairs": int(a.size)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = stats.spearmanr(a, b)
    return {"rho": _none_if_nan(float(result.statistic)), "p": _none_if_nan(float(result.pvalue)), "pairs": int(a.size)}


def _check_pool_size(pool_path: str | Path) -> None:
    """Fail before any work when the pool list names fewer than two teachers."""
    from .pool import parse_pool_list

    entries = parse_pool_list(pool_path)
    if len(entries) < 2:
        raise AnalysisError(
            f"{pool_path} lists {len(entries)} teacher(s); an analysis compares teachers, it needs at least 2",
            hint="add teachers to the pool list",
        )


# --- CKA -----------------------------------------------------------------------------------


def linear_cka(x: Tensor | np.ndarray, y: Tensor | np.ndarray) -> float:
    """Linear CKA between two representations of the same ``n`` examples.

    ``CKA = HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L))`` with linear kernels ``K = X Xᵀ``,
    ``L = Y Yᵀ`` and ``HSIC(K, L) = tr(K H L H)`` (``H`` the centering matrix; the
    ``1/(n−1)²`` factors cancel). With column-centred ``X``, ``Y`` this is
    ``‖Yᵀ X‖²_F / (‖Xᵀ X‖_F ‖Yᵀ Y‖_F)``; the smaller of the feature and the Gram form is used.
    Computed in float64. Invariant to orthogonal transforms and isotropic scaling of either
    side (not to arbitrary invertible linear maps).

    Args:
        x: ``[n, d1]`` features.
        y: ``[n, d2]`` features of the same examples, in the same order.

    Returns:
        CKA in [0, 1]; ``nan`` when either representation is constant over the examples.

    Raises:
        AnalysisError: not 2-D, different ``n``, fewer than 2 examples, or non-finite values.
    """
    a = torch.as_tensor(x).detach().to("cpu", torch.float64)
    b = torch.as_tensor(y).detach().to("cpu", torch.float64)
    if a.dim() != 2 or b.dim() != 2:
        raise AnalysisError(f"CKA needs [n, d] features, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] != b.shape[0]:
        raise AnalysisError(f"CKA compares features of the same examples; got {a.shape[0]} and {b.shape[0]} rows")
    if a.shape[0] < 2:
        raise AnalysisError(f"CKA needs at least 2 examples, got {a.shape[0]}")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise AnalysisError("CKA got NaN or infinite features", hint="check the teachers' weights")
    a = a - a.mean(dim=0, keepdim=True)
    b = b - b.mean(dim=0, keepdim=True)
    n, d1, d2 = a.shape[0], a.shape[1], b.shape[1]
    if n < max(d1, d2):  # Gram form: n x n matrices
        k, l_ = a @ a.T, b @ b.T
        cross, self_a, self_b = (k * l_).sum(), k.norm(), l_.norm()
    else:  # feature form: d x d matrices
        cross = (b.T @ a).pow(2).sum()
        self_a, self_b = (a.T @ a).norm(), (b.T @ b).norm()
    denominator = float(self_a * self_b)
    if denominator == 0.0:
        return float("nan")
    return float(min(max(float(cross) / denominator, 0.0), 1.0))


def cka_matrix(features: Sequence[Tensor | np.ndarray]) -> np.ndarray:
    """Linear CKA between every pair of representations.

    Args:
        features: ``N`` feature matrices ``[n, d_i]`` of the same ``n`` examples (widths may differ).

    Returns:
        ``[N, N]`` float64, symmetric; the diagonal is 1 (``nan`` for a constant representation).
    """
    n = len(features)
    out = np.eye(n, dtype=np.float64)
    for i in range(n):
        out[i, i] = linear_cka(features[i], features[i])
        for j in range(i + 1, n):
            out[i, j] = out[j, i] = linear_cka(features[i], features[j])
    return out


def teacher_features(member: PoolMember, images: Tensor, *, batch_size: int = 128) -> Tensor:
    """A teacher's penultimate features (before its classifier) of images in [0, 1].

    Each image goes through the teacher's own resizing and normalisation
    (:meth:`PoolMember.normalize`). timm models (and Conv4) give their pooled pre-logits
    features (``forward_head(forward_features(x), pre_logits=True)``); a model without that
    interface gives its logits, with a warning.

    Args:
        member: the teacher.
        images: ``[n, C, H, W]`` float in [0, 1], any size.
        batch_size: images per forward pass.

    Returns:
        ``[n, D]`` float64 on the CPU.
    """
    model: Any = member.model  # a timm model: forward_features/forward_head are not declared by nn.Module
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    penultimate = hasattr(model, "forward_features") and hasattr(model, "forward_head")
    if not penultimate:
        logger.warning("%s has no forward_features/forward_head: CKA compares its logits", member.name)
    was_training = model.training
    model.eval()
    chunks = []
    try:
        with torch.no_grad():
            for start in range(0, images.shape[0], batch_size):
                x = member.normalize(images[start : start + batch_size].to(device))
                out = model.forward_head(model.forward_features(x), pre_logits=True) if penultimate else model(x)
                chunks.append(out.flatten(1).double().cpu())
    finally:
        model.train(was_training)
    return torch.cat(chunks)


def _to_size(images: Tensor, size: tuple[int, ...]) -> Tensor:
    if tuple(images.shape[-2:]) == size:
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)


def probe_images_from_bank(bank: MemoryBank, members: Sequence[PoolMember], max_images: int, seed: int) -> Tensor:
    """The data-free probe set: images recovered from every teacher, equally many from each.

    Args:
        bank: the memory bank of the pool's recovered tasks.
        members: the teachers (each must be in the bank).
        max_images: total images (about ``max_images / N`` per teacher, all of a teacher's if fewer).
        seed: draws the images (stream ``[seed, ANALYZE, probe, teacher]``).

    Returns:
        ``[n, 3, S, S]`` float in [0, 1], ``S`` the largest teacher input size (smaller
        recoveries are upsampled; each teacher resizes to its own size anyway).
    """
    if max_images < len(members):
        raise AnalysisError(
            f"{max_images} probe images cannot cover {len(members)} teachers",
            hint="ask for at least one image per teacher",
        )
    size = max(int(m.input_size[1]) for m in members), max(int(m.input_size[2]) for m in members)
    per_teacher = max_images // len(members)
    parts = []
    for index, member in enumerate(members):
        rng = numpy_rng(seed_sequence(seed, ANALYZE, _PROBE, index))
        images, _ = bank.task_for(member.name, None, None, rng)
        pick = np.sort(rng.choice(images.shape[0], size=min(per_teacher, images.shape[0]), replace=False))
        parts.append(_to_size(images[torch.from_numpy(pick)], size))
    return torch.cat(parts)


def probe_images_from_dataset(data: DataConfig, dataset: str, split: str, max_images: int, seed: int) -> Tensor:
    """Real probe images: ``max_images`` images drawn from one split of a dataset.

    Args:
        data: the run's data settings (image size, split seed, cache, class split).
        dataset: ``glyphs``, a local folder or a Hub dataset id (:func:`tgr_hub.data.load_split`).
        split: ``train``, ``val`` or ``test``.
        max_images: how many (all of the split's if it has fewer).
        seed: draws the images (stream ``[seed, ANALYZE, probe]``).

    Returns:
        ``[n, 3, S, S]`` float in [0, 1] (``S = data.image_size``).
    """
    from .data import load_split

    images = load_split(
        dataset,
        split,
        image_size=data.image_size,
        seed=data.seed,
        cache_dir=data.cache_dir,
        class_split=data.class_split if dataset == data.dataset else None,
    )
    rng = numpy_rng(seed_sequence(seed, ANALYZE, _PROBE))
    pick = np.sort(rng.choice(len(images), size=min(max_images, len(images)), replace=False))
    return images.float_images(torch.from_numpy(pick))


@dataclass
class CkaResult:
    """Linear CKA between teachers beside their Fisher dissimilarity.

    Attributes:
        names: teacher names, in pool order.
        architectures: each teacher's architecture.
        cka: ``[N, N]`` linear CKA (``None`` where undefined).
        dissimilarity: ``[N, N]`` Fisher dissimilarity of the same teachers.
        spearman: ``{"rho", "p", "pairs"}``: rank correlation between ``1 − CKA`` and the
            dissimilarity over the ``N(N−1)/2`` teacher pairs.
        probe: where the probe images came from (``source``, ``images``, ``image_size``).
        feature_dims: each teacher's feature width.
        seconds: wall time per part (``prepare``: recover/embed/group, ``features``, ``cka``, ``total``).
    """

    names: list[str]
    architectures: list[str]
    cka: list[list[float | None]]
    dissimilarity: list[list[float]]
    spearman: dict[str, Any]
    probe: dict[str, Any]
    feature_dims: list[int]
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (non-finite numbers as ``None``)."""
        return _jsonable(asdict(self))


def _upper_pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(n, k=1)


def cka_analysis(
    names: Sequence[str],
    architectures: Sequence[str],
    features: Sequence[Tensor],
    dissimilarity: np.ndarray,
    probe: dict[str, Any],
) -> CkaResult:
    """CKA between every pair of teachers and its rank agreement with the Fisher dissimilarity.

    Args:
        names, architectures: per teacher.
        features: per teacher ``[n, d_i]`` features of the same ``n`` probe images.
        dissimilarity: ``[N, N]`` Fisher dissimilarity.
        probe: a description of the probe set, recorded as is.

    Raises:
        AnalysisError: fewer than 2 teachers, or sizes that do not match.
    """
    n = len(features)
    if n < 2:
        raise AnalysisError(f"CKA compares teachers: got {n}, needs at least 2")
    dis = np.asarray(dissimilarity, dtype=np.float64)
    if dis.shape != (n, n) or len(names) != n or len(architectures) != n:
        raise AnalysisError(f"{n} feature sets, {len(names)} names and a {dis.shape} dissimilarity do not match")
    start = time.perf_counter()
    cka = cka_matrix(features)
    rows, cols = _upper_pairs(n)
    spearman = _spearman(1.0 - cka[rows, cols], dis[rows, cols])
    logger.info(
        "CKA of %d teachers on %d images: Spearman rho(1 - CKA, dissimilarity) = %s over %d pairs",
        n,
        features[0].shape[0],
        spearman["rho"],
        spearman["pairs"],
    )
    return CkaResult(
        names=list(names),
        architectures=list(architectures),
        cka=cka.tolist(),
        dissimilarity=dis.tolist(),
        spearman=spearman,
        probe=dict(probe),
        feature_dims=[int(f.shape[1]) for f in features],
        seconds={"cka": time.perf_counter() - start},
    )


def write_cka(result: CkaResult, out: str | Path) -> tuple[Path, Path]:
    """Write ``out/cka.json`` and ``out/cka.png`` (CKA and dissimilarity side by side, and their scatter)."""
    from .figures import plot_cka

    out = Path(out)
    json_path, png_path = out / "cka.json", out / "cka.png"
    write_json_atomic(json_path, result.to_dict())
    cka = np.array([[np.nan if v is None else v for v in row] for row in result.cka], dtype=np.float64)
    plot_cka(
        cka,
        np.asarray(result.dissimilarity),
        result.names,
        png_path,
        rho=result.spearman.get("rho"),
        source=str(result.probe.get("source")),
    )
    return json_path, png_path


def run_cka(
    pool_path: str | Path,
    out: str | Path,
    cfg: RunConfig,
    *,
    dataset: str | None = None,
    split: str = "test",
    max_images: int = 500,
    allow_pickle: bool = False,
    progress: bool = True,
) -> CkaResult:
    """``tgr-hub analyze cka``: prepare the pool in ``out`` (or reuse it), compute CKA, write JSON + PNG.

    Args:
        pool_path: the repo-list file (Hub and local entries).
        out: the run folder: the recover/embed/group artefacts of :func:`tgr_hub.pipeline.prepare_pool`
            are reused when present, and ``cka.json`` / ``cka.png`` are written there.
        cfg: the run config (recovery, embedding and grouping settings; ``seed`` draws the probe images).
        dataset: real probe images from this dataset instead of the recovered ones.
        split: the split of ``dataset`` (default ``test``: classes no teacher was trained on).
        max_images: size of the probe set.
        allow_pickle: accept pickled teacher weights.
        progress: progress bars.

    Raises:
        AnalysisError: fewer than 2 teachers, or ``max_images`` < 2; and the pool's and the
            stages' own typed errors.
    """
    from .pipeline import prepare_pool

    if max_images < 2:
        raise AnalysisError(f"CKA needs at least 2 probe images, got {max_images}")
    _check_pool_size(pool_path)
    started = time.perf_counter()
    prepared = prepare_pool(pool_path, out, cfg, allow_pickle=allow_pickle, progress=progress)
    seconds = {"prepare": time.perf_counter() - started}
    members = prepared.members
    start = time.perf_counter()
    if dataset is None:
        images = probe_images_from_bank(prepared.bank, members, max_images, cfg.seed)
        source = "recovered"
    else:
        images = probe_images_from_dataset(cfg.data, dataset, split, max_images, cfg.seed)
        source = f"{dataset}:{split}"
    features = [teacher_features(m, images) for m in members]
    seconds["features"] = time.perf_counter() - start
    probe = {"source": source, "images": int(images.shape[0]), "image_size": list(images.shape[-2:])}
    result = cka_analysis(
        [m.name for m in members], [m.architecture for m in members], features, prepared.dissimilarity, probe
    )
    result.seconds = {**seconds, **result.seconds, "total": time.perf_counter() - started}
    write_cka(result, out)
    return result


# --- the overlap ladder --------------------------------------------------------------------


@dataclass
class LadderPair:
    """Two teachers the ladder plans together.

    Attributes:
        kind: ``overlap`` (same architecture and domain, ``shared`` classes in common),
            ``architecture`` (the same classes, two architectures) or ``domain`` (two domains).
        shared: classes the two have in common.
        a, b: the two teachers' names.
    """

    kind: Literal["overlap", "architecture", "domain"]
    shared: int
    a: str
    b: str


def plan_overlap_ladder(
    classes: Sequence[int],
    *,
    way: int,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int,
    repeats: int = 1,
) -> list[tuple[int, list[int], list[int]]]:
    """Teacher pairs that share a given fraction of their classes.

    For every repeat ``r`` and fraction ``P`` (stream ``[seed, ANALYZE, ladder, r, k]``), the
    classes are shuffled; the first ``round(P·way)`` are shared, and each teacher gets
    ``way − shared`` more of its own, disjoint from the other's. Each teacher's label order is
    shuffled too, so shared classes are not always its first labels.

    Args:
        classes: the class ids to draw from (one domain's meta-train classes), distinct.
        way: classes per teacher.
        fractions: the overlap fractions, each in [0, 1].
        seed: the plan's seed.
        repeats: pairs per fraction.

    Returns:
        ``(shared, classes_a, classes_b)`` per pair: fractions in order, repeats inner.

    Raises:
        AnalysisError: bad fractions or repeats, repeated class ids, or too few classes
            (``2·way − shared`` are needed).
    """
    pool = [int(c) for c in classes]
    if len(set(pool)) != len(pool):
        raise AnalysisError("the ladder's classes repeat")
    if way < 1 or repeats < 1:
        raise AnalysisError(f"way and repeats must be >= 1, got way={way}, repeats={repeats}")
    if not fractions or any(not 0.0 <= float(p) <= 1.0 for p in fractions):
        raise AnalysisError(f"overlap fractions must lie in [0, 1], got {list(fractions)}")
    pairs = []
    for k, fraction in enumerate(fractions):
        shared = int(round(float(fraction) * way))
        if 2 * way - shared > len(pool):
            raise AnalysisError(
                f"a pair of {way}-way teachers sharing {shared} classes needs {2 * way - shared} classes, "
                f"the domain has {len(pool)}",
                hint="use a smaller pool.way or a larger domain",
            )
        for r in range(repeats):
            rng = numpy_rng(seed_sequence(seed, ANALYZE, _LADDER, r, k))
            order = [pool[i] for i in rng.permutation(len(pool))]
            common, rest = order[:shared], order[shared:]
            a = common + rest[: way - shared]
            b = common + rest[way - shared : 2 * way - 2 * shared]
            pairs.append((shared, [a[i] for i in rng.permutation(way)], [b[i] for i in rng.permutation(way)]))
    return pairs


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def ladder_specs(
    class_names: Sequence[str],
    class_domains: Sequence[str],
    pool: PoolBuildConfig,
    *,
    seed: int,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    repeats: int = 1,
    image_size: int,
    dataset: str,
    data_seed: int,
) -> tuple[list[TeacherSpec], list[LadderPair]]:
    """The teachers of the overlap ladder (what :func:`build_ladder_pool` trains).

    With ``pool.domains = [d0, d1, ...]`` and ``pool.archs = [a0, a1, ...]``:

    - overlap pairs: two ``a0`` teachers on ``d0`` classes sharing ``round(P·way)`` of them, for
      every fraction and repeat (:func:`plan_overlap_ladder`);
    - architecture pairs: for each further architecture ``a``, an ``a0`` and an ``a`` teacher on
      the same ``way`` classes of ``d0`` (one pair per repeat);
    - domain pairs: for each further domain ``d``, an ``a0`` teacher on ``d0`` and one on ``d``.

    Returns:
        The specs (class ids index the meta-train split of ``class_names``), and the pairs.
    """
    from .recipes import ALL_DOMAINS
    from .teachers import TeacherSpec

    domains = list(dict.fromkeys(class_domains)) if list(pool.domains) == [ALL_DOMAINS] else list(pool.domains)
    by_domain = {d: [c for c, cd in enumerate(class_domains) if cd == d] for d in domains}
    for d, members in by_domain.items():
        if len(members) < pool.way:
            raise AnalysisError(
                f"domain {d!r} has {len(members)} meta-train classes, a {pool.way}-way teacher needs {pool.way}"
            )
    d0, a0, way = domains[0], pool.archs[0], pool.way
    specs: list[TeacherSpec] = []
    pairs: list[LadderPair] = []

    def add(name: str, arch: str, domain: str, classes: list[int]) -> str:
        index = len(specs)
        teacher_seed = torch_seed(seed, ANALYZE, _LADDER_TEACHER, index) % (2**31 - 1)
        specs.append(
            TeacherSpec(
                name=_safe(name),
                index=index,
                architecture=arch,
                domain=domain,
                classes=classes,
                label_names=[class_names[c] for c in classes],
                seed=teacher_seed,
                epochs=pool.epochs,
                batch_size=pool.batch_size,
                lr=pool.lr,
                image_size=image_size,
                dataset=dataset,
                data_seed=data_seed,
            )
        )
        return specs[-1].name

    planned = plan_overlap_ladder(by_domain[d0], way=way, fractions=fractions, seed=seed, repeats=repeats)
    for n, (shared, a, b) in enumerate(planned):
        r = n % repeats
        pairs.append(
            LadderPair(
                "overlap",
                shared,
                add(f"ov{shared}of{way}-r{r}-a", a0, d0, a),
                add(f"ov{shared}of{way}-r{r}-b", a0, d0, b),
            )
        )
    same = plan_overlap_ladder(
        by_domain[d0], way=way, fractions=[1.0], seed=same_domain_ladder_seed(seed), repeats=repeats
    )
    for arch in pool.archs[1:]:
        for r, (_, a, _) in enumerate(same):
            pairs.append(
                LadderPair(
                    "architecture",
                    way,
                    add(f"arch-{a0}-vs-{arch}-r{r}-a", a0, d0, a),
                    add(f"arch-{arch}-vs-{a0}-r{r}-b", arch, d0, a),
                )
            )
    for d in domains[1:]:
        for r in range(repeats):
            rng = numpy_rng(seed_sequence(seed, ANALYZE, _DOMAIN_PAIR, domains.index(d), r))
            a = [by_domain[d0][i] for i in rng.choice(len(by_domain[d0]), size=way, replace=False)]
            b = [by_domain[d][i] for i in rng.choice(len(by_domain[d]), size=way, replace=False)]
            # the partner in both names: with three or more domains, d0 is in a pair with each of the others
            first, second = add(f"dom-{d0}-vs-{d}-r{r}-a", a0, d0, a), add(f"dom-{d}-vs-{d0}-r{r}-b", a0, d, b)
            pairs.append(LadderPair("domain", 0, first, second))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):  # e.g. two architectures that differ only in characters _safe replaces
        raise AnalysisError(f"the ladder's teacher names repeat: {names}")
    return specs, pairs


def build_ladder_pool(
    out: str | Path,
    pool: PoolBuildConfig,
    *,
    seed: int,
    data: DataConfig,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    repeats: int = 1,
    progress: bool = True,
    num_threads: int | None = 1,
) -> Path:
    """Train the overlap ladder's teachers (:func:`ladder_specs`) into a pool folder.

    The folder is a :func:`tgr_hub.teachers.make_pool` pool (teachers trained with
    ``pool.epochs``, ``batch_size``, ``lr``; finished teachers are reused on a rerun) and also
    holds ``ladder.json``: the planned pairs.

    Returns:
        The pool's ``repo-list.txt``.
    """
    from .teachers import make_pool

    out = Path(out)
    planned: list[LadderPair] = []

    def planner(class_names: Sequence[str], class_domains: Sequence[str]) -> list[TeacherSpec]:
        specs, pairs = ladder_specs(
            class_names,
            class_domains,
            pool,
            seed=seed,
            fractions=fractions,
            repeats=repeats,
            image_size=data.image_size,
            dataset=data.dataset,
            data_seed=data.seed,
        )
        planned.extend(pairs)
        return specs

    make_pool(out, pool, seed=seed, data=data, progress=progress, num_threads=num_threads, planner=planner)
    write_json_atomic(
        out / "ladder.json",
        {
            "seed": seed,
            "way": pool.way,
            "fractions": list(fractions),
            "repeats": repeats,
            "pairs": [asdict(p) for p in planned],
        },
    )
    logger.info("overlap ladder: %d pairs in %s", len(planned), out)
    return out / "repo-list.txt"


def _build_ladder(out: str | Path, cfg: RunConfig, fractions: Sequence[float], repeats: int, progress: bool) -> Path:
    """The overlap ladder an analysis builds when no pool is given: into ``out/ladder-pool``, from the
    config's ``pool`` and ``data`` sections and its seed."""
    return build_ladder_pool(
        Path(out) / "ladder-pool",
        cfg.pool,
        seed=cfg.seed,
        data=cfg.data,
        fractions=fractions,
        repeats=repeats,
        progress=progress,
    )


# --- Fisher validation ---------------------------------------------------------------------


@dataclass
class TeacherInfo:
    """What the Fisher validation needs to know of a teacher."""

    name: str
    architecture: str
    domain: str | None
    label_names: list[str]


def teacher_info(member: PoolMember) -> TeacherInfo:
    """A pool member's name, architecture, domain and labels.

    The domain is the one ``make-pool`` recorded (``config.json`` ``tgr_teacher.spec.domain``),
    else the common prefix of the label names (``latin/A`` -> ``latin``), else unknown (None).
    """
    spec = (member.config.get("tgr_teacher") or {}).get("spec") or {}
    domain = spec.get("domain")
    if not domain:
        prefixes = {name.split("/", 1)[0] for name in member.label_names if "/" in name}
        domain = prefixes.pop() if len(prefixes) == 1 and all("/" in n for n in member.label_names) else None
    return TeacherInfo(member.name, member.architecture, domain, list(member.label_names))


def class_overlap(a: Sequence[str], b: Sequence[str]) -> float:
    """Fraction of the smaller label set the two teachers share: ``|A ∩ B| / min(|A|, |B|)``."""
    if not a or not b:
        return 0.0
    return len(set(a) & set(b)) / min(len(set(a)), len(set(b)))


@dataclass
class FisherValidation:
    """How the Fisher dissimilarity relates to what the teachers were trained on.

    Attributes:
        names, architectures, domains: per teacher (domain None where unknown).
        dissimilarity: ``[N, N]``.
        pairs: per teacher pair ``i < j``: ``i``, ``j``, ``overlap`` (:func:`class_overlap`),
            ``shared`` classes, ``same_architecture``, ``same_domain`` (None if unknown),
            ``dissimilarity``.
        spearman: ``{"rho", "p", "pairs"}`` of dissimilarity against overlap over all pairs
            (negative: more shared classes, less dissimilar).
        by_overlap: per distinct overlap: ``overlap``, ``mean``, ``sd``, ``pairs``.
        architecture: mean dissimilarity of pairs on the same classes (overlap 1), of the same
            and of different architectures: ``{"same": {"mean", "pairs"}, "cross": {...}}``.
        domain_means: mean dissimilarity ``within`` a domain, ``within_disjoint`` (within, no
            shared class) and ``cross`` domains: each ``{"mean", "pairs"}``.
        stability: spectral grouping over clustering ``seeds``: ``ari_mean`` and ``ari_min`` of
            the adjusted Rand index over all pairs of seeds, and the ``ari`` matrix.
        group_sizes: the sorted group sizes of each seed's grouping.
        num_groups, n_init: the grouping settings.
        images: what the tasks were embedded on: ``recovered`` or ``real`` images.
        seconds: wall time per part.
    """

    names: list[str]
    architectures: list[str]
    domains: list[str | None]
    dissimilarity: list[list[float]]
    pairs: list[dict[str, Any]]
    spearman: dict[str, Any]
    by_overlap: list[dict[str, Any]]
    architecture: dict[str, Any]
    domain_means: dict[str, Any]
    stability: dict[str, Any]
    group_sizes: list[list[int]]
    num_groups: int
    n_init: int
    images: str = "recovered"
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (non-finite numbers as ``None``)."""
        return _jsonable(asdict(self))


def _mean(values: Sequence[float]) -> dict[str, Any]:
    return {"mean": float(np.mean(values)) if len(values) else None, "pairs": len(values)}


def fisher_validation(
    dissimilarity: np.ndarray,
    teachers: Sequence[TeacherInfo],
    *,
    num_groups: int,
    n_init: int = 30,
    seeds: Sequence[int] = tuple(range(10)),
) -> FisherValidation:
    """Validate a Fisher dissimilarity against class overlap, domains, and grouping stability.

    Args:
        dissimilarity: ``[N, N]`` (:func:`tgr_hub.embed.dissimilarity_matrix`).
        teachers: the ``N`` teachers, in the same order.
        num_groups: groups of the spectral grouping (:func:`tgr_hub.group.group_teachers`).
        n_init: its k-means restarts.
        seeds: the clustering seeds whose groupings are compared (adjusted Rand index).

    Raises:
        AnalysisError: fewer than 2 teachers, sizes that do not match, or fewer than 2 seeds.
    """
    from sklearn.metrics import adjusted_rand_score

    from .group import group_teachers, groups_to_labels

    n = len(teachers)
    dis = np.asarray(dissimilarity, dtype=np.float64)
    if n < 2:
        raise AnalysisError(f"the Fisher validation compares teachers: got {n}, needs at least 2")
    if dis.shape != (n, n):
        raise AnalysisError(f"a {dis.shape} dissimilarity for {n} teachers")
    if len(seeds) < 2:
        raise AnalysisError(f"grouping stability compares clustering seeds: got {len(seeds)}, needs at least 2")
    start = time.perf_counter()
    pairs = []
    for i, j in zip(*_upper_pairs(n)):
        a, b = teachers[i], teachers[j]
        same_domain = None if a.domain is None or b.domain is None else a.domain == b.domain
        pairs.append(
            {
                "i": int(i),
                "j": int(j),
                "overlap": class_overlap(a.label_names, b.label_names),
                "shared": len(set(a.label_names) & set(b.label_names)),
                "same_architecture": a.architecture == b.architecture,
                "same_domain": same_domain,
                "dissimilarity": float(dis[i, j]),
            }
        )
    spearman = _spearman([p["overlap"] for p in pairs], [p["dissimilarity"] for p in pairs])
    by_overlap = []
    for level in sorted({round(p["overlap"], 6) for p in pairs}):
        values = [p["dissimilarity"] for p in pairs if round(p["overlap"], 6) == level]
        by_overlap.append(
            {
                "overlap": level,
                "mean": float(np.mean(values)),
                "sd": float(np.std(values, ddof=1)) if len(values) > 1 else None,
                "pairs": len(values),
            }
        )
    identical = [p for p in pairs if p["overlap"] == 1.0]
    architecture = {
        "same": _mean([p["dissimilarity"] for p in identical if p["same_architecture"]]),
        "cross": _mean([p["dissimilarity"] for p in identical if not p["same_architecture"]]),
    }
    domain_means = {
        "within": _mean([p["dissimilarity"] for p in pairs if p["same_domain"] is True]),
        "within_disjoint": _mean([p["dissimilarity"] for p in pairs if p["same_domain"] is True and p["shared"] == 0]),
        "cross": _mean([p["dissimilarity"] for p in pairs if p["same_domain"] is False]),
    }
    labels, sizes = [], []
    for seed in seeds:
        groups = group_teachers(dis, num_groups, n_init=n_init, seed=int(seed))
        labels.append(groups_to_labels(groups, n).numpy())
        sizes.append(sorted((len(g) for g in groups), reverse=True))
    ari = np.eye(len(seeds))
    for s in range(len(seeds)):
        for t in range(s + 1, len(seeds)):
            ari[s, t] = ari[t, s] = adjusted_rand_score(labels[s], labels[t])
    off = ari[np.triu_indices(len(seeds), k=1)]
    stability = {
        "seeds": [int(s) for s in seeds],
        "ari_mean": float(off.mean()),
        "ari_min": float(off.min()),
        "ari": ari.tolist(),
    }
    logger.info(
        "Fisher validation of %d teachers: rho(overlap, dissimilarity) = %s; ARI over %d seeds %.3f (min %.3f)",
        n,
        spearman["rho"],
        len(seeds),
        stability["ari_mean"],
        stability["ari_min"],
    )
    return FisherValidation(
        names=[t.name for t in teachers],
        architectures=[t.architecture for t in teachers],
        domains=[t.domain for t in teachers],
        dissimilarity=dis.tolist(),
        pairs=pairs,
        spearman=spearman,
        by_overlap=by_overlap,
        architecture=architecture,
        domain_means=domain_means,
        stability=stability,
        group_sizes=sizes,
        num_groups=int(num_groups),
        n_init=int(n_init),
        seconds={"validation": time.perf_counter() - start},
    )


def _write_json_and_plot(
    out: str | Path, name: str, data: dict[str, Any], plot: Callable[[dict, Path], None]
) -> tuple[Path, Path]:
    """``out/NAME.json`` (``data``, atomically) and ``out/NAME.png`` drawn by ``plot(data, path)``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / f"{name}.json", out / f"{name}.png"
    write_json_atomic(json_path, data)
    plot(data, png_path)
    return json_path, png_path


def write_fisher(result: FisherValidation, out: str | Path) -> tuple[Path, Path]:
    """Write ``out/fisher.json`` and ``out/fisher.png`` (dissimilarity against overlap, domains, stability)."""
    from .figures import plot_fisher_validation

    return _write_json_and_plot(out, "fisher", result.to_dict(), plot_fisher_validation)


def real_image_bank(members: Sequence[PoolMember], data: DataConfig, per_class: int, seed: int) -> MemoryBank:
    """A memory bank holding, for every teacher, real images of its own classes (not recovered ones).

    Embedding these tasks gives the dissimilarity the Fisher would give if recovery were perfect:
    the Fisher validation on it tests the embedding alone. The classes are found by name in the
    meta-train split of ``data.dataset`` (what ``make-pool`` teachers are trained on).

    Args:
        members: the teachers.
        data: the dataset settings.
        per_class: images per class (all of a class's if it has fewer).
        seed: draws the images (stream ``[seed, ANALYZE, probe, teacher]``).

    Raises:
        AnalysisError: a teacher's label is not a class of that split.
    """
    from .bank import MemoryBank, RecoveredTask
    from .data import load_split

    split = load_split(
        data.dataset,
        "train",
        image_size=data.image_size,
        seed=data.seed,
        cache_dir=data.cache_dir,
        class_split=data.class_split,
    )
    index = {name: c for c, name in enumerate(split.class_names)}
    bank = MemoryBank(1)
    for t, member in enumerate(members):
        missing = [name for name in member.label_names if name not in index]
        if missing:
            raise AnalysisError(
                f"teacher {member.name}: class {missing[0]!r} is not a meta-train class of {data.dataset}",
                hint="real images need teachers trained on the dataset's classes; use the recovered ones",
            )
        rng = numpy_rng(seed_sequence(seed, ANALYZE, _PROBE, t))
        xs, ys = [], []
        for label, name in enumerate(member.label_names):
            idx = split.indices_of(index[name])
            idx = idx[torch.from_numpy(np.sort(rng.choice(len(idx), size=min(per_class, len(idx)), replace=False)))]
            xs.append(_to_size(split.float_images(idx), tuple(int(v) for v in member.input_size[1:])))
            ys.append(torch.full((len(idx),), label, dtype=torch.int64))
        bank.add(
            RecoveredTask(
                images=torch.cat(xs),
                labels=torch.cat(ys),
                teacher=member.name,
                loss=0.0,
                classes=list(range(member.num_classes)),
                class_names=list(member.label_names),
            )
        )
    return bank


def run_fisher(
    pool_path: str | Path | None,
    out: str | Path,
    cfg: RunConfig,
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    repeats: int = 1,
    seeds: int = 10,
    images: Literal["recovered", "real"] = "recovered",
    allow_pickle: bool = False,
    progress: bool = True,
) -> FisherValidation:
    """``tgr-hub analyze fisher``: validate the Fisher dissimilarity on a pool, write JSON + PNG.

    Args:
        pool_path: the repo-list file to analyse; None builds the overlap ladder first
            (:func:`build_ladder_pool` into ``out/ladder-pool``, from ``cfg.pool``, ``cfg.data``
            and ``cfg.seed``).
        out: the run folder (stages reused when present); ``fisher.json`` / ``fisher.png`` go there.
        cfg: the run config.
        fractions, repeats: the ladder's overlap fractions and pairs per fraction.
        seeds: clustering seeds for the grouping stability (``cfg.seed`` onwards).
        images: ``recovered`` (the pipeline's dissimilarity, from recovered pseudo-tasks) or
            ``real``: each teacher's task is embedded on real images of its classes
            (:func:`real_image_bank`; embeddings in ``out/real-images/``): the embedding alone,
            without the recovery.
        allow_pickle: accept pickled teacher weights.
        progress: progress bars.
    """
    from .embed import dissimilarity_matrix
    from .pipeline import embed_pool, prepare_pool
    from .pool import load_pool

    if images not in ("recovered", "real"):
        raise AnalysisError(f"images must be 'recovered' or 'real', got {images!r}")
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    if pool_path is None:
        pool_path = _build_ladder(out, cfg, fractions, repeats, progress)
        seconds["ladder"] = time.perf_counter() - started
    _check_pool_size(pool_path)
    start = time.perf_counter()
    if images == "recovered":
        prepared = prepare_pool(pool_path, out, cfg, allow_pickle=allow_pickle, progress=progress)
        members, dissimilarity = prepared.members, prepared.dissimilarity
    else:
        members = load_pool(pool_path, allow_pickle=allow_pickle)
        per_class = max(1, cfg.embed.max_samples // max(m.num_classes for m in members))
        bank = real_image_bank(members, cfg.data, per_class, cfg.seed)
        folder = Path(out) / "real-images"
        folder.mkdir(parents=True, exist_ok=True)
        embeddings = embed_pool(members, bank, cfg, folder / "embeddings.safetensors", progress=progress)
        dissimilarity = dissimilarity_matrix(embeddings, eps=cfg.embed.epsilon).numpy()
        write_json_atomic(
            folder / "dissimilarity.json", {"names": [m.name for m in members], "matrix": dissimilarity.tolist()}
        )
    seconds["prepare"] = time.perf_counter() - start
    result = fisher_validation(
        dissimilarity,
        [teacher_info(m) for m in members],
        num_groups=cfg.group.num_groups,
        n_init=cfg.group.n_init,
        seeds=range(cfg.seed, cfg.seed + seeds),
    )
    result.images = images
    result.seconds = {**seconds, **result.seconds, "total": time.perf_counter() - started}
    write_fisher(result, out)
    return result


# --- gradient dynamics (paper Fig. 5) ------------------------------------------------------------

#: What ``run_gradients`` can train: method -> (β from the config or 0, spectral groups or one group of all).
GRADIENT_METHODS: dict[str, tuple[bool, bool]] = {
    "erm": (False, False),  # β = 0, one group of all teachers (the baseline)
    "tgr": (True, True),  # cfg.train.beta inside the spectral groups (the method)
    "igr": (True, False),  # ablation: IGR with one group of all teachers
    "groups": (False, True),  # ablation: the spectral groups without IGR (β = 0)
}


@dataclass
class GradientTrace:
    """One method's gradient statistics on the probe during meta-training.

    Attributes:
        method: ``erm``, ``tgr``, ``igr`` or ``groups`` (:data:`GRADIENT_METHODS`).
        beta: the IGR displacement it trained with.
        groups: the teacher groups it drew tasks from (names).
        steps: the steps measured (0: the shared initialisation).
        P, cosine, relative_spread, mean_norm, task_norm, loss: :class:`GradientStats` per step.
        val_acc: its meta-validation accuracy history ``[[step, accuracy], ...]``.
        seconds: wall time of its training, probes included.
    """

    method: str
    beta: float
    groups: list[list[str]]
    steps: list[int] = field(default_factory=list)
    P: list[float] = field(default_factory=list)
    cosine: list[float] = field(default_factory=list)
    relative_spread: list[float] = field(default_factory=list)
    mean_norm: list[float] = field(default_factory=list)
    task_norm: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    val_acc: list[list[float]] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, step: int, stats: GradientStats) -> None:
        self.steps.append(int(step))
        for name in ("P", "cosine", "relative_spread", "mean_norm", "task_norm", "loss"):
            getattr(self, name).append(float(getattr(stats, name)))


@dataclass
class GradientsResult:
    """The gradient dynamics of several methods trained from the same initialisation.

    Attributes:
        methods: per method, its :class:`GradientTrace`.
        probe: how the statistics were measured: ``kind``, ``groups`` (K), ``tasks_per_group``
            (m), the probe ``teachers`` (names), ``head``, ``way``/``shot``/``query``, ``seed``.
        every: the measuring interval (steps).
        iterations: meta-training steps per method.
        seconds: wall time per part.
    """

    methods: dict[str, GradientTrace]
    probe: dict[str, Any]
    every: int
    iterations: int
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (non-finite numbers as ``None``)."""
        return _jsonable(asdict(self))


def write_gradients(result: GradientsResult, out: str | Path) -> tuple[Path, Path]:
    """Write ``out/gradients.json`` and ``out/gradients.png`` (P, cosine, relative spread against step)."""
    from .figures import plot_gradient_dynamics

    return _write_json_and_plot(out, "gradients", result.to_dict(), plot_gradient_dynamics)


def run_gradients(
    pool_path: str | Path,
    out: str | Path,
    cfg: RunConfig,
    *,
    methods: Sequence[str] = ("erm", "tgr"),
    every: int | None = None,
    probe_groups: int = 8,
    kind: Literal["head", "episodic"] | None = None,
    allow_pickle: bool = False,
    progress: bool = True,
) -> GradientsResult:
    """``tgr-hub analyze gradients``: do the task gradients align under IGR and not under ERM? JSON + PNG.

    Prepares the pool once into ``out`` (:func:`tgr_hub.pipeline.prepare_pool`), draws one probe
    (:func:`make_gradient_probe` from the spectral groups, ``cfg.seed``), then meta-trains each
    method from the same initialisation (the meta-model ``create_meta_model`` gives for the
    training seed) with :func:`tgr_hub.train.meta_train` as ``tgr-hub train`` would (online
    recovery, replay and validation as configured, no checkpoints), and measures
    :func:`probe_statistics` at step 0, every ``every`` steps and at the last step. ERM is β = 0
    with one group of all teachers; TGR is ``cfg.train.beta`` inside the spectral groups.
    Measuring does not change training (it draws no random numbers and touches no state).

    Args:
        pool_path: the repo-list file.
        out: the run folder (stages reused); ``gradients.json`` / ``gradients.png`` go there.
        cfg: the run config (``train.iterations`` steps per method).
        methods: any of :data:`GRADIENT_METHODS`, in order.
        every: steps between measurements (default: about 20 over the run).
        probe_groups: K, the probe's task groups.
        kind: the probe loss (default ``cfg.train.igr_loss``, the loss the IGR step regularises).
        allow_pickle: accept pickled teacher weights.
        progress: progress bars.

    Raises:
        AnalysisError: an unknown method, ``every`` < 1, fewer than 2 teachers.
    """
    from dataclasses import replace

    from .data import split_of
    from .learners import make_learner
    from .metamodel import create_meta_model
    from .pipeline import _warm_upfront, load_generators, prepare_pool
    from .train import StepInfo, meta_train

    unknown = [m for m in methods if m not in GRADIENT_METHODS]
    if unknown or not methods or len(set(methods)) != len(methods):
        raise AnalysisError(f"methods must be distinct names of {', '.join(GRADIENT_METHODS)}; got {list(methods)}")
    iterations = cfg.train.iterations
    every = max(1, iterations // 20) if every is None else every
    if every < 1:
        raise AnalysisError(f"--every must be >= 1 step, got {every}")
    kind = kind or cfg.train.igr_loss
    if kind not in ("head", "episodic"):
        raise AnalysisError(f"the probe loss is 'head' or 'episodic', got {kind!r}")
    if cfg.train.beta == 0 and any(GRADIENT_METHODS[m][0] for m in methods):
        logger.warning("train.beta is 0: the IGR methods train without IGR")
    _check_pool_size(pool_path)
    started = time.perf_counter()
    out = Path(out)
    prepared = prepare_pool(pool_path, out, cfg, allow_pickle=allow_pickle, progress=progress)
    members, names = prepared.members, [m.name for m in prepared.members]
    seconds = {"prepare": time.perf_counter() - started}

    val_split = split_of(cfg.data, "val")
    train_seed = cfg.seed if cfg.train.seed is None else cfg.train.seed
    learner = make_learner(
        cfg.train.learner,
        inner_steps=cfg.train.inner_steps,
        inner_lr=cfg.train.inner_lr,
        first_order=cfg.train.maml_first_order,
    )
    feature_dim = create_meta_model(cfg.train.arch, cfg.data.image_size, seed=train_seed).feature_dim
    start = time.perf_counter()
    probe = make_gradient_probe(
        members,
        prepared.bank,
        prepared.groups,
        cfg.train,
        num_groups=probe_groups,
        feature_dim=feature_dim,
        seed=cfg.seed,
        head_seed=train_seed,
    )
    seconds["probe"] = time.perf_counter() - start
    every_team = [list(range(len(members)))]

    def measure(model: MetaModel) -> GradientStats:
        return probe_statistics(
            model,
            probe,
            learner,
            kind,
            distill_weight=cfg.train.distill_weight,
            temperature=cfg.train.distill_temperature,
        )

    traces: dict[str, GradientTrace] = {}
    for method in methods:
        start = time.perf_counter()
        uses_beta, uses_groups = GRADIENT_METHODS[method]
        train_cfg = replace(cfg.train, beta=cfg.train.beta if uses_beta else 0.0, checkpoint_every=0)
        groups = prepared.groups if uses_groups else every_team
        trace = GradientTrace(method, train_cfg.beta, [[names[i] for i in g] for g in groups])
        model = create_meta_model(cfg.train.arch, cfg.data.image_size, seed=train_seed)
        trace.add(0, measure(model))
        logger.info("%s step 0: P %.4g, cosine %.3f", method, trace.P[-1], trace.cosine[-1])

        def on_step(info: StepInfo, trace: GradientTrace = trace) -> None:
            if info.step % every == 0 or info.step == iterations:
                trace.add(info.step, measure(info.model))
                logger.info("%s step %d: P %.4g, cosine %.3f", trace.method, info.step, trace.P[-1], trace.cosine[-1])

        generators = load_generators(out / "recovered" / "bank.safetensors", members) if _warm_upfront(cfg) else None
        trained = meta_train(
            model,
            members,
            prepared.bank,
            groups,
            train_cfg,
            val_split=val_split,
            seed=train_seed,
            progress=progress,
            on_step=on_step,
            recover=cfg.recover,
            generators=generators,
            val_seed=val_seed(cfg.seed),
        )
        trace.val_acc = [[int(s), float(v)] for s, v in trained.history.get("val_acc", [])]
        trace.seconds = time.perf_counter() - start
        seconds[method] = trace.seconds
        traces[method] = trace

    probe_info = {
        "kind": kind,
        "groups": probe_groups,
        "tasks_per_group": cfg.train.teachers_per_step,
        "teachers": [[names[t] for t in row] for row in probe.teachers],
        "drawn_from": "spectral groups",
        "head": "fixed: the shared head's initialisation (train.make_task_head, the training seed), not trained"
        if kind == "head"
        else None,
        "parameters": "the meta-model's (the head is not differentiated)",
        "way": cfg.train.replay_way,
        "shot": cfg.train.replay_shot,
        "query": cfg.train.replay_query,
        "seed": cfg.seed,
    }
    seconds["total"] = time.perf_counter() - started
    analysis = GradientsResult(traces, probe_info, every, iterations, seconds)
    write_gradients(analysis, out)
    return analysis


# --- accuracy gain of an auxiliary teacher (the paper's Fig. 2) ------------------------------------


@dataclass
class GainResult:
    """``tgr-hub analyze gain``: AG = P(θ(M_basic, M_aux)) − P(θ(M_basic)) per ladder pair.

    Attributes:
        rows: one per (pair, seed): ``kind``, ``shared``, ``overlap`` (shared / way), ``basic``,
            ``aux``, ``seed`` and per shot (``"1shot"``...) the two accuracies and the paired
            difference on the identical episodes (:meth:`tgr_hub.stats.TInterval.to_dict`).
        by_overlap: per overlap fraction (as text) and shot, the t-interval over that fraction's
            rows' mean differences (pairs × seeds).
        architecture: the same over the cross-architecture pairs (same classes, two architectures).
        method: ``erm`` or ``tgr`` (the meta-training of both models).
        seconds: run times of the stages.
    """

    rows: list[dict[str, Any]]
    by_overlap: dict[str, dict[str, Any]]
    architecture: dict[str, Any]
    method: str
    shots: list[int]
    seconds: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


def _gain_summary(rows: Sequence[dict[str, Any]], shots: Sequence[int]) -> dict[str, Any]:
    from . import stats

    summary: dict[str, Any] = {"rows": len(rows)}
    for shot in shots:
        key = f"{shot}shot"
        diffs = [row[key]["difference"]["mean"] for row in rows]
        summary[key] = stats.across_seeds(diffs).to_dict() if diffs else {"mean": None}
    return summary


def run_gain(
    pool_path: str | Path | None,
    out: str | Path,
    cfg: RunConfig,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    repeats: int = 1,
    method: Literal["erm", "tgr"] = "erm",
    allow_pickle: bool = False,
    progress: bool = True,
) -> GainResult:
    """``tgr-hub analyze gain``: does an auxiliary teacher help, and how does that depend on overlap?

    For every pair of the overlap ladder (:func:`build_ladder_pool`; ``pool_path`` may name a
    ladder pool built before, with its ``ladder.json``), the first teacher is the *basic* one and
    the second the *auxiliary*. For each seed, one meta-model learns from the basic teacher alone
    and one from both (``method``: ERM, or TGR's IGR with β = ``cfg.train.beta`` on the pair), each
    from the same initialisation, with only those teachers' recovered tasks in its bank (online
    recovery, replay and meta-validation as configured). Both are scored on the same meta-test
    episodes (``cfg.eval``; the benchmark's fixed episode lists), and AG is their paired difference
    (:func:`tgr_hub.stats.paired_difference`); per overlap fraction, a t-interval over the pairs'
    and seeds' mean differences (:func:`tgr_hub.stats.across_seeds`). Each model's scores are saved in
    ``out/gain-scores.json`` as soon as it is scored: an interrupted run, started again with the same
    pool and settings, trains only the models still missing.

    Raises:
        AnalysisError: no ladder pairs, an unknown method, no seeds.
    """
    from dataclasses import replace

    from . import stats
    from .benchmark import EpisodeList
    from .data import split_of
    from .evaluate import eval_settings, evaluate_model
    from .metamodel import create_meta_model
    from .pipeline import prepare_pool
    from .train import meta_train

    if method not in ("erm", "tgr"):
        raise AnalysisError(f"method must be erm or tgr, got {method!r}")
    if not seeds:
        raise AnalysisError("gain needs at least one seed")
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    if pool_path is None:
        pool_path = _build_ladder(out, cfg, fractions, repeats, progress)
        seconds["ladder"] = time.perf_counter() - started
    ladder_file = Path(pool_path).parent / "ladder.json"
    if not ladder_file.is_file():
        raise AnalysisError(
            f"{pool_path} has no ladder.json beside it",
            hint="leave out --pool to build the overlap ladder, or give a ladder pool built by it",
        )
    ladder = json.loads(ladder_file.read_text())
    pairs = [p for p in ladder["pairs"] if p["kind"] in ("overlap", "architecture")]
    if not pairs:
        raise AnalysisError(f"{ladder_file} plans no overlap or architecture pairs")
    start = time.perf_counter()
    prepared = prepare_pool(pool_path, out, cfg, allow_pickle=allow_pickle, progress=progress)
    seconds["prepare"] = time.perf_counter() - start
    index = _ladder_index([name for p in pairs for name in (p["a"], p["b"])], [m.name for m in prepared.members])

    val_split, test_split = split_of(cfg.data, "val"), split_of(cfg.data, cfg.eval.split)
    train_cfg = replace(cfg.train, beta=cfg.train.beta if method == "tgr" else 0.0, checkpoint_every=0)
    settings = eval_settings(cfg.eval, cfg.train.learner)

    # Each trained model's episode accuracies are kept in OUT/gain-scores.json as soon as it is scored,
    # under the settings that made them: a run that is interrupted and started again with the same
    # pool and settings trains only what is missing; other settings start the file afresh.
    scores_file = Path(out) / "gain-scores.json"
    pool_key = str(Path(pool_path).resolve())
    peers = set(PEER_SECTIONS.values())  # the peers' own sections: gain does not use them
    used = {section: value for section, value in cfg.to_dict().items() if section not in peers}
    settings_key = json.loads(json.dumps({"config": used, "method": method, "pool": pool_key}))
    saved = json.loads(scores_file.read_text()) if scores_file.is_file() else {}
    done: dict[str, dict[str, list[float]]] = saved.get("scores", {}) if saved.get("settings") == settings_key else {}
    if done:
        logger.info("gain: %d trained models already scored in %s; training the rest", len(done), scores_file)

    def score(teachers: list[str], seed: int, episodes: dict[int, EpisodeList]) -> dict[str, list[float]]:
        key = f"{'+'.join(teachers)}@{seed}"
        if key not in done:
            done[key] = train_and_score(teachers, seed, episodes)
            write_json_atomic(scores_file, {"settings": settings_key, "scores": done})
        return done[key]

    def train_and_score(teachers: list[str], seed: int, episodes: dict[int, EpisodeList]) -> dict[str, list[float]]:
        members = [prepared.members[index[name]] for name in teachers]
        model = create_meta_model(cfg.train.arch, cfg.data.image_size, seed=seed)
        trained = meta_train(
            model,
            members,
            prepared.bank.subset([m.name for m in members]),
            [list(range(len(members)))],
            train_cfg,
            val_split=val_split,
            seed=seed,
            progress=progress,
            recover=cfg.recover,
            val_seed=val_seed(seed),
        )
        model.load_state_dict(trained.best_state)
        metrics = evaluate_model(
            model.eval(), test_split, **settings, progress=False, keep_accuracies=True, episode_lists=episodes
        )
        return {f"{shot}shot": metrics[f"{shot}shot"]["accuracies"] for shot in episodes}

    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for seed in seeds:
        episodes = {
            int(shot): EpisodeList(
                test_split,
                way=cfg.eval.way,
                shot=int(shot),
                query=cfg.eval.query,
                seed=int(seed),
                count=cfg.eval.episodes,
            )
            for shot in cfg.eval.shots
        }
        alone: dict[str, dict[str, list[float]]] = {}  # a basic teacher's model is shared by its pairs
        for pair in pairs:
            basic, aux = pair["a"], pair["b"]
            if basic not in alone:
                alone[basic] = score([basic], int(seed), episodes)
            joint = score([basic, aux], int(seed), episodes)
            row: dict[str, Any] = {
                "kind": pair["kind"],
                "shared": pair["shared"],
                "overlap": pair["shared"] / ladder["way"],
                "basic": basic,
                "aux": aux,
                "seed": int(seed),
            }
            for key in joint:
                row[key] = {
                    "basic": float(np.mean(alone[basic][key])),
                    "joint": float(np.mean(joint[key])),
                    "difference": stats.paired_difference(joint[key], alone[basic][key]).to_dict(),
                }
            rows.append(row)
            logger.info(
                "gain %s + %s (%s, shared %d), seed %d: %s",
                basic,
                aux,
                pair["kind"],
                pair["shared"],
                seed,
                ", ".join(f"{k} {100 * row[k]['difference']['mean']:+.2f}" for k in joint),
            )
    seconds["train+score"] = time.perf_counter() - start
    seconds["total"] = time.perf_counter() - started
    shots = [int(s) for s in cfg.eval.shots]
    overlap_rows = [r for r in rows if r["kind"] == "overlap"]
    by_overlap = {
        f"{f:g}": _gain_summary([r for r in overlap_rows if abs(r["overlap"] - f) < 1e-9], shots)
        for f in sorted({r["overlap"] for r in overlap_rows})
    }
    architecture = _gain_summary([r for r in rows if r["kind"] == "architecture"], shots)
    return GainResult(rows, by_overlap, architecture, method, shots, seconds)


def _ladder_index(ladder_names: Sequence[str], pool_names: Sequence[str]) -> dict[str, int]:
    """Where each teacher ``ladder.json`` names sits in the pool: the member of that name, or the one
    named ``PREFIX-NAME`` (a ladder pushed with ``push_pool``, whose repositories carry a prefix)."""
    index = {}
    for name in dict.fromkeys(ladder_names):
        found = [i for i, n in enumerate(pool_names) if n == name] or [
            i for i, n in enumerate(pool_names) if n.endswith(f"-{name}")
        ]
        if len(found) != 1:
            raise AnalysisError(
                f"ladder.json names teacher {name!r}, which the pool holds {len(found)} times "
                f"(its teachers: {', '.join(pool_names)})",
                hint="give the repo list that sits beside the ladder's ladder.json",
            )
        index[name] = found[0]
    return index


def write_gain(result: GainResult, out: str | Path) -> tuple[Path, Path]:
    """``gain.json`` and ``gain.png`` (AG against class overlap, one line per shot) into ``out``."""
    from .figures import plot_gain

    return _write_json_and_plot(out, "gain", result.to_dict(), plot_gain)
