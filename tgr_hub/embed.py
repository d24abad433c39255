"""Fisher task embeddings and teacher dissimilarity (docs/method.md, stage 2).

Every teacher's pseudo-task is embedded through the *same* probe network, so embeddings are
comparable across teacher architectures. The embedding is the diagonal of the Fisher
Information Matrix of the probe's parameters on the task:

    F = (1/N) Σ_j ( ∇_φ log P_φ(y_j | x_j) )²          (element-wise square)

Two methods:

``"task2vec"`` (default, Achille et al. 2019)
    1. Features of all images are computed once with the probe in eval mode.
    2. A linear head ``[num_classes, D]`` (seeded init) is fitted on the task's labels with
       full-batch L-BFGS (``head_steps`` iterations, a small L2 penalty so a separable task
       does not drive the head to a one-hot, gradient-free predictor).
    3. Labels are *sampled* from the probe's predictive distribution ``y ~ P_φ(y|x)``
       (seeded), ``mc_samples`` draws per image: this makes the result the true Fisher (an
       expectation under the model), not the empirical one.
    4. Per-sample gradients of ``log P_φ(y_j|x_j)`` are computed with ``torch.func``
       (``functional_call`` + ``vmap`` + ``grad``), in chunks of ``chunk_size`` samples to
       bound memory, squared and averaged.
    5. Optionally (default) the diagonal is averaged per filter: every parameter with two or
       more dimensions (conv ``[O, I, kh, kw]``, linear ``[O, I]``) is reduced over all but its
       first (output-channel) dimension, giving one number per filter; 1-D parameters (biases,
       BatchNorm affine) are kept as they are.

``"reference"`` (the authors' code)
    The head is left unfitted (seeded random init of ``num_classes`` outputs), the labels are
    the task's true labels, and the Fisher is *batch-level* and empirical: the square of the
    gradient of the mean loss of a batch of ``chunk_size`` samples, averaged over batches.

Parameters embedded: by default the probe's own (backbone) parameters only, as Task2Vec does
(its embedding is built from the feature extractor's filters). The head is fitted per task and
its shape depends on the task's class count, so including it would make embeddings of tasks
with different ``num_classes`` incomparable; ``include_head=True`` adds ``head.weight`` and
``head.bias`` for analysis.

BatchNorm: the probe is run in eval mode (running statistics) throughout. Per-sample
gradients need every sample's output to depend on that sample only; train-mode BatchNorm
mixes the batch (and ``vmap`` cannot run it per sample), so batch statistics are out. The
probe's train/eval mode is restored afterwards and its parameters are never modified.

Dissimilarity: Task2Vec's normalised cosine per parameter tensor, averaged over tensors:

    d(i, j) = 1 − cos( F^i / (F^i + F^j + ε),  F^j / (F^i + F^j + ε) )
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from . import seeds
from .errors import EmbeddingError
from .progress import progress_bar

logger = logging.getLogger(__name__)

__all__ = [
    "EmbeddingError",
    "fisher_diagonal",
    "fisher_diagonal_loop",
    "dissimilarity_matrix",
    "flatten_embedding",
]

Method = Literal["task2vec", "reference"]
ParamFilter = Callable[[str, Tensor], bool]


# --- preparation shared by the vmapped and the loop implementation ---------------------


class _Prepared:
    """Everything both gradient engines need: parameters, buffers, head, samples."""

    def __init__(
        self,
        params: dict[str, Tensor],
        buffers: dict[str, Tensor],
        head: dict[str, Tensor],
        images: Tensor,
        targets: Tensor,
        include_head: bool,
    ) -> None:
        self.params = params  # probe parameters (detached)
        self.buffers = buffers
        self.head = head  # {"weight": [C, D], "bias": [C]}
        self.images = images  # [M, 3, H, W] (already repeated for mc_samples)
        self.targets = targets  # [M] int64
        self.include_head = include_head

    def grad_params(self) -> dict[str, Tensor]:
        """The parameters the Fisher is taken with respect to (names as returned)."""
        out = dict(self.params)
        if self.include_head:
            out["head.weight"] = self.head["weight"]
            out["head.bias"] = self.head["bias"]
        return out


def _check_inputs(
    images: Tensor,
    labels: Tensor | None,
    num_classes: int,
    method: str,
    chunk_size: int,
    head_steps: int,
    mc_samples: int,
) -> None:
    if method not in ("task2vec", "reference"):
        raise EmbeddingError(f"unknown Fisher method {method!r}", hint="use 'task2vec' or 'reference'")
    if not isinstance(images, Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise EmbeddingError(f"images must be a [N, C, H, W] tensor, got {shape}")
    if images.shape[0] == 0:
        raise EmbeddingError("no images to embed", hint="the pseudo-task is empty")
    if not images.is_floating_point():
        raise EmbeddingError(
            f"images must be float in [0, 1], got dtype {images.dtype}", hint="convert uint8 images with .float() / 255"
        )
    if num_classes < 1:
        raise EmbeddingError(f"num_classes must be >= 1, got {num_classes}")
    if chunk_size < 1:
        raise EmbeddingError(f"chunk_size must be >= 1, got {chunk_size}")
    if head_steps < 0:
        raise EmbeddingError(f"head_steps must be >= 0, got {head_steps}")
    if mc_samples < 1:
        raise EmbeddingError(f"mc_samples must be >= 1, got {mc_samples}")
    if labels is None:
        if method == "reference":
            raise EmbeddingError("the 'reference' Fisher needs the task's labels", hint="pass labels or use 'task2vec'")
        return
    if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        raise EmbeddingError(f"labels must be [N] with N = {images.shape[0]}, got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex():
        raise EmbeddingError(f"labels must be integer class ids, got dtype {labels.dtype}")
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise EmbeddingError(
            f"labels must lie in 0..{num_classes - 1}, got range {int(labels.min())}..{int(labels.max())}",
            hint="relabel the task's classes 0..C-1 and pass num_classes=C",
        )


def _probe_features(probe: nn.Module, images: Tensor, chunk_size: int) -> Tensor:
    """Features ``[N, D]`` of all images, no gradient, in chunks."""
    with torch.no_grad():
        feats = [probe(images[i : i + chunk_size]) for i in range(0, images.shape[0], chunk_size)]
    out = torch.cat(feats)
    if out.dim() != 2:
        raise EmbeddingError(
            f"the probe must return features [B, D], got {tuple(out.shape)}",
            hint="create timm probes with num_classes=0 (features only)",
        )
    return out


def _init_head(num_classes: int, dim: int, *, seed: int, dtype: torch.dtype, device: torch.device) -> dict[str, Tensor]:
    """``nn.Linear``'s default init (U(±1/√D)), from a seeded generator."""
    gen = seeds.fisher_head_generator(seed)
    bound = 1.0 / math.sqrt(dim)
    weight = (torch.rand(num_classes, dim, generator=gen, dtype=torch.float64) * 2 - 1) * bound
    bias = (torch.rand(num_classes, generator=gen, dtype=torch.float64) * 2 - 1) * bound
    return {"weight": weight.to(device=device, dtype=dtype), "bias": bias.to(device=device, dtype=dtype)}


