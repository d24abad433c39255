"""ProtoNet and MAML against hand computations and reference implementations."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tgr_hub.errors import ConfigError, EpisodeError
from tgr_hub.learners import MAML, FinetunedClassifier, ProtoNet, make_learner, squared_distances

torch.set_num_threads(1)  # small tensors: extra threads only add contention


class Identity(nn.Module):
    """An "identity backbone": features are the inputs (a parameter-free feature extractor)."""

    feature_dim = 2

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))  # so that named_parameters() is not empty

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class LinearBackbone(nn.Module):
    """features = x @ W.T + b (D=3), float64 for finite differences."""

    feature_dim = 3

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.lin = nn.Linear(2, 3, dtype=torch.float64)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(3, 2, generator=g, dtype=torch.float64))
            self.lin.bias.copy_(torch.randn(3, generator=g, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.lin(x))


class TinyBN(nn.Module):
    """Conv + BatchNorm + pooling: [B, 3, 8, 8] -> [B, 4]."""

    feature_dim = 4

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x))).mean(dim=(2, 3))


# 2 classes, 2 support points each, in 2-D
SX = torch.tensor([[0.0, 0.0], [1.0, 0.0], [4.0, 4.0], [5.0, 4.0]])
SY = torch.tensor([0, 0, 1, 1])
QX = torch.tensor([[0.4, 0.1], [4.0, 3.0], [2.0, 2.0]])
QY = torch.tensor([0, 1, 1])


# --- ProtoNet -------------------------------------------------------------------------------------


def test_protonet_matches_hand_computed_nearest_prototype():
    classifier = ProtoNet().adapt(Identity(), SX, SY)
    # prototypes: class means (0.5, 0) and (4.5, 4)
    assert torch.allclose(classifier.prototypes, torch.tensor([[0.5, 0.0], [4.5, 4.0]]))
    # squared distances by hand: q0=(0.4,0.1): 0.01+0.01=0.02 | 16.81+15.21=32.02
    #                            q1=(4,3):     12.25+9=21.25 | 0.25+1=1.25
    #                            q2=(2,2):     2.25+4=6.25   | 6.25+4=10.25
    expected_logits = -torch.tensor([[0.02, 32.02], [21.25, 1.25], [6.25, 10.25]])
    assert torch.allclose(classifier.logits(QX), expected_logits, atol=1e-5)
    proba = classifier.predict_proba(QX)
    assert torch.allclose(proba, expected_logits.softmax(-1), atol=1e-6)
    assert torch.allclose(proba.sum(-1), torch.ones(3))
    assert classifier.predict(QX).tolist() == [0, 1, 0]  # q2 is nearer prototype 0 (6.25 < 10.25)


def test_protonet_episode_loss_is_query_cross_entropy():
    loss = ProtoNet().episode_loss(Identity(), SX, SY, QX, QY)
    logits = [[-0.02, -32.02], [-21.25, -1.25], [-6.25, -10.25]]
    # CE by hand: -log softmax(logits)[y], averaged
    hand = sum(
        -(row[y] - math.log(sum(math.exp(v) for v in row))) for row, y in zip(logits, QY.tolist())
    ) / 3
    assert loss.item() == pytest.approx(hand, rel=1e-5)


def test_squared_distances_exact():
    q = torch.tensor([[1.0, 2.0, 3.0]])
    p = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    assert squared_distances(q, p).tolist() == [[0.0, 14.0]]


def test_protonet_accepts_episode_object_and_params():
    class Ep:
        support_x, support_y, query_x, query_y = SX, SY, QX, QY

    model = LinearBackbone()
    sx, qx = SX.double(), QX.double()
    a = ProtoNet().episode_loss(model, sx, SY, qx, QY)
    ep = Ep()
    ep.support_x, ep.query_x = sx, qx
    b = ProtoNet().episode_loss(model, ep)
    # params substituted through functional_call: doubling the weights changes the loss; grads flow to them
    params = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
    c = ProtoNet().episode_loss(model, sx, SY, qx, QY, params=params)
    assert a.item() == pytest.approx(b.item()) == pytest.approx(c.item())
    grads = torch.autograd.grad(c, list(params.values()))
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    scaled = {k: 2 * v for k, v in params.items()}
    assert ProtoNet().episode_loss(model, sx, SY, qx, QY, params=scaled).item() != pytest.approx(a.item())


def test_missing_support_class_is_an_episode_error():
    with pytest.raises(EpisodeError):
        ProtoNet().adapt(Identity(), SX, torch.tensor([0, 0, 2, 2]))


# --- MAML -----------------------------------------------------------------------------------------


def test_maml_first_inner_step_matches_hand_sgd_step():
    """Zero head: logits 0, p = 1/way; dL/dW = (p - onehot)^T f / n, dL/db = mean(p - onehot)."""
    learner = MAML(inner_steps=1, inner_lr=0.5)
    model = Identity()
    fast = learner.clone(model, way=2)
    new = learner.adapt_step(model, fast, SX, SY, create_graph=False)
    residual = torch.full((4, 2), 0.5) - F.one_hot(SY, 2).float()  # [S, way]
    grad_w = residual.T @ SX / 4
    grad_b = residual.mean(0)
    assert torch.allclose(new[MAML.HEAD_WEIGHT], -0.5 * grad_w)
    assert torch.allclose(new[MAML.HEAD_BIAS], -0.5 * grad_b)
    # hand numbers: class 0 mean (0.5,0), class 1 mean (4.5,4): grad_w[0] = (0.5*mean_all - 0.5*mean_0)
    assert torch.allclose(new[MAML.HEAD_WEIGHT][0], -0.5 * torch.tensor([0.5 * 2.5 - 0.5 * 0.5, 0.5 * 2.0 - 0.0]))


def test_maml_inner_loop_matches_torch_sgd_reference():
    """Three inner steps of MAML == three torch.optim.SGD steps on backbone + zero linear head."""
    model = LinearBackbone(seed=1)
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    learner = MAML(inner_steps=3, inner_lr=0.3)
    fast = learner.adapt_fast(model, learner.clone(model, way=3), x, y, create_graph=False)

    reference = copy.deepcopy(model)
    head = nn.Linear(3, 3, dtype=torch.float64)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    optimizer = torch.optim.SGD(list(reference.parameters()) + list(head.parameters()), lr=0.3)
    for _ in range(3):
        optimizer.zero_grad()
        F.cross_entropy(head(reference(x)), y).backward()
        optimizer.step()
    assert torch.allclose(fast["lin.weight"], reference.lin.weight)
    assert torch.allclose(fast["lin.bias"], reference.lin.bias)
    assert torch.allclose(fast[MAML.HEAD_WEIGHT], head.weight)
    assert torch.allclose(fast[MAML.HEAD_BIAS], head.bias)
    # the model itself is untouched
    assert not torch.allclose(model.lin.weight, reference.lin.weight)


def _meta_setup():
    model = LinearBackbone(seed=2)
    g = torch.Generator().manual_seed(5)
    sx, qx = torch.randn(6, 2, generator=g, dtype=torch.float64), torch.randn(9, 2, generator=g, dtype=torch.float64)
    sy, qy = torch.tensor([0, 1, 2] * 2), torch.tensor([0, 1, 2] * 3)
    return model, sx, sy, qx, qy


def _meta_grad(learner, model, sx, sy, qx, qy, params):
    loss = learner.episode_loss(model, sx, sy, qx, qy, params=params)
    return torch.autograd.grad(loss, list(params.values()))


def test_second_order_matches_finite_differences_and_first_order_does_not():
    model, sx, sy, qx, qy = _meta_setup()
    params = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
    second = _meta_grad(MAML(inner_steps=2, inner_lr=0.5, first_order=False), model, sx, sy, qx, qy, params)
    first = _meta_grad(MAML(inner_steps=2, inner_lr=0.5, first_order=True), model, sx, sy, qx, qy, params)

    learner = MAML(inner_steps=2, inner_lr=0.5, first_order=False)
    eps = 1e-6
    numeric = []
    for name, value in params.items():
        grad = torch.zeros_like(value)
        for i in range(value.numel()):
            plus = {k: v.detach().clone() for k, v in params.items()}
            minus = {k: v.detach().clone() for k, v in params.items()}
            plus[name].view(-1)[i] += eps
            minus[name].view(-1)[i] -= eps
            for p in (plus, minus):
                for v in p.values():
                    v.requires_grad_(True)
            diff = learner.episode_loss(model, sx, sy, qx, qy, params=plus) - learner.episode_loss(model, sx, sy, qx, qy, params=minus)
            grad.view(-1)[i] = diff.item() / (2 * eps)
        numeric.append(grad)
    for analytic, reference in zip(second, numeric):
        assert torch.allclose(analytic, reference, atol=1e-6)
    # first order drops the Hessian terms: a different gradient
    assert not all(torch.allclose(a, b, atol=1e-4) for a, b in zip(first, second))


def test_first_order_equals_gradient_at_detached_fast_weights():
    """FOMAML's meta-gradient is the query gradient at the adapted weights, treated as constants."""
    model, sx, sy, qx, qy = _meta_setup()
    params = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
    learner = MAML(inner_steps=3, inner_lr=0.4, first_order=True)
    first = _meta_grad(learner, model, sx, sy, qx, qy, params)

    fast = learner.clone(model, 3, {k: v.detach().clone().requires_grad_(True) for k, v in params.items()})
    for _ in range(3):
        fast = learner.adapt_step(model, fast, sx, sy, create_graph=False)
        fast = {k: v.detach().requires_grad_(True) for k, v in fast.items()}
    query_loss = F.cross_entropy(learner.fast_logits(model, fast, qx), qy)
    detached = torch.autograd.grad(query_loss, [fast[k] for k in params])
    for a, b in zip(first, detached):
        assert torch.allclose(a, b)


