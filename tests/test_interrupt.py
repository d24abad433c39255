"""Ctrl-C (a real SIGINT, in the command's own process) during ``quickstart``, ``make-pool`` and
``inspect``: each stops with status 130 and one line saying how to continue, no traceback, and
the work finished before the interrupt is still there.

Each command is started, the test waits until it has written a file that shows it is inside
its long work (the first teacher of a pool; the resolved pool of an inspect run, with recovery
made long), then sends SIGINT.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _interrupt_when(argv: list[str], marker: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    """Run ``tgr-hub ARGV``; send SIGINT as soon as ``marker`` exists; return the finished process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "tgr_hub.cli", *argv], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        while not marker.exists():
            if process.poll() is not None:
                out, err = process.communicate()
                pytest.fail(f"the command ended (status {process.returncode}) before {marker.name} appeared:\n{err[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"{marker} did not appear within {timeout} s")
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def _check_interrupted(done: subprocess.CompletedProcess, hint: str) -> None:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 130, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr, done.stderr[-3000:]
    assert lines and lines[-1].startswith("tgr-hub: interrupted; ") and hint in lines[-1], lines[-1:]


def test_ctrl_c_during_make_pool(tmp_path: Path) -> None:
    out = tmp_path / "pool"
    done = _interrupt_when(["make-pool", "--out", str(out), "--domains", "latin", "--archs", "conv4", "--teachers", "3",
                            "--way", "5", "--epochs", "40", "--no-progress"], out / "t00" / "config.json")
    _check_interrupted(done, "the teachers that were finished are kept")
    assert (out / "t00" / "model.safetensors").is_file() and not (out / "repo-list.txt").exists()


POOL = Path("config") / "seed-0" / "pool"  # the quickstart's pool (the benchmark's layout: scenario, seed)


def test_ctrl_c_during_quickstart(tmp_path: Path) -> None:
    out = tmp_path / "qs"
    done = _interrupt_when(["quickstart", "--preset", "smoke", "--out", str(out), "--set", "pool.epochs=40"],
                           out / POOL / "t00" / "config.json")
    _check_interrupted(done, "rerun the same command")
    assert (out / POOL / "t00" / "model.safetensors").is_file() and not (out / "results.json").exists()


def test_ctrl_c_during_inspect(tiny_pool: Path, tmp_path: Path) -> None:
    out = tmp_path / "inspect"
    # recovery made long (many inversion steps) so that the interrupt lands inside it
    done = _interrupt_when(["inspect", "--pool", str(tiny_pool), "--out", str(out), "--preset", "smoke",
                            "--set", "recover.steps=5000"], out / "pool.json")
    _check_interrupted(done, "the recovered tasks and embeddings that were finished are kept")
    assert not (out / "groups.json").exists()
