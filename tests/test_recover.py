"""Model inversion (tgr_hub.recover) and the memory bank.

The teacher is a tiny BN conv net trained here for well under a second on a synthetic,
separable 5-class image task (each class a coloured sine grating of its own frequency and
orientation, plus noise), at 16×16 so the reference-size generator stays cheap on a CPU.
"""

from __future__ import annotations

import dataclasses

import json
import logging
import math
from collections.abc import Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tgr_hub.config import RecoverConfig
from tgr_hub.bank import BANK_INDEX, MemoryBank, RecoveredTask
from tgr_hub.errors import EpisodeError, MemoryBankError, RecoverError, RunFolderError
from tgr_hub.models.generator import Generator
from tgr_hub.pool import PoolMember
from tgr_hub.recover import (
    WarmGenerator,
    _BNStatisticsLoss,
    bn_layers,
    crop_padding_for,
    random_crop_flip,
    recover_task,
    recover_teachers,
    recovery_quality,
    sample_task_classes,
)

SIZE = 16
WAY = 5


def synthetic_task(per_class: int, size: int = SIZE, classes: int = WAY, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Separable images: class c is a coloured sine grating (frequency c+1, alternating direction) + noise."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    xs, ys = [], []
    for c in range(classes):
        colour = 0.3 + 0.7 * torch.rand(3, 1, 1, generator=g)
        grating = (0.5 + 0.5 * torch.sin(2 * math.pi * (c + 1) * (xx if c % 2 else yy)))[None] * colour
        xs.append((grating + 0.1 * torch.randn(per_class, 3, size, size, generator=g)).clamp(0, 1))
        ys.append(torch.full((per_class,), c))
    return torch.cat(xs), torch.cat(ys)


class BNTeacher(nn.Module):
    """Conv-BN-ReLU-Pool ×2, then a BatchNorm1d on the pooled features and a linear head."""

    def __init__(self, classes: int = WAY) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.BatchNorm1d(32),
        )
        self.head = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class PlainTeacher(nn.Module):
    """No BatchNorm at all."""

    def __init__(self, classes: int = WAY) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                                 nn.Linear(32, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def make_member(model: nn.Module, name: str = "t0", size: int = SIZE, classes: int = WAY) -> PoolMember:
    model.eval().requires_grad_(False)
    return PoolMember(
        name=name, source=f"./{name}", model=model, architecture="test", label_names=[f"{name}/c{i}" for i in range(classes)],
        input_size=(3, size, size), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
    )


def train_teacher(model: nn.Module, member_like: PoolMember, epochs: int = 6, seed: int = 0) -> float:
    """A few epochs of Adam on the synthetic task; returns training accuracy."""
    torch.manual_seed(seed)  # module init already happened; this only seeds the batch order below
    x, y = synthetic_task(60, seed=seed)
    model.train().requires_grad_(True)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    order = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=order)
        for i in range(0, len(x), 50):
            idx = perm[i:i + 50]
            loss = F.cross_entropy(model(member_like.normalize(x[idx])), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval().requires_grad_(False)
    with torch.no_grad():
        return float((model(member_like.normalize(x)).argmax(1) == y).float().mean())


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """These workloads are tiny: one thread is as fast, and far faster on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def teacher(one_thread: None) -> PoolMember:
    torch.manual_seed(0)
    member = make_member(BNTeacher())
    accuracy = train_teacher(member.model, member)
    assert accuracy >= 0.99, accuracy  # the task is separable; the teacher must be good for the test to mean anything
    return member


def small_cfg(**overrides) -> RecoverConfig:
    values = dict(steps=3, images_per_class=2, latent_dim=16)
    values.update(overrides)
    return RecoverConfig(**values)


def hooks_of(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


# --- the "must show" ---------------------------------------------------------------------


@pytest.mark.slow
def test_recovered_images_are_classified_as_intended_and_bn_loss_falls(teacher: PoolMember) -> None:
    # reference generator, latent size, lr and betas; fewer steps and images (≥95% from ~step 11 here)
    cfg = RecoverConfig(steps=20, images_per_class=6)
    task = recover_task(teacher, list(range(WAY)), cfg, seed=0)

    assert task.images.shape == (WAY * 6, 3, SIZE, SIZE) and task.images.dtype == torch.float32
    assert float(task.images.min()) >= 0.0 and float(task.images.max()) <= 1.0
    assert task.labels.tolist() == [c for c in range(WAY) for _ in range(6)]
    with torch.no_grad():
        predicted = teacher.logits(task.images).argmax(1)
    accuracy = float((predicted == task.labels).float().mean())
    assert accuracy >= 0.95, accuracy
    assert len(task.bn_history) == len(task.ce_history) == cfg.steps
    assert task.bn_history[-1] < 0.5 * task.bn_history[0], task.bn_history
    assert task.ce_history[-1] < task.ce_history[0]
    # the kept iterate is the lowest-loss one
    totals = [c + cfg.bn_weight * b for c, b in zip(task.ce_history, task.bn_history)]
    assert task.best_step == int(np.argmin(totals)) and task.loss == pytest.approx(min(totals))
    assert task.classes == list(range(WAY)) and task.class_names == [f"t0/c{i}" for i in range(WAY)]
    assert task.generator is None  # not asked to reuse


def test_teacher_is_left_as_it_was(teacher: PoolMember) -> None:
    before = {k: v.clone() for k, v in teacher.model.state_dict().items()}
    recover_task(teacher, [0, 1], small_cfg(), seed=1)
    assert hooks_of(teacher.model) == 0
    assert not teacher.model.training
    assert all(not p.requires_grad for p in teacher.model.parameters())
    after = teacher.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # incl. BN running statistics

    # a trainable, train-mode teacher is frozen during recovery and restored afterwards
    model = BNTeacher()
    member = make_member(model)
    model.train().requires_grad_(True)
    recover_task(member, [0], small_cfg(), seed=0)
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())


def test_hooks_are_removed_on_error(teacher: PoolMember) -> None:
    class Failing(PoolMember):
        calls = 0

        def normalize(self, images01: torch.Tensor) -> torch.Tensor:
            Failing.calls += 1
            if Failing.calls == 2:
                assert hooks_of(self.model) == len(bn_layers(self.model)) == 3  # hooks were in place
                raise RuntimeError("boom")
            return super().normalize(images01)

    member = Failing(**{f: getattr(teacher, f) for f in ("name", "source", "model", "architecture", "label_names",
                                                         "input_size", "mean", "std")})
    with pytest.raises(RuntimeError, match="boom"):
        recover_task(member, [0, 1], small_cfg(), seed=0)
    assert hooks_of(teacher.model) == 0


def test_teacher_without_batchnorm_warns_and_uses_ce_only(caplog: pytest.LogCaptureFixture) -> None:
    torch.manual_seed(1)
    member = make_member(PlainTeacher(), name="plain")
    caplog.set_level(logging.WARNING, logger="tgr_hub.recover")
    task = recover_task(member, [0, 2, 4], small_cfg(steps=4), seed=0)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "plain" in warnings[0].getMessage() and "BatchNorm" in warnings[0].getMessage()
    assert task.bn_history == [0.0] * 4
    assert task.loss == pytest.approx(min(task.ce_history))
    assert task.images.shape == (6, 3, SIZE, SIZE)
    assert task.labels.tolist() == [0, 0, 2, 2, 4, 4]  # teacher class ids, not re-indexed


def test_recovery_is_deterministic_for_a_seed(teacher: PoolMember) -> None:
    first = recover_task(teacher, [3, 1], small_cfg(), seed=7)
    second = recover_task(teacher, [3, 1], small_cfg(), seed=7)
    other = recover_task(teacher, [3, 1], small_cfg(), seed=8)
    assert torch.equal(first.images, second.images)
    assert first.ce_history == second.ce_history and first.bn_history == second.bn_history
    assert not torch.equal(first.images, other.images)
    assert first.labels.tolist() == [3, 3, 1, 1]


def test_bad_classes_are_refused(teacher: PoolMember) -> None:
    for classes in ([], [0, 0], [5], [-1]):
        with pytest.raises(RecoverError):
            recover_task(teacher, classes, small_cfg(), seed=0)


# --- pieces ------------------------------------------------------------------------------


def test_bn_statistics_loss_matches_hand_computation() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 6), nn.BatchNorm1d(6))
    for bn in (model[1], model[4]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    model.eval()
    x = torch.randn(10, 3, 6, 6)
    with _BNStatisticsLoss(model) as hooks:
        model(x)
        loss = hooks.pop(x)
    assert hooks_of(model) == 0

    h1 = model[0](x)  # input of the BatchNorm2d: statistics over batch and space
    mean1 = h1.permute(1, 0, 2, 3).reshape(4, -1).mean(1)
    var1 = ((h1.permute(1, 0, 2, 3).reshape(4, -1) - mean1[:, None]) ** 2).mean(1)
    h2 = model[3](model[2](model[1](h1)))  # input of the BatchNorm1d: statistics over the batch
    mean2, var2 = h2.mean(0), ((h2 - h2.mean(0)) ** 2).mean(0)
    expected = (
        (mean1 - model[1].running_mean).norm() + (var1 - model[1].running_var).norm()
        + (mean2 - model[4].running_mean).norm() + (var2 - model[4].running_var).norm()
    )
    torch.testing.assert_close(loss, expected)


def test_random_crop_flip_matches_a_per_image_loop() -> None:
    images = torch.rand(7, 3, 10, 12, requires_grad=True)
    pad = 3
    out = random_crop_flip(images, pad, torch.Generator().manual_seed(5))

    rng = torch.Generator().manual_seed(5)  # the same draws, in the same order
    offsets = torch.randint(0, 2 * pad + 1, (7, 2), generator=rng)
    flips = torch.rand(7, generator=rng) < 0.5
    assert 0 < int(flips.sum()) < 7 and len({tuple(o) for o in offsets.tolist()}) > 1  # the draw exercises both paths
    reference = []
    for i in range(7):
        padded = F.pad(images[i], (pad, pad, pad, pad))
        dy, dx = offsets[i].tolist()
        crop = padded[:, dy:dy + 10, dx:dx + 12]
        reference.append(crop.flip(-1) if flips[i] else crop)
    reference = torch.stack(reference)
    assert torch.equal(out, reference)

    weights = torch.randn_like(out)
    (grad,) = torch.autograd.grad((out * weights).sum(), images)
    (grad_ref,) = torch.autograd.grad((reference * weights).sum(), images)
    torch.testing.assert_close(grad, grad_ref)


def test_crop_padding_scales_with_input_size() -> None:
    assert [crop_padding_for(s) for s in (32, 16, 84, 224, 8)] == [4, 2, 10, 28, 1]


def test_sample_task_classes() -> None:
    few = make_member(PlainTeacher(classes=4), classes=4)
    assert sample_task_classes(few, 5, np.random.default_rng(0)) == [0, 1, 2, 3]
    many = make_member(PlainTeacher(classes=20), classes=20)
    picked = sample_task_classes(many, 5, np.random.default_rng(3))
    assert len(picked) == 5 == len(set(picked)) and picked == sorted(picked) and all(0 <= c < 20 for c in picked)
    assert picked == sample_task_classes(many, 5, np.random.default_rng(3))
    draws = {tuple(sample_task_classes(many, 5, np.random.default_rng(s))) for s in range(5)}
    assert len(draws) > 1


def test_generator_shapes_seeding_and_odd_sizes() -> None:
    state = torch.random.get_rng_state()
    g1, g2 = Generator(8, 12, seed=3), Generator(8, 12, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # private RNG only
    assert all(torch.equal(a, b) for a, b in zip(g1.state_dict().values(), g2.state_dict().values()))
    assert not torch.equal(g1.fc.weight, Generator(8, 12, seed=4).fc.weight)
    z = torch.randn(4, 8)
    with torch.no_grad():
        out, odd_out = g1(z), Generator(8, (30, 18))(z)
    assert out.shape == (4, 3, 12, 12) and 0 <= float(out.min()) and float(out.max()) <= 1
    # reference layout: Linear -> 128 x (s/4)^2 ... -> Conv(64) -> Conv(3)
    assert g1.fc.out_features == 128 * 3 * 3 and g1.blocks[6].out_channels == 64
    assert Generator(8, (30, 18)).work_size == (32, 20)  # generated at 32x20, resized
    assert odd_out.shape == (4, 3, 30, 18) and float(odd_out.min()) >= 0 and float(odd_out.max()) <= 1
    with pytest.raises(ValueError):
        g1(torch.randn(4, 9))


def test_generator_reuse(teacher: PoolMember) -> None:
    cfg = small_cfg(reuse_generator=True)
    first = recover_task(teacher, [0, 1], cfg, seed=0)
    assert isinstance(first.generator, Generator)
    weights = first.generator.fc.weight.detach().clone()
    second = recover_task(teacher, [2, 3], cfg, seed=1, generator=first.generator)
    assert second.generator is first.generator  # optimised in place, handed back
    assert not torch.equal(weights, second.generator.fc.weight)
    with pytest.raises(RecoverError, match="generator"):
        recover_task(teacher, [0], small_cfg(latent_dim=32), seed=0, generator=first.generator)


def test_recover_teachers_fills_the_bank(teacher: PoolMember) -> None:
    torch.manual_seed(2)
    other = make_member(PlainTeacher(classes=8), name="t1", classes=8)
    bank = MemoryBank(4)
    seen: list[RecoveredTask] = []
    kept = recover_teachers([teacher, other], small_cfg(steps=2, max_way=3, reuse_generator=True), bank, seed=0,
                            recoveries=2, on_task=seen.append, return_generators=True)
    assert [t.teacher for t in seen] == ["t0", "t0", "t1", "t1"]  # one teacher after the other
    assert set(kept) == {"t0", "t1"} and all(isinstance(g, Generator) for g in kept.values())
    assert bank.teachers() == ["t0", "t1"] and bank.tasks_of("t0") == bank.tasks_of("t1") == 2
    assert all(len(t.classes) == 3 for t in seen)  # max_way-subsets of both teachers
    assert len(bank) == 4 * 3 * 2
    assert bank.class_name("t1", seen[2].classes[0]) == f"t1/c{seen[2].classes[0]}"
    assert recover_teachers([teacher, other], small_cfg(steps=2, reuse_generator=True), MemoryBank(2), seed=0) == {}


def test_recover_teachers_resumes_exactly(teacher: PoolMember, tmp_path) -> None:
    torch.manual_seed(3)
    members = [teacher, make_member(PlainTeacher(classes=7), name="t1", classes=7)]
    cfg = small_cfg(steps=2, max_way=4)
    whole = MemoryBank(5)
    recover_teachers(members, cfg, whole, seed=4, recoveries=2)

    class Stop(Exception):
        pass

    path = tmp_path / "recovered" / "bank.safetensors"
    partial = MemoryBank(5)

    def save_then_stop(task: RecoveredTask) -> None:
        partial.save(path)
        if partial.tasks_of("t1") == 1:
            raise Stop  # interrupted in the middle of the second teacher

    with pytest.raises(Stop):
        recover_teachers(members, cfg, partial, seed=4, recoveries=2, on_task=save_then_stop)
    resumed = MemoryBank.load(path)
    assert resumed.tasks_of("t0") == 2 and resumed.tasks_of("t1") == 1
    ran: list[RecoveredTask] = []
    recover_teachers(members, cfg, resumed, seed=4, recoveries=2, on_task=ran.append)
    assert [t.teacher for t in ran] == ["t1"]  # only the missing recovery
    assert resumed.keys() == whole.keys()
    for key in whole.keys():
        assert torch.equal(resumed.images_of(*key), whole.images_of(*key))

    skipped: list[RecoveredTask] = []
    recover_teachers(members, cfg, MemoryBank(5), seed=4, recoveries=1, skip={"t0"}, on_task=skipped.append)
    assert [t.teacher for t in skipped] == ["t1"]


# --- memory bank -------------------------------------------------------------------------


def constant_task(teacher: str, classes: list[int], per_class: int, value: int, size: int = 8) -> RecoveredTask:
    """Images of class c are constant, (value + c) / 255: which recovery and class an image came from is readable."""
    images = torch.cat([torch.full((per_class, 3, size, size), (value + c) / 255) for c in classes])
    labels = torch.tensor(classes).repeat_interleave(per_class)
    return RecoveredTask(images=images, labels=labels, teacher=teacher, loss=0.0, classes=classes,
                         class_names=[f"{teacher}/c{c}" for c in classes])


def stored_values(bank: MemoryBank, teacher: str, cls: int) -> list[int]:
    return [int(s[0, 0, 0, 0]) for s in bank._slots[(teacher, cls)]]


def test_bank_caps_per_class_and_overwrites_cyclically() -> None:
    bank = MemoryBank(bank_size=3)
    for r in range(5):
        bank.add(constant_task("a", [0, 2], per_class=4, value=10 * r))
    assert bank.teachers() == ["a"] and bank.classes_of("a") == [0, 2] and bank.classes_of("zz") == []
    assert bank.recoveries("a", 0) == 3 and len(bank) == 2 * 3 * 4
    # recoveries 0,1,2 fill slots 0,1,2; recovery 3 overwrites slot 0, recovery 4 slot 1
    assert stored_values(bank, "a", 0) == [30, 40, 20]
    assert stored_values(bank, "a", 2) == [32, 42, 22]
    assert bank.images_of("a", 0).dtype == torch.uint8 and bank.images_of("a", 0).shape == (12, 3, 8, 8)


def test_bank_quantises_to_uint8_within_half_a_step() -> None:
    images = torch.rand(6, 3, 5, 5)
    task = RecoveredTask(images=images, labels=torch.tensor([1, 1, 1, 2, 2, 2]), teacher="q", loss=0.0)
    bank = MemoryBank(2)
    bank.add(task)
    x, y = bank.task_for("q", None, None, np.random.default_rng(0))
    assert y.tolist() == [1, 1, 1, 2, 2, 2]
    assert float((x - images).abs().max()) <= 0.5 / 255 + 1e-7


def test_bank_task_for() -> None:
    bank = MemoryBank(4)
    bank.add(constant_task("a", [0, 1, 2], per_class=5, value=0))
    bank.add(constant_task("a", [0, 1, 2], per_class=5, value=100))
    x, y = bank.task_for("a", [2, 0], 7, np.random.default_rng(0))
    assert x.shape == (14, 3, 8, 8) and y.tolist() == [2] * 7 + [0] * 7
    values = (x[:, 0, 0, 0] * 255).round().long()
    assert set(values[:7].tolist()) <= {2, 102} and set(values[7:].tolist()) <= {0, 100}
    x_all, y_all = bank.task_for("a", None, None, np.random.default_rng(0))
    assert x_all.shape[0] == 30 and y_all.bincount().tolist() == [10, 10, 10]
    with pytest.raises(EpisodeError):
        bank.task_for("a", [0], 11, np.random.default_rng(0))
    x_few, y_few = bank.task_for("a", [0, 1], 11, np.random.default_rng(0), allow_fewer=True)
    assert x_few.shape[0] == 20 and y_few.tolist() == [0] * 10 + [1] * 10
    with pytest.raises(MemoryBankError):
        bank.task_for("nobody", None, 1, np.random.default_rng(0))
    with pytest.raises(MemoryBankError):
        bank.task_for("a", [9], 1, np.random.default_rng(0))


def test_bank_save_load_round_trip(tmp_path) -> None:
    bank = MemoryBank(bank_size=2)
    for r in range(3):
        bank.add(constant_task("a", [0, 1], per_class=3, value=10 * r, size=8))
    bank.add(constant_task("b", [4], per_class=2, value=200, size=12))
    bank.save(tmp_path / "bank")
    assert not list((tmp_path / "bank").glob("*.tmp"))
    index = json.loads((tmp_path / "bank" / BANK_INDEX).read_text())
    assert index["bank_size"] == 2 and len(index["entries"]) == 3

    loaded = MemoryBank.load(tmp_path / "bank")
    assert loaded.teachers() == ["a", "b"] and loaded.keys() == bank.keys() and len(loaded) == len(bank)
    for key in bank.keys():
        assert torch.equal(loaded.images_of(*key), bank.images_of(*key))
        assert loaded.class_name(*key) == bank.class_name(*key)
    # the cyclic cursor survives: recovery 3 overwrites the oldest slot (recovery 1, in slot 1)
    assert stored_values(loaded, "a", 0) == [20, 10]
    loaded.add(constant_task("a", [0, 1], per_class=3, value=30))
    assert stored_values(loaded, "a", 0) == [20, 30]

    assert loaded.tasks_of("a") == 4 and loaded.tasks_of("b") == 1  # 3 saved + 1 added since

    smaller = MemoryBank.load(tmp_path / "bank", bank_size=1)  # keeps the newest recovery
    assert stored_values(smaller, "a", 0) == [20] and smaller.bank_size == 1 and smaller.tasks_of("a") == 3

    # a .safetensors path: the index goes beside it, same name with .json
    bank.save(tmp_path / "run" / "recovered" / "bank.safetensors")
    assert sorted(p.name for p in (tmp_path / "run" / "recovered").iterdir()) == ["bank.json", "bank.safetensors"]
    as_file = MemoryBank.load(tmp_path / "run" / "recovered" / "bank.safetensors")
    assert as_file.keys() == bank.keys() and torch.equal(as_file.images_of("b", 4), bank.images_of("b", 4))
    MemoryBank(3).save(tmp_path / "empty.safetensors")
    assert len(MemoryBank.load(tmp_path / "empty.safetensors")) == 0

    # a save interrupted between the two renames is detected
    index["generation"] = "0" * 16
    (tmp_path / "bank" / BANK_INDEX).write_text(json.dumps(index))
    with pytest.raises(MemoryBankError, match="different saves"):
        MemoryBank.load(tmp_path / "bank")
    with pytest.raises(RunFolderError):
        MemoryBank.load(tmp_path / "nowhere")


def test_bank_episodes_mix_teachers_with_exact_counts() -> None:
    bank = MemoryBank(3)
    bank.add(constant_task("small", [0, 1, 2], per_class=4, value=0, size=8))
    bank.add(constant_task("small", [0, 1, 2], per_class=4, value=0, size=8))
    bank.add(constant_task("big", [0, 1, 2, 3], per_class=6, value=100, size=20))
    bank.add(constant_task("tiny", [5], per_class=2, value=50, size=8))  # too few images for the episodes below
    rng = np.random.default_rng(0)
    teachers_seen: set[str] = set()
    mixed = False
    for _ in range(10):
        episode = bank.sample_episode(4, 2, 3, rng, resize_to=16)
        assert episode.support_x.shape == (8, 3, 16, 16) and episode.query_x.shape == (12, 3, 16, 16)
        assert episode.support_y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
        assert episode.query_y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
        assert len(set(episode.classes)) == 4 and ("tiny", 5) not in episode.classes
        for label, (teacher, cls) in enumerate(episode.classes):
            expected = (100 if teacher == "big" else 0) + cls  # constant images stay constant when resized
            for images in (episode.support_x[episode.support_y == label], episode.query_x[episode.query_y == label]):
                torch.testing.assert_close(images, torch.full_like(images, expected / 255))
        teachers_seen |= {t for t, _ in episode.classes}
        if len({t for t, _ in episode.classes}) == 2:
            mixed = True
    assert teachers_seen == {"small", "big"} and mixed
    assert bank.sample_episode(7, 2, 3, rng, resize_to=8).support_x.shape == (14, 3, 8, 8)  # every eligible key
    with pytest.raises(EpisodeError):
        bank.sample_episode(8, 2, 3, rng, resize_to=8)


def test_bank_episode_never_repeats_a_shared_class() -> None:
    bank = MemoryBank(2)
    for teacher in ("a", "b"):
        task = constant_task(teacher, [0, 1], per_class=3, value=0)
        task.class_names = ["latin/A", "latin/B"]  # both teachers know the same two classes
        bank.add(task)
    rng = np.random.default_rng(0)
    for _ in range(10):
        episode = bank.sample_episode(2, 1, 1, rng, resize_to=8)
        assert sorted(bank.class_name(*k) for k in episode.classes) == ["latin/A", "latin/B"]
    with pytest.raises(EpisodeError):
        bank.sample_episode(3, 1, 1, rng, resize_to=8)
    assert bank.sample_episode(4, 1, 1, rng, resize_to=8, distinct_names=False).support_x.shape[0] == 4


def test_seed_streams_never_coincide() -> None:
    """Each stream has its own constant in second place: the old [seed, i, 2] (embedding) and
    [seed, i, r=2] (recovery) collision, and zero-padding look-alikes, cannot happen."""
    from tgr_hub import seeds

    constants = [seeds.RECOVER, seeds.EMBED, seeds.TRAIN, seeds.RECOVER_ONLINE, seeds.GENERATOR_INIT]
    assert len(set(constants)) == len(constants)
    drawn = [tuple(seeds.seed_sequence(0, stream, 1, 2).generate_state(4)) for stream in constants]
    drawn += [tuple(seeds.seed_sequence(0, seeds.EMBED, 1, 0).generate_state(4)),
              tuple(seeds.seed_sequence(0, seeds.TRAIN, 1, 0).generate_state(4))]
    assert len(set(drawn)) == len(drawn)
    # a SeedSequence pads with zeros: why the stream constant, not the key length, separates streams
    assert tuple(np.random.SeedSequence([0, 1, 2]).generate_state(4)) == \
        tuple(np.random.SeedSequence([0, 1, 2, 0]).generate_state(4))


# --- warm start (online recovery) -------------------------------------------------------------------


def _adam_steps(warm: WarmGenerator) -> set[int]:
    return {int(state["step"]) for state in warm.optimizer.state_dict()["state"].values()}


def test_warm_recovery_continues_the_generator_and_its_adam_state(teacher: PoolMember) -> None:
    cfg = small_cfg(generator_width=8)
    warm = WarmGenerator.for_teacher(teacher, cfg, run_seed=0, index=0)
    initial = {k: v.clone() for k, v in warm.generator.state_dict().items()}
    first = recover_task(teacher, [0, 1, 2], cfg, seed=10, warm=warm, steps=3)
    assert warm.recoveries == 1 and _adam_steps(warm) == {3}
    assert first.generator is None  # the warm state is the caller's, not handed back in the task
    moved = warm.generator.state_dict()
    assert any(not torch.equal(moved[k], initial[k]) for k in initial if moved[k].is_floating_point())
    second = recover_task(teacher, [0, 1, 2], cfg, seed=11, warm=warm, steps=2)
    assert warm.recoveries == 2 and _adam_steps(warm) == {5}  # the step count carries over: 3 + 2
    # the same seed from a fresh generator gives other images: the warm state is really used
    fresh = recover_task(teacher, [0, 1, 2], cfg, seed=11, warm=WarmGenerator.for_teacher(teacher, cfg, 0, 0), steps=2)
    assert not torch.equal(second.images, fresh.images)
    with pytest.raises(RecoverError, match="either generator or warm"):
        recover_task(teacher, [0], cfg, seed=0, warm=warm, generator=warm.generator)


def test_warm_state_round_trip_continues_bitwise(teacher: PoolMember) -> None:
    """What a checkpoint saves (state_tensors) continues exactly as the live generator would; without
    the Adam state it would not."""
    cfg = small_cfg(generator_width=8)
    live = WarmGenerator.for_teacher(teacher, cfg, 0, 1)
    recover_task(teacher, [0, 1], cfg, seed=3, warm=live, steps=3)
    saved = live.state_tensors()
    restored = WarmGenerator.for_teacher(teacher, cfg, 0, 1)
    restored.load_state_tensors(saved)
    no_adam = WarmGenerator.for_teacher(teacher, cfg, 0, 1)
    no_adam.load_state_tensors({k: v for k, v in saved.items() if not k.startswith("adam.")})
    a = recover_task(teacher, [0, 1], cfg, seed=4, warm=live, steps=2)
    b = recover_task(teacher, [0, 1], cfg, seed=4, warm=restored, steps=2)
    c = recover_task(teacher, [0, 1], cfg, seed=4, warm=no_adam, steps=2)
    assert torch.equal(a.images, b.images) and restored.recoveries == live.recoveries == 2
    assert all(torch.equal(v, restored.state_tensors()[k]) for k, v in live.state_tensors().items())
    assert c.bn_history != a.bn_history  # the Adam moments shape the steps after the first
    assert not torch.equal(no_adam.generator.fc.weight, live.generator.fc.weight)


def test_recovery_quality_against_a_direct_computation(teacher: PoolMember) -> None:
    task = recover_task(teacher, [0, 1, 2], small_cfg(steps=4, images_per_class=3), seed=0)
    quality = recovery_quality(teacher, task)
    with torch.no_grad():
        x = teacher.normalize(task.images)
        logits = teacher.model(x)  # BNTeacher has no forward_features: the logits are its features
    assert quality["agreement"] == pytest.approx(float((logits.argmax(1) == task.labels).double().mean()))
    n = logits.shape[0]
    pairs = [float((logits[i] - logits[j]).norm()) for i in range(n) for j in range(n) if i != j]
    assert quality["diversity"] == pytest.approx(sum(pairs) / len(pairs), rel=1e-5)
    assert quality["bn_loss"] == task.bn_history[task.best_step] and quality["ce"] == task.ce_history[task.best_step]


def test_oversampling_keeps_the_images_the_teacher_finds_most_on_label(teacher: PoolMember) -> None:
    from tgr_hub.recover import _most_on_label

    # a hand check of the choice: per class, the `keep` images with the highest log-probability of their label
    gen = torch.Generator().manual_seed(3)
    images = torch.rand(WAY * 4, 3, SIZE, SIZE, generator=gen)
    labels = torch.arange(WAY).repeat_interleave(4)
    kept, kept_labels = _most_on_label(teacher, images, labels, 4, 2)
    with torch.no_grad():
        own = torch.log_softmax(teacher.logits(images), 1)[torch.arange(len(labels)), labels]
    expected = torch.cat([4 * c + torch.topk(own[4 * c:4 * c + 4], 2).indices.sort().values for c in range(WAY)])
    assert torch.equal(kept, images[expected]) and torch.equal(kept_labels, labels[expected])
    # in a recovery: images_per_class images per class come back, at least as on-label as without the choice
    cfg = small_cfg(steps=2, images_per_class=3)
    plain = recover_task(teacher, list(range(WAY)), cfg, seed=0)
    chosen = recover_task(teacher, list(range(WAY)), dataclasses.replace(cfg, oversample=3.0), seed=0)
    assert chosen.images.shape == plain.images.shape and torch.equal(chosen.labels, plain.labels)
    with torch.no_grad():
        own_plain = torch.log_softmax(teacher.logits(plain.images), 1)[torch.arange(len(plain.labels)), plain.labels]
        own_chosen = torch.log_softmax(teacher.logits(chosen.images), 1)[torch.arange(len(chosen.labels)), chosen.labels]
    assert own_chosen.mean() > own_plain.mean()


# --- seeded stages: the same seed gives the same result, another seed another one -------------------


def test_recover_teachers_follows_the_run_seed(teacher: PoolMember) -> None:
    """The run seed decides each recovery's classes (3 of the teacher's 5) and its images."""
    cfg = small_cfg(steps=2, max_way=3)

    def bank_of(seed: int) -> MemoryBank:
        bank = MemoryBank(4)
        recover_teachers([teacher], cfg, bank, seed=seed, recoveries=3)
        return bank

    first, again, other = bank_of(0), bank_of(0), bank_of(1)
    assert first.keys() == again.keys()
    assert all(torch.equal(first.images_of(*k), again.images_of(*k)) for k in first.keys())
    assert [len(first.images_of(*k)) for k in first.keys()] != [len(other.images_of(*k)) for k in other.keys()] \
        or first.keys() != other.keys()  # another seed draws other classes...
    shared = [k for k in first.keys() if k in other.keys()]
    assert shared and all(not torch.equal(first.images_of(*k), other.images_of(*k)) for k in shared)  # ...and images


def _random_task(teacher: str, classes: list[int], per_class: int, seed: int, size: int = 8) -> RecoveredTask:
    images = torch.rand(len(classes) * per_class, 3, size, size, generator=torch.Generator().manual_seed(seed))
    return RecoveredTask(images=images, labels=torch.tensor(classes).repeat_interleave(per_class), teacher=teacher,
                         loss=0.0, classes=classes, class_names=[f"{teacher}/c{c}" for c in classes])


def test_bank_episodes_follow_their_random_stream() -> None:
    bank = MemoryBank(2)
    for i, teacher in enumerate(("a", "b")):
        bank.add(_random_task(teacher, [0, 1, 2, 3], per_class=6, seed=i))

    def draw(seed: int, way: int) -> list:
        rng = np.random.default_rng(seed)
        return [bank.sample_episode(way, 2, 3, rng, resize_to=8) for _ in range(3)]

    def same(x, y) -> bool:
        return x.classes == y.classes and torch.equal(x.support_x, y.support_x) and torch.equal(x.query_x, y.query_x)

    first, again, other = draw(0, 3), draw(0, 3), draw(1, 3)
    assert all(same(x, y) for x, y in zip(first, again))
    assert [e.classes for e in first] != [e.classes for e in other]  # the classes follow the stream
    # every key in every episode: the classes are the same set, so only the image choice can differ
    whole = {seed: {k: torch.cat([e.support_x[e.support_y == i], e.query_x[e.query_y == i]])
                    for e in draw(seed, 8)[:1] for i, k in enumerate(e.classes)} for seed in (0, 1)}
    assert set(whole[0]) == set(whole[1]) and any(not torch.equal(whole[0][k], whole[1][k]) for k in whole[0])


def test_the_meta_start_takes_adams_step_along_the_summed_displacements(tiny_pool) -> None:
    """:class:`MetaStart`: θ − θ' of each adapted copy, summed in order, is the gradient of one Adam
    step (its first: θ ← θ − lr · g / (|g| + ε))."""
    from tgr_hub.config import RecoverConfig
    from tgr_hub.pool import load_pool
    from tgr_hub.recover import MetaStart

    members = load_pool(tiny_pool)[:2]
    cfg = RecoverConfig(latent_dim=8, generator_width=8, lr=0.01)
    meta = MetaStart(members, cfg, seed=0)
    assert meta.sizes == [(32, 32)]
    generator = meta.generators[(32, 32)]
    before = torch.cat([p.detach().reshape(-1).clone() for p in generator.parameters()])
    copies = [meta.copy_for(m) for m in members]
    for k, copy in enumerate(copies):  # two different adaptations
        with torch.no_grad():
            for p in copy.parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(k)) * 0.1)
    moves = [(MetaStart.size_of(m), meta.displacement(m, c)) for m, c in zip(members, copies)]
    assert torch.allclose(moves[0][1], before - torch.cat([p.detach().reshape(-1) for p in copies[0].parameters()]))
    meta.step(moves)
    g = moves[0][1] + moves[1][1]
    expected = before - 0.01 * g / (g.abs() + 1e-8)
    after = torch.cat([p.detach().reshape(-1) for p in generator.parameters()])
    assert torch.allclose(after, expected, atol=1e-6)
    # its state resumes bitwise
    again = MetaStart(members, cfg, seed=0)
    again.load_state_tensors(meta.state_tensors())
    for state in (meta, again):
        state.step(moves)
    for p, q in zip(generator.parameters(), again.generators[(32, 32)].parameters()):
        assert torch.equal(p, q)
