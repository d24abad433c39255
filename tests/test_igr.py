"""IGR direction: against autograd on the gradient-variance penalty, exact ERM at β = 0."""

from __future__ import annotations

import pytest
import torch

from tgr_hub.errors import ConfigError
from tgr_hub.igr import (
    IGRResult,
    displaced_gradient_mean,
    displaced_params,
    gradient_variance,
    igr_direction,
    mean_gradient,
    task_gradients,
)

DT = torch.float64


def _mlp_tasks(m: int = 4, seed: int = 0, device: torch.device | str = "cpu"):
    """m tasks: a 2-layer tanh MLP regression/classification on different data (float64), on ``device``.

    The data are drawn on the CPU (the same numbers on every device), then moved."""
    gen = torch.Generator().manual_seed(seed)
    params = {
        "w1": torch.randn(6, 5, generator=gen, dtype=DT) * 0.5,
        "b1": torch.randn(6, generator=gen, dtype=DT) * 0.1,
        "w2": torch.randn(3, 6, generator=gen, dtype=DT) * 0.5,
    }
    data = [(torch.randn(8, 5, generator=gen, dtype=DT) + i, torch.randint(0, 3, (8,), generator=gen)) for i in range(m)]

    def make(x: torch.Tensor, y: torch.Tensor):
        def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
            h = torch.tanh(x @ p["w1"].T + p["b1"])
            return torch.nn.functional.cross_entropy(h @ p["w2"].T, y)

        return loss

    params = {k: v.to(device) for k, v in params.items()}
    return [make(x.to(device), y.to(device)) for x, y in data], params


