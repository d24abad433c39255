"""The IGR step's per-task loss and task draw, against hand computations.

- ``pseudo_task_loss``: CE, the KL with log-probabilities for the model and probabilities for the
  teacher, the T² scaling and the weight, for both ``head`` and ``episodic`` losses;
- the ``head`` loss carries the label conflict (its gradients change when a teacher orders its
  classes differently), ProtoNet's episodic loss does not;
- ``_choose_teachers`` gives m tasks whatever the group's size;
- the seeded draws of a step (group, teachers, the pseudo-task's classes and images) follow the run
  seed through ``step_rng``, and ``make_pseudo_task``'s teacher targets are the softened teacher
  probabilities of the task's classes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tgr_hub.data import Episode
from tgr_hub.errors import ConfigError
from tgr_hub.igr import task_gradients
from tgr_hub.learners import make_learner
from tgr_hub.metamodel import create_meta_model
from tgr_hub.bank import MemoryBank, RecoveredTask
from tgr_hub.pool import PoolMember
from tgr_hub.train import (
    HEAD_BIAS,
    HEAD_WEIGHT,
    _choose_teachers,
    make_task_head,
    make_pseudo_task,
    pseudo_task_loss,
    step_rng,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WAY, SHOT, QUERY = 3, 2, 3


def _task(seed: int = 0, temperature: float = 2.0) -> Episode:
    gen = torch.Generator().manual_seed(seed)
    support_y = torch.arange(WAY).repeat_interleave(SHOT)
    query_y = torch.arange(WAY).repeat_interleave(QUERY)
    teacher_logits = torch.randn(WAY * (SHOT + QUERY), WAY, generator=gen)
    return Episode(torch.rand(WAY * SHOT, 3, 16, 16, generator=gen), support_y,
                   torch.rand(WAY * QUERY, 3, 16, 16, generator=gen), query_y, list(range(WAY)),
                   teacher_probs=F.softmax(teacher_logits / temperature, dim=-1))


def _model_and_params():
    model = create_meta_model("conv4", image_size=16, seed=0).train()
    head = make_task_head(model.feature_dim, 5, seed=0)
    params = {**dict(model.named_parameters()), HEAD_WEIGHT: head.weight, HEAD_BIAS: head.bias}
    return model, params


def _hand_kl(teacher_probs: torch.Tensor, logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(p_teacher ‖ p_model) at temperature T, averaged over images, written out."""
    model_probs = torch.softmax(logits / temperature, dim=-1)
    terms = teacher_probs * (torch.log(teacher_probs) - torch.log(model_probs))
    return terms.sum(dim=1).mean()


@pytest.mark.parametrize("weight", [0.0, 0.3])
def test_head_loss_is_ce_plus_weighted_scaled_kl_on_every_image(weight: float) -> None:
    model, params = _model_and_params()
    task, temperature = _task(), 2.0
    with torch.no_grad():
        images = torch.cat([task.support_x, task.query_x])
        feats = model(images)
        # the shared head's first WAY rows, the teacher's own label order
        logits = feats @ params[HEAD_WEIGHT][:WAY].T + params[HEAD_BIAS][:WAY]
        labels = torch.cat([task.support_y, task.query_y])
        ce = -torch.log_softmax(logits, dim=-1)[torch.arange(len(labels)), labels].mean()
        expected = ce + weight * temperature**2 * _hand_kl(task.teacher_probs, logits, temperature)
        got = pseudo_task_loss(make_learner("protonet"), model, task, params, kind="head", distill_weight=weight,
                               temperature=temperature)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_episodic_loss_is_query_ce_plus_weighted_scaled_kl_on_the_query() -> None:
    model, params = _model_and_params()
    task, temperature, weight = _task(1), 3.0, 0.5
    with torch.no_grad():
        support, query = model(task.support_x), model(task.query_x)
        prototypes = torch.stack([support[task.support_y == c].mean(0) for c in range(WAY)])
        logits = -((query[:, None, :] - prototypes[None]) ** 2).sum(-1)  # ProtoNet: negative squared distances
        ce = -torch.log_softmax(logits, dim=-1)[torch.arange(len(task.query_y)), task.query_y].mean()
        query_probs = task.teacher_probs[WAY * SHOT:]  # the teacher's predictions on the query images only
        expected = ce + weight * temperature**2 * _hand_kl(query_probs, logits, temperature)
        got = pseudo_task_loss(make_learner("protonet"), model, task, params, kind="episodic", distill_weight=weight,
                               temperature=temperature)
    assert got.item() == pytest.approx(expected.item(), rel=1e-4)


def test_an_unknown_task_loss_is_a_typed_error() -> None:
    model, params = _model_and_params()
    with pytest.raises(ConfigError, match="unknown task loss"):
        pseudo_task_loss(make_learner("protonet"), model, _task(), params, kind="prototypes", distill_weight=0.0,
                         temperature=1.0)


def _permuted(task: Episode, order: list[int]) -> Episode:
    """The same images, the teacher numbering its classes as ``order`` says (class c becomes order[c])."""
    relabel = torch.tensor(order)
    inverse = torch.argsort(relabel)
    return Episode(task.support_x, relabel[task.support_y], task.query_x, relabel[task.query_y], task.classes,
                   teacher_probs=task.teacher_probs[:, inverse])


