"""Checkpoints, ``--resume``, and stages that continue where they stopped.

The main test kills ``tgr-hub train`` with a real SIGKILL once the checkpoint of step 3 exists
(the smoke preset recovers tasks online, so the checkpoint holds the grown memory bank and the
warm-started generators with their Adam states),
runs it again with ``--resume``, and compares the meta-model with an uninterrupted run (≤ 1e-6;
it is bitwise equal). The same killed run resumed on *two* processes gives that model too.
Nothing in a run folder may be left half-written: every file is written under a temporary
name and renamed, checkpoints are folders renamed into place, and leftovers of a killed save
are removed on resume.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tgr_hub.config import load_config
from tgr_hub.distributed import (
    Distributed,
    clean_checkpoint_leftovers,
    latest_checkpoint,
    list_checkpoints,
    make_accelerator,
    save_checkpoint,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # in-process work on one thread

REPO = Path(__file__).resolve().parent.parent
TOLERANCE = 1e-6
ITERATIONS = 12
KILL_AFTER = 3
TRAIN = ["--preset", "smoke", "--no-test", "--set", "train.checkpoint_every=1", "--set", f"train.iterations={ITERATIONS}"]


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    return env


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "tgr_hub.cli", *args]


def _tgr_hub(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(_command(*args), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)


def _max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel()), default=0.0)


def _leftovers(folder: Path) -> list[Path]:
    """Anything that looks half-written: temporary names, or per-item parts of a stage."""
    return [p for p in folder.rglob("*")
            if p.name.endswith(".tmp") or p.name.startswith(".tmp") or p.name in ("parts", "embeddings-parts")]


@pytest.fixture(scope="module")
def pool(tiny_pool: Path) -> Path:
    return tiny_pool


@pytest.fixture(scope="module")
def prepared(pool: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder with stages 1-2 done (recovered bank, embeddings, groups)."""
    from tgr_hub.pipeline import prepare_pool

    out = tmp_path_factory.mktemp("resume-runs") / "prepared"
    prepare_pool(pool, out, load_config(preset="smoke"), progress=False)
    return out


