"""bench/gpu_check.py end to end on the CPU (``--tiny``): every section is there, measured, consistent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tgr_hub.config import load_config

ROOT = Path(__file__).resolve().parent.parent
# the quickstart is the benchmark's special case: make-pool and the shared preparation, then each
# method (train + evaluate), the wall time, and the TGR run's own stages (its test is the benchmark's)
QUICKSTART_STAGES = {"make-pool", "pool", "recover", "embed+group", "random", "average", "erm", "tgr", "total",
                     "tgr/pool", "tgr/recover", "tgr/embed+group", "tgr/meta-train"}


@pytest.mark.slow
def test_gpu_check_tiny_on_the_cpu(tmp_path: Path) -> None:
    out, report_path = tmp_path / "work", tmp_path / "report.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu", "--tiny",
                           "--out", str(out), "--json", str(report_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert report["device"] == "cpu" and report["tiny"] is True

    # numerical tests ran (on the CPU here) and passed
    tests = report["tests"]
    assert tests["returncode"] == 0 and tests["failed"] == 0 and tests["passed"] >= 8, tests["summary"]
    assert tests["command"].startswith("TGR_HUB_TEST_DEVICE=cpu ")

    # the quickstart in fp32 and bf16: every stage timed, on the device asked for, a full table
    for key in ("quickstart", "quickstart_bf16"):
        qs = report[key]
        assert set(qs["stages_s"]) == QUICKSTART_STAGES
        assert all(t > 0 for t in qs["stages_s"].values()), qs["stages_s"]
        assert qs["stages_s"]["total"] >= qs["stages_s"]["tgr"] + qs["stages_s"]["erm"] + qs["stages_s"]["make-pool"]
        assert qs["device"] == "cpu" and qs["run_record_device"] == "cpu"
        assert set(qs["table"]) == {"Random", "Average", "ERM", "TGR"}
        for cells in qs["table"].values():
            assert set(cells) == {"1shot", "5shot"} and all(0 <= c["mean"] <= 1 and c["ci95"] > 0 for c in cells.values())
    assert "train.mixed_precision=bf16" in report["quickstart_bf16"]["command"]
    assert "mixed_precision" not in report["quickstart"]["command"]
    # Random and Average do not depend on the meta-training precision: the same numbers both times
    for method in ("Random", "Average"):
        assert report["quickstart"]["table"][method] == report["quickstart_bf16"]["table"][method]

    # the paper regime: cold and warm online recovery timed per iteration; no GPU memory on the CPU
    paper = report["paper"]
    assert paper["learner"] == "maml" and paper["upfront_recovery_s_per_teacher"] > 0 and paper["val_episode_s"] > 0
    assert [r["mode"] for r in paper["rows"]] == ["cold", "warm"]
    for row in paper["rows"]:
        assert row["iterations_timed"] == 2 and len(row["all_seconds"]) == 2
        assert row["seconds_per_iteration"] > 0 and row["peak_memory_mb"] is None

    # the extrapolation is the stated formula applied to the measured figures
    x = report["extrapolation"]
    paper_train = load_config(preset="paper").train  # 1,200 rounds, validation every 100 on 600 episodes per shot
    assert (x["P"], x["I"], x["E"], x["V"]) == (100, 1200, 100, 600 * len(paper_train.val_shots))
    for row in paper["rows"]:
        expected = (x["P"] * paper["upfront_recovery_s_per_teacher"] + x["I"] * row["seconds_per_iteration"]
                    + (x["I"] / x["E"] * x["V"] + x["S*N"]) * paper["val_episode_s"]) / 3600
        assert x[f"{row['mode']}_hours"] == pytest.approx(expected, rel=1e-12)
    assert "quickstart per stage" in done.stdout and "full paper run" in done.stdout
