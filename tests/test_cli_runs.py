"""README commands that succeed, run as a user runs them (``python -m tgr_hub.cli`` in its own process).

* ``tgr-hub inspect --pool LIST``: the pool table (one row per teacher, with its group as
  ``groups.json`` records it) and the dissimilarity heatmap.
* ``tgr-hub evaluate --baseline average --pool LIST``: the figures the library's
  ``average_baseline`` + ``evaluate_model`` give on the same episodes.
* ``tgr-hub train --log-with tensorboard``: TensorBoard event files holding the run's losses
  and meta-val accuracies, step by step as ``tgr_config.json``'s history records them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parent.parent


def _tgr_hub(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    return subprocess.run([sys.executable, "-m", "tgr_hub.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_inspect_prints_the_pool_table_and_writes_the_heatmap(tiny_pool: Path, tmp_path: Path) -> None:
    out = tmp_path / "inspect"
    done = _tgr_hub("inspect", "--pool", str(tiny_pool), "--out", str(out), "--preset", "smoke")
    assert done.returncode == 0, done.stderr[-3000:]
    groups = json.loads((out / "groups.json").read_text())
    names = json.loads((out / "pool.json").read_text())
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["teacher", "arch"])
    rows = [line.split() for line in lines[header + 1:header + 5]]
    assert [row[0] for row in rows] == ["t00", "t01", "t02", "t03"]
    assert all(row[1] == "conv4" and row[2] == "5" for row in rows)
    # the printed group of each teacher is the one groups.json records
    recorded = groups["groups"] if isinstance(groups, dict) else groups
    group_of = {}
    for g, members in enumerate(recorded):
        for member in members:
            group_of[member if isinstance(member, str) else rows[member][0]] = g
    assert {row[0]: int(row[3]) for row in rows} == group_of
    assert names  # the resolved pool was recorded
    heatmap = out / "dissimilarity.png"
    assert f"heatmap: {heatmap}" in done.stdout
    assert heatmap.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and heatmap.stat().st_size > 5_000


@pytest.mark.slow
def test_evaluate_average_baseline_on_the_cli_matches_the_library(tiny_pool: Path, tmp_path: Path) -> None:
    from tgr_hub.data import load_split
    from tgr_hub.evaluate import average_baseline, evaluate_model
    from tgr_hub.pool import load_pool

    done = _tgr_hub("evaluate", "--baseline", "average", "--pool", str(tiny_pool), "--split", "val", "--way", "5",
                    "--shot", "1", "--query", "3", "--episodes", "6", "--seed", "4", "--no-progress",
                    "--json", str(tmp_path / "average.json"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Average baseline (conv4, pool {tiny_pool})" in done.stdout
    reported = json.loads((tmp_path / "average.json").read_text())
    assert reported["baseline"] == "average" and reported["pool"] == str(tiny_pool)
    # the library, by hand: average the teachers, evaluate on the same episodes
    model = average_baseline(load_pool(tiny_pool, progress=False))
    split = load_split("glyphs", "val", image_size=32, seed=0)
    expected = evaluate_model(model, split, way=5, shots=[1], query=3, episodes=6, learner="auto", seed=4,
                              progress=False)
    assert reported["results"]["1shot"]["mean"] == pytest.approx(expected["1shot"]["mean"], abs=1e-12)
    assert reported["results"]["1shot"]["ci95"] == pytest.approx(expected["1shot"]["ci95"], abs=1e-12)
    assert f"{100 * expected['1shot']['mean']:.2f}%" in done.stdout


@pytest.mark.slow
def test_train_logs_to_tensorboard(tiny_pool: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    done = _tgr_hub("train", "--pool", str(tiny_pool), "--out", str(out), "--preset", "smoke", "--no-test",
                    "--log-with", "tensorboard")
    assert done.returncode == 0, done.stderr[-3000:]
    events = sorted((out / "logs").rglob("events.out.tfevents.*"))
    assert events, sorted(p.relative_to(out) for p in (out / "logs").rglob("*"))
    history = json.loads((out / "tgr_config.json").read_text())["history"]
    logged = {}
    for event_file in events:
        accumulator = EventAccumulator(str(event_file)).Reload()
        for tag in accumulator.Tags()["scalars"]:
            logged.setdefault(tag, []).extend((e.step, e.value) for e in accumulator.Scalars(tag))
    for name in ("task_loss", "replay_loss", "val_acc"):
        assert name in logged, sorted(logged)
        assert [s for s, _ in sorted(logged[name])] == [s for s, _ in history[name]], name
        assert [v for _, v in sorted(logged[name])] == pytest.approx([v for _, v in history[name]], rel=1e-6), name