def test_maml_any_way_and_adapt_leaves_model_unchanged():
    model = TinyBN()
    before = copy.deepcopy(model.state_dict())
    g = torch.Generator().manual_seed(0)
    learner = MAML(inner_steps=3, inner_lr=0.1)
    for way in (2, 5):
        sx = torch.rand(way * 2, 3, 8, 8, generator=g)
        sy = torch.arange(way).repeat_interleave(2)
        classifier = learner.adapt(model, sx, sy)
        assert isinstance(classifier, FinetunedClassifier)
        proba = classifier.predict_proba(torch.rand(7, 3, 8, 8, generator=g))
        assert proba.shape == (7, way)
        assert torch.allclose(proba.sum(-1), torch.ones(7))
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert model.training  # modes restored


def test_functional_call_with_buffers_in_train_mode():
    """episode_loss with params that include the BatchNorm buffers: the passed buffers are updated, not the module's."""
    model = TinyBN().train()
    g = torch.Generator().manual_seed(1)
    sx, qx = torch.rand(4, 3, 8, 8, generator=g), torch.rand(6, 3, 8, 8, generator=g)
    sy, qy = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1, 0, 1])
    own_buffers = {k: v.clone() for k, v in model.named_buffers()}
    params = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    for learner in (ProtoNet(), MAML(inner_steps=2, inner_lr=0.1, first_order=False)):
        loss = learner.episode_loss(model, sx, sy, qx, qy, params={**params, **buffers})
        grads = torch.autograd.grad(loss, list(params.values()))
        assert all(torch.isfinite(gr).all() for gr in grads)
    assert not torch.equal(buffers["bn.running_mean"], own_buffers["bn.running_mean"])  # updated copy
    for key, value in model.named_buffers():
        assert torch.equal(value, own_buffers[key]), key  # module untouched
    # same loss with and without explicit params (batch statistics either way)
    a = ProtoNet().episode_loss(model, sx, sy, qx, qy)
    b = ProtoNet().episode_loss(model, sx, sy, qx, qy, params=params)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


