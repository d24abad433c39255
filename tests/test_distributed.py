"""Two CPU processes (gloo) give the same meta-model as one.

* ``tgr-hub train --num-processes 2`` (accelerate launch, ACCELERATE_USE_CPU) against the same
  command on one process: recovered bank, Fisher embeddings, groups, every checkpoint's model
  and the final meta-model agree to within 1e-5 (they are in fact bitwise equal, and the test
  reports the measured difference).
* ``tests/dist_worker.py`` under ``accelerate launch --multi_gpu --num_processes 2``: for
  first-order IGR, ERM (β = 0), MAML and second-order IGR, the per-step IGR direction, replay
  gradient and state digests are identical on both ranks, and identical to the one-process run.
* The exact row exchange and the sharding, in-process.

Every subprocess runs with ``OMP_NUM_THREADS=1`` (the box has 2 cores; 2 processes x 1 thread).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tgr_hub.distributed import Distributed, flatten, launch_command, make_accelerator, tensor_digest, unflatten

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # in-process work on one thread

REPO = Path(__file__).resolve().parent.parent
TOLERANCE = 1e-5


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    return env


def _tgr_hub(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tgr_hub.cli", *args], cwd=REPO, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def _max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel()), default=0.0)


@pytest.fixture(scope="module")
def pool(tiny_pool: Path) -> Path:
    return tiny_pool


TRAIN_ARGS = ["--preset", "smoke", "--no-test", "--set", "train.checkpoint_every=2", "--set", "train.sync_check_every=1"]


@pytest.fixture(scope="module")
def one_process_run(pool: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "one"
    done = _tgr_hub("train", "--pool", str(pool), "--out", str(out), *TRAIN_ARGS)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.slow
def test_two_processes_give_the_one_process_meta_model(pool: Path, one_process_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "two"
    done = _tgr_hub("train", "--pool", str(pool), "--out", str(out), "--num-processes", "2", *TRAIN_ARGS)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "launching 2 processes" in done.stdout
    assert done.stdout.count("meta-model written to") == 1  # only the main process reports
    one = one_process_run

    # stages 1-2: the work was shared out by teacher, merged in teacher order
    assert json.loads((out / "groups.json").read_text()) == json.loads((one / "groups.json").read_text())
    assert (out / "dissimilarity.json").read_text() == (one / "dissimilarity.json").read_text()
    assert _max_abs_diff(load_file(str(out / "embeddings.safetensors")),
                         load_file(str(one / "embeddings.safetensors"))) == 0.0
    assert _max_abs_diff(load_file(str(out / "recovered" / "bank.safetensors")),
                         load_file(str(one / "recovered" / "bank.safetensors"))) == 0.0
    assert not (out / "recovered" / "parts").exists() and not (out / "embeddings-parts").exists()

    # stage 3: the trained weights at every checkpoint (the final meta-model is the best-on-val state)
    diffs = {}
    for step in ("step-000002", "step-000004"):
        two_state = load_file(str(out / "checkpoints" / step / "model.safetensors"))
        one_state = load_file(str(one / "checkpoints" / step / "model.safetensors"))
        params = {k for k in one_state if "running_" not in k and "num_batches" not in k}
        diffs[step] = _max_abs_diff({k: two_state[k] for k in params}, {k: one_state[k] for k in params})
        assert diffs[step] <= TOLERANCE
        # BatchNorm running statistics are exchanged exactly too
        assert _max_abs_diff(two_state, one_state) <= TOLERANCE
    final = _max_abs_diff(load_file(str(out / "model.safetensors")), load_file(str(one / "model.safetensors")))
    assert final <= TOLERANCE
    print(f"max |w(2 processes) - w(1 process)|: checkpoints {diffs}, final meta-model {final}")
    state_two = json.loads((out / "checkpoints" / "step-000004" / "trainer_state.json").read_text())
    state_one = json.loads((one / "checkpoints" / "step-000004" / "trainer_state.json").read_text())
    assert (state_two["world_size"], state_one["world_size"]) == (2, 1)
    assert state_two["history"] == state_one["history"]  # losses and validation accuracies
    # each process saved its RNG state through Accelerate's save_state
    assert {p.name for p in (out / "checkpoints" / "step-000004").glob("random_states_*.pkl")} == {
        "random_states_0.pkl", "random_states_1.pkl"}


@pytest.mark.slow
def test_per_step_gradients_are_identical_across_ranks(pool: Path, one_process_run: Path, tmp_path: Path) -> None:
    worker = Path(__file__).resolve().parent / "dist_worker.py"
    out = tmp_path / "digests"
    single = subprocess.run([sys.executable, str(worker), str(pool), str(one_process_run), str(out)], cwd=REPO,
                            env=_env(), capture_output=True, text=True, timeout=240)
    assert single.returncode == 0, single.stderr[-3000:]
    env = {**_env(), "ACCELERATE_USE_CPU": "1"}
    launched = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--main_process_port", "0", "--mixed_precision", "no", "--dynamo_backend", "no",
         str(worker), str(pool), str(one_process_run), str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert launched.returncode == 0, launched.stderr[-3000:]
    for variant in ("igr", "offline", "online-cold", "online-meta", "erm", "maml", "second-order"):
        rank0 = json.loads((out / variant / "rank0-of-2.json").read_text())
        rank1 = json.loads((out / variant / "rank1-of-2.json").read_text())
        alone = json.loads((out / variant / "rank0-of-1.json").read_text())
        assert [r["step"] for r in alone[:-1]] == [1, 2, 3]
        assert len(alone[0]["task_losses"]) == 3  # 3 tasks: 2 on rank 0, 1 on rank 1
        assert rank0 == rank1, f"{variant}: the ranks applied different gradients"
        assert rank0 == alone, f"{variant}: 2 processes differ from 1"
        diff = _max_abs_diff(load_file(str(out / variant / "final-2.safetensors")),
                             load_file(str(out / variant / "final-1.safetensors")))
        assert diff <= TOLERANCE
    igr, erm, offline, cold = (json.loads((out / v / "rank0-of-1.json").read_text())
                               for v in ("igr", "erm", "offline", "online-cold"))
    assert igr[0]["direction"] != erm[0]["direction"]  # β matters (the test would catch a dropped IGR pass)
    assert igr[0]["task_losses"] == erm[0]["task_losses"]  # same tasks drawn whatever β
    # online recovery: fresh tasks (not the bank's) at every step; the quality of each recovery is logged
    assert igr[0]["task_losses"] != offline[0]["task_losses"]
    history = igr[-1]["history"]
    assert [s for s, _ in history["recover_agreement"]] == [1, 2, 3] and "recover_agreement" not in offline[-1]["history"]
    assert all(0 <= a <= 1 for _, a in history["recover_agreement"])
    # online_every=2: steps 0 and 2 recover (fresh tasks), step 1 draws from the bank (as offline does)
    assert [s for s, _ in cold[-1]["history"]["recover_agreement"]] == [1, 3]
    assert cold[0]["task_losses"] != offline[0]["task_losses"]


@pytest.mark.slow
def test_the_peers_give_the_one_process_result_with_two_processes(pool: Path, tmp_path: Path) -> None:
    """Each peer process runs the whole outer step (the peers do not shard their work), so two
    processes must reach the one-process meta-model bitwise, and with it the same validation."""
    worker = Path(__file__).resolve().parent / "peers_worker.py"
    out = tmp_path / "peers"
    single = subprocess.run([sys.executable, str(worker), str(pool), str(out)], cwd=REPO, env=_env(),
                            capture_output=True, text=True, timeout=400)
    assert single.returncode == 0, single.stderr[-3000:]
    env = {**_env(), "ACCELERATE_USE_CPU": "1"}
    launched = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--main_process_port", "0", "--mixed_precision", "no", "--dynamo_backend", "no",
         str(worker), str(pool), str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=500)
    assert launched.returncode == 0, launched.stderr[-3000:]
    for peer in ("purer", "free", "bidf-mkd"):
        alone, rank0, rank1 = (json.loads((out / peer / name).read_text())
                               for name in ("rank0-of-1.json", "rank0-of-2.json", "rank1-of-2.json"))
        assert rank0 == rank1 == alone, f"{peer}: 2 processes differ from 1"
        assert len(alone["history"]["val_acc"]) == 3  # steps 0, 2 and 4 of the smoke preset
        assert (out / peer / "checkpoints-2" / "step-000004").is_dir()


@pytest.mark.slow
def test_ranks_detect_that_they_have_diverged(pool: Path, one_process_run: Path) -> None:
    """sync_check_every=1 and rank 1 nudges one weight by one ulp after step 1: both ranks stop at step 2."""
    worker = Path(__file__).resolve().parent / "diverge_worker.py"
    env = {**_env(), "ACCELERATE_USE_CPU": "1"}
    launched = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
         "--num_machines", "1", "--main_process_port", "0", "--mixed_precision", "no", "--dynamo_backend", "no",
         str(worker), str(pool), str(one_process_run)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert launched.returncode != 0, launched.stdout[-3000:]
    reports = sorted(line for line in launched.stdout.splitlines() if line.startswith("rank "))
    assert len(reports) == 2 and "finished" not in launched.stdout, launched.stdout[-3000:] + launched.stderr[-3000:]
    for rank, line in enumerate(reports):
        assert line.startswith(f"rank {rank}: RankDivergenceError: processes disagree on the meta-model after step 2")


# --- in-process pieces ------------------------------------------------------------------------------


def test_one_process_view_and_exact_rows() -> None:
    dist = Distributed(make_accelerator("no"))
    assert (dist.rank, dist.world, dist.is_main) == (0, 1, True)
    assert dist.shard(5) == [0, 1, 2, 3, 4]
    rows = {i: torch.full((3,), float(i) + 0.1, dtype=torch.float64) for i in range(4)}
    table = dist.gather_rows(rows, 4, 3, torch.float64)
    assert table.shape == (4, 3) and torch.equal(table[2], torch.full((3,), 2.1, dtype=torch.float64))
    tensors = {"a": torch.randn(2, 3), "b": torch.arange(4)}
    assert dist.check_in_sync(tensors, "test") == tensor_digest(tensors)


def test_shards_are_disjoint_and_cover() -> None:
    class _Fake(Distributed):
        def __init__(self, rank: int, world: int) -> None:
            self.rank, self.world = rank, world

    for world in (1, 2, 3, 5):
        shares = [_Fake(r, world).shard(7) for r in range(world)]
        assert sorted(i for s in shares for i in s) == list(range(7))
    assert _Fake(1, 3).shard(4) == [1]


def test_zero_padded_sum_is_exact() -> None:
    """Why gather_rows is exact: adding zeros never rounds, in any order (the all-reduce's sum)."""
    gen = torch.Generator().manual_seed(0)
    row = torch.randn(1000, generator=gen) * torch.logspace(-30, 30, 1000)
    zeros = torch.zeros(1000)
    assert torch.equal((zeros + row) + zeros, row) and torch.equal(zeros + (zeros + row), row)


def test_flatten_round_trip_and_digest() -> None:
    tensors = {"w": torch.randn(3, 2), "b": torch.randn(4), "n": torch.tensor(7)}
    keys = ["w", "b"]
    vector = flatten(tensors, keys)
    assert vector.shape == (10,)
    back = unflatten(vector, tensors, keys)
    assert all(torch.equal(back[k], tensors[k]) for k in keys)
    changed = dict(tensors, w=tensors["w"].clone())
    changed["w"][0, 0] = torch.nextafter(changed["w"][0, 0], torch.tensor(10.0))  # one ulp
    assert tensor_digest(changed) != tensor_digest(tensors)
    assert tensor_digest({"b": tensors["b"], "w": tensors["w"], "n": tensors["n"]}) == tensor_digest(tensors)


def test_launch_command_for_cpu_processes() -> None:
    argv, env = launch_command(["train", "--pool", "p.txt", "--out", "runs/x"], num_processes=2, use_cpu=True,
                               threads_per_process=1)
    assert argv[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert argv[argv.index("--num_processes") + 1] == "2" and "--multi_gpu" in argv
    assert argv[argv.index("--main_process_port") + 1] == "0"  # a free port: runs can share a machine
    assert argv[-7:] == ["-m", "tgr_hub.cli", "train", "--pool", "p.txt", "--out", "runs/x"]
    assert env["ACCELERATE_USE_CPU"] == "1"
    assert argv[argv.index("--num_cpu_threads_per_process") + 1] == "1"
