"""`tgr-hub quickstart`, the README's main job, end to end on the smoke preset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_quickstart_prints_the_four_method_table(tmp_path: Path) -> None:
    out = tmp_path / "qs"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    done = subprocess.run([sys.executable, "-m", "tgr_hub.cli", "quickstart", "--preset", "smoke", "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    results = json.loads((out / "results.json").read_text())
    table = results["table"]
    assert list(table) == ["Random", "Average", "ERM", "TGR"]
    chance = 1.0 / results["config"]["eval"]["way"]
    for method, metrics in table.items():
        for shot in (1, 5):
            cell = metrics[f"{shot}shot"]
            assert 0.0 <= cell["mean"] <= 1.0 and cell["ci95"] > 0, (method, cell)
            # every method, even the untrained Random backbone, is above chance: the lower end of
            # the 95% interval clears 1/way (a broken episode sampler or learner sits at chance)
            assert cell["mean"] - cell["ci95"] > chance, (method, shot, cell, chance)
            # the printed table shows the same figures, in percent
            assert f"{100 * cell['mean']:.2f} ± {100 * cell['ci95']:.2f}" in done.stdout, (method, shot)
    # ERM is the same pipeline with beta = 0 and one group, on the very same recovered tasks
    erm = json.loads((out / "erm" / "tgr_config.json").read_text())
    tgr = json.loads((out / "tgr" / "tgr_config.json").read_text())
    assert erm["train"]["beta"] == 0.0 and erm["group"]["strategy"] == "none" and len(erm["groups"]) == 1
    assert tgr["train"]["beta"] > 0 and tgr["group"]["strategy"] == "spectral"
    assert (out / "erm" / "recovered" / "bank.safetensors").read_bytes() == \
        (out / "tgr" / "recovered" / "bank.safetensors").read_bytes()
    assert "total time" in done.stdout
