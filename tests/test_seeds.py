"""Every random stream goes through tgr_hub.seeds: a draw that bypasses it fails here.

The check reads the source (AST) of every module of tgr_hub and cli except seeds.py and flags:
building or seeding a generator (``default_rng``, ``SeedSequence``, ``torch.Generator``,
``manual_seed``, ``fork_rng``, ``np.random.seed``), a draw from a global generator
(``np.random.<draw>``, the ``random`` module, ``torch.rand*`` / ``randperm`` / ``multinomial`` /
``bernoulli`` / ``normal`` without ``generator=``), and a seed derived by hand (``seed + 1``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from tgr_hub import seeds

ROOT = Path(__file__).resolve().parent.parent
BUILDERS = {"default_rng", "SeedSequence", "Generator", "manual_seed", "fork_rng", "seed", "manual_seed_all"}
TORCH_DRAWS = {"rand", "randn", "randint", "randperm", "multinomial", "bernoulli", "normal", "rand_like", "randn_like"}


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _is_seed_name(node: ast.AST) -> bool:
    name = _dotted(node)
    return name.split(".")[-1].endswith("seed") if name else False


def violations(source: str) -> list[tuple[int, str]]:
    """``(line, what)`` for each draw in ``source`` that bypasses the seed registry."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Sub):
            if (_is_seed_name(node.left) and isinstance(node.right, ast.Constant)) or (
                _is_seed_name(node.right) and isinstance(node.left, ast.Constant)
            ):
                found.append((node.lineno, f"a seed derived by hand: {ast.unparse(node)}"))
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        last = name.split(".")[-1]
        keywords = {k.arg for k in node.keywords}
        if last in BUILDERS and (name.startswith(("np.random", "numpy.random", "torch", "random")) or "." in name):
            if last == "seed" and not name.startswith(("np.random", "numpy.random", "random", "torch")):
                continue  # some_object.seed(...) of another kind
            if last == "Generator" and not name.startswith("torch"):
                continue
            found.append((node.lineno, f"a generator built or seeded outside tgr_hub.seeds: {name}(...)"))
        elif last in BUILDERS and name == last and last in {"default_rng", "SeedSequence", "manual_seed"}:
            found.append((node.lineno, f"a generator built or seeded outside tgr_hub.seeds: {name}(...)"))
        elif name.startswith(("np.random.", "numpy.random.")) or (name.startswith("random.") and name.count(".") == 1):
            found.append((node.lineno, f"a draw from a global generator: {name}(...)"))
        elif name.startswith("torch.") and last in TORCH_DRAWS and "generator" not in keywords:
            found.append((node.lineno, f"a torch draw from the global generator: {name}(...)"))
    return found


def _modules() -> list[Path]:
    files = sorted((ROOT / "tgr_hub").rglob("*.py")) + sorted((ROOT / "cli").rglob("*.py"))
    return [f for f in files if f.name != "seeds.py" and "tgr_hub/cli/" not in f.as_posix()]


def test_no_module_draws_randomness_outside_the_seed_registry() -> None:
    report = []
    for path in _modules():
        for line, what in violations(path.read_text(encoding="utf-8")):
            report.append(f"{path.relative_to(ROOT)}:{line}: {what}")
    assert not report, "draw through tgr_hub.seeds instead:\n" + "\n".join(report)


@pytest.mark.parametrize(
    "snippet",
    [
        "rng = np.random.default_rng(seed)",
        "rng = numpy.random.default_rng([seed, 3])",
        "s = np.random.SeedSequence(seed).generate_state(1)",
        "g = torch.Generator().manual_seed(0)",
        "torch.manual_seed(seed)",
        "x = np.random.rand(3)",
        "random.shuffle(items)",
        "x = torch.randn(4, 4)",
        "perm = torch.randperm(8)",
        "val = cfg.seed + 1",
        "other = 7 + seed",
        "with torch.random.fork_rng(devices=[]): pass",
    ],
)
def test_the_check_flags_each_kind_of_bypass(snippet: str) -> None:
    assert violations(snippet), snippet


@pytest.mark.parametrize(
    "snippet",
    [
        "x = torch.randn(4, 4, generator=g)",
        "rng = seeds.numpy_rng(seeds.seed_sequence(seed, seeds.TRAIN, step))",
        "def f(rng: np.random.Generator) -> None: pass",
        "train_seed = seed + REPLICATE_SEED_OFFSET",
        "perm = rng.permutation(8)",
    ],
)
def test_the_check_passes_draws_through_the_registry(snippet: str) -> None:
    assert not violations(snippet), snippet


def test_run_streams_are_the_published_ones() -> None:
    """The registry reproduces the streams as they were defined (changing one changes every number)."""
    assert seeds.numpy_rng(seeds.seed_sequence(3, seeds.TRAIN, 5, 1)).integers(1 << 30) == np.random.default_rng(
        [3, 3, 5, 1]
    ).integers(1 << 30)
    assert seeds.torch_seed(3, seeds.TRAIN, 5, 1) == int(np.random.SeedSequence([3, 3, 5, 1]).generate_state(1)[0])
    assert seeds.recovery_seeds(11) == tuple(int(s) for s in np.random.SeedSequence(11).generate_state(3))
    assert seeds.val_seed(4) == 5 and seeds.teacher_seed(2, 0) == (2 * 1_000_003 + 7919) % (2**31 - 1)
    assert torch.equal(
        torch.rand(3, generator=seeds.torch_generator(9)), torch.rand(3, generator=torch.Generator().manual_seed(9))
    )
    before = torch.random.get_rng_state()
    with seeds.seeded_torch(5):
        inside = torch.rand(2)
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's global state is untouched
    torch.manual_seed(5)
    assert torch.equal(inside, torch.rand(2))
    torch.random.set_rng_state(before)
