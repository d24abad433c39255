"""Fisher task embeddings: vmapped == per-sample loop, hand computations, dissimilarity."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tgr_hub.embed import (
    EmbeddingError,
    _init_head,
    dissimilarity_matrix,
    fisher_diagonal,
    fisher_diagonal_loop,
    flatten_embedding,
)

DT = torch.float64


class TinyConvBN(nn.Module):
    """A 2-block conv net with BatchNorm, normalising its [0, 1] input itself."""

    def __init__(self, width: int = 6) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body((x - 0.5) / 0.25)


def _probe(seed: int = 0) -> TinyConvBN:
    torch.manual_seed(seed)
    net = TinyConvBN().to(DT)
    # Non-trivial running statistics, then back to train mode (fisher_* must switch to eval).
    with torch.no_grad():
        for _ in range(3):
            net(torch.rand(16, 3, 8, 8, dtype=DT) * 0.8 + 0.1)
    return net


def _task(n: int = 13, classes: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 8, 8, generator=gen), torch.randint(0, classes, (n,), generator=gen)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(method="task2vec", per_filter=True, include_head=True, chunk_size=5),
        dict(method="task2vec", per_filter=False, include_head=False, chunk_size=4, mc_samples=2),
        dict(method="reference", per_filter=False, include_head=True, chunk_size=6),
    ],
)
def test_vmapped_fisher_equals_per_sample_loop(kwargs: dict, device: torch.device) -> None:
    net = _probe().to(device)
    x, y = (t.to(device) for t in _task())
    fast = fisher_diagonal(net, x, y, num_classes=3, head_steps=20, seed=3, **kwargs)
    slow = fisher_diagonal_loop(net, x, y, num_classes=3, head_steps=20, seed=3, **kwargs)
    assert fast.keys() == slow.keys()
    names = {n for n, _ in net.named_parameters()} | ({"head.weight", "head.bias"} if kwargs["include_head"] else set())
    assert set(fast) == names
    for k in fast:
        torch.testing.assert_close(fast[k], slow[k], rtol=1e-10, atol=1e-14)
        assert (fast[k] >= 0).all()
    assert sum(float(v.sum()) for v in fast.values()) > 0


def test_per_sample_fisher_by_hand_on_a_linear_probe() -> None:
    """Probe features = V x: ∇_V log p(y|x) = Wᵀ(e_y − p) xᵀ, squared and averaged by hand."""
    torch.manual_seed(0)
    probe = nn.Sequential(nn.Flatten(), nn.Linear(12, 4, bias=False)).to(DT)
    x = torch.rand(9, 3, 2, 2, dtype=DT)
    # With labels=None there is no fit: the head is the seeded random head, labels are sampled.
    got = fisher_diagonal(probe, x, None, num_classes=3, per_filter=False, seed=11, mc_samples=4000, chunk_size=9000)
    head = _init_head(3, 4, seed=11, dtype=DT, device=torch.device("cpu"))
    w, b, v = head["weight"], head["bias"], probe[1].weight.detach()
    flat = x.flatten(1)
    p = torch.softmax(flat @ v.T @ w.T + b, dim=1)  # [N, C]
    # Exact Fisher E_{y~p}[(∇ log p(y|x))²]: the Monte Carlo estimate above must approach it.
    exact = torch.zeros_like(v)
    for j in range(flat.shape[0]):
        for c in range(3):
            g = torch.outer(w.T @ (torch.eye(3, dtype=DT)[c] - p[j]), flat[j])
            exact += p[j, c] * g**2
    exact /= flat.shape[0]
    rel = (got["1.weight"] - exact).norm() / exact.norm()
    assert rel < 0.05, float(rel)


def test_reference_fisher_by_hand_is_batch_level_empirical() -> None:
    torch.manual_seed(0)
    probe = nn.Sequential(nn.Flatten(), nn.Linear(12, 4)).to(DT)
    x = torch.rand(10, 3, 2, 2, dtype=DT)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 2])
    got = fisher_diagonal(probe, x, y, num_classes=3, method="reference", seed=2, chunk_size=4, per_filter=False)
    head = _init_head(3, 4, seed=2, dtype=DT, device=torch.device("cpu"))
    v, c = probe[1].weight.detach(), probe[1].bias.detach()
    expected_w, expected_b = torch.zeros_like(v), torch.zeros_like(c)
    batches = [(0, 4), (4, 8), (8, 10)]
    for lo, hi in batches:
        flat, yy = x[lo:hi].flatten(1), y[lo:hi]
        p = torch.softmax((flat @ v.T + c) @ head["weight"].T + head["bias"], dim=1)
        delta = (p - nn.functional.one_hot(yy, 3).to(DT)) @ head["weight"]  # dCE/dfeature [B, 4]
        expected_w += (delta.T @ flat / (hi - lo)) ** 2  # gradient of the batch-mean CE, squared
        expected_b += (delta.sum(0) / (hi - lo)) ** 2
    torch.testing.assert_close(got["1.weight"], expected_w / 3)
    torch.testing.assert_close(got["1.bias"], expected_b / 3)


def test_per_filter_is_the_filterwise_mean_and_seed_controls_sampling() -> None:
    net = _probe()
    x, y = _task()
    full = fisher_diagonal(net, x, y, num_classes=3, head_steps=10, per_filter=False, seed=0)
    filt = fisher_diagonal(net, x, y, num_classes=3, head_steps=10, per_filter=True, seed=0)
    for k, value in full.items():
        expected = value.flatten(1).mean(1) if value.dim() >= 2 else value
        torch.testing.assert_close(filt[k], expected)
    assert filt["body.0.weight"].shape == (6,) and filt["body.1.bias"].shape == (6,)
    again = fisher_diagonal(net, x, y, num_classes=3, head_steps=10, per_filter=False, seed=0)
    assert all(torch.equal(full[k], again[k]) for k in full)
    other = fisher_diagonal(net, x, y, num_classes=3, head_steps=10, per_filter=False, seed=1)
    assert any(not torch.allclose(full[k], other[k]) for k in full)


def test_batchnorm_uses_running_stats_and_probe_is_untouched() -> None:
    net = _probe()
    net.train()
    net.body[0].eval()  # a mixed mode must come back as it was
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = _task()
    whole = fisher_diagonal(net, x, y, num_classes=3, head_steps=0, method="reference", chunk_size=1,
                            per_filter=False)
    assert net.training and not net.body[0].training and net.body[1].training
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k  # no running-stat update, no parameter change
    # Eval-mode BN makes a per-sample gradient depend on that sample only: with chunk_size=1 the
    # reference Fisher is a per-sample Fisher, so the Fisher of the whole task is the mean of the
    # Fisher of its halves (weighted by size), which train-mode BN would break.
    a = fisher_diagonal(net, x[:6], y[:6], num_classes=3, head_steps=0, method="reference", chunk_size=1,
                        per_filter=False)
    b = fisher_diagonal(net, x[6:], y[6:], num_classes=3, head_steps=0, method="reference", chunk_size=1,
                        per_filter=False)
    for k in whole:
        torch.testing.assert_close(whole[k], (6 * a[k] + 7 * b[k]) / 13)


def test_head_fit_changes_the_embedding_and_float32_probe_works() -> None:
    torch.manual_seed(0)
    net = TinyConvBN()  # float32 probe, float32 images
    x, y = _task(n=12)
    fitted = fisher_diagonal(net, x, y, num_classes=3, head_steps=30)
    unfitted = fisher_diagonal(net, x, y, num_classes=3, head_steps=0)
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in fitted.values())
    assert not torch.allclose(flatten_embedding(fitted), flatten_embedding(unfitted))
    loop = fisher_diagonal_loop(net, x, y, num_classes=3, head_steps=30)
    for k in fitted:
        torch.testing.assert_close(fitted[k], loop[k], rtol=1e-4, atol=1e-7)


def test_timm_conv4_probe() -> None:
    import timm

    import tgr_hub  # noqa: F401  (registers conv4 with timm)

    assert timm.is_model("conv4")
    probe = timm.create_model("conv4", num_classes=0, width=8)
    x, y = _task(n=6, classes=5)
    x = nn.functional.interpolate(x, size=32)
    fast = fisher_diagonal(probe, x, y, num_classes=5, head_steps=5)
    slow = fisher_diagonal_loop(probe, x, y, num_classes=5, head_steps=5)
    assert set(fast) == {n for n, _ in probe.named_parameters()}
    for k in fast:
        torch.testing.assert_close(fast[k], slow[k], rtol=1e-4, atol=1e-8)


def test_bad_inputs() -> None:
    net = _probe()
    x, y = _task()
    with pytest.raises(EmbeddingError, match="labels must lie"):
        fisher_diagonal(net, x, y, num_classes=2)
    with pytest.raises(ValueError, match="N, C, H, W"):
        fisher_diagonal(net, x[0], y, num_classes=3)
    with pytest.raises(EmbeddingError, match="float"):
        fisher_diagonal(net, (x * 255).to(torch.uint8), y, num_classes=3)
    with pytest.raises(EmbeddingError, match="needs the task's labels"):
        fisher_diagonal(net, x, None, num_classes=3, method="reference")
    with pytest.raises(EmbeddingError, match="method"):
        fisher_diagonal(net, x, y, num_classes=3, method="fim")  # type: ignore[arg-type]
    with pytest.raises(EmbeddingError, match=r"\[B, D\]"):
        fisher_diagonal(nn.Conv2d(3, 2, 1), x, y, num_classes=3)  # returns [B, 2, H, W]
    with pytest.raises(EmbeddingError, match="no .*parameters"):
        fisher_diagonal(nn.Flatten(), x, y, num_classes=3)
    with pytest.raises(EmbeddingError, match=r"\[N\]"):
        fisher_diagonal(net, x, y[:-1], num_classes=3)


# --- dissimilarity ---------------------------------------------------------------------


def test_dissimilarity_by_hand() -> None:
    e1 = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([2.0, 2.0, 0.0])}
    e2 = {"a": torch.tensor([1.0, 1.0]), "b": torch.tensor([0.0, 0.0, 5.0])}
    d = dissimilarity_matrix([e1, e2], eps=0.0)
    # a: u = [1/2, 0], v = [1/2, 1] -> cos = (1/4) / (1/2 · √(5/4)); b: disjoint supports -> cos 0.
    cos_a = 0.25 / (0.5 * math.sqrt(1.25))
    expected = ((1 - cos_a) + 1.0) / 2
    assert d.dtype == torch.float64 and d.shape == (2, 2)
    assert d[0, 1].item() == pytest.approx(expected, rel=1e-12)
    assert d[1, 0].item() == pytest.approx(expected, rel=1e-12)


def test_dissimilarity_matrix_properties() -> None:
    gen = torch.Generator().manual_seed(0)
    embs = [{"w": torch.rand(5, 3, generator=gen) ** 3, "b": torch.rand(4, generator=gen)} for _ in range(6)]
    embs.append({k: v.clone() * 7.0 for k, v in embs[0].items()})  # same shape of Fisher, other scale
    embs.append({"w": torch.zeros(5, 3), "b": torch.zeros(4)})  # a dead task
    d = dissimilarity_matrix(embs)
    assert d.shape == (8, 8)
    assert torch.equal(d, d.T)
    assert torch.equal(torch.diagonal(d), torch.zeros(8, dtype=torch.float64))
    assert (d >= 0).all() and (d <= 1).all()
    assert 0 < d[0, 1] < 1
    assert d[0, 6] < d[0, 1]  # a scaled copy is more alike than an unrelated task
    # vs an all-zero Fisher every normalised vector is orthogonal to zero -> d = 1.
    torch.testing.assert_close(d[0, 7], torch.tensor(1.0, dtype=torch.float64))
    # Two all-zero embeddings count as identical.
    zz = dissimilarity_matrix([embs[7], embs[7]])
    assert zz[0, 1] == 0


def test_dissimilarity_on_real_fisher_embeddings() -> None:
    net = _probe()
    tasks = [_task(seed=s) for s in range(3)]
    embs = [fisher_diagonal(net, x, y, num_classes=3, head_steps=10) for x, y in tasks]
    d = dissimilarity_matrix(embs)
    assert torch.equal(d, d.T) and (torch.diagonal(d) == 0).all() and ((d >= 0) & (d <= 1)).all()
    assert (d[~torch.eye(3, dtype=torch.bool)] > 0).all()


def test_dissimilarity_bad_inputs() -> None:
    with pytest.raises(EmbeddingError):
        dissimilarity_matrix([])
    with pytest.raises(EmbeddingError, match="names"):
        dissimilarity_matrix([{"a": torch.ones(2)}, {"b": torch.ones(2)}])
    with pytest.raises(EmbeddingError, match="shape"):
        dissimilarity_matrix([{"a": torch.ones(2)}, {"a": torch.ones(3)}])
    with pytest.raises(EmbeddingError, match="non-negative"):
        dissimilarity_matrix([{"a": torch.ones(2)}, {"a": -torch.ones(2)}])
