"""The implicit gradient regularisation (IGR) update direction (docs/method.md, stage 3).

For m tasks with losses L_i(θ), g_i = ∇L_i(θ) and ḡ = (1/m) Σ g_i:

    θ_i' = θ + β (g_i − ḡ)
    direction = (1/m) Σ_i ∇L_i(θ_i')
              = ∇L̄(θ) + β ∇[ (1/2m) Σ_i ‖g_i − ḡ‖² ] + O(β²)        (order="first")

so stepping along ``direction`` descends the mean loss *and* the spread of the task gradients
(the "task groupings regularisation"). Sign: the displacement is +β(g_i − ḡ); the seed
article's β(ḡ − g_i) would ascend the penalty.

``order="first"`` (default) treats the displacement as a constant: two gradient evaluations
per task and no double backward. ``order="second"`` is the authors' variant: it
differentiates through g_i and ḡ as well (``create_graph=True``), which doubles the effective
penalty (direction = ∇L̄ + 2β∇P + O(β²)) and costs double-backward memory.

β = 0 is plain averaging (ERM): the direction is then exactly ḡ (the second evaluation is
skipped, so the result is bitwise the mean gradient).

Everything here is a pure function of loss closures and a parameter dict: no optimiser, no
module state. A loss closure maps ``{name: tensor}`` to a scalar, typically
``lambda p: loss(torch.func.functional_call(model, (p, buffers), x), y)``. For distributed
training, each process can compute its tasks' gradients with :func:`task_gradients`,
all-reduce :func:`mean_gradient`, and finish with :func:`displaced_gradient_mean`.

Cost: an IGR step is two gradient evaluations of the m tasks where an ERM step is one. On an
accelerator the m tasks are evaluated with one backward pass each time (``fuse_tasks``). The
per-task losses come back as floats with one device-to-host sync at the end, not one per task.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "Gather",
    "IGRResult",
    "LossFn",
    "igr_direction",
    "task_gradients",
    "mean_gradient",
    "displaced_params",
    "displaced_gradient_mean",
    "gradient_variance",
]

LossFn = Callable[[dict[str, Tensor]], Tensor]
Grads = dict[str, Tensor]
# The cross-process exchange: this process's {task index: gradients} -> every task's, in task order
Gather = Callable[[Mapping[int, Grads]], list[Grads]]


@dataclass
class IGRResult:
    """Output of :func:`igr_direction`.

    Attributes:
        direction: ``{name: tensor}``, same shapes as the params; the update direction
            (a gradient: step along ``-direction``). Detached.
        losses: ``[m]`` task losses at θ (the undisplaced parameters).
        task_grads: ``[m]`` per-task gradients g_i at θ (detached), when requested.
        displaced_losses: ``[m]`` task losses at θ_i' (empty when β = 0).
    """

    direction: Grads
    losses: list[float]
    task_grads: list[Grads] | None = None
    displaced_losses: list[float] | None = None


def _check(
    loss_fns: Sequence[LossFn] | Mapping[int, LossFn],
    params: Mapping[str, Tensor],
    beta: float,
    order: str,
    *,
    allow_none: bool = False,
) -> None:
    if len(loss_fns) == 0 and not allow_none:
        raise ConfigError("IGR needs at least one task loss", hint="train.teachers_per_step must be >= 1")
    if not params:
        raise ConfigError("IGR got no parameters to differentiate")
    if not isinstance(beta, (int, float)) or isinstance(beta, bool) or not beta >= 0 or beta == float("inf"):
        raise ConfigError(f"IGR beta must be a finite number >= 0, got {beta!r}")
    if order not in ("first", "second"):
        raise ConfigError(f"IGR order must be 'first' or 'second', got {order!r}")
    for name, p in params.items():
        if not p.is_floating_point():
            raise ConfigError(f"IGR parameter {name!r} is not floating point ({p.dtype})")


def _leaves(params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Fresh leaves that require grad: the caller's tensors are never touched."""
    return {k: v.detach().requires_grad_(True) for k, v in params.items()}


def _scalar(loss: Tensor) -> Tensor:
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise ConfigError(f"a task loss must be a scalar tensor, got {shape}")
    return loss