def test_bn_policies_batch_vs_running():
    model = TinyBN()
    with torch.no_grad():  # make running statistics differ from any batch's
        model.bn.running_mean.fill_(0.3)
        model.bn.running_var.fill_(2.0)
    model.eval()
    g = torch.Generator().manual_seed(2)
    sx, sy = torch.rand(4, 3, 8, 8, generator=g), torch.tensor([0, 0, 1, 1])
    qx = torch.rand(6, 3, 8, 8, generator=g)
    running = ProtoNet(bn="running").adapt(model, sx, sy)
    with torch.no_grad():
        expected = model(sx)
    assert torch.allclose(running.prototypes, torch.stack([expected[:2].mean(0), expected[2:].mean(0)]))
    # running statistics: a query's prediction does not depend on the other queries
    assert torch.allclose(running.logits(qx)[:1], running.logits(qx[:1]))
    batch = ProtoNet(bn="batch").adapt(model, sx, sy)
    reference = copy.deepcopy(model).train()
    with torch.no_grad():
        expected = reference(sx)
    assert torch.allclose(batch.prototypes, torch.stack([expected[:2].mean(0), expected[2:].mean(0)]), atol=1e-6)
    assert model.bn.running_mean.eq(0.3).all() and not model.training


def test_make_learner():
    assert isinstance(make_learner("protonet", inner_steps=5), ProtoNet)
    fo = make_learner("maml", inner_steps=2, inner_lr=0.1, first_order=True)
    assert isinstance(fo, MAML) and fo.first_order and fo.inner_steps == 2
    assert not make_learner("maml2").first_order
    ft = make_learner("finetune")
    assert (ft.inner_steps, ft.inner_lr) == (10, 0.01)
    with pytest.raises(ConfigError):
        make_learner("reptile")
    with pytest.raises(ConfigError):
        MAML(bn="support")
