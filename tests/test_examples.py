"""examples/tgr_in_100_lines.py runs end to end (at its --tiny size) and does what it says."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "tgr_in_100_lines.py"


@pytest.mark.slow
def test_the_example_trains_and_evaluates_a_meta_model(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    done = subprocess.run([sys.executable, str(EXAMPLE), "--out", str(tmp_path), "--tiny"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    groups = ast.literal_eval(re.search(r"^groups: (.*)$", done.stdout, flags=re.M).group(1))
    assert sorted(name for group in groups for name in group) == ["t00", "t01", "t02", "t03"]  # a partition
    assert (tmp_path / "pool" / "repo-list.txt").is_file()
    accuracy = float(re.search(r"^5-way 1-shot: ([\d.]+)% ± [\d.]+$", done.stdout, flags=re.M).group(1))
    assert 0.0 < accuracy <= 100.0


def test_the_example_uses_the_public_functions_it_teaches() -> None:
    tree = ast.parse(EXAMPLE.read_text(encoding="utf-8"))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                and (node.module or "").startswith("tgr_hub") for alias in node.names}
    assert {"recover_teachers", "fisher_diagonal", "group_teachers", "igr_direction", "ProtoNet"} <= imported
    assert not any(name.startswith("_") for name in imported)  # public API only
    assert len(EXAMPLE.read_text(encoding="utf-8").splitlines()) <= 120
