"""Online recovery inside meta-training: the bank it grows, in-process on the tiny pool.

* Every online recovery of a teacher adds one slot per class, capped at ``recover.bank_size``
  per (teacher, class) and overwritten cyclically: after the run the bank holds exactly the
  newest recoveries, which a direct :func:`tgr_hub.recover.recover_task` call with the
  recovery's own seed stream reproduces.
* The same seed inserts the same images in the same order; another seed does not.
* Warm start: each teacher's online recoveries continue one generator and its Adam state, so
  they equal a chain of direct warm :func:`recover_task` calls on one :class:`WarmGenerator`.
* ``online_every = 0`` leaves the bank as it was.

(1 vs 2 processes and SIGKILL + resume with online recovery: tests/test_distributed.py and
tests/test_resume.py, which run the smoke preset, itself online and warm-started.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tgr_hub.config import load_config
from tgr_hub.data import load_split
from tgr_hub.distributed import tensor_digest
from tgr_hub.metamodel import create_meta_model
from tgr_hub.pipeline import prepare_pool
from tgr_hub.bank import MemoryBank, to_uint8
from tgr_hub.recover import WarmGenerator, recover_task, sample_task_classes
from tgr_hub.seeds import RECOVER_ONLINE, seed_sequence
from tgr_hub.train import meta_train

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]  # slow: every test reuses one prepared online-recovery run (a module fixture)

COMMON = ["train.replay_batch=1", "train.val_episodes=2", "train.eval_every=100", "recover.online_steps=2"]


@pytest.fixture(scope="module")
def prepared(tiny_pool: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("online") / "run"
    cfg = load_config(preset="smoke", overrides=["recover.online_start=cold"])
    return prepare_pool(tiny_pool, out, cfg, progress=False)


def _train(prepared, overrides: list[str], seed: int = 0):
    cfg = load_config(preset="smoke", overrides=COMMON + overrides, values={"seed": seed})
    val = load_split(cfg.data.dataset, "val", image_size=cfg.data.image_size, seed=cfg.data.seed)
    model = create_meta_model(cfg.train.arch, cfg.data.image_size, seed=0)
    everyone = [list(range(len(prepared.members)))]
    result = meta_train(model, prepared.members, prepared.bank, everyone, cfg.train, val_split=val, seed=seed,
                        progress=False, recover=cfg.recover)
    return cfg, result


def _bank_digest(bank: MemoryBank) -> str:
    return tensor_digest({f"{t}/{c}": bank.images_of(t, c) for t, c in bank.keys()})


def _online_draws(teachers: int, steps: int, m: int, seed: int = 0) -> dict[int, list[tuple[int, int]]]:
    """Teacher -> its online recoveries in order, as (step, k-th draw of it in that step): one group of
    all teachers, m drawn with replacement per step (what meta_train's task step does)."""
    from tgr_hub.train import _CHOICE, _choose_teachers, step_rng

    draws: dict[int, list[tuple[int, int]]] = {t: [] for t in range(teachers)}
    for step in range(steps):
        chosen = _choose_teachers([list(range(teachers))], m, step_rng(seed, step, _CHOICE))
        for i, t in enumerate(chosen):
            draws[t].append((step, chosen[:i].count(t)))
    return draws


def test_online_bank_is_capped_and_overwritten_cyclically(prepared) -> None:
    before = _bank_digest(prepared.bank)
    steps = 4  # m = 4 of the 4 teachers per step, with replacement: 16 online recoveries, cap 2 per class
    cfg, result = _train(prepared, ["recover.online_start=cold", "recover.bank_size=2", f"train.iterations={steps}",
                                    "train.teachers_per_step=4"])
    bank = result.bank
    assert _bank_digest(prepared.bank) == before  # the caller's bank is left alone
    online = _online_draws(len(prepared.members), steps, 4)
    assert sum(map(len, online.values())) == 4 * steps
    checked = 0
    for t, member in enumerate(prepared.members):
        assert bank.tasks_of(member.name) == 1 + len(online[t])
        for c in bank.classes_of(member.name):
            assert bank.recoveries(member.name, c) == 2
        if len(online[t]) < 2:
            continue
        # the two slots, oldest first, are the teacher's last two online recoveries (the rest overwritten)
        newest = bank._chronological((member.name, 0))
        for slot, (step, k) in zip(newest, online[t][-2:]):
            sequence = seed_sequence(0, RECOVER_ONLINE, step, t, k)
            classes = sample_task_classes(member, cfg.recover.max_way, np.random.default_rng(sequence.spawn(1)[0]))
            task = recover_task(member, classes, cfg.recover, seed=int(sequence.generate_state(1)[0]),
                                steps=cfg.recover.online_steps)
            assert torch.equal(slot, to_uint8(task.images[task.labels == 0]))
        checked += 1
    assert checked >= 2
    assert len(result.history["recover_agreement"]) == steps


def test_online_insertion_is_deterministic_for_a_seed(prepared) -> None:
    overrides = ["train.iterations=2", "train.teachers_per_step=2", "recover.bank_size=3"]
    _, first = _train(prepared, overrides)
    _, again = _train(prepared, overrides)
    _, other = _train(prepared, overrides, seed=1)
    assert _bank_digest(first.bank) == _bank_digest(again.bank)
    assert [first.bank.tasks_of(m.name) for m in prepared.members] == [again.bank.tasks_of(m.name)
                                                                       for m in prepared.members]
    assert _bank_digest(first.bank) != _bank_digest(other.bank)
    assert first.history == again.history


def test_online_every_zero_keeps_the_bank(prepared) -> None:
    _, result = _train(prepared, ["recover.online_every=0", "train.iterations=1"])
    assert result.bank is None and "recover_agreement" not in result.history


def test_warm_online_recovery_continues_each_teachers_generator(prepared) -> None:
    steps = 4  # no saved generators: each teacher's first recovery starts one
    cfg, result = _train(prepared, ["recover.online_start=warm", "recover.bank_size=2", f"train.iterations={steps}",
                                    "train.teachers_per_step=4"])
    online = _online_draws(len(prepared.members), steps, 4)
    for t, member in enumerate(prepared.members):
        warm = WarmGenerator.for_teacher(member, cfg.recover, 0, t)
        expected = []
        for n, (step, k) in enumerate(online[t]):  # the same generator and Adam state, carried from draw to draw
            sequence = seed_sequence(0, RECOVER_ONLINE, step, t, k)
            classes = sample_task_classes(member, cfg.recover.max_way, np.random.default_rng(sequence.spawn(1)[0]))
            task = recover_task(member, classes, cfg.recover, seed=int(sequence.generate_state(1)[0]), warm=warm,
                                steps=cfg.recover.steps if n == 0 else cfg.recover.online_steps)
            expected.append(to_uint8(task.images[task.labels == 0]))
        assert warm.recoveries == len(online[t])
        newest = result.bank._chronological((member.name, 0))
        assert len(newest) == min(2, 1 + len(online[t]))
        for slot, image in zip(newest[len(newest) - min(2, len(expected)):], expected[-2:]):
            assert torch.equal(slot, image)


def test_meta_online_recovery_adapts_copies_of_a_shared_generator_moved_by_reptile(prepared) -> None:
    """``online_start = meta``: each recovery adapts a copy of the meta-generator; after each step the
    meta-generator's Adam follows the sum of θ − θ' over the step's recoveries, in task order. A
    direct replay with :class:`MetaStart` gives the bank's newest images bitwise."""
    from tgr_hub.recover import MetaStart
    from tgr_hub.train import _CHOICE, _choose_teachers, step_rng

    steps, m = 3, 4
    cfg, result = _train(prepared, ["recover.online_start=meta", "recover.bank_size=2", f"train.iterations={steps}",
                                    f"train.teachers_per_step={m}"])
    members = prepared.members
    meta = MetaStart(members, cfg.recover, 0)
    start = meta.state_tensors()
    newest: dict[int, list[torch.Tensor]] = {t: [] for t in range(len(members))}
    for step in range(steps):
        chosen = _choose_teachers([list(range(len(members)))], m, step_rng(0, step, _CHOICE))
        moves = []
        for i, t in enumerate(chosen):
            sequence = seed_sequence(0, RECOVER_ONLINE, step, t, chosen[:i].count(t))
            classes = sample_task_classes(members[t], cfg.recover.max_way, np.random.default_rng(sequence.spawn(1)[0]))
            adapted = meta.copy_for(members[t])
            task = recover_task(members[t], classes, cfg.recover, seed=int(sequence.generate_state(1)[0]),
                                generator=adapted, steps=cfg.recover.online_steps)
            moves.append((MetaStart.size_of(members[t]), meta.displacement(members[t], adapted)))
            newest[t].append(to_uint8(task.images[task.labels == 0]))
        meta.step(moves)
    for t, member in enumerate(members):
        slots = result.bank._chronological((member.name, 0))
        for slot, image in zip(slots[len(slots) - min(2, len(newest[t])):], newest[t][-2:]):
            assert torch.equal(slot, image)
    # the meta-generator moved (a control: without the step, the copies would all start from the same state)
    assert any(not torch.equal(v, meta.state_tensors()[k]) for k, v in start.items() if ".generator." in k)
