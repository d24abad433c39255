"""A rerun of ``tgr-hub train`` skips every finished stage; a new eval section re-runs only evaluate."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tgr_hub.config import load_config
from tgr_hub.pipeline import STAGES, stage_status

pytestmark = pytest.mark.slow  # every test reuses one finished smoke run (a module fixture)

REPO = Path(__file__).resolve().parent.parent
ARTEFACTS = ["pool.json", "recovered/bank.safetensors", "recovered/bank.json", "recovered/generators.safetensors",
             "embeddings.safetensors",
             "dissimilarity.json", "dissimilarity.png", "groups.json", "config.json", "model.safetensors",
             "tgr_config.json", "training_curve.png"]


def _train(pool: Path, run: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    return subprocess.run([sys.executable, "-m", "tgr_hub.cli", "train", "--pool", str(pool), "--out", str(run),
                           "--preset", "smoke", *extra], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _stamps(run: Path) -> dict[str, int]:
    return {name: (run / name).stat().st_mtime_ns for name in ARTEFACTS}


@pytest.fixture(scope="module")
def finished(tiny_pool: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    run = tmp_path_factory.mktemp("stages") / "run"
    first = _train(tiny_pool, run)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "skipped" not in first.stderr  # a fresh folder: every stage runs
    return tiny_pool, run


def test_a_rerun_skips_every_finished_stage(finished) -> None:
    pool, run = finished
    cfg = load_config(preset="smoke")
    assert stage_status(run, cfg) == {stage: True for stage in STAGES}
    before = _stamps(run)
    model = (run / "model.safetensors").read_bytes()
    again = _train(pool, run)
    assert again.returncode == 0, again.stderr[-3000:]
    log = again.stderr
    for line in ("recover: ", "embed, dissimilarity: ", "group: ", "meta-train: ", "evaluate: "):
        assert any(l.startswith(line) and l.endswith("skipped") for l in log.splitlines()), (line, log[-2000:])
    assert _stamps(run) == before  # nothing was rewritten
    assert (run / "model.safetensors").read_bytes() == model
    assert "test 1shot" in again.stdout  # the recorded metrics are still reported


def test_new_eval_settings_rerun_only_the_evaluation(finished, tmp_path: Path) -> None:
    pool, finished_run = finished
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)  # the other tests keep the finished run as it was
    before = _stamps(run)
    record = json.loads((run / "tgr_config.json").read_text())
    cfg = load_config(preset="smoke", overrides=["eval.episodes=6"])
    status = stage_status(run, cfg)
    assert status["meta-train"] and not status["evaluate"]
    again = _train(pool, run, "--set", "eval.episodes=6")
    assert again.returncode == 0, again.stderr[-3000:]
    after = _stamps(run)
    assert {name for name in ARTEFACTS if after[name] != before[name]} == {"tgr_config.json"}
    updated = json.loads((run / "tgr_config.json").read_text())
    assert updated["eval"]["episodes"] == 6 and updated["metrics"]["test"]["1shot"]["episodes"] == 6
    assert updated["metrics"]["val"] == record["metrics"]["val"]  # the model and its selection are the same
    assert stage_status(run, cfg)["evaluate"]


def test_another_training_config_is_not_skipped(finished) -> None:
    _, run = finished
    status = stage_status(run, load_config(preset="smoke", overrides=["train.beta=0"]))
    assert not status["meta-train"] and not status["evaluate"]
    assert status["recover"] and status["dissimilarity"] and status["group"]


@pytest.mark.parametrize("override", ["recover.online_every=0", "recover.online_start=cold", "recover.online_steps=3"])
def test_another_online_recovery_setting_is_not_skipped(finished, override: str) -> None:
    _, run = finished
    assert stage_status(run, load_config(preset="smoke"))["meta-train"]  # the smoke preset recovers online
    status = stage_status(run, load_config(preset="smoke", overrides=[override]))
    assert not status["meta-train"] and not status["evaluate"]
    assert status["recover"] and status["dissimilarity"] and status["group"]