def _autograd_reference(loss_fns, params, beta: float, penalty_factor: float = 1.0) -> dict[str, torch.Tensor]:
    """∇L̄ + c·β∇P with P = (1/2m) Σ‖g_i − ḡ‖², by plain autograd (double backward)."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    m = len(loss_fns)
    losses = [fn(leaves) for fn in loss_fns]
    grads = [torch.autograd.grad(loss, list(leaves.values()), create_graph=True) for loss in losses]
    mean = [sum(g[j] for g in grads) / m for j in range(len(leaves))]
    penalty = sum(((g[j] - mean[j]) ** 2).sum() for g in grads for j in range(len(leaves))) / (2 * m)
    total = sum(losses) / m + penalty_factor * beta * penalty
    out = torch.autograd.grad(total, list(leaves.values()))
    return dict(zip(leaves, out))


def _err(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return float(torch.sqrt(sum(((a[k] - b[k]) ** 2).sum() for k in a)))


@pytest.mark.parametrize("order,factor", [("first", 1.0), ("second", 2.0)])
def test_direction_matches_penalty_gradient_to_second_order(order: str, factor: float, device: torch.device) -> None:
    loss_fns, params = _mlp_tasks(device=device)
    betas = [1e-2, 5e-3, 2.5e-3, 1.25e-3]
    errors = []
    for beta in betas:
        got = igr_direction(loss_fns, params, beta, order=order).direction
        errors.append(_err(got, _autograd_reference(loss_fns, params, beta, factor)))
    # The O(β) term is matched, so what is left is O(β²): it shrinks 4x as β halves.
    ratios = [errors[i] / errors[i + 1] for i in range(len(errors) - 1)]
    assert all(3.5 < r < 4.5 for r in ratios), (errors, ratios)
    # ...and it is small against the O(β) penalty term itself.
    erm = _autograd_reference(loss_fns, params, 0.0)
    first_order_term = _err(_autograd_reference(loss_fns, params, betas[-1], factor), erm)
    assert errors[-1] < 0.05 * first_order_term
    # The wrong factor (first-order vs the authors' variant) is off at O(β): ratio ≈ 2.
    wrong = [_err(igr_direction(loss_fns, params, b, order=order).direction,
                  _autograd_reference(loss_fns, params, b, 3.0 - factor)) for b in betas[:2]]
    assert 1.8 < wrong[0] / wrong[1] < 2.2


def test_quadratic_losses_are_exact_to_rounding() -> None:
    """For quadratics the Hessian is constant, so first-order IGR equals ∇L̄ + β∇P exactly."""
    gen = torch.Generator().manual_seed(1)
    mats = []
    for _ in range(3):
        a = torch.randn(4, 4, generator=gen, dtype=DT)
        mats.append((a @ a.T + torch.eye(4, dtype=DT), torch.randn(4, generator=gen, dtype=DT)))
    loss_fns = [lambda p, a=a, b=b: 0.5 * p["x"] @ a @ p["x"] + b @ p["x"] for a, b in mats]
    params = {"x": torch.randn(4, generator=gen, dtype=DT)}
    beta = 0.1
    got = igr_direction(loss_fns, params, beta).direction["x"]
    # Hand computation: g_i = A_i x + b_i, direction = mean_i A_i (x + β(g_i − ḡ)) + b_i.
    x = params["x"]
    g = [a @ x + b for a, b in mats]
    gbar = sum(g) / 3
    hand = sum(a @ (x + beta * (gi - gbar)) + b for (a, b), gi in zip(mats, g)) / 3
    torch.testing.assert_close(got, hand, rtol=1e-13, atol=1e-13)
    ref = _autograd_reference(loss_fns, params, beta)["x"]
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("order", ["first", "second"])
def test_beta_zero_is_exactly_the_mean_gradient(order: str) -> None:
    loss_fns, params = _mlp_tasks()
    calls = [0] * len(loss_fns)

    def counted(i):
        def fn(p):
            calls[i] += 1
            return loss_fns[i](p)

        return fn

    result = igr_direction([counted(i) for i in range(len(loss_fns))], params, 0.0, order=order,
                           return_task_grads=True)
    assert calls == [1] * len(loss_fns)  # the displaced evaluation is skipped
    # Independent mean gradient, same summation order: bitwise equal.
    grads = []
    for fn in loss_fns:
        leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        grads.append(dict(zip(leaves, torch.autograd.grad(fn(leaves), list(leaves.values())))))
    for k in params:
        expected = (grads[0][k] + grads[1][k] + grads[2][k] + grads[3][k]) / 4
        assert torch.equal(result.direction[k], expected), k
    assert result.task_grads is not None and len(result.task_grads) == 4
    assert result.losses == pytest.approx([float(fn(params)) for fn in loss_fns], rel=1e-15)


def test_first_order_is_two_evaluations_without_double_backward() -> None:
    loss_fns, params = _mlp_tasks(m=3)
    seen: list[dict[str, torch.Tensor]] = []

    def spy(i):
        def fn(p):
            seen.append(p)
            return loss_fns[i](p)

        return fn

    result = igr_direction([spy(i) for i in range(3)], params, 1e-2)
    assert len(seen) == 6  # 2 evaluations per task
    # Every call gets plain leaves: the displacement is a constant, nothing is differentiated through it.
    assert all(t.is_leaf and t.requires_grad and t.grad_fn is None for p in seen for t in p.values())
    assert isinstance(result, IGRResult) and len(result.losses) == 3 and len(result.displaced_losses) == 3
    assert all(not t.requires_grad for t in result.direction.values())
    assert set(result.direction) == set(params)
    assert all(result.direction[k].shape == params[k].shape for k in params)


def test_displaced_params_sign_and_the_distributed_composition() -> None:
    loss_fns, params = _mlp_tasks()
    beta = 3e-2
    losses, grads = task_gradients(loss_fns, params)
    gbar = mean_gradient(grads)
    displaced = displaced_params(params, grads, gbar, beta)
    for theta_i, g in zip(displaced, grads):
        for k in params:
            torch.testing.assert_close(theta_i[k], params[k] + beta * (g[k] - gbar[k]))  # +β(g_i − ḡ)
    # Two "processes" with two tasks each, sharing the all-reduced ḡ, then averaging.
    half_a, _ = displaced_gradient_mean(loss_fns[:2], params, grads[:2], gbar, beta)
    half_b, _ = displaced_gradient_mean(loss_fns[2:], params, grads[2:], gbar, beta)
    whole = igr_direction(loss_fns, params, beta).direction
    for k in params:
        torch.testing.assert_close((half_a[k] + half_b[k]) / 2, whole[k], rtol=1e-12, atol=1e-14)
    # The penalty at θ is positive, and a small step along -direction lowers the mean loss.
    assert gradient_variance(grads) > 0
    stepped = {k: params[k] - 0.05 * whole[k] for k in params}
    assert sum(fn(stepped) for fn in loss_fns) < sum(losses)


@pytest.mark.parametrize("beta", [0.0, 2e-2])
def test_fused_and_sequential_evaluation_agree(beta: float, device: torch.device) -> None:
    loss_fns, params = _mlp_tasks(device=device)
    fused = igr_direction(loss_fns, params, beta, return_task_grads=True)
    seq = igr_direction(loss_fns, params, beta, return_task_grads=True, fuse_tasks=False)
    for k in params:
        torch.testing.assert_close(fused.direction[k], seq.direction[k], rtol=1e-14, atol=1e-16)
        for a, b in zip(fused.task_grads, seq.task_grads):
            torch.testing.assert_close(a[k], b[k], rtol=1e-14, atol=1e-16)
    assert fused.losses == pytest.approx(seq.losses, rel=1e-14)
    assert fused.displaced_losses == pytest.approx(seq.displaced_losses, rel=1e-14)


def test_params_are_not_modified_and_unused_params_get_zero() -> None:
    loss_fns, params = _mlp_tasks(m=2)
    params = {**params, "unused": torch.ones(3, dtype=DT)}
    before = {k: v.clone() for k, v in params.items()}
    for order in ("first", "second"):
        out = igr_direction(loss_fns, params, 1e-2, order=order).direction
        assert torch.equal(out["unused"], torch.zeros(3, dtype=DT))
    for k in params:
        assert torch.equal(params[k], before[k]) and not params[k].requires_grad


def test_bad_input_raises_config_error() -> None:
    loss_fns, params = _mlp_tasks(m=2)
    with pytest.raises(ConfigError):
        igr_direction([], params, 1e-3)
    with pytest.raises(ValueError):  # ConfigError is a ValueError
        igr_direction(loss_fns, params, -1e-3)
    with pytest.raises(ConfigError):
        igr_direction(loss_fns, params, float("nan"))
    with pytest.raises(ConfigError):
        igr_direction(loss_fns, params, 1e-3, order="third")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="scalar"):
        igr_direction([lambda p: p["w1"].sum(dim=0)], params, 1e-3)
    with pytest.raises(ConfigError):
        displaced_gradient_mean(loss_fns, params, [], {}, 1e-3)