@pytest.fixture(scope="module")
def uninterrupted(pool: Path, prepared: Path) -> Path:
    out = prepared.parent / "uninterrupted"
    shutil.copytree(prepared, out)
    done = _tgr_hub("train", "--pool", str(pool), "--out", str(out), *TRAIN)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def _killed_run(pool: Path, prepared: Path, out: Path) -> None:
    """Start training, SIGKILL it once the checkpoint of step KILL_AFTER is complete."""
    shutil.copytree(prepared, out)
    target = out / "checkpoints" / f"step-{KILL_AFTER:06d}"
    process = subprocess.Popen(_command("train", "--pool", str(pool), "--out", str(out), *TRAIN), cwd=REPO,
                               env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while not target.is_dir():
        assert process.poll() is None, f"training ended before the kill: {process.stderr.read()[-2000:]!r}"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL
    process.stderr.close()
    steps = [step for step, _ in list_checkpoints(out / "checkpoints")]
    assert KILL_AFTER in steps and ITERATIONS not in steps, steps  # killed mid-training
    assert not (out / "model.safetensors").exists()
    for step, checkpoint in list_checkpoints(out / "checkpoints"):  # what is there is whole
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        assert {p.name for p in checkpoint.iterdir()} >= {"model.safetensors", "optimizer.bin", "best_model.safetensors",
                                                           "trainer_state.json", "random_states_0.pkl"}
        assert len(load_file(str(checkpoint / "model.safetensors"))) > 0 and state["step"] == step
        # the smoke preset recovers online with warm-started generators: bank and generators are saved
        assert (checkpoint / "bank" / "bank.safetensors").is_file() and sum(state["online"]["recoveries"]) > 0
        owned = sorted(p.name for p in (checkpoint / "generators").iterdir())
        # every teacher's generator (the up-front recovery made them all), whether recovered online yet or not
        assert owned == [f"t{t:05d}.safetensors" for t in range(len(state["online"]["recoveries"]))]


def _compare(resumed: Path, reference: Path) -> float:
    diff = _max_abs_diff(load_file(str(resumed / "model.safetensors")), load_file(str(reference / "model.safetensors")))
    last = f"step-{ITERATIONS:06d}"
    trained = _max_abs_diff(load_file(str(resumed / "checkpoints" / last / "model.safetensors")),
                            load_file(str(reference / "checkpoints" / last / "model.safetensors")))
    assert diff <= TOLERANCE and trained <= TOLERANCE
    history = json.loads((resumed / "tgr_config.json").read_text())["history"]
    assert history == json.loads((reference / "tgr_config.json").read_text())["history"]
    return max(diff, trained)


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_model(pool: Path, prepared: Path, uninterrupted: Path) -> None:
    out = prepared.parent / "killed"
    _killed_run(pool, prepared, out)

    again = _tgr_hub("train", "--pool", str(pool), "--out", str(out), *TRAIN)  # no --resume: refused, not overwritten
    assert again.returncode == 2 and "pass --resume" in again.stderr and "Traceback" not in again.stderr

    resumed = _tgr_hub("train", "--pool", str(pool), "--out", str(out), "--resume", *TRAIN)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming meta-training from step-" in resumed.stdout + resumed.stderr
    diff = _compare(out, uninterrupted)
    print(f"max |w(killed after step {KILL_AFTER} + resumed) - w(uninterrupted)|: {diff}")
    assert _leftovers(out) == []
    assert [step for step, _ in list_checkpoints(out / "checkpoints")] == [ITERATIONS - 1, ITERATIONS]  # pruned


@pytest.mark.slow
def test_killed_run_resumes_on_two_processes(pool: Path, prepared: Path, uninterrupted: Path) -> None:
    out = prepared.parent / "killed-then-two"
    _killed_run(pool, prepared, out)
    resumed = _tgr_hub("train", "--pool", str(pool), "--out", str(out), "--resume", "--num-processes", "2", *TRAIN)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    diff = _compare(out, uninterrupted)
    print(f"max |w(killed, resumed on 2 processes) - w(uninterrupted, 1 process)|: {diff}")
    assert _leftovers(out) == []


@pytest.mark.slow
def test_resume_checks_settings_and_finished_runs(pool: Path, uninterrupted: Path, tmp_path: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(uninterrupted, out)
    changed = _tgr_hub("train", "--pool", str(pool), "--out", str(out), "--resume", *TRAIN, "--set", "train.lr=0.01")
    assert changed.returncode == 2 and "settings changed" in changed.stderr and "lr" in changed.stderr
    # a finished run resumes to the same model without training again
    (out / "model.safetensors").unlink()
    finished = _tgr_hub("train", "--pool", str(pool), "--out", str(out), "--resume", *TRAIN,
                        "--set", "train.checkpoint_every=4")  # checkpoint frequency may change
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert f"step {ITERATIONS} of {ITERATIONS}" in finished.stdout + finished.stderr
    assert _max_abs_diff(load_file(str(out / "model.safetensors")),
                         load_file(str(uninterrupted / "model.safetensors"))) == 0.0


# --- in-process -----------------------------------------------------------------------------------


class _Counter:
    """A stateful object registered for checkpointing (save_state pickles its state_dict)."""

    def __init__(self) -> None:
        self.value = 0

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]


def test_checkpoints_are_atomic_pruned_and_cleaned(tmp_path: Path) -> None:
    dist = Distributed(make_accelerator("no"))
    folder = tmp_path / "checkpoints"
    written = []
    for step in (1, 2, 3):
        final = save_checkpoint(dist, folder, step, lambda f, s=step: (f / "trainer_state.json").write_text(
            json.dumps({"step": s})), keep=2)
        written.append(final)
    assert [s for s, _ in list_checkpoints(folder)] == [2, 3]
    assert latest_checkpoint(folder) == written[-1] and written[-1].name == "step-000003"
    assert (written[-1] / "random_states_0.pkl").is_file()  # Accelerate's save_state wrote into it
    # a save killed before its rename leaves a .tmp-* folder: never taken for a checkpoint, removed on resume
    (folder / ".tmp-step-000004").mkdir()
    (folder / ".tmp-step-000004" / "trainer_state.json").write_text("{}")
    (folder / "step-000005").mkdir()  # not renamed by save_checkpoint: no trainer_state.json, not complete
    assert latest_checkpoint(folder) == written[-1]
    assert [p.name for p in clean_checkpoint_leftovers(folder)] == [".tmp-step-000004"]
    assert not (folder / ".tmp-step-000004").exists()
    # saving a step that exists replaces it
    save_checkpoint(dist, folder, 3, lambda f: (f / "trainer_state.json").write_text('{"step": 3, "again": 1}'), keep=2)
    assert json.loads((folder / "step-000003" / "trainer_state.json").read_text())["again"] == 1
    assert not [p for p in folder.iterdir() if p.name.startswith(".tmp")]


def _bank_state(path: Path) -> tuple[dict, dict]:
    index = json.loads((path.parent / "bank.json").read_text())
    index.pop("generation")
    return index, load_file(str(path))


@pytest.mark.slow
def test_stopped_recovery_and_embedding_resume_from_their_parts(pool: Path, prepared: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import tgr_hub.pipeline as pipeline
    from tgr_hub.pool import load_pool

    cfg = load_config(preset="smoke")
    members = load_pool(pool)
    bank_path = tmp_path / "recovered" / "bank.safetensors"
    real_recover = pipeline.recover_teachers

    def stops_after_two(*args, on_task, **kwargs):
        done = []

        def count(task):
            on_task(task)
            done.append(task)
            if len(done) == 2:
                raise KeyboardInterrupt  # stands in for a kill: the parts saved so far stay

        return real_recover(*args, on_task=count, **kwargs)

    monkeypatch.setattr(pipeline, "recover_teachers", stops_after_two)
    with pytest.raises(KeyboardInterrupt):
        pipeline.recover_pool(members, cfg, bank_path, progress=False)
    parts = sorted(p.name for p in (bank_path.parent / "parts").iterdir())
    assert parts == ["t00000-r0000.safetensors", "t00001-r0000.safetensors"] and not bank_path.exists()
    monkeypatch.setattr(pipeline, "recover_teachers", real_recover)
    calls = []
    monkeypatch.setattr(pipeline, "recover_teachers", lambda *a, **k: (calls.append(k["skip"]), real_recover(*a, **k)))
    bank = pipeline.recover_pool(members, cfg, bank_path, progress=False)
    assert bank.tasks_of("t00") == 1 and len(bank.teachers()) == 4
    # the resumed bank is the one an uninterrupted recovery wrote (prepared fixture), byte for byte
    resumed_index, resumed = _bank_state(bank_path)
    reference_index, reference = _bank_state(prepared / "recovered" / "bank.safetensors")
    assert resumed_index == reference_index
    assert resumed.keys() == reference.keys() and all(torch.equal(resumed[k], reference[k]) for k in resumed)
    assert not (bank_path.parent / "parts").exists()
    # the warm generators handed on to online recovery (smoke is warm) are the uninterrupted ones too
    ours = load_file(str(bank_path.parent / "generators.safetensors"))
    theirs = load_file(str(prepared / "recovered" / "generators.safetensors"))
    assert ours.keys() == theirs.keys() and len(ours) > 0 and all(torch.equal(ours[k], theirs[k]) for k in ours)

    # embedding: two teachers embedded before the stop, the rest after; same file as uninterrupted
    real_embed = pipeline._embed_one
    seen = []

    def embed_two(*args, **kwargs):
        if len(seen) == 2:
            raise KeyboardInterrupt
        seen.append(args[2])
        return real_embed(*args, **kwargs)

    monkeypatch.setattr(pipeline, "_embed_one", embed_two)
    path = tmp_path / "embeddings.safetensors"
    with pytest.raises(KeyboardInterrupt):
        pipeline.embed_pool(members, bank, cfg, path, progress=False)
    assert len(list((tmp_path / "embeddings-parts").iterdir())) == 2
    monkeypatch.setattr(pipeline, "_embed_one", lambda *a, **k: (seen.append(a[2]), real_embed(*a, **k))[1])
    pipeline.embed_pool(members, bank, cfg, path, progress=False)
    assert seen == [0, 1, 2, 3]  # the two done before the stop were not redone
    ours, theirs = load_file(str(path)), load_file(str(prepared / "embeddings.safetensors"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert _leftovers(tmp_path) == []
