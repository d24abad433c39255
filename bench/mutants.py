"""Mutation check: plant one-line bugs in a copy of the repository and see whether the tests catch them.

Not part of the test suite (it runs the relevant tests once per mutant: tens of minutes on a
2-core CPU). Each mutant below is a file, an exact snippet of that file and its replacement;
for each one the repository is copied to a temporary folder, the snippet replaced (exactly
once), and ``python -m pytest -q -x <tests>`` run inside the copy (the copy first on
``PYTHONPATH``, so the copy's ``tgr_hub`` is the one imported, in the tests and in the
subprocesses they start). A failing run means the mutant was **caught**; a passing one that it
**survived**. A snippet that is not found exactly once is reported as ``NOT APPLIED`` (a stale
mutant after the code moved: update its snippet), never as caught.

    python bench/mutants.py                  # every mutant; prints the table at the end
    python bench/mutants.py --list           # the mutants, and whether each snippet still applies
    python bench/mutants.py --only replay-off --only igr-sign
    python bench/mutants.py --baseline       # first run each test selection unmutated (must pass)

Exit status 0 when every mutant that was run is caught, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str  # relative to the repository root
    original: str  # must occur exactly once in the file
    replacement: str
    tests: tuple[str, ...]  # pytest arguments (files, node ids, -k expressions)
    why: str


# The mutation list: data, so that snippets can be updated when the code they point at moves.
MUTANTS: list[Mutant] = [
    # --- the four bugs of issue 16 ------------------------------------------------------------------
    Mutant("no-optimiser-step", "tgr_hub/train.py",
           "        self.optimizer.step()\n",
           "        pass  # MUTANT: the optimiser never steps\n",
           ("tests/test_train.py",),
           "meta-training never updates the model"),
    Mutant("replay-off", "tgr_hub/train.py",
           "        if not (cfg.replay and cfg.replay_batch > 0):\n",
           "        if True:  # MUTANT: replay never runs\n",
           ("tests/test_train.py",),
           "the replay step returns nothing"),
    Mutant("no-token-scrub", "tgr_hub/hub/client.py",
           '    """``text`` without any token in it (the explicit one, the configured one, or any ``hf_...``)."""\n',
           '    return text  # MUTANT: no scrubbing\n',
           ("tests/test_hub.py", "-k", "token or error"),
           "error and log text is not scrubbed of the token"),
    Mutant("no-pickle-gate", "tgr_hub/hub/resolve.py",
           "        if not allow_pickle:\n",
           "        if False:  # MUTANT: the resolver downloads pickles without opt-in\n",
           ("tests/test_hub.py", "-k", "pickle or download"),
           "the Hub resolver's pickle gate removed"),
    Mutant("duplicate-resolved-twice", "tgr_hub/hub/resolve.py",
           "            for key, i in first_of.items()\n",
           "            for key, i in [*first_of.items(), *((keys[j], j) for j in range(len(keys))"
           " if j != first_of[keys[j]])]  # MUTANT: duplicates resolved again\n",
           ("tests/test_hub.py", "-k", "concurrently"),
           "a duplicate pool entry is resolved twice"),
    # --- online recovery (issue 11) -------------------------------------------------------------------
    Mutant("online-task-not-banked", "tgr_hub/train.py",
           "            self.bank.add(task)\n",
           "            pass  # MUTANT: the fresh online task never enters the memory bank\n",
           ("tests/test_online.py",),
           "an online recovery is used for the IGR step but not inserted into the bank"),
    Mutant("warm-generator-not-carried", "tgr_hub/train.py",
           "                warm = self.warm.get(t)\n",
           "                warm = None  # MUTANT: every warm online recovery starts a new generator\n",
           ("tests/test_online.py", "-k", "warm"),
           "warm online recovery does not carry the teacher's generator and Adam state over"),
    # --- the method's core ---------------------------------------------------------------------------
    Mutant("igr-sign", "tgr_hub/igr.py",
           "        diff = torch._foreach_sub([g[k].detach() for k in keys], mean)\n",
           "        diff = torch._foreach_sub(mean, [g[k].detach() for k in keys])  # MUTANT: displaced the wrong way\n",
           ("tests/test_igr.py",),
           "IGR displaces θ by β(ḡ − g_i) instead of β(g_i − ḡ)"),
    Mutant("fisher-abs", "tgr_hub/embed.py",
           "            sq_sum[k] += (g.detach() ** 2).sum(dim=0)\n",
           "            sq_sum[k] += g.detach().abs().sum(dim=0)  # MUTANT: |g| instead of g²\n",
           ("tests/test_embed.py",),
           "the vmapped Fisher diagonal sums |g| instead of g²"),
    Mutant("similarity-not-dissimilarity", "tgr_hub/embed.py",
           "            dist[i] += 1.0 - cos.clamp(0.0, 1.0)\n",
           "            dist[i] += cos.clamp(0.0, 1.0)  # MUTANT: similarity\n",
           ("tests/test_embed.py",),
           "the dissimilarity matrix holds cosine similarities"),
    Mutant("group-similar-teachers", "tgr_hub/group.py",
           "            labels = model.fit_predict(mat)\n",
           "            labels = model.fit_predict(mat.max() - mat)  # MUTANT: affinity = similarity\n",
           ("tests/test_group.py",),
           "spectral grouping puts similar teachers together instead of dissimilar ones"),
    Mutant("query-overlaps-support", "tgr_hub/data/episodes.py",
           "            query.append(chosen[self.shot :])\n",
           "            query.append(chosen[self.shot - 1:-1])  # MUTANT: a support image among the queries\n",
           ("tests/test_episodes.py", "tests/test_data.py"),
           "episodes reuse a support image as a query"),
    Mutant("resume-redoes-a-step", "tgr_hub/train.py",
           '        start = int(state["step"])\n',
           '        start = max(int(state["step"]) - 1, 0)  # MUTANT: resumes one step early\n',
           ("tests/test_resume.py",),
           "a resumed run applies the checkpoint's last step twice"),
    Mutant("bn-loss-no-variance", "tgr_hub/recover.py",
           "            + torch.linalg.vector_norm(var - cast(torch.Tensor, module.running_var))\n",
           "            + 0.0 * var.sum()  # MUTANT: variance term dropped\n",
           ("tests/test_recover.py",),
           "model inversion's BatchNorm loss ignores the variances"),
    Mutant("bank-not-cyclic", "tgr_hub/bank.py",
           "            slots[written % self.bank_size] = slot\n",
           "            slots[0] = slot  # MUTANT: always overwrites the first slot\n",
           ("tests/test_recover.py",),
           "the memory bank overwrites one slot instead of the oldest"),
    Mutant("no-divergence-check", "tgr_hub/distributed.py",
           "        if len(set(digests)) != 1:\n",
           "        if False:  # MUTANT: ranks never compare\n",
           ("tests/test_distributed.py", "-k", "diverged"),
           "ranks never notice that they hold different models"),
    Mutant("pickle-loaded-unsafely", "tgr_hub/models/hub_layout.py",
           '            state = torch.load(path, map_location="cpu", weights_only=True)\n',
           '            state = torch.load(path, map_location="cpu", weights_only=False)  # MUTANT\n',
           ("tests/test_pool.py",),
           "opted-in pickles are unpickled with arbitrary objects allowed"),
    # --- fourth session ---------------------------------------------------------------------------------
    Mutant("dataset-error-unscrubbed", "tgr_hub/data/hub_datasets.py",
           '    return DatasetError(f"cannot load Hub dataset {label!r}{note}: {hub_error.args[0]}", '
           'hint=hub_error.hint or hint)\n',
           '    return DatasetError(f"cannot load Hub dataset {label!r}{note}: {error}", hint=hint)  # MUTANT\n',
           ("tests/test_hub_datasets.py", "-k", "echo"),
           "a Hub dataset's error text reaches DatasetError unscrubbed"),
    Mutant("benchmark-no-episode-check", "tgr_hub/benchmark/run.py",
           "        self.check_episodes_unchanged(cell)\n",
           "        pass  # MUTANT: a cell trains although its data changed\n",
           ("tests/test_benchmark.py", "-k", "refused"),
           "a benchmark cell trains on episodes that differ from its finished neighbours'"),
    Mutant("classes-merged-across-splits", "tgr_hub/data/sources.py",
           "    elif _numbered_per_split(labels):\n",
           "    elif False:  # MUTANT: per-split class numbers merged by value\n",
           ("tests/test_data.py", "-k", "separately"),
           "label 3 of test is taken for label 3 of train"),
    # --- issue 24: tests that pin the numbers (task loss, seeded stages, paired statistics) ---------------
    Mutant('task-ce-smoothed', 'tgr_hub/train.py',
           '    loss = F.cross_entropy(logits, labels)\n',
           '    loss = F.cross_entropy(logits, labels, label_smoothing=0.1)  # MUTANT: not the plain CE\n',
           ('tests/test_task_loss.py', '-k', 'loss_is or softened'),
           "the task loss's cross-entropy is label-smoothed"),
    Mutant('kl-student-probabilities', 'tgr_hub/train.py',
           '        log_student = F.log_softmax(logits / temperature, dim=-1)\n',
           '        log_student = F.softmax(logits / temperature, dim=-1)  # MUTANT: probabilities for the student\n',
           ('tests/test_task_loss.py', '-k', 'loss_is or softened'),
           "the distillation KL is given the student's probabilities where it takes log-probabilities"),
    Mutant('kl-teacher-log-probabilities', 'tgr_hub/train.py',
           '        loss = loss + distill_weight * temperature**2 * F.kl_div(log_student, targets, reduction="batchmean")\n',
           '        loss = loss + distill_weight * temperature**2 * F.kl_div(log_student, targets.log(), reduction="batchmean")  # MUTANT\n',
           ('tests/test_task_loss.py', '-k', 'loss_is or softened'),
           "the distillation KL is given the teacher's log-probabilities where it takes probabilities"),
    Mutant('kl-no-t-squared', 'tgr_hub/train.py',
           '        loss = loss + distill_weight * temperature**2 * F.kl_div(log_student, targets, reduction="batchmean")\n',
           '        loss = loss + distill_weight * temperature * F.kl_div(log_student, targets, reduction="batchmean")  # MUTANT: T instead of T^2\n',
           ('tests/test_task_loss.py', '-k', 'loss_is or softened'),
           'the KL term is scaled by T instead of T^2'),
    Mutant('kl-student-not-softened', 'tgr_hub/train.py',
           '        log_student = F.log_softmax(logits / temperature, dim=-1)\n',
           '        log_student = F.log_softmax(logits, dim=-1)  # MUTANT: student at T = 1\n',
           ('tests/test_task_loss.py', '-k', 'loss_is or softened'),
           "the student's log-probabilities are not softened by the temperature"),
    Mutant('kl-weight-ignored', 'tgr_hub/train.py',
           '        loss = loss + distill_weight * temperature**2 * F.kl_div(log_student, targets, reduction="batchmean")\n',
           '        loss = loss + temperature**2 * F.kl_div(log_student, targets, reduction="batchmean")  # MUTANT: weight 1\n',
           ('tests/test_task_loss.py', '-k', 'loss_is or softened'),
           'train.distill_weight does not weight the KL term'),
    Mutant('kl-mean-over-entries', 'tgr_hub/train.py',
           '        loss = loss + distill_weight * temperature**2 * F.kl_div(log_student, targets, reduction="batchmean")\n',
           '        loss = loss + distill_weight * temperature**2 * F.kl_div(log_student, targets, reduction="mean")  # MUTANT\n',
           ('tests/test_task_loss.py', '-k', 'loss_is or softened'),
           'the KL is averaged over images x classes instead of images'),
    Mutant('episodic-kl-on-support-targets', 'tgr_hub/train.py',
           '        labels, targets = task.query_y, task.teacher_probs[n_support:]\n',
           '        labels, targets = task.query_y, task.teacher_probs[:task.query_y.numel()]  # MUTANT: support rows\n',
           ('tests/test_task_loss.py', '-k', 'loss_is or softened'),
           "the episodic KL compares the query logits with the teacher's predictions on other images"),
    Mutant('teacher-targets-not-softened', 'tgr_hub/train.py',
           '        teacher_probs = F.softmax(teacher_logits.float() / temperature, dim=-1)\n',
           '        teacher_probs = F.softmax(teacher_logits.float(), dim=-1)  # MUTANT: teacher at T = 1\n',
           ('tests/test_task_loss.py', '-k', 'loss_is or softened'),
           "the teacher's distillation targets are not softened by the temperature"),
    Mutant('grouping-ignores-seed', 'tgr_hub/group.py',
           'n_clusters=num_groups, affinity="precomputed", n_init=n_init, random_state=seed, assign_labels="kmeans"',
           'n_clusters=num_groups, affinity="precomputed", n_init=n_init, random_state=0, assign_labels="kmeans"',
           ('tests/test_group.py', '-k', 'seed'),
           'spectral grouping ignores its seed (always random_state=0)'),
    Mutant('recovery-ignores-seed', 'tgr_hub/recover.py',
           '    gen_seed, z_seed, aug_seed = seeds.recovery_seeds(seed)\n',
           '    gen_seed, z_seed, aug_seed = seeds.recovery_seeds(0)  # MUTANT\n',
           ('tests/test_recover.py', '-k', 'deterministic_for_a_seed or follows_the_run_seed'),
           'recover_task ignores its seed'),
    Mutant('recover-teachers-ignore-run-seed', 'tgr_hub/recover.py',
           '            seq = seed_sequence(seed, RECOVER, i, r)\n',
           '            seq = seed_sequence(0, RECOVER, i, r)  # MUTANT: the run seed is ignored\n',
           ('tests/test_recover.py', '-k', 'follows_the_run_seed'),
           'up-front recovery draws the same classes and images whatever the run seed'),
    Mutant('episode-sampler-ignores-seed', 'tgr_hub/data/episodes.py',
           '        rng = seeds.episode_rng(self.seed, index)\n',
           "        rng = seeds.episode_rng(0, index)  # MUTANT: the sampler's seed is ignored\n",
           ('tests/test_episodes.py', '-k', 'seed'),
           'EpisodeSampler ignores its seed'),
    Mutant('episode-classes-ignore-seed', 'tgr_hub/data/episodes.py',
           '        picked = rng.choice(len(self.eligible), size=self.way, replace=False)\n',
           '        picked = np.random.default_rng(int(index)).choice(len(self.eligible), size=self.way, replace=False)  # MUTANT\n',
           ('tests/test_episodes.py', '-k', 'seed'),
           'EpisodeSampler draws its classes from the episode index alone'),
    Mutant('bank-episode-classes-ignore-rng', 'tgr_hub/bank.py',
           '        for index in rng.permutation(len(candidates)):\n',
           '        for index in np.arange(len(candidates)):  # MUTANT: always the first keys\n',
           ('tests/test_recover.py', '-k', 'random_stream'),
           'bank.sample_episode ignores its stream for the classes'),
    Mutant('bank-episode-images-ignore-rng', 'tgr_hub/bank.py',
           '            pick = torch.from_numpy(rng.choice(stored.shape[0], size=need, replace=False))\n',
           '            pick = torch.arange(need)  # MUTANT: always the first images\n',
           ('tests/test_recover.py', '-k', 'random_stream'),
           'bank.sample_episode ignores its stream for the images'),
    Mutant('step-rng-ignores-seed', 'tgr_hub/train.py',
           '    return seeds.numpy_rng(seeds.seed_sequence(seed, _TRAIN_STREAM, step, *key))\n',
           '    return seeds.numpy_rng(seeds.seed_sequence(0, _TRAIN_STREAM, step, *key))  # MUTANT\n',
           ('tests/test_task_loss.py', '-k', 'follows_the_run_seed'),
           "meta-training's choices (group, teachers, tasks, replay) ignore the run seed"),
    Mutant('teacher-group-ignores-rng', 'tgr_hub/train.py',
           '    group = groups[int(rng.integers(len(groups)))]\n',
           '    group = groups[0]  # MUTANT: always the first group\n',
           ('tests/test_task_loss.py', '-k', 'teacher_choice or teacher_draw'),
           "the step's group is not drawn"),
    Mutant('replay-ignores-seed', 'tgr_hub/train.py',
           '            stream = step_rng(self.seed, step, _REPLAY, round_step * cfg.replay_batch + e)\n',
           '            stream = step_rng(0, step, _REPLAY, round_step * cfg.replay_batch + e)  # MUTANT\n',
           ('tests/test_train.py', '-k', 'replay_episodes'),
           'replay episodes ignore the run seed'),
    Mutant('replay-rounds-repeat', 'tgr_hub/train.py',
           '            stream = step_rng(self.seed, step, _REPLAY, round_step * cfg.replay_batch + e)\n',
           '            stream = step_rng(self.seed, step, _REPLAY, e)  # MUTANT: every round the same episodes\n',
           ('tests/test_train.py', '-k', 'replay_episodes'),
           'the replay steps of a round reuse the same episodes'),
    Mutant('paired-on-reordered-lists', 'tgr_hub/benchmark/report.py',
           '                records[(s, method)]["accuracies"][shot], records[(s, reference)]["accuracies"][shot]\n',
           '                sorted(records[(s, method)]["accuracies"][shot]), records[(s, reference)]["accuracies"][shot]  # MUTANT\n',
           ('tests/test_benchmark.py', '-k', 'pairs_each_episode'),
           "paired statistics computed on re-ordered accuracy lists (the method's sorted before pairing)"),
    Mutant('paired-on-sorted-arrays', 'tgr_hub/stats.py',
           '    return t_interval(a - b, confidence)\n',
           '    return t_interval(np.sort(a) - np.sort(b), confidence)  # MUTANT: pairs by rank, not by episode\n',
           ('tests/test_benchmark.py', '-k', 'strongly_correlated'),
           'paired_difference pairs the accuracies by rank instead of by episode'),
    Mutant('t-interval-normal-quantile', 'tgr_hub/stats.py',
           '    half = float(_scipy_stats.t.ppf(0.5 + confidence / 2, df)) * se\n',
           "    half = 1.96 * se  # MUTANT: normal quantile instead of Student's t\n",
           ('tests/test_benchmark.py', '-k', 'strongly_correlated or pairs_each_episode'),
           't-intervals use the normal 1.96 (too narrow across 3 seeds)'),
    Mutant('t-interval-population-sd', 'tgr_hub/stats.py',
           '    sd = float(x.std(ddof=1))\n',
           '    sd = float(x.std(ddof=0))  # MUTANT: population sd\n',
           ('tests/test_benchmark.py', '-k', 'strongly_correlated or pairs_each_episode'),
           'the paired t uses the population standard deviation'),
    Mutant('decomposition-reversed', 'tgr_hub/benchmark/report.py',
           '            and (diff := _paired(records, method, versus, spec.seeds, shots)) is not None\n',
           '            and (diff := _paired(records, versus, method, spec.seeds, shots)) is not None  # MUTANT\n',
           ('tests/test_benchmark.py', '-k', 'taken_apart'),
           "TGR's decomposition subtracts the wrong way round"),
    Mutant('val-std-error-one-shot', 'tgr_hub/evaluate.py',
           '    std_error = float(np.sqrt(np.sum([(m["ci95"] / 1.96) ** 2 for m in per_shot])) / len(per_shot))\n',
           '    std_error = float(per_shot[0]["ci95"] / 1.96)  # MUTANT: the first shot\'s standard error only\n',
           ('tests/test_evaluate.py', '-k', 'meta_validation'),
           "the selection noise is one shot's standard error, not that of the mean over shots"),
    Mutant('peers-validate-by-fine-tuning', 'tgr_hub/peers/__init__.py',
           '        validation=ValSettings.of(cfg.train),  # a TGR cell\'s: every method selects the same way\n',
           '        # MUTANT: the peers validate their own way\n',
           ('tests/test_peers.py', '-k', 'in_the_benchmark'),
           "the benchmark's peers choose their checkpoint by fine-tuning while TGR's cells use the benchmark's learner"),
    Mutant('free-reptile-unscaled', 'tgr_hub/peers/free.py',
           '                p.grad = self.cfg.reptile_scale * (p.detach() - q.detach())\n',
           '                p.grad = p.detach() - q.detach()  # MUTANT: the public code\'s scale left out\n',
           ('tests/test_peers.py', '-k', 'reptile_step'),
           "FREE's Reptile step gives the Adam it shares with replay θ − θ' unscaled, so it mostly continues replay"),
    Mutant('chose-before-last-at-last', 'tgr_hub/benchmark/report.py',
           '                    "cells": sum(step is not None and step < last for step in chosen_steps),\n',
           '                    "cells": sum(step is not None and step <= last for step in chosen_steps),  # MUTANT\n',
           ('tests/test_benchmark.py', '-k', 'before_the_last'),
           "the report counts a checkpoint at the last step as chosen before it"),
]

# Folders never copied (they are large or belong to the machine, not the code).
IGNORE = shutil.ignore_patterns(".git", ".venv", "runs", "pool", "__pycache__", ".pytest_cache", "*.egg-info",
                                "artifacts")


def apply(mutant: Mutant, root: Path) -> str | None:
    """Apply ``mutant`` to the copy at ``root``; the reason when it cannot be applied, else None."""
    path = root / mutant.file
    if not path.is_file():
        return f"{mutant.file} does not exist"
    text = path.read_text(encoding="utf-8")
    count = text.count(mutant.original)
    if count != 1:
        return f"snippet found {count} times in {mutant.file} (must be exactly once)"
    path.write_text(text.replace(mutant.original, mutant.replacement), encoding="utf-8")
    return None


def run_tests(root: Path, tests: tuple[str, ...], timeout: float) -> tuple[str, float, str]:
    """Run pytest on ``tests`` inside the copy; ``(outcome, seconds, tail of the output)``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "TQDM_DISABLE": "1"}
    # which tgr_hub and tgr_hub.cli the copy's tests (and the CLI subprocesses they start) import: the copy's
    files = copy_files(root, env)
    if not all(f.startswith(str(root)) for f in files):
        return "ERROR", 0.0, f"the copy imports {' and '.join(files)}, not from {root}"
    start = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-p", "no:randomly",
                               *tests], cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "TIMEOUT", time.perf_counter() - start, ""
    seconds = time.perf_counter() - start
    output = done.stdout + done.stderr
    tail = output[-1500:]
    failed = [line.split(" - ")[0].removeprefix("FAILED ").removeprefix("ERROR ")
              for line in output.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    if failed:
        tail = failed[0]  # the first failing test: what caught the mutant
    if done.returncode == 0:
        return "passed", seconds, tail
    if done.returncode == 1:
        return "failed", seconds, tail
    return f"pytest status {done.returncode}", seconds, tail


def copy_repo(where: Path) -> Path:
    """A copy of the checkout whose ``tgr_hub.cli`` is the copy's ``cli/``.

    The editable install maps ``tgr_hub.cli`` to the checkout's ``cli/`` (a meta-path finder that
    runs after the path finder), so without help a mutated copy's CLI subprocesses would run the
    checkout's CLI. A ``tgr_hub/cli -> ../cli`` link in the copy is found first, as the wheel
    ships it.
    """
    root = where / "repo"
    shutil.copytree(ROOT, root, ignore=IGNORE, symlinks=True)
    link = root / "tgr_hub" / "cli"
    if not link.exists():
        link.symlink_to(Path("..") / "cli", target_is_directory=True)
    return root


def copy_files(root: Path, env: dict[str, str]) -> list[str]:
    """Where ``tgr_hub`` and ``tgr_hub.cli`` are imported from in the copy at ``root`` (with ``env``)."""
    where = subprocess.run(
        [sys.executable, "-c", "import sys, tgr_hub, tgr_hub.cli.main as m; print(tgr_hub.__file__); print(m.__file__)"],
        cwd=root, env=env, capture_output=True, text=True, timeout=120)
    return where.stdout.split() if where.returncode == 0 else [where.stderr[-500:]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", metavar="NAME", help="run only this mutant (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the mutants and whether each still applies")
    parser.add_argument("--baseline", action="store_true",
                        help="first run each mutant's tests on the unmutated copy (they must pass)")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per pytest run (default 1200)")
    args = parser.parse_args(argv)

    names = [m.name for m in MUTANTS]
    unknown = sorted(set(args.only or []) - set(names))
    if unknown:
        parser.error(f"unknown mutant(s) {', '.join(unknown)}; known: {', '.join(names)}")
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only]

    if args.list:
        with tempfile.TemporaryDirectory(prefix="tgr-mutants-") as tmp:
            root = copy_repo(Path(tmp))
            for mutant in chosen:
                text = (root / mutant.file).read_text(encoding="utf-8") if (root / mutant.file).is_file() else ""
                state = "applies" if text.count(mutant.original) == 1 else "NOT APPLIED (snippet not found once)"
                print(f"{mutant.name:<30} {mutant.file:<28} {' '.join(mutant.tests):<40} {state}\n    {mutant.why}")
        return 0

    with tempfile.TemporaryDirectory(prefix="tgr-mutants-") as tmp:  # once: what the copies' tests run
        root = copy_repo(Path(tmp))
        env = {**os.environ, "PYTHONPATH": str(root)}
        print("a copy imports " + " and ".join(copy_files(root, env)) + f" (copy at {root})", flush=True)
    rows: list[tuple[str, str, str, float, str]] = []
    started = time.perf_counter()
    baseline_done: dict[tuple[str, ...], str] = {}
    for mutant in chosen:
        with tempfile.TemporaryDirectory(prefix="tgr-mutants-") as tmp:
            root = copy_repo(Path(tmp))
            if args.baseline and mutant.tests not in baseline_done:
                outcome, seconds, tail = run_tests(root, mutant.tests, args.timeout)
                baseline_done[mutant.tests] = outcome
                print(f"baseline {' '.join(mutant.tests)}: {outcome} ({seconds:.0f} s)", flush=True)
                if outcome != "passed":
                    print(tail, flush=True)
            if args.baseline and baseline_done[mutant.tests] != "passed":
                rows.append((mutant.name, " ".join(mutant.tests), "ERROR (tests fail unmutated)", 0.0, ""))
                continue
            problem = apply(mutant, root)
            if problem is not None:
                rows.append((mutant.name, " ".join(mutant.tests), f"NOT APPLIED: {problem}", 0.0, ""))
                print(f"{mutant.name}: NOT APPLIED ({problem})", flush=True)
                continue
            outcome, seconds, tail = run_tests(root, mutant.tests, args.timeout)
        verdict = {"failed": "caught", "passed": "SURVIVED", "TIMEOUT": "caught (timeout)"}.get(outcome, f"ERROR ({outcome})")
        caught_by = tail if verdict == "caught" else ""
        rows.append((mutant.name, " ".join(mutant.tests), verdict, seconds, caught_by))
        print(f"{mutant.name}: {verdict} ({seconds:.0f} s) {caught_by}", flush=True)
        if verdict.startswith("ERROR"):
            print(tail, flush=True)

    print()
    print(f"{'mutant':<30} {'tests':<40} {'result':<12} {'time':>7}  first failing test")
    for name, tests, verdict, seconds, caught_by in rows:
        print(f"{name:<30} {tests:<40} {verdict:<12} {seconds:>6.0f}s  {caught_by}")
    caught = sum(row[2].startswith("caught") for row in rows)
    print(f"\n{caught}/{len(rows)} caught in {time.perf_counter() - started:.0f} s")
    return 0 if caught == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
