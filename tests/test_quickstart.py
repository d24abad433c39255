"""`tgr-hub quickstart`, the README's main job, end to end on the smoke preset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tgr_hub

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quickstart_prints_the_four_method_table(tmp_path: Path) -> None:
    out = tmp_path / "qs"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TQDM_")}  # the bars as a user gets them
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run([sys.executable, "-m", "tgr_hub.cli", "quickstart", "--preset", "smoke", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, timeout=600)  # bytes: text mode reads \r as \n
    assert done.returncode == 0, done.stderr[-3000:]
    # stderr is a pipe, not a terminal: the log is a few dozen whole lines, with no bar redraws
    log = done.stderr.decode()
    assert "\r" not in log and "\x1b" not in log, log[-2000:]
    lines = log.splitlines()
    assert 10 <= len(lines) <= 60 and all(line.strip() for line in lines), log
    for stage in ("make-pool: 4/4 done", "recover: 4/4 done", "embed: 4/4 done", "meta-train: 4/4 done"):
        assert stage in log, (stage, log)
    done.stdout = done.stdout.decode()

    results = json.loads((out / "results.json").read_text())  # the benchmark's report (tgr_hub.benchmark)
    table = results["scenarios"]["config"]["methods"]
    assert list(table) == ["random", "average", "erm", "tgr"]
    chance = 1.0 / results["eval"]["way"]
    for method, metrics in table.items():
        for shot in (1, 5):
            cell = metrics[f"{shot}shot"]["per_seed"]["0"]
            assert 0.0 <= cell["mean"] <= 1.0 and cell["ci95"] > 0, (method, cell)
            # every method, even the untrained Random backbone, is above chance: the lower end of
            # the 95% interval clears 1/way (a broken episode sampler or learner sits at chance)
            assert cell["mean"] - cell["ci95"] > chance, (method, shot, cell, chance)
            # the printed table shows the same figures, in percent
            assert f"{100 * cell['mean']:.2f} ± {100 * cell['ci95']:.2f}" in done.stdout, (method, shot)
    # ERM is the same pipeline with beta = 0 and one group, on the very same recovered tasks
    runs = out / "config" / "seed-0"
    erm = json.loads((runs / "erm" / "tgr_config.json").read_text())
    tgr = json.loads((runs / "tgr" / "tgr_config.json").read_text())
    assert erm["train"]["beta"] == 0.0 and erm["group"]["strategy"] == "none" and len(erm["groups"]) == 1
    assert erm["tgr_hub_version"] == tgr["tgr_hub_version"] == tgr_hub.__version__  # every run records its version
    assert tgr["train"]["beta"] > 0 and tgr["group"]["strategy"] == "spectral"
    assert (runs / "erm" / "recovered" / "bank.safetensors").read_bytes() == \
        (runs / "tgr" / "recovered" / "bank.safetensors").read_bytes()
    assert "total time" in done.stdout