def _autograd(loss: Tensor, inputs: list[Tensor]) -> Sequence[Tensor | None]:
    if not loss.requires_grad:  # a loss that ignores its parameters: all gradients are zero
        return [None] * len(inputs)
    return torch.autograd.grad(loss, inputs, allow_unused=True)


def _evaluate(
    loss_fns: Sequence[LossFn], param_sets: Sequence[Mapping[str, Tensor]], *, fuse: bool
) -> tuple[list[Tensor], list[Grads]]:
    """Losses (0-d, detached, not synced to the host) and gradients of task i at ``param_sets[i]``.

    ``fuse=True`` gives every task its own leaves and runs ONE backward pass through the sum
    of the task losses: the gradient w.r.t. task i's leaves is exactly ∇L_i (each loss gets
    an upstream gradient of 1), at the cost of one autograd call instead of m (what a fused
    ERM step costs), but holding all m graphs at once. ``fuse=False`` holds one at a time.
    """
    leaves = [_leaves(ps) for ps in param_sets]
    losses: list[Tensor] = []
    raw: list[dict[str, Tensor | None]] = []
    with torch.enable_grad():
        if fuse:
            losses = [_scalar(fn(lv)) for fn, lv in zip(loss_fns, leaves)]
            flat = [t for lv in leaves for t in lv.values()]
            out = iter(_autograd(torch.stack(losses).sum(), flat))
            raw = [{k: next(out) for k in lv} for lv in leaves]
        else:
            for fn, lv in zip(loss_fns, leaves):
                loss = _scalar(fn(lv))
                losses.append(loss)
                raw.append(dict(zip(lv, _autograd(loss, list(lv.values())))))
    # A parameter a task does not use has zero gradient for that task.
    grads: list[Grads] = [
        {k: (torch.zeros_like(lv[k]) if (gk := g[k]) is None else gk) for k in lv} for lv, g in zip(leaves, raw)
    ]
    return [loss.detach() for loss in losses], grads


def _default_fuse(params: Mapping[str, Tensor]) -> bool:
    return next(iter(params.values())).device.type != "cpu"


def _to_floats(losses: Sequence[Tensor]) -> list[float]:
    """One device-to-host sync for all losses (not one per task)."""
    return torch.stack([loss.double() for loss in losses]).tolist() if losses else []


def task_gradients(
    loss_fns: Sequence[LossFn], params: Mapping[str, Tensor], *, fuse: bool | None = None
) -> tuple[list[float], list[Grads]]:
    """Losses and gradients ``g_i = ∇L_i(θ)`` of every task at ``params``.

    Args:
        loss_fns: ``m`` closures ``params -> scalar loss``.
        params: ``{name: tensor}`` θ (not modified).
        fuse: one backward pass for all tasks (holds m graphs) or one per task; ``None``:
            fused on an accelerator, one by one on the CPU (see :func:`igr_direction`).

    Returns:
        ``(losses [m], grads [m] of {name: tensor}, detached)``.
    """
    _check(loss_fns, params, 0.0, "first")
    fuse = _default_fuse(params) if fuse is None else fuse
    losses, grads = _evaluate(loss_fns, [params] * len(loss_fns), fuse=fuse)
    return _to_floats(losses), grads


def mean_gradient(task_grads: Sequence[Mapping[str, Tensor]]) -> Grads:
    """``ḡ = (1/m) Σ g_i``, key by key: summed in task order, then divided by m.

    Uses ``torch._foreach_*`` (as torch.optim does) so the cost is a few multi-tensor
    kernels rather than one launch per parameter and task.
    """
    if len(task_grads) == 0:
        raise ConfigError("no task gradients to average")
    keys = list(task_grads[0])
    total: list[Tensor] | tuple[Tensor, ...] = [task_grads[0][k] for k in keys]
    for g in task_grads[1:]:
        total = torch._foreach_add(total, [g[k] for k in keys])
    return dict(zip(keys, torch._foreach_div(total, float(len(task_grads)))))