def _fit_head(feats: Tensor, labels: Tensor, head: dict[str, Tensor], *, steps: int, l2: float) -> dict[str, Tensor]:
    """Full-batch L-BFGS on CE + (l2/2)‖W‖²: convex, so the result hardly depends on the init."""
    if steps == 0:
        return head
    weight = head["weight"].clone().requires_grad_(True)
    bias = head["bias"].clone().requires_grad_(True)
    opt = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(feats @ weight.T + bias, labels) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        final = F.cross_entropy(feats @ weight.T + bias, labels)
    logger.debug("probe head fitted: CE %.4f after %d L-BFGS iterations", float(final), steps)
    return {"weight": weight.detach(), "bias": bias.detach()}


def _select_params(probe: nn.Module, param_filter: ParamFilter | None) -> dict[str, Tensor]:
    params = {
        name: p.detach()
        for name, p in probe.named_parameters()
        if p.is_floating_point() and (param_filter is None or param_filter(name, p))
    }
    if not params:
        raise EmbeddingError("the probe has no (selected) floating-point parameters to take the Fisher of")
    return params


def _prepare(
    probe: nn.Module,
    images: Tensor,
    labels: Tensor | None,
    *,
    method: Method,
    num_classes: int,
    head_steps: int,
    head_l2: float,
    seed: int,
    chunk_size: int,
    mc_samples: int,
    include_head: bool,
    param_filter: ParamFilter | None,
) -> _Prepared:
    _check_inputs(images, labels, num_classes, method, chunk_size, head_steps, mc_samples)
    params = _select_params(probe, param_filter)
    first = next(iter(params.values()))
    images = images.to(device=first.device, dtype=first.dtype)
    buffers = {name: b.detach() for name, b in probe.named_buffers()}
    feats = _probe_features(probe, images, chunk_size)
    if not torch.isfinite(feats).all():
        raise EmbeddingError("the probe's features are not finite on this task", hint="check the probe's weights")
    # The head is fitted, and labels sampled, on the CPU in float64: a small convex problem
    # that L-BFGS solves with many host syncs (slow on a GPU), and the same seed then gives
    # the same head and labels on any device.
    feats64 = feats.detach().double().cpu()
    head64 = _init_head(num_classes, feats.shape[1], seed=seed, dtype=torch.float64, device=torch.device("cpu"))

    def on_device(h: dict[str, Tensor]) -> dict[str, Tensor]:
        return {k: v.to(device=feats.device, dtype=feats.dtype) for k, v in h.items()}

    if method == "reference":
        assert labels is not None  # checked above
        targets = labels.to(device=images.device, dtype=torch.long)
        return _Prepared(params, buffers, on_device(head64), images, targets, include_head)

    if labels is not None:
        head64 = _fit_head(feats64, labels.cpu().long(), head64, steps=head_steps, l2=head_l2)
    else:
        # No labels: nothing to fit; the Fisher is taken under the seeded random head.
        logger.info("no labels given: the probe head is not fitted (random head, seed %d)", seed)
    with torch.no_grad():
        probs = torch.softmax(feats64 @ head64["weight"].T + head64["bias"], dim=1)
    gen = seeds.fisher_label_generator(seed)
    sampled = torch.multinomial(probs, mc_samples, replacement=True, generator=gen)  # [N, S]
    head = on_device(head64)
    targets = sampled.reshape(-1).to(images.device)
    if mc_samples > 1:
        images = images.repeat_interleave(mc_samples, dim=0)
    return _Prepared(params, buffers, head, images, targets, include_head)


