"""The peer methods' parts (tgr_hub.peers): PURER's pixel memory against hand computations."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tgr_hub.config import BidfMkdConfig, FreeConfig, PurerConfig, load_config
from tgr_hub.distributed import Distributed, make_accelerator
from tgr_hub.errors import ConfigError, RecoverError, RunFolderError
from tgr_hub.evaluate import ValSettings
from tgr_hub.learners import MAML
from tgr_hub.metamodel import create_meta_model
from tgr_hub.peers import bidf as bidf_module
from tgr_hub.peers import free as free_module
from tgr_hub.peers import purer as purer_module
from tgr_hub.peers.bidf import train_bidf_mkd
from tgr_hub.peers.free import MetaGenerator, train_free
from tgr_hub.peers.inversion import adversarial_loss, distill_loss
from tgr_hub.peers.purer import PixelMemory, PixelMemoryConfig, curriculum_loss, total_variation, train_purer
from tgr_hub.pool import load_pool
from tgr_hub.recover import frozen, recovery_quality


def _loss(memory: PixelMemory, shift: tuple[int, int] = (0, 0)) -> float:
    return float(memory.inversion_loss(shift)[0].detach())


@pytest.fixture(scope="module")
def teachers(tiny_pool: Path) -> list:
    return load_pool(tiny_pool)


def test_total_variation_by_hand() -> None:
    x = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a = x.numpy()
    squares = dict.fromkeys(("right", "down", "down_right", "down_left"), 0.0)
    for b in range(2):
        for c in range(3):
            for i in range(4):
                for j in range(5):
                    if j + 1 < 5:
                        squares["right"] += (a[b, c, i, j + 1] - a[b, c, i, j]) ** 2
                    if i + 1 < 4:
                        squares["down"] += (a[b, c, i + 1, j] - a[b, c, i, j]) ** 2
                    if i + 1 < 4 and j + 1 < 5:
                        squares["down_right"] += (a[b, c, i + 1, j + 1] - a[b, c, i, j]) ** 2
                    if i + 1 < 4 and j - 1 >= 0:
                        squares["down_left"] += (a[b, c, i + 1, j - 1] - a[b, c, i, j]) ** 2
    expected = sum(np.sqrt(v) for v in squares.values())
    assert float(total_variation(x)) == pytest.approx(expected, rel=1e-12)
    assert float(total_variation(torch.ones(1, 3, 6, 6))) == 0.0


def test_a_data_step_lowers_the_inversion_loss_and_leaves_the_teachers_alone(teachers) -> None:
    memory = PixelMemory(teachers, image_size=32, cfg=PixelMemoryConfig(per_class=3), seed=0)
    modes = [(m.model.training, [p.requires_grad for p in m.model.parameters()]) for m in teachers]
    before = _loss(memory)
    for _ in range(5):
        report = memory.step()
    assert _loss(memory) < 0.8 * before
    assert set(report) == {"loss", "ce", "bn", "tv", "l2"} and memory.steps == 5
    assert 0.0 <= float(memory.images.detach().min()) and float(memory.images.detach().max()) <= 1.0  # clamped to [0, 1]
    assert [(m.model.training, [p.requires_grad for p in m.model.parameters()]) for m in teachers] == modes
    assert all(p.grad is None for m in teachers for p in m.model.parameters())  # gradients reach the images only


def test_the_data_step_size_is_the_public_codes_in_normalised_units(teachers) -> None:
    """The public code's pixel tensor lives in the teachers' normalised space; tgr-hub's lives in
    [0, 1], so Adam's lr (its step per pixel) is data_lr × the teachers' std there."""
    narrow = [dataclasses.replace(m, std=(0.2, 0.25, 0.3)) for m in teachers[:2]]
    wide = [dataclasses.replace(m, std=(0.5, 0.5, 0.5)) for m in teachers[2:]]
    memory = PixelMemory(narrow + wide, image_size=32, cfg=PixelMemoryConfig(per_class=2, lr=0.2), seed=0)
    assert memory.pixel_lr == pytest.approx(0.2 * (0.25 + 0.25 + 0.5 + 0.5) / 4)
    before = memory.images.detach().clone()
    memory.step()
    moved = (memory.images.detach() - before).abs()
    inside = (before > 0.2) & (before < 0.8)  # away from the clamp
    # Adam's first step is lr · sign(gradient) for every pixel the loss reaches
    assert float(moved[inside].max()) == pytest.approx(memory.pixel_lr, rel=1e-3)


def test_classes_are_pooled_by_name_and_each_teacher_reads_its_own_numbering(teachers) -> None:
    first = teachers[0]
    # a second teacher that knows the first one's class 2 as its class 0, and one class of its own
    other = dataclasses.replace(first, name="other", label_names=[first.label_names[2], "made/up"])
    memory = PixelMemory([first, other], image_size=32, cfg=PixelMemoryConfig(per_class=2), seed=0)
    assert memory.class_names == [*first.label_names, "made/up"]
    assert memory.images.shape == (2 * (first.num_classes + 1), 3, 32, 32)
    images, targets = memory.teacher_batch(1)
    assert targets.tolist() == [0, 0, 1, 1]
    assert torch.equal(images[:2], memory.images[4:6]) and torch.equal(images[2:], memory.images[-2:])
    first_images, first_targets = memory.teacher_batch(0)
    assert torch.equal(first_images, memory.images[: 2 * first.num_classes])
    assert first_targets.tolist() == [c for c in range(first.num_classes) for _ in range(2)]


def test_running_sum_weighting_is_n_minus_i_and_equal_weighting_is_one(teachers, monkeypatch) -> None:
    n = len(teachers)
    memory = PixelMemory(teachers, image_size=32, cfg=PixelMemoryConfig(per_class=2), seed=1)
    alone = []
    for i in range(n):  # each teacher's own loss, by weighting it alone
        monkeypatch.setattr(memory, "teacher_weights", lambda i=i: [float(k == i) for k in range(n)])
        alone.append(_loss(memory, (1, -1)))
    monkeypatch.undo()
    assert _loss(memory, (1, -1)) == pytest.approx(sum(alone), rel=1e-5)
    running = PixelMemory(teachers, image_size=32, cfg=PixelMemoryConfig(per_class=2, teacher_weights="running-sum"),
                          seed=1)
    assert running.teacher_weights() == [float(n - i) for i in range(n)]
    assert _loss(running, (1, -1)) == pytest.approx(
        sum((n - i) * value for i, value in enumerate(alone)), rel=1e-5)


def test_an_extra_loss_joins_the_step(teachers) -> None:
    cfg = PixelMemoryConfig(per_class=2)
    plain, pushed = (PixelMemory(teachers, image_size=32, cfg=cfg, seed=2) for _ in range(2))
    assert torch.equal(plain.images, pushed.images)  # one seed, one start
    start = float(pushed.images.detach().mean())
    plain.step()
    report = pushed.step(extra_loss=lambda images: -100.0 * images.mean())
    assert report["extra"] == pytest.approx(-100.0 * start, rel=1e-6)  # scored on the images before the step
    assert report["loss"] == pytest.approx(report["ce"] + 0.01 * report["bn"] + 1e-4 * report["tv"]
                                           + 1e-5 * report["l2"] + report["extra"], rel=1e-5)
    assert float(pushed.images.detach().mean()) > float(plain.images.detach().mean())  # the extra term raised the pixels


def test_seeded_start_and_exact_resume(teachers) -> None:
    cfg = PixelMemoryConfig(per_class=2)
    a = PixelMemory(teachers, image_size=32, cfg=cfg, seed=3)
    assert not torch.equal(a.images, PixelMemory(teachers, image_size=32, cfg=cfg, seed=4).images)
    assert a.jitter(0) != a.jitter(1) or a.jitter(1) != a.jitter(2)  # the roll changes from step to step
    for _ in range(2):
        a.step()
    saved = a.state_tensors()
    b = PixelMemory(teachers, image_size=32, cfg=cfg, seed=3)
    b.load_state_tensors(saved)
    a.step()
    b.step()
    assert b.steps == a.steps == 3 and torch.equal(a.images, b.images)
    with pytest.raises(RecoverError, match="another pool, image size or images per class"):
        PixelMemory(teachers[:1], image_size=32, cfg=cfg, seed=3).load_state_tensors(saved)


def test_bad_settings_are_refused(teachers) -> None:
    with pytest.raises(RecoverError, match="at least one teacher"):
        PixelMemory([], image_size=32, seed=0)
    with pytest.raises(RecoverError, match="at least one image per class"):
        PixelMemory(teachers, image_size=32, cfg=PixelMemoryConfig(per_class=0), seed=0)


def test_episodes_from_the_memory_are_seeded_and_use_distinct_images(teachers) -> None:
    memory = PixelMemory(teachers, image_size=32, cfg=PixelMemoryConfig(per_class=4), seed=5)
    task = memory.episode(3, 1, 3, key=(7, 0))
    again = memory.episode(3, 1, 3, key=(7, 0))
    assert torch.equal(task.support_x, again.support_x) and torch.equal(task.query_x, again.query_x)
    assert task.classes == again.classes and task.classes != memory.episode(3, 1, 3, key=(7, 1)).classes
    assert task.support_y.tolist() == [0, 1, 2] and task.query_y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for label, name in enumerate(task.classes):  # each class's 1 + 3 images are its 4 memory rows, once each
        c = memory.class_names.index(name)
        rows = memory.images.detach()[4 * c : 4 * c + 4]
        picked = torch.cat([task.support_x[task.support_y == label], task.query_x[task.query_y == label]])
        assert sorted(rows.flatten(1).sum(1).tolist()) == sorted(picked.flatten(1).sum(1).tolist())
    assert not task.query_x.requires_grad and memory.episode(3, 1, 3, key=(7, 0), differentiable=True).query_x.requires_grad
    with pytest.raises(RecoverError, match="shot \\+ query <= 4"):
        memory.episode(3, 2, 3, key=(0,))


def test_the_curriculum_makes_its_episode_harder_for_the_meta_learner(teachers) -> None:
    # a small step (Adam's first step moves every pixel by about lr × the teachers' std: 0.04 × 0.235), so
    # that the term's sign decides
    cfg = PixelMemoryConfig(per_class=4, lr=0.04)
    plain, harder, easier = (PixelMemory(teachers, image_size=32, cfg=cfg, seed=6) for _ in range(3))
    model = create_meta_model("conv4", image_size=32, seed=0).train()
    learner = MAML(inner_steps=1, inner_lr=0.1, first_order=False)

    def query_loss(memory: PixelMemory) -> float:
        return float(learner.episode_loss(model, memory.episode(5, 1, 3, key=(0,))).detach())

    def term(memory: PixelMemory, scale: float):
        return curriculum_loss(memory, learner, model, way=5, shot=1, query=3, key=(0,), scale=scale)

    plain.step()
    report = harder.step(extra_loss=term(harder, 10.0))
    easier.step(extra_loss=term(easier, -10.0))  # the control: the opposite sign makes the episode easier
    assert report["extra"] < 0  # minus the query loss
    # the same episode after one step with the term, without it, and with its opposite
    assert query_loss(harder) > 1.1 * query_loss(plain) > 1.1 * query_loss(easier)
    assert all(p.grad is None for p in model.parameters())  # the meta-model is not trained by the data step


# --- PURER's meta-training ----------------------------------------------------------------------

TINY_PURER = PurerConfig(per_class=4, iterations=6, episode_batch=2, shot=1, query=3, inner_steps=1,
                         curriculum_start=2, curriculum_patience=1, eval_every=3, val_episodes=4, val_inner_steps=2,
                         checkpoint_every=0)


@pytest.fixture(scope="module")
def val_split():
    from tgr_hub.data import load_split

    return load_split("glyphs", "val")


@pytest.mark.slow
def test_purer_trains_from_the_teachers_average_with_its_curriculum(teachers, val_split) -> None:
    from tgr_hub.evaluate import average_baseline

    result = train_purer(teachers, TINY_PURER, arch="conv4", image_size=32, val_split=val_split, seed=0,
                         progress=False)
    assert [s for s, _ in result.history["task_loss"]] == [1, 2, 3, 4, 5, 6]
    assert [s for s, _ in result.history["val_acc"]] == [0, 3, 6]
    assert result.best_step in (0, 3, 6) and result.best_val_accuracy == max(v for _, v in result.history["val_acc"])
    # due after outer step 2 (curriculum_start), so the data step of step index 2 carries it; with a
    # patience of 1 a later one follows each batch that does not beat the best since the last
    assert result.extra["curriculum_steps"][0] == 2 and all(s > 2 for s in result.extra["curriculum_steps"][1:])
    # the start is the teachers' average (all conv4 at 32 px here)
    average = average_baseline(teachers).state_dict()
    start = purer_module._initial_model(teachers, "conv4", 32, seed=0, average=True).state_dict()
    assert all(torch.equal(start[k], average[k]) for k in average)


@pytest.mark.slow
def test_purer_resumes_exactly(teachers, val_split, tmp_path: Path) -> None:
    cfg = dataclasses.replace(TINY_PURER, checkpoint_every=3)
    whole = train_purer(teachers, cfg, arch="conv4", image_size=32, val_split=val_split, seed=1, progress=False,
                        checkpoint_dir=tmp_path / "whole")
    train_purer(teachers, dataclasses.replace(cfg, iterations=3), arch="conv4", image_size=32, val_split=val_split,
                seed=1, progress=False, checkpoint_dir=tmp_path / "cut")
    with pytest.raises(RunFolderError, match="earlier PURER run"):
        train_purer(teachers, cfg, arch="conv4", image_size=32, val_split=val_split, seed=1, progress=False,
                    checkpoint_dir=tmp_path / "cut")
    with pytest.raises(ConfigError, match="other settings"):
        train_purer(teachers, dataclasses.replace(cfg, outer_lr=0.1), arch="conv4", image_size=32,
                    val_split=val_split, seed=1, progress=False, checkpoint_dir=tmp_path / "cut", resume=True)
    with pytest.raises(ConfigError, match="other settings \\(meta-validation\\)"):  # its history validated otherwise
        train_purer(teachers, cfg, arch="conv4", image_size=32, val_split=val_split, seed=1, progress=False,
                    checkpoint_dir=tmp_path / "cut", resume=True, validation=ValSettings(episodes=4))
    resumed = train_purer(teachers, cfg, arch="conv4", image_size=32, val_split=val_split, seed=1, progress=False,
                          checkpoint_dir=tmp_path / "cut", resume=True)
    assert resumed.resumed_from == 3
    assert resumed.history == whole.history and resumed.extra == whole.extra
    for key, value in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key
    assert sorted(p.name for p in (tmp_path / "cut").iterdir()) == ["step-000003", "step-000006"]


def test_purer_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="purer.shot \\+ purer.query = 20 images per class"):
        PurerConfig(per_class=16)
    with pytest.raises(ConfigError, match="purer.teacher_weights must be one of equal, running-sum"):
        load_config("smoke", overrides=["purer.teacher_weights=by-position"])


@pytest.mark.slow
def test_the_peers_in_the_benchmark_on_the_episodes_erm_sees(tmp_path: Path) -> None:
    from tgr_hub import benchmark as bm
    from tgr_hub.errors import BenchmarkError

    cfg = load_config("smoke")
    scenario = bm.scenario_from_name(bm.CONFIG_SCENARIO, cfg)
    out = tmp_path / "bench"
    finished: list = []
    report = bm.run_benchmark(bm.BenchmarkSpec(cfg, (scenario,), (0,), ("erm", "purer", "free", "bidf-mkd")), out,
                              progress=False,
                              on_cell=lambda cell, record: finished.append(record))
    bidf, erm, free, purer = sorted(finished, key=lambda r: r["method"])
    for peer in (purer, free, bidf):
        for shot in ("1shot", "5shot"):  # scored on the very episodes ERM was scored on
            assert peer["episodes"][shot]["seen"] == erm["episodes"][shot]["seen"]
            assert len(peer["accuracies"][shot]) == cfg.eval.episodes
        assert peer["val"]["best_step"] in (0, 2, 4) and 0 <= peer["val"]["1shot"] <= 1
        assert "method_settings_digest" in peer
        assert (out / peer["run_folder"] / "checkpoints").is_dir()
    assert "method_settings_digest" not in erm and free["method_settings_digest"] != purer["method_settings_digest"]
    # every method chooses its checkpoint the same way: the peers validate as a TGR cell does
    # (train.val_*, train.learner) on the same episodes, so FREE's and BiDf-MKD's untrained start (the
    # run seed's fresh meta-model, as ERM's) scores at step 0 exactly what ERM's did
    from tgr_hub.run_record import RunRecord

    erm_history = RunRecord.read(out / erm["run_folder"] / "tgr_config.json").history
    for peer in (free, bidf):
        state = json.loads(next((out / peer["run_folder"] / "checkpoints").glob("step-*/trainer_state.json")).read_text())
        assert state["validation"] == json.loads(json.dumps(dataclasses.asdict(ValSettings.of(cfg.train))))
        assert state["history"]["val_acc"][0] == pytest.approx(list(erm_history["val_acc"][0]), abs=1e-12)
        assert peer["val"]["selection_noise"] > 0
    for peer in (purer, free, bidf):  # each cell keeps its meta-val curve, as a trained cell does
        assert [step for step, _ in peer["val_curve"]] == [0, 2, 4]
        assert dict(peer["val_curve"])[peer["val"]["best_step"]] == pytest.approx(peer["val"]["accuracy"])
    assert [step for step, _ in erm["val_curve"]] == [s for s, _ in erm_history["val_acc"]]
    assert all(label in json.dumps(report) for label in ("PURER", "FREE", "BiDf-MKD"))
    # a peer's own settings bind its cells only: a folder of ERM cells stays valid under other PURER
    # settings (nothing retrains)...
    other = load_config("smoke", overrides=["purer.outer_lr=0.01"])
    erm_only = tmp_path / "erm-only"
    shutil.copytree(out, erm_only)
    for peer in ("purer", "free", "bidf-mkd"):
        (erm_only / "cells" / "config" / "seed-0" / f"{peer}.json").unlink()
    again = bm.run_benchmark(bm.BenchmarkSpec(other, (scenario,), (0,), ("erm",)), erm_only, progress=False)
    assert again["missing_cells"] == []
    # ...and so does a folder of ERM and FREE cells (PURER's settings do not bind FREE's)...
    erm_free = tmp_path / "erm-free"
    shutil.copytree(out, erm_free)
    for peer in ("purer", "bidf-mkd"):
        (erm_free / "cells" / "config" / "seed-0" / f"{peer}.json").unlink()
    again = bm.run_benchmark(bm.BenchmarkSpec(other, (scenario,), (0,), ("erm", "free")), erm_free, progress=False)
    assert again["missing_cells"] == []
    # ...but a folder whose PURER cells were made with other PURER settings is refused
    with pytest.raises(BenchmarkError, match="made with other settings"):
        bm.run_benchmark(bm.BenchmarkSpec(other, (scenario,), (0,), ("erm", "purer")), out, progress=False)


# --- FREE: the losses by hand, the meta-generator, the run ---------------------------------------



def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_distill_loss_by_hand() -> None:
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(6, 5)), rng.normal(size=(6, 5))
    for temperature in (1.0, 4.0):
        p_t, p_s = _softmax(t / temperature), _softmax(s / temperature)
        expected = temperature**2 * (p_t * (np.log(p_t) - np.log(p_s))).sum(1).mean()
        got = distill_loss(torch.tensor(s), torch.tensor(t), temperature=temperature)
        assert float(got) == pytest.approx(expected, rel=1e-6)
    # the public code's kl_div(softmax(s), softmax(t)): mean over entries of p_t (log p_t - p_s)
    p_t, p_s = _softmax(t), _softmax(s)
    expected = (p_t * (np.log(p_t) - p_s)).mean()
    assert float(distill_loss(torch.tensor(s), torch.tensor(t), on_probabilities=True)) == pytest.approx(expected, rel=1e-6)
    assert float(distill_loss(torch.tensor(t), torch.tensor(t))) == pytest.approx(0.0, abs=1e-7)


def test_adversarial_loss_by_hand_counts_only_where_teacher_and_student_agree() -> None:
    t = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 0.0, 0.5]], dtype=torch.float64)
    s = torch.tensor([[1.0, 0.5, 0.0], [2.0, 0.0, 0.0], [2.0, 1.0, 0.0]], dtype=torch.float64)  # agree on rows 0, 2
    p_t, p_s = _softmax(t.numpy()), _softmax(s.numpy())
    kl = (p_t * (np.log(p_t) - np.log(p_s))).sum(1)
    assert float(adversarial_loss(t, s)) == pytest.approx(-(kl[0] + kl[2]) / 3, rel=1e-6)
    defect = (p_s * (np.log(p_s) - p_t)).sum(1)
    assert float(adversarial_loss(t, s, on_probabilities=True)) == pytest.approx(-(defect[0] + defect[2]) / 3, rel=1e-6)
    # its gradient reaches the teacher only, and a step against it widens the agreeing rows' divergence
    t.requires_grad_(True)
    adversarial_loss(t, s).backward()
    assert t.grad is not None and torch.all(t.grad[1] == 0)
    moved = (t - 0.5 * t.grad).detach()
    assert float(adversarial_loss(moved, s)) < float(adversarial_loss(t.detach(), s))


def test_the_meta_gradient_is_the_sum_of_the_copies_last_step_gradients(teachers) -> None:
    def meta_generator() -> MetaGenerator:
        return MetaGenerator([(32, 32)], latent_dim=16, width=8, seed=0)

    both = meta_generator()
    alone = []
    for i, member in enumerate(teachers[:2]):
        single = meta_generator()
        single.adapt(member, [0, 1, 2], steps=2, images_per_class=2, seed=i)
        alone.append([p.grad.clone() for p in single.generators[(32, 32)].parameters()])
        both.adapt(member, [0, 1, 2], steps=2, images_per_class=2, seed=i)
    meta = both.generators[(32, 32)]
    for p, a, b in zip(meta.parameters(), *alone):
        assert torch.allclose(p.grad, a + b, rtol=1e-5, atol=1e-7)
    start = [p.detach().clone() for p in meta.parameters()]
    both.meta_step()
    assert all(p.grad is None for p in meta.parameters())
    assert any(not torch.equal(p, q) for p, q in zip(meta.parameters(), start))  # it moved
    # its state resumes bitwise
    again = meta_generator()
    again.load_state_tensors(both.state_tensors())
    for mg in (both, again):
        mg.adapt(teachers[2], [0, 1], steps=2, images_per_class=2, seed=9)
        mg.meta_step()
    for p, q in zip(meta.parameters(), again.generators[(32, 32)].parameters()):
        assert torch.equal(p, q)


def test_the_adversarial_term_raises_the_student_teacher_divergence_it_targets(teachers) -> None:
    member = teachers[0]
    classes = [0, 1, 2, 3, 4]
    bias = torch.tensor([0.5, -0.5, 0.0, 0.25, -0.25])

    def student(images: torch.Tensor) -> torch.Tensor:
        """A student that mostly agrees with the teacher: its logits, flattened and shifted."""
        with frozen(member.model):
            return 0.5 * member.model(member.normalize(images))[:, classes] + bias

    def disagreement(weight: float) -> float:
        """How often the two pick different classes on the recovered images."""
        mg = MetaGenerator([(32, 32)], latent_dim=32, width=16, seed=1)
        task = mg.adapt(member, classes, steps=5, images_per_class=6, seed=3, lr=0.01, student=student,
                        adversarial_weight=weight, meta_gradient=False)
        with torch.no_grad(), frozen(member.model):
            t = member.model(member.normalize(task.images))[:, classes]
            s = student(task.images)
        return float((t.argmax(1) != s.argmax(1)).float().mean())

    plain, pushed = disagreement(0.0), disagreement(5.0)  # the same codes, seeds and steps; only the term differs
    assert pushed > plain + 0.3, (plain, pushed)


@pytest.mark.slow
def test_an_adapted_meta_generator_beats_a_fresh_generator_in_five_steps(teachers) -> None:
    """FREE's claim: after meta-training across teachers, 5 adaptation steps reach a higher teacher
    agreement than 5 steps from a fresh generator (here, over every teacher, one of them never seen)."""
    def agreement(mg: MetaGenerator, seed: int) -> float:
        scores = []
        for i, member in enumerate(teachers):
            task = mg.adapt(member, [0, 1, 2, 3, 4], steps=5, images_per_class=8, seed=1000 + 10 * seed + i,
                            meta_gradient=False)
            scores.append(recovery_quality(member, task)["agreement"])
        return float(np.mean(scores))

    meta, fresh = (MetaGenerator([(32, 32)], latent_dim=64, width=32, seed=0, meta_lr=1e-2) for _ in range(2))
    for r in range(10):
        for i, member in enumerate(teachers[:3]):  # the last teacher is never seen
            meta.adapt(member, [0, 1, 2, 3, 4], steps=5, images_per_class=8, seed=10 * r + i)
        meta.meta_step()
    adapted = [agreement(meta, s) for s in range(2)]
    cold = [agreement(fresh, s) for s in range(2)]
    assert min(adapted) > max(cold) + 0.05, (adapted, cold)


TINY_FREE = FreeConfig(iterations=4, warmup=1, teachers_per_step=2, images_per_class=4, adapt_steps=2, latent_dim=32,
                       generator_width=16, shot=1, query=3, inner_steps=1, episode_batch=2, replay_patience=1,
                       replay_max_batches=2, eval_every=2, val_episodes=4, val_inner_steps=2, checkpoint_every=0)


@pytest.mark.slow
def test_free_trains_and_banks_every_teacher_of_a_step(teachers, val_split) -> None:
    result = train_free(teachers, TINY_FREE, arch="conv4", image_size=32, val_split=val_split, seed=0, progress=False)
    assert [s for s, _ in result.history["recover_ce"]] == [1, 2, 3, 4]
    assert [s for s, _ in result.history["distill_loss"]] == [2, 3, 4]  # after the warm-up of 1 step
    assert all(v >= 1 for _, v in result.history["replay_batches"][1:])
    assert [s for s, _ in result.history["val_acc"]] == [0, 2, 4]
    assert result.best_val_accuracy == max(v for _, v in result.history["val_acc"])


@pytest.mark.slow
def test_free_resumes_exactly(teachers, val_split, tmp_path: Path) -> None:
    cfg = dataclasses.replace(TINY_FREE, checkpoint_every=2)
    whole = train_free(teachers, cfg, arch="conv4", image_size=32, val_split=val_split, seed=1, progress=False,
                       checkpoint_dir=tmp_path / "whole")
    train_free(teachers, dataclasses.replace(cfg, iterations=2), arch="conv4", image_size=32, val_split=val_split,
               seed=1, progress=False, checkpoint_dir=tmp_path / "cut")
    with pytest.raises(ConfigError, match="other settings"):
        train_free(teachers, dataclasses.replace(cfg, distill_lr=0.1), arch="conv4", image_size=32,
                   val_split=val_split, seed=1, progress=False, checkpoint_dir=tmp_path / "cut", resume=True)
    resumed = train_free(teachers, cfg, arch="conv4", image_size=32, val_split=val_split, seed=1, progress=False,
                         checkpoint_dir=tmp_path / "cut", resume=True)
    assert resumed.resumed_from == 2 and resumed.history == whole.history
    for key, value in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key


def test_free_reptile_step_gives_the_shared_adam_the_scaled_distance_to_the_distilled_copy(teachers, val_split) -> None:
    """The meta-model's Adam, shared with replay, gets ``reptile_scale · (θ − θ')``, θ' the copy after
    distilling the step's tasks in turn; the scale is felt because replay's steps fill the same Adam state."""
    from tgr_hub.bank import RecoveredTask

    images = torch.rand(5 * 4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    tasks = [RecoveredTask(images=images, labels=torch.arange(5).repeat_interleave(4), teacher=m.name, loss=0.0,
                           classes=[0, 1, 2, 3, 4]) for m in teachers[:2]]

    def reptile(scale: float, replays: int) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        dist = Distributed(make_accelerator("no"))
        cfg = dataclasses.replace(TINY_FREE, reptile_scale=scale)
        trainer = free_module._FreeTrainer(teachers, cfg, arch="conv4", image_size=32, val_split=val_split, seed=0,
                                           dist=dist)
        for step in range(replays):  # replay first fills the shared Adam state, as in training
            trainer.bank.add(tasks[step % 2])
            trainer.replay(step)
        before = [p.detach().clone() for p in trainer.trained]
        fast, _ = trainer.distilled_copy(7, tasks)  # θ' (deterministic given the step)
        seen: list[torch.Tensor] = []
        step_of = trainer.optimizer.step
        trainer.optimizer.step = lambda *a, **k: (seen.extend(p.grad.clone() for p in trainer.trained),
                                                  step_of(*a, **k))[1]
        trainer.distill(7, tasks)
        moved = torch.cat([(p.detach() - b).flatten() for p, b in zip(trainer.trained, before)])
        return [b - q.detach() for b, q in zip(before, fast)], seen, moved

    distance, grads, _ = reptile(67.0, replays=0)
    assert any(float(d.abs().max()) > 0 for d in distance)
    for d, g in zip(distance, grads):
        torch.testing.assert_close(g, 67.0 * d)
    # after replay steps, Adam's momentum holds replay's direction: the scale decides whether the Reptile
    # step goes towards the distilled copy (θ' − θ) or mostly continues replay
    def cosine(scale: float) -> float:
        distance, _, moved = reptile(scale, replays=3)
        towards = -torch.cat([d.flatten() for d in distance])
        return float(torch.nn.functional.cosine_similarity(moved, towards, dim=0))

    scaled, unscaled = cosine(67.0), cosine(1.0)
    assert scaled > 0.5 and unscaled < scaled - 0.3, (scaled, unscaled)


def test_free_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="more than the bank holds"):
        FreeConfig(images_per_class=2, bank_size=2, shot=1, query=15)
    with pytest.raises(ConfigError, match="free.teachers_per_step"):
        load_config("smoke", overrides=["free.teachers_per_step=0"])


# --- BiDf-MKD ------------------------------------------------------------------------------------


TINY_BIDF = BidfMkdConfig(iterations=4, episode_batch=2, recover_steps=2, images_per_class=4, latent_dim=32,
                          generator_width=16, kd_inner_steps=1, recover_patience=1, shot=1, query=3, inner_steps=1,
                          eval_every=2, val_episodes=4, val_inner_steps=2, checkpoint_every=0, adversarial_start=1)


def _bidf_trainer(teachers, val_split, cfg: BidfMkdConfig = TINY_BIDF):
    return bidf_module._BidfTrainer(teachers, cfg, arch="conv4", image_size=32, val_split=val_split, seed=0,
                                    dist=Distributed(make_accelerator("no")))


def test_bidf_recovers_when_the_batch_accuracy_stalls_for_the_patience(teachers, val_split) -> None:
    trainer = _bidf_trainer(teachers, val_split, dataclasses.replace(TINY_BIDF, recover_patience=2))
    assert trainer.recover_due  # the first step recovers
    due = []
    for accuracy, recovered in [(0.5, True), (0.6, False), (0.6, False), (0.55, False), (0.9, True), (0.8, False),
                                (0.95, False), (0.95, False), (0.9, False)]:
        trainer.recover_due = recovered
        trainer.update_trigger(accuracy, recovered=recovered)
        due.append(trainer.recover_due)
    # after a recovery at 0.5: 0.6 beats it, 0.6 and 0.55 do not (2 = patience: due); after the one
    # at 0.9: 0.8 does not, 0.95 does (the count restarts), 0.95 and 0.9 do not (due)
    assert due == [False, False, False, True, False, False, False, False, True]


def test_bidf_query_set_is_pushed_to_the_adapted_students_boundary(teachers, val_split) -> None:
    cfg = dataclasses.replace(TINY_BIDF, recover_steps=5, generator_lr=0.01, adversarial_weight=5.0)
    trainer = _bidf_trainer(teachers, val_split, cfg)
    member, classes = teachers[0], [0, 1, 2, 3, 4]
    bias = torch.tensor([0.5, -0.5, 0.0, 0.25, -0.25])

    def student(images: torch.Tensor) -> torch.Tensor:  # a student that mostly agrees with the teacher
        with frozen(member.model):
            return 0.5 * member.model(member.normalize(images))[:, classes] + bias

    def disagreement(task) -> float:
        with torch.no_grad(), frozen(member.model):
            t = member.model(member.normalize(task.images))[:, classes]
            return float((t.argmax(1) != student(task.images).argmax(1)).float().mean())

    plain = disagreement(trainer.recover(member, classes, seed=3))
    pushed = disagreement(trainer.recover(member, classes, seed=3, student=student))
    assert pushed > plain + 0.3, (plain, pushed)
    # the student the query recovery sees is the adapted fast weights, as logits over the task's classes
    fast = trainer.kd_learner.clone(trainer.model, 5)
    view = trainer.student(fast)(torch.rand(6, 3, 32, 32))
    assert view.shape == (6, 5) and not view.requires_grad


@pytest.mark.slow
def test_bidf_trains_distilling_in_both_loops_and_replays(teachers, val_split) -> None:
    result = train_bidf_mkd(teachers, TINY_BIDF, arch="conv4", image_size=32, val_split=val_split, seed=0,
                            progress=False)
    assert [s for s, _ in result.history["task_loss"]] == [1, 2, 3, 4]
    recoveries = result.extra["recoveries"]
    assert recoveries[0] == 0 and [s for s, _ in result.history["kd_loss"]] == [s + 1 for s in recoveries]
    assert [s for s, _ in result.history["val_acc"]] == [0, 2, 4]


@pytest.mark.slow
def test_bidf_resumes_exactly(teachers, val_split, tmp_path: Path) -> None:
    cfg = dataclasses.replace(TINY_BIDF, checkpoint_every=2)
    whole = train_bidf_mkd(teachers, cfg, arch="conv4", image_size=32, val_split=val_split, seed=1, progress=False,
                           checkpoint_dir=tmp_path / "whole")
    train_bidf_mkd(teachers, dataclasses.replace(cfg, iterations=2), arch="conv4", image_size=32,
                   val_split=val_split, seed=1, progress=False, checkpoint_dir=tmp_path / "cut")
    resumed = train_bidf_mkd(teachers, cfg, arch="conv4", image_size=32, val_split=val_split, seed=1, progress=False,
                             checkpoint_dir=tmp_path / "cut", resume=True)
    assert resumed.resumed_from == 2 and resumed.history == whole.history and resumed.extra == whole.extra
    for key, value in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[key], value), key


def test_bidf_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="more than the bank holds"):
        BidfMkdConfig(images_per_class=1, bank_size=2, shot=1, query=15)
    with pytest.raises(ConfigError, match="bidf_mkd.recover_steps"):
        load_config("smoke", overrides=["bidf_mkd.recover_steps=0"])


class _AtLargerSize(torch.nn.Module):
    """A teacher that takes 40-px images (it resizes them for the 32-px model inside)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.inner = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False))