def displaced_params(
    params: Mapping[str, Tensor],
    task_grads: Sequence[Mapping[str, Tensor]],
    mean_grad: Mapping[str, Tensor],
    beta: float,
) -> list[dict[str, Tensor]]:
    """``θ_i' = θ + β (g_i − ḡ)`` for every task, detached (first-order IGR).

    Args:
        params: θ.
        task_grads: the gradients g_i of the tasks to displace (may be this process's
            share of the tasks only).
        mean_grad: ḡ over *all* tasks (all-reduced across processes in distributed runs).
        beta: displacement size β >= 0.

    Returns:
        One ``{name: tensor}`` per task.
    """
    keys = list(params)
    theta = [params[k].detach() for k in keys]
    mean = [mean_grad[k].detach() for k in keys]
    out = []
    for g in task_grads:
        diff = torch._foreach_sub([g[k].detach() for k in keys], mean)
        out.append(dict(zip(keys, torch._foreach_add(theta, diff, alpha=beta))))
    return out


def displaced_gradient_mean(
    loss_fns: Sequence[LossFn],
    params: Mapping[str, Tensor],
    task_grads: Sequence[Mapping[str, Tensor]],
    mean_grad: Mapping[str, Tensor],
    beta: float,
    *,
    fuse: bool | None = None,
) -> tuple[Grads, list[float]]:
    """First-order IGR from precomputed gradients: ``(1/m) Σ_i ∇L_i(θ_i')`` over the given tasks.

    The building block for distributed training: each process passes its own tasks and
    gradients with the all-reduced ``mean_grad`` and all-reduces (averages) the result. With
    ``beta == 0`` the second evaluation is skipped and the mean of ``task_grads`` returned.

    Returns:
        ``(direction {name: tensor}, losses at θ_i' [m])``.
    """
    _check(loss_fns, params, beta, "first")
    if len(task_grads) != len(loss_fns):
        raise ConfigError(f"got {len(loss_fns)} task losses but {len(task_grads)} task gradients")
    fuse = _default_fuse(params) if fuse is None else fuse
    direction, losses = _displaced(loss_fns, params, task_grads, mean_grad, beta, fuse=fuse)
    return direction, _to_floats(losses)


def _displaced(
    loss_fns: Sequence[LossFn],
    params: Mapping[str, Tensor],
    task_grads: Sequence[Mapping[str, Tensor]],
    mean_grad: Mapping[str, Tensor],
    beta: float,
    *,
    fuse: bool,
) -> tuple[Grads, list[Tensor]]:
    if beta == 0:
        return mean_gradient(task_grads), []
    losses, grads = _evaluate(loss_fns, displaced_params(params, task_grads, mean_grad, beta), fuse=fuse)
    return mean_gradient(grads), losses


def gradient_variance(task_grads: Sequence[Mapping[str, Tensor]]) -> float:
    """The penalty ``(1/2m) Σ_i ‖g_i − ḡ‖²`` at the given gradients (for logging)."""
    mean = mean_gradient(task_grads)
    total = sum(float(sum(((g[k] - mean[k]) ** 2).sum() for k in mean)) for g in task_grads)
    return total / (2 * len(task_grads))


def _second_order(loss_fns: Sequence[LossFn], params: Mapping[str, Tensor], beta: float, keep_grads: bool) -> IGRResult:
    """The authors' variant: ∇_θ (1/m) Σ_i L_i(θ + β(g_i(θ) − ḡ(θ))), through g_i and ḡ.

    One double-backward pass through the sum (not one per task: ḡ ties every task's
    displacement to every g_j graph, so per-task passes would traverse them m times).
    """
    leaves = _leaves(params)
    keys = list(leaves)
    m = len(loss_fns)
    with torch.enable_grad():
        losses_t = [_scalar(fn(leaves)) for fn in loss_fns]
        grads = []
        for loss in losses_t:
            g = torch.autograd.grad(loss, [leaves[k] for k in keys], create_graph=True, allow_unused=True)
            grads.append({k: (torch.zeros_like(leaves[k]) if gk is None else gk) for k, gk in zip(keys, g)})
        mean = {k: sum(g[k] for g in grads) / m for k in keys}
        displaced_losses = [
            _scalar(fn({k: leaves[k] + beta * (g[k] - mean[k]) for k in keys})) for fn, g in zip(loss_fns, grads)
        ]
        out = torch.autograd.grad(torch.stack(displaced_losses).sum() / m, [leaves[k] for k in keys], allow_unused=True)
    direction = {k: (torch.zeros_like(leaves[k]) if d is None else d.detach()) for k, d in zip(keys, out)}
    task_grads = [{k: v.detach() for k, v in g.items()} for g in grads] if keep_grads else None
    return IGRResult(
        direction,
        _to_floats([x.detach() for x in losses_t]),
        task_grads,
        _to_floats([x.detach() for x in displaced_losses]),
    )