def _log_likelihood(
    probe: nn.Module, buffers: dict[str, Tensor], include_head: bool, head: dict[str, Tensor]
) -> Callable[[dict[str, Tensor], Tensor, Tensor], Tensor]:
    """``f(grad_params, x [B, ...], y [B]) -> sum_b log P(y_b | x_b)``."""

    def fn(grad_params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        if include_head:
            weight, bias = grad_params["head.weight"], grad_params["head.bias"]
            backbone = {k: v for k, v in grad_params.items() if k not in ("head.weight", "head.bias")}
        else:
            weight, bias, backbone = head["weight"], head["bias"], grad_params
        feats = functional_call(probe, (backbone, buffers), (x,), strict=False)
        logp = torch.log_softmax(feats @ weight.T + bias, dim=-1)
        return logp.gather(-1, y.unsqueeze(-1)).sum()

    return fn


def _finalise(sq_sum: dict[str, Tensor], count: int, per_filter: bool) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for name, value in sq_sum.items():
        value = value / count
        if per_filter and value.dim() >= 2:
            # One number per filter (output channel): Task2Vec's "filter-wise" diagonal.
            value = value.flatten(1).mean(dim=1)
        out[name] = value.detach()
    return out


def _reference_fisher(
    probe: nn.Module, prep: _Prepared, chunk_size: int, progress: bool
) -> tuple[dict[str, Tensor], int]:
    """Batch-level empirical Fisher: (∇ mean-loss of a batch)², averaged over batches."""
    fn = _log_likelihood(probe, prep.buffers, prep.include_head, prep.head)
    gparams = {k: v.detach().requires_grad_(True) for k, v in prep.grad_params().items()}
    names = list(gparams)
    sq_sum = {k: torch.zeros_like(v) for k, v in gparams.items()}
    n = prep.images.shape[0]
    batches = 0
    for start in progress_bar(range(0, n, chunk_size), desc="fisher (reference)", disable=not progress, leave=False):
        x, y = prep.images[start : start + chunk_size], prep.targets[start : start + chunk_size]
        with torch.enable_grad():
            loss = -fn(gparams, x, y) / x.shape[0]  # mean CE of the batch
            grads = torch.autograd.grad(loss, [gparams[k] for k in names], allow_unused=True)
        for k, g in zip(names, grads):
            if g is not None:
                sq_sum[k] += g.detach() ** 2
        batches += 1
    return sq_sum, batches


class _EvalMode:
    """Put a module in eval mode for the duration, then restore every submodule's mode."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.modes: list[tuple[nn.Module, bool]] = []

    def __enter__(self) -> nn.Module:
        self.modes = [(m, m.training) for m in self.module.modules()]
        self.module.eval()
        return self.module

    def __exit__(self, *exc: object) -> None:
        for m, mode in self.modes:
            m.training = mode


def fisher_diagonal(
    probe: nn.Module,
    images: Tensor,
    labels: Tensor | None,
    *,
    num_classes: int,
    method: Method = "task2vec",
    head_steps: int = 50,
    per_filter: bool = True,
    seed: int = 0,
    chunk_size: int = 32,
    mc_samples: int = 1,
    include_head: bool = False,
    head_l2: float = 1e-3,
    param_filter: ParamFilter | None = None,
    progress: bool = False,
    per_sample: Literal["vmap", "loop"] = "vmap",
) -> dict[str, Tensor]:
    """Diagonal Fisher of ``probe`` on a task, with vmapped per-sample gradients.

    Args:
        probe: Feature extractor mapping ``[B, 3, H, W]`` images in [0, 1] to features
            ``[B, D]`` (it normalises/resizes inputs itself), e.g. a ``MetaModel`` or a timm
            model created with ``num_classes=0``. Run in eval mode; never modified.
        images: ``[N, 3, H, W]`` float in [0, 1] (cast to the probe's dtype/device).
        labels: ``[N]`` int64 task labels in ``0..num_classes-1``. ``None`` is allowed for
            ``"task2vec"`` only: the head is then not fitted (seeded random head).
        num_classes: Size ``C`` of the probe head.
        method: ``"task2vec"`` (fitted head, sampled labels, per-sample Fisher) or
            ``"reference"`` (unfitted head, true labels, batch-level empirical Fisher).
        head_steps: L-BFGS iterations fitting the head (``"task2vec"``; 0 = no fit).
        per_filter: Average the diagonal over all but the first dimension of every parameter
            with ``ndim >= 2`` (one value per filter / output channel).
        seed: Seeds the head initialisation and the label sampling.
        chunk_size: Samples per vmapped chunk (bounds memory: one chunk holds
            ``chunk_size`` copies of the gradient); also the batch size of the feature pass,
            and the batch of ``"reference"``. On a GPU larger chunks are faster
            (bench/bench_fisher.py: 100 samples in one chunk ~9x faster than a loop).
        mc_samples: Labels sampled per image (``"task2vec"``).
        include_head: Also return ``head.weight`` / ``head.bias`` Fisher entries.
        head_l2: L2 penalty on the head weight while fitting.
        param_filter: ``(name, param) -> bool`` selecting the probe parameters to embed
            (default: all floating-point parameters, whatever their ``requires_grad``).
        progress: Show a tqdm bar over chunks.
        per_sample: ``vmap`` (torch.func, ``chunk_size`` images per call) or ``loop`` (one autograd
            call per image: the reference the vmap path is tested against, :func:`fisher_diagonal_loop`).

    Returns:
        ``{parameter name: Fisher diagonal}``; shapes are the parameters' shapes, or ``[O]``
        for ``ndim >= 2`` parameters when ``per_filter``. On the probe's device and dtype.

    Raises:
        EmbeddingError: Bad shapes, dtypes, label range, or a probe not returning ``[B, D]``.
    """
    with _EvalMode(probe):
        prep = _prepare(
            probe,
            images,
            labels,
            method=method,
            num_classes=num_classes,
            head_steps=head_steps,
            head_l2=head_l2,
            seed=seed,
            chunk_size=chunk_size,
            mc_samples=mc_samples,
            include_head=include_head,
            param_filter=param_filter,
        )
        if method == "reference":
            sq_sum, count = _reference_fisher(probe, prep, chunk_size, progress)
            return _finalise(sq_sum, count, per_filter)

        fn = _log_likelihood(probe, prep.buffers, prep.include_head, prep.head)
        squared_grads = _squared_grads_loop if per_sample == "loop" else _squared_grads_vmap
        return _finalise(squared_grads(fn, prep, chunk_size, progress), prep.images.shape[0], per_filter)


def _squared_grads_vmap(fn: Any, prep: _Prepared, chunk_size: int, progress: bool) -> dict[str, Tensor]:
    """Σ over images of the squared per-image gradients, ``chunk_size`` images per vmap call."""

    def one_sample(gp: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        # vmap strips the batch dimension; the probe expects one, so add it back.
        return fn(gp, x.unsqueeze(0), y.unsqueeze(0))

    per_sample_grad = vmap(grad(one_sample), in_dims=(None, 0, 0))
    gparams = prep.grad_params()
    sq_sum = {k: torch.zeros_like(v) for k, v in gparams.items()}
    n = prep.images.shape[0]
    for start in progress_bar(range(0, n, chunk_size), desc="fisher", disable=not progress, leave=False):
        with torch.enable_grad():
            grads = per_sample_grad(
                gparams, prep.images[start : start + chunk_size], prep.targets[start : start + chunk_size]
            )
        for k, g in grads.items():
            sq_sum[k] += (g.detach() ** 2).sum(dim=0)
    return sq_sum


def _squared_grads_loop(fn: Any, prep: _Prepared, chunk_size: int, progress: bool) -> dict[str, Tensor]:
    """The same sum, one image per autograd call (the reference the vmap path is tested against)."""
    gparams = {k: v.detach().requires_grad_(True) for k, v in prep.grad_params().items()}
    names = list(gparams)
    sq_sum = {k: torch.zeros_like(v) for k, v in gparams.items()}
    for j in progress_bar(range(prep.images.shape[0]), desc="fisher (loop)", disable=not progress, leave=False):
        with torch.enable_grad():
            logp = fn(gparams, prep.images[j : j + 1], prep.targets[j : j + 1])
            grads = torch.autograd.grad(logp, [gparams[k] for k in names], allow_unused=True)
        for k, g in zip(names, grads):
            if g is not None:
                sq_sum[k] += g.detach() ** 2
    return sq_sum


def fisher_diagonal_loop(probe: nn.Module, images: Tensor, labels: Tensor | None, **options: Any) -> dict[str, Tensor]:
    """Reference implementation of :func:`fisher_diagonal`: one autograd call per sample.

    Same arguments, same head fit and the same sampled labels (same ``seed`` and
    ``chunk_size``: the probe features are computed in chunks of ``chunk_size``, and batching
    can change them by rounding, which can flip a sampled label), so the result equals
    :func:`fisher_diagonal` up to floating-point rounding (about 1e-7 relative in float32 on
    the CPU; about 1e-3 on a GPU, where cuDNN convolutions may run in TF32). Slow; for tests
    and benchmarks. ``"reference"`` is batch-level by definition and shares its implementation.
    """
    return fisher_diagonal(probe, images, labels, per_sample="loop", **options)


# --- dissimilarity ---------------------------------------------------------------------


def flatten_embedding(embedding: Mapping[str, Tensor]) -> Tensor:
    """Concatenate an embedding's tensors (sorted by name) into one vector ``[D]``."""
    return torch.cat([embedding[k].detach().reshape(-1).double().cpu() for k in sorted(embedding)])


def dissimilarity_matrix(embeddings: Sequence[Mapping[str, Tensor]], eps: float = 1e-8) -> Tensor:
    """Task2Vec's normalised-cosine dissimilarity between Fisher embeddings.

    For every parameter tensor ``k`` and pair ``(i, j)``:
    ``d_k(i, j) = 1 − cos(F_k^i / (F_k^i + F_k^j + ε), F_k^j / (F_k^i + F_k^j + ε))``; the
    result is the mean of ``d_k`` over tensors. Fisher entries are non-negative, so every
    ``d_k`` lies in [0, 1]. A tensor whose normalised vectors are both zero (the parameter
    has zero Fisher in both tasks) counts as identical (``d_k = 0``); if only one is zero the
    cosine is 0 (``d_k = 1``).

    Args:
        embeddings: ``N`` dicts with the same keys and shapes (outputs of
            :func:`fisher_diagonal` with the same probe and options).
        eps: ε of the normalisation.

    Returns:
        ``[N, N]`` float64 on CPU: symmetric, zero diagonal, entries in [0, 1].

    Raises:
        EmbeddingError: No embeddings, mismatched keys/shapes, negative or non-finite values.
    """
    if len(embeddings) == 0:
        raise EmbeddingError("no embeddings to compare")
    if eps < 0:
        raise EmbeddingError(f"eps must be >= 0, got {eps}")
    keys = sorted(embeddings[0])
    if not keys:
        raise EmbeddingError("embedding 0 has no tensors")
    n = len(embeddings)
    stacked: list[Tensor] = []  # per key: [N, P] float64
    for k in keys:
        rows = []
        for i, emb in enumerate(embeddings):
            if sorted(emb) != keys:
                raise EmbeddingError(
                    f"embedding {i} has different parameter names than embedding 0",
                    hint="embed every teacher with the same probe and options",
                )
            if emb[k].shape != embeddings[0][k].shape:
                raise EmbeddingError(
                    f"embedding {i}: {k} has shape {tuple(emb[k].shape)}, expected {tuple(embeddings[0][k].shape)}"
                )
            rows.append(emb[k].detach().reshape(-1).double().cpu())
        mat = torch.stack(rows)
        if not torch.isfinite(mat).all() or (mat < 0).any():
            raise EmbeddingError(f"{k}: Fisher entries must be finite and non-negative")
        stacked.append(mat)

    dist = torch.zeros(n, n, dtype=torch.float64)
    for mat in stacked:
        for i in range(n):
            # Row i against all j at once: [N, P]; memory O(N·P) rather than O(N²·P).
            denom = mat[i].unsqueeze(0) + mat + eps
            a = mat[i].unsqueeze(0) / denom
            b = mat / denom
            na, nb = a.norm(dim=1), b.norm(dim=1)
            dot = (a * b).sum(dim=1)
            cos = torch.where(
                na * nb > 0,
                dot / (na * nb).clamp_min(torch.finfo(torch.float64).tiny),
                ((na == 0) & (nb == 0)).double(),
            )
            dist[i] += 1.0 - cos.clamp(0.0, 1.0)
    dist /= len(stacked)
    # Exact symmetry and zero diagonal (the formula has both; rounding may not).
    dist = 0.5 * (dist + dist.T)
    dist.fill_diagonal_(0.0)
    return dist.clamp_(0.0, 1.0)