def test_the_generator_peers_take_teachers_of_another_input_size(teachers, val_split) -> None:
    """A mixed pool (32-px and 40-px teachers): FREE keeps one meta-generator per size and BiDf-MKD
    recovers at each teacher's size; the meta-model (32 px) sees every task resized."""
    wrapped = _AtLargerSize(teachers[1].model).eval().requires_grad_(False)  # as a pool member's model is
    big = dataclasses.replace(teachers[1], name="big", model=wrapped, input_size=(3, 40, 40))
    mixed = [teachers[0], big]
    dist = Distributed(make_accelerator("no"))
    free = free_module._FreeTrainer(mixed, dataclasses.replace(TINY_FREE, warmup=0, teachers_per_step=4), arch="conv4",
                                    image_size=32, val_split=val_split, seed=0, dist=dist)
    assert free.meta_generator.sizes == [(32, 32), (40, 40)]
    values = free.outer_step(0)
    assert values["replay_batches"] >= 1 and np.isfinite(values["distill_loss"])
    shapes = {tuple(free.bank.images_of(*key).shape[-2:]) for key in free.bank.keys()}
    assert (40, 40) in shapes  # the bank keeps each teacher's own size; episodes resize
    bidf = bidf_module._BidfTrainer([big], TINY_BIDF, arch="conv4", image_size=32, val_split=val_split, seed=0,
                                    dist=dist)
    assert np.isfinite(bidf.outer_step(0)["kd_loss"])
    assert {tuple(bidf.bank.images_of(*key).shape[-2:]) for key in bidf.bank.keys()} == {(40, 40)}