def igr_direction(
    loss_fns: Sequence[LossFn] | Mapping[int, LossFn],
    params: Mapping[str, Tensor],
    beta: float,
    order: Literal["first", "second"] = "first",
    *,
    return_task_grads: bool = False,
    fuse_tasks: bool | None = None,
    gather: Gather | None = None,
) -> IGRResult:
    """The IGR update direction for one group of m tasks.

    This is the update meta-training runs (:mod:`tgr_hub.train` injects ``gather``).

    Args:
        loss_fns: ``m`` closures ``{name: tensor} -> scalar loss`` (task i's loss L_i).
            Each is called with fresh leaf tensors; it must use the dict it is given (e.g.
            via ``torch.func.functional_call``), not a module's own parameters. With
            ``gather``: ``{task index: closure}`` for the tasks *this process* computes (may
            be empty).
        params: θ, ``{name: tensor}`` (not modified; need not require grad).
        beta: displacement β >= 0 (reference 1e-3); 0 gives the plain mean gradient (ERM).
        order: ``"first"`` (displacement held constant; default) or ``"second"``
            (differentiate through the displacement, the authors' variant).
        return_task_grads: also return the per-task gradients g_i at θ.
        fuse_tasks: ``True``: evaluate the m tasks' gradients in one backward pass (each task
            on its own leaves, so the gradients stay separate): one autograd call per
            evaluation, like a fused ERM step, but all m graphs are alive at once. ``False``:
            one task at a time (peak memory of a single task). ``None`` (default): fused on an
            accelerator, where launch overhead dominates, one by one on the CPU, where keeping
            one task's activations in cache wins (bench/bench_igr.py measures both).
        gather: first order only: the exact exchange between processes. Called with this
            process's ``{task index: g_i}`` (at θ, then at θ_i'), it returns all m gradients in
            task order; ḡ and the direction are then formed on every process from the same
            rows in the same order, so the result is bitwise the one-process one.

    Returns:
        :class:`IGRResult` with ``direction`` ``{name: tensor}`` (shapes of ``params``) and the
        task ``losses`` at θ (with ``gather``: this process's tasks, in index order; the
        ``task_grads`` are then all m gathered ones).

    Raises:
        ConfigError: No tasks or parameters, β < 0 or not finite, an unknown order, or a
            loss that is not a scalar.
    """
    _check(loss_fns, params, beta, order, allow_none=gather is not None)
    if order == "second" and beta != 0:
        if gather is not None:
            raise ConfigError(
                "second-order IGR couples all tasks through ḡ's graph: it cannot be gathered",
                hint="compute it on one process",
            )
        # a mapping {task index: L_i} in index order, as the first-order path takes it
        fns = [loss_fns[i] for i in sorted(loss_fns)] if isinstance(loss_fns, Mapping) else list(loss_fns)
        return _second_order(fns, params, beta, return_task_grads)

    if fuse_tasks is None:
        fuse_tasks = _default_fuse(params)
    indices = sorted(loss_fns) if isinstance(loss_fns, Mapping) else list(range(len(loss_fns)))
    fns = [loss_fns[i] for i in indices]

    def evaluate(param_sets: Sequence[Mapping[str, Tensor]]) -> tuple[list[Tensor], list[Grads]]:
        return _evaluate(fns, param_sets, fuse=fuse_tasks) if fns else ([], [])

    losses, grads = evaluate([params] * len(fns))
    all_grads = grads if gather is None else gather(dict(zip(indices, grads)))
    mean = mean_gradient(all_grads)
    if beta == 0:
        # ERM (either order: the penalty term carries a factor β): exactly ḡ, no second evaluation.
        return IGRResult(mean, _to_floats(losses), all_grads if return_task_grads else None, [])
    own = [all_grads[i] for i in indices] if gather is not None else grads
    displaced_losses, displaced_grads = evaluate(displaced_params(params, own, mean, beta))
    all_displaced = displaced_grads if gather is None else gather(dict(zip(indices, displaced_grads)))
    return IGRResult(
        mean_gradient(all_displaced),
        _to_floats(losses),
        all_grads if return_task_grads else None,
        _to_floats(displaced_losses),
    )