@pytest.mark.parametrize("learner_name", ["protonet", "maml"])
def test_head_gradients_see_the_label_order_and_protonet_gradients_do_not(learner_name: str) -> None:
    model, params = _model_and_params()
    learner = make_learner(learner_name, inner_steps=1, inner_lr=0.01)
    task, order = _task(2), [2, 0, 1]
    assert _permuted(_permuted(task, order), [1, 2, 0]).support_y.tolist() == task.support_y.tolist()  # a bijection
    body = [k for k in params if not k.startswith("__")]

    def grads(kind: str, t: Episode) -> torch.Tensor:
        fn = lambda p: pseudo_task_loss(learner, model, t, p, kind=kind, distill_weight=0.0, temperature=1.0)  # noqa: E731
        _, (g,) = task_gradients([fn], params, fuse=False)
        return torch.cat([g[k].flatten() for k in body])

    head, head_permuted = grads("head", task), grads("head", _permuted(task, order))
    assert (head - head_permuted).norm() > 0.05 * head.norm()  # the conflict: another label order, another pull
    episodic, episodic_permuted = grads("episodic", task), grads("episodic", _permuted(task, order))
    # ProtoNet's prototypes, and MAML's zero-initialised head, follow the labels: the episodic loss does not
    # see how a teacher numbers its classes (equal up to float summation order)
    assert (episodic - episodic_permuted).norm() < 1e-4 * episodic.norm()


@pytest.mark.parametrize("groups", [[[3]], [[1, 2]], [[0, 1, 2, 3, 4, 5]], [[0], [1, 2], [3, 4, 5]]])
def test_every_step_draws_m_tasks_whatever_the_group_size(groups: list[list[int]]) -> None:
    m = 4
    for step in range(50):
        chosen = _choose_teachers(groups, m, np.random.default_rng([0, step]))
        assert len(chosen) == m
        assert any(set(chosen) <= set(g) for g in groups)  # all from one group
    two = [_choose_teachers([[1, 2]], m, np.random.default_rng([0, s])) for s in range(50)]
    assert {t for c in two for t in c} == {1, 2}  # with replacement, both members of a pair are drawn


def test_the_teacher_draw_follows_its_seed() -> None:
    groups = [[0, 1, 2], [3, 4, 5, 6]]
    draws = lambda seed: [_choose_teachers(groups, 4, np.random.default_rng([seed, s])) for s in range(20)]  # noqa: E731
    assert draws(0) == draws(0) and draws(0) != draws(1)


def test_the_teacher_choice_of_a_step_follows_the_run_seed() -> None:
    groups = [[0, 1, 2], [3, 4, 5, 6]]
    draws = lambda seed: [_choose_teachers(groups, 3, step_rng(seed, s, 0)) for s in range(30)]  # noqa: E731
    first = draws(0)
    assert first == draws(0) and first != draws(1)
    assert [c[0] < 3 for c in first] != [c[0] < 3 for c in draws(1)]  # the group too, not only its members
    assert {c[0] < 3 for c in first} == {True, False}  # and both groups are drawn


def _member(classes: int = 6, size: int = 8) -> PoolMember:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * size * size, classes)).eval().requires_grad_(False)
    return PoolMember(name="t0", source="./t0", model=model, architecture="test",
                      label_names=[f"t0/c{i}" for i in range(classes)], input_size=(3, size, size),
                      mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def _bank(member: PoolMember, per_class: int = 5) -> MemoryBank:
    classes = list(range(member.num_classes))
    images = torch.rand(len(classes) * per_class, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    bank = MemoryBank(1)
    bank.add(RecoveredTask(images=images, labels=torch.tensor(classes).repeat_interleave(per_class), teacher=member.name,
                           loss=0.0, classes=classes))
    return bank


def test_pseudo_task_targets_are_the_softened_teacher_probabilities_of_its_classes() -> None:
    member = _member()
    bank = _bank(member)
    temperature = 3.0
    task = make_pseudo_task(member, bank, way=3, shot=2, query=2, temperature=temperature, rng=np.random.default_rng(0))
    images = torch.cat([task.support_x, task.query_x])
    assert task.support_y.tolist() == [0, 0, 1, 1, 2, 2] and task.query_y.tolist() == [0, 0, 1, 1, 2, 2]
    # by hand: which teacher class each image is (the bank's images are unique), then its softened probabilities
    stored = [bank.images_of("t0", c).float() / 255 for c in range(6)]
    owner = [next(c for c in range(6) if any(torch.equal(x, y) for y in stored[c])) for x in images]
    classes = sorted(set(owner))
    assert len(classes) == 3 and [classes.index(c) for c in owner] == torch.cat([task.support_y, task.query_y]).tolist()
    with torch.no_grad():
        logits = member.model((images - 0.5) / 0.25)[:, classes]
    expected = torch.exp(logits / temperature) / torch.exp(logits / temperature).sum(1, keepdim=True)
    torch.testing.assert_close(task.teacher_probs, expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(task.teacher_probs, torch.softmax(logits, 1), atol=1e-3)  # T really softens


def test_the_pseudo_task_of_a_step_follows_the_run_seed() -> None:
    member = _member()
    bank = _bank(member)
    tasks = lambda seed: [make_pseudo_task(member, bank, way=3, shot=2, query=2, temperature=1.0,  # noqa: E731
                                           rng=step_rng(seed, s, 1, 0)) for s in range(4)]
    first, again, other = tasks(0), tasks(0), tasks(1)
    assert all(torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, b.query_x) for a, b in zip(first, again))
    assert any(not torch.equal(a.support_x, b.support_x) for a, b in zip(first, other))
