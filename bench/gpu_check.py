"""tgr-hub on one device, in one command: the quickstart per stage (fp32 and bf16), the paper regime's
cost per iteration, its full-run extrapolation, and the numerical tests on that device.

Sections (run in this order; the JSON is rewritten after each, so a run stopped by a time limit
still leaves what it finished):

1. ``tests``: ``TGR_HUB_TEST_DEVICE=<device> pytest`` on the device-independent numerical tests
   (IGR against double-backward autograd, fused against sequential IGR, vmapped Fisher against the
   per-sample loop, a teacher trained on the device; ``tests/conftest.py``'s ``device`` fixture
   puts them on the device).
2. ``paper``: the ``paper`` preset's recovery and meta-training (MAML learner) on ``m`` teachers of
   the quickstart pool: the up-front recovery per teacher, then a few meta-training iterations with
   online recovery every step, (a) cold at the reference's ``recover.online_steps`` (200) and (b)
   warm-started (generator and Adam state carried on) at ``--warm-steps``; median seconds per
   iteration (first iteration excluded) and peak device memory (``torch.cuda.max_memory_allocated``;
   n/a on the CPU). One meta-validation episode is timed separately.
3. ``extrapolation`` of the full paper run from those figures (the formula is in the JSON).
4. ``quickstart`` (``tgr-hub quickstart``, fp32) and 5. ``quickstart_bf16`` (``--set
   train.mixed_precision=bf16``, same pool), per stage; accuracy of bf16 against fp32.

The device: ``--device cpu`` hides CUDA from this process and its children
(``CUDA_VISIBLE_DEVICES=""``), so Accelerate places every stage on the CPU; ``--device cuda``
requires a visible GPU. ``make-pool`` trains the teachers on the CPU on purpose (see README, "GPU").

Run (prints one table, writes JSON):
    python bench/gpu_check.py --device cuda --out runs/gpu-check [--json FILE] [--cpu-reference FILE]
    python bench/gpu_check.py --device cpu --tiny          # minutes on a CPU: every workload shrunk
"""

from __future__ import annotations

import argparse
import os
import sys

# Before torch is imported anywhere: hide the GPUs for a CPU check (children inherit it).
if __name__ == "__main__" and "--device" in sys.argv and sys.argv[sys.argv.index("--device") + 1:][:1] == ["cpu"]:
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

import dataclasses  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# A checkout that is not pip-installed (a bare GPU machine): this tree's tgr_hub, here and in the children.
sys.path.insert(0, str(ROOT))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
# The CLI ships as tgr_hub.cli from the cli/ folder (pyproject's package-dir); without an install,
# alias the folder under that name, then run the CLI's main.
CLI_BOOT = ("import sys, importlib.util\n"
            "if importlib.util.find_spec('tgr_hub.cli') is None:\n"
            "    import tgr_hub, cli\n"
            "    sys.modules['tgr_hub.cli'] = tgr_hub.cli = cli\n"
            "from tgr_hub.cli.main import main\n"
            "sys.argv[0] = 'tgr-hub'\n"
            "sys.exit(main())\n")

# The README's quickstart timing ("What `tgr-hub quickstart` printed ..."): full `quick` preset,
# busy shared 2-core CPU, one torch thread, pool and up-front recovery reused for the TGR/ERM
# runs. Seconds. Used only when --cpu-reference is not given, and then only as a labelled,
# different-workload reference unless this run is the full quick preset too.
README_CPU_REFERENCE = {
    "source": "README.md, quickstart timing (busy 2-core CPU, full quick preset, seed 0)",
    "workload": {"preset": "quick", "overrides": []},
    "stages_s": {"make-pool": 162.0, "tgr": 383.0, "tgr/meta-train": 337.0, "erm": 287.0, "baselines": 65.0},
}

TESTS = ["tests/test_igr.py", "tests/test_embed.py", "tests/test_teachers.py"]
TEST_SELECTION = "penalty_gradient or fused_and_sequential or vmapped_fisher or train_teacher_on_the_test_device"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def run_tests(device: torch.device) -> dict[str, Any]:
    """The numerical tests on ``device`` (a pytest subprocess); pass/fail counts from its summary."""
    env = {**os.environ, "TGR_HUB_TEST_DEVICE": device.type}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS, "-k", TEST_SELECTION]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    summary = (done.stdout.strip().splitlines() or [""])[-1]
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|error|errors|skipped)", summary)}
    return {"command": f"TGR_HUB_TEST_DEVICE={device.type} " + " ".join(cmd[1:]), "returncode": done.returncode,
            "summary": summary, "passed": counts.get("passed", 0),
            "failed": counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0),
            "seconds": seconds, "output_tail": (done.stdout + done.stderr)[-3000:]}


# the quickstart's pool inside its --out (the benchmark's layout: scenario "config", seed 0)
QS_POOL = Path("config") / "seed-0" / "pool"


def quickstart_args(tiny: bool) -> tuple[str, list[str]]:
    """The quickstart's preset and ``--set`` overrides (``tiny``: the smoke preset, seconds of work)."""
    if tiny:
        return "smoke", []
    return "quick", []


def run_quickstart(out: Path, preset: str, overrides: list[str], precision: str) -> dict[str, Any]:
    """``tgr-hub quickstart`` in a subprocess; its per-stage times and table."""
    # fp32 is the default ("no"; a literal `no` would read as YAML false)
    sets = [*overrides] + ([f"train.mixed_precision={precision}"] if precision != "no" else [])
    cmd = [sys.executable, "-c", CLI_BOOT, "quickstart", "--out", str(out), "--preset", preset]
    for s in sets:
        cmd += ["--set", s]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"quickstart failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    # results.json is the benchmark's report (the quickstart runs through tgr_hub.benchmark): one
    # scenario ("config"), one seed (the preset's, 0), the four quickstart methods
    results = json.loads((out / "results.json").read_text())
    scenario = results["scenarios"]["config"]
    seed = str(scenario["seeds"][0])
    stages = dict(scenario["prepare"].get(seed, {}).get("timings_s", {}))  # make-pool, then the shared recovery
    table = {}
    for method, entry in scenario["methods"].items():
        spent = entry["timings_s"][seed]
        stages[method] = spent["train"] + spent["evaluate"]
        table[entry["label"]] = {k: {"mean": entry[k]["per_seed"][seed]["mean"], "ci95": entry[k]["per_seed"][seed]["ci95"]}
                                 for k in entry if k.endswith("shot")}
    stages["total"] = wall
    tgr_record = json.loads((out / "config" / f"seed-{seed}" / "tgr" / "tgr_config.json").read_text())
    for k, v in tgr_record["timings_s"].items():  # the TGR run's own stages, inside "tgr"
        stages[f"tgr/{k}"] = v
    devices = results.get("devices") or []
    return {"command": "tgr-hub " + " ".join(cmd[3:]), "wall_s": wall,
            "device": devices[0] if len(devices) == 1 else devices,
            "run_record_device": tgr_record.get("device"), "stages_s": stages, "table": table,
            "workload": {"preset": preset, "overrides": overrides}}


def _members_on(device: torch.device, repo_list: Path, m: int):
    from tgr_hub.pool import load_pool

    members = load_pool(repo_list)[:m]
    for member in members:
        member.to(device)
    return members


def run_paper(device: torch.device, repo_list: Path, tiny: bool, iterations: int, warm_steps: int) -> dict[str, Any]:
    """The paper regime's cost per meta-training iteration (cold and warm online recovery)."""
    from tgr_hub.config import load_config
    from tgr_hub.data import load_split
    from tgr_hub.evaluate import evaluate_model
    from tgr_hub.metamodel import create_meta_model
    from tgr_hub.bank import MemoryBank
    from tgr_hub.recover import recover_teachers
    from tgr_hub.train import StepInfo, meta_train

    tiny_sets = ["recover.steps=4", "recover.online_steps=3", "recover.images_per_class=6",
                 "recover.generator_width=16", "train.teachers_per_step=2", "train.inner_steps=1",
                 "train.replay_shot=1", "train.replay_query=2", "train.replay_batch=2"] if tiny else []
    run = load_config(preset="paper", overrides=[*tiny_sets, "train.eval_every=1000000", "train.val_episodes=1",
                                                  "train.checkpoint_every=0"])
    m = run.train.teachers_per_step
    members = _members_on(device, repo_list, m)
    bank, warm = MemoryBank(run.recover.bank_size), {}
    _sync(device)
    start = time.perf_counter()
    recover_teachers(members, run.recover, bank, seed=0, warm=warm)
    _sync(device)
    upfront_per_teacher = (time.perf_counter() - start) / len(members)
    generators = {i: warm[mm.name].state_tensors() for i, mm in enumerate(members)}
    val = load_split(run.data.dataset, "val", image_size=run.data.image_size, seed=run.data.seed)

    rows = []
    for mode, steps in (("cold", run.recover.online_steps), ("warm", warm_steps)):
        rcfg = dataclasses.replace(run.recover, online_every=1, online_start=mode, online_steps=steps)
        tcfg = dataclasses.replace(run.train, iterations=iterations + 1)
        stamps: list[float] = []

        def on_step(info: StepInfo) -> None:
            _sync(device)
            stamps.append(time.perf_counter())

        model = create_meta_model(tcfg.arch, run.data.image_size, seed=0)
        _reset_peak(device)
        meta_train(model, members, bank, [list(range(m))], tcfg, val_split=val, seed=0, progress=False,
                   on_step=on_step, recover=rcfg,
                   generators={i: dict(g) for i, g in generators.items()} if mode == "warm" else None)
        per_iteration = [b - a for a, b in zip(stamps, stamps[1:])]
        rows.append({"mode": mode, "online_steps": steps, "seconds_per_iteration": statistics.median(per_iteration),
                     "iterations_timed": len(per_iteration), "all_seconds": per_iteration,
                     "peak_memory_mb": _peak_mb(device)})

    # One meta-validation episode of the paper's learner (MAML, fine-tuning at test time).
    model = create_meta_model(run.train.arch, run.data.image_size, seed=0).to(device).eval()
    episodes = 2 if tiny else 10
    kwargs = dict(way=run.eval.way, shots=[run.train.replay_shot], query=run.eval.query, learner="maml",
                  inner_steps=run.eval.inner_steps, inner_lr=run.eval.inner_lr, progress=False)
    paper_train = load_config(preset="paper").train
    evaluate_model(model, val, episodes=1, **kwargs)  # warm-up (cuDNN autotuning, allocator)
    _sync(device)
    start = time.perf_counter()
    evaluate_model(model, val, episodes=episodes, **kwargs)
    _sync(device)
    per_episode = (time.perf_counter() - start) / episodes
    return {"teachers_per_step": m, "teachers_used": len(members), "overrides": tiny_sets,
            "recover": dataclasses.asdict(run.recover), "learner": run.train.learner,
            "upfront_recovery_s_per_teacher": upfront_per_teacher, "rows": rows,
            "val_episode_s": per_episode, "paper_train": {"iterations": paper_train.iterations,
                                                        "eval_every": paper_train.eval_every,
                                                        # every validation runs val_episodes per validation shot
                                                        "val_episodes": paper_train.val_episodes
                                                        * len(paper_train.val_shots)},
            "paper_eval": {"episodes": run.eval.episodes, "shots": list(run.eval.shots)},
            "paper_teachers": load_config(preset="paper").pool.teachers}


def extrapolate(paper: dict[str, Any]) -> dict[str, Any]:
    """The full paper run's time from the per-iteration figures (formula in the result)."""
    P, t_up = paper["paper_teachers"], paper["upfront_recovery_s_per_teacher"]
    I, E, V = (paper["paper_train"][k] for k in ("iterations", "eval_every", "val_episodes"))
    t_ep = paper["val_episode_s"]
    n_test = paper["paper_eval"]["episodes"] * len(paper["paper_eval"]["shots"])
    out = {"formula": "T = P*t_up + I*t_iter + ((I/E)*V + S*N)*t_ep  (P teachers recovered up front, I iterations, "
                      "meta-validation of V episodes (all validation shots) every E steps, final test of N episodes for S shot settings, "
                      "t_ep = one 1-shot MAML episode; 5-shot episodes counted at the 1-shot cost; "
                      "make-pool excluded: the paper's teachers are downloaded)",
           "P": P, "I": I, "E": E, "V": V, "S*N": n_test, "t_up_s": t_up, "t_ep_s": t_ep,
           "meaningful": not paper["overrides"]}  # tiny settings shrink the work: not the paper's cost
    for row in paper["rows"]:
        total = P * t_up + I * row["seconds_per_iteration"] + ((I / E) * V + n_test) * t_ep
        out[f"{row['mode']}_hours"] = total / 3600
    return out


def _fmt(v: float | None, unit: str = "") -> str:
    return "n/a" if v is None else f"{v:.2f}{unit}"


def print_table(report: dict[str, Any]) -> None:
    dev = report["device"]
    print(f"\ntgr-hub gpu_check on {dev} ({report.get('device_name')}); tiny={report['tiny']}; "
          f"total {report.get('total_s', 0):.0f} s")
    qs, bf = report.get("quickstart"), report.get("quickstart_bf16")
    if qs:
        ref = report.get("cpu_reference", {})
        same = ref.get("workload") == qs["workload"]
        print(f"\nquickstart per stage (s); CPU reference: {ref.get('source', 'none')}"
              f"{'' if same else ' [DIFFERENT WORKLOAD: no speed-up computed]'}")
        print(f"{'stage':<18}{dev + ' fp32':>14}{dev + ' bf16':>24}{'CPU ref':>10}{'speed-up':>10}")
        for stage, t in qs["stages_s"].items():
            b = (bf or {}).get("stages_s", {}).get(stage)
            r = ref.get("stages_s", {}).get(stage)
            speed = f"{r / t:.1f}x" if (same and r and t) else "-"
            # the bf16 run reuses the fp32 run's teachers (make-pool has no mixed precision): only checked
            bcell = f"{_fmt(b)}{' (reused)' if stage == 'make-pool' and b is not None else ''}"
            print(f"{stage:<18}{t:>14.2f}{bcell:>24}{_fmt(r):>10}{speed:>10}")
        print(f"\naccuracy (%, 95% CI){'':<6}{'fp32':>24}{'bf16':>24}")
        for method, cells in qs["table"].items():
            for shot, c in cells.items():
                b = (bf or {}).get("table", {}).get(method, {}).get(shot)
                bcell = f"{100 * b['mean']:.2f} ± {100 * b['ci95']:.2f}" if b else "n/a"
                print(f"{method + ' ' + shot:<26}{100 * c['mean']:>14.2f} ± {100 * c['ci95']:<6.2f}{bcell:>24}")
    p = report.get("paper")
    if p:
        print(f"\npaper regime ({p['learner']}, m = {p['teachers_per_step']} teachers, "
              f"{p['recover']['images_per_class']} images/class, generator width {p['recover']['generator_width']}); "
              f"up-front recovery {p['upfront_recovery_s_per_teacher']:.2f} s/teacher "
              f"({p['recover']['steps']} steps); one val episode {p['val_episode_s']:.3f} s")
        print(f"{'online':<8}{'steps':>6}{'s/iteration':>13}{'peak MiB':>10}")
        for r in p["rows"]:
            print(f"{r['mode']:<8}{r['online_steps']:>6}{r['seconds_per_iteration']:>13.3f}{_fmt(r['peak_memory_mb']):>10}")
    x = report.get("extrapolation")
    if x:
        print(f"\nfull paper run: {x['formula']}")
        if not x["meaningful"]:
            print("  (--tiny: the paper's settings were shrunk, so these hours are NOT the paper run's cost)")
        print(f"  P={x['P']} I={x['I']} E={x['E']} V={x['V']} S*N={x['S*N']}: cold {x['cold_hours']:.1f} h, "
              f"warm {x['warm_hours']:.1f} h (one device, no multi-GPU)")
    t = report.get("tests")
    if t:
        print(f"\nnumerical tests on {dev}: {t['summary']} ({t['seconds']:.0f} s)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], required=True)
    parser.add_argument("--out", default="runs/gpu-check", help="work folder (pools, runs)")
    parser.add_argument("--json", default=None, help="the table as JSON (default OUT/gpu_check.json)")
    parser.add_argument("--tiny", action="store_true", help="shrink every workload (a CPU run of a few minutes)")
    parser.add_argument("--cpu-reference", default=None,
                        help="a gpu_check JSON from a CPU run (its fp32 quickstart stages are the reference)")
    parser.add_argument("--iterations", type=int, default=None, help="timed paper iterations per row (default 3; tiny 2)")
    parser.add_argument("--warm-steps", type=int, default=None,
                        help="steps of a warm online recovery (default 5, the quick preset's; tiny 1)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["tests", "paper", "quickstart", "bf16"])
    args = parser.parse_args()

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch sees no CUDA device")
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = Path(args.json) if args.json else out / "gpu_check.json"
    iterations = args.iterations or (2 if args.tiny else 3)
    warm_steps = args.warm_steps or (1 if args.tiny else 5)
    report: dict[str, Any] = {
        "device": device.type, "tiny": args.tiny, "torch": torch.__version__,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "cpu_reference": json.loads(Path(args.cpu_reference).read_text())["quickstart"] | {
            "source": f"{args.cpu_reference} (gpu_check on the CPU)"} if args.cpu_reference else README_CPU_REFERENCE,
    }
    started = time.perf_counter()

    def save() -> None:
        report["total_s"] = time.perf_counter() - started
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2) + "\n")

    if "tests" not in args.skip:
        report["tests"] = run_tests(device)
        save()
    preset, overrides = quickstart_args(args.tiny)
    if "quickstart" not in args.skip:
        # a rerun into the same --out would reuse finished stages and time nothing: start afresh
        for name in ("quickstart-fp32", "quickstart-bf16"):
            shutil.rmtree(out / name, ignore_errors=True)
        report["quickstart"] = run_quickstart(out / "quickstart-fp32", preset, overrides, "no")
        save()
    repo_list = out / "quickstart-fp32" / QS_POOL / "repo-list.txt"
    if "paper" not in args.skip:
        report["paper"] = run_paper(device, repo_list, args.tiny, iterations, warm_steps)
        report["extrapolation"] = extrapolate(report["paper"])
        save()
    if "bf16" not in args.skip and "quickstart" not in args.skip:
        bf_out = out / "quickstart-bf16"
        if not (bf_out / QS_POOL).exists():  # the same teachers: make-pool then only checks them
            shutil.copytree(out / "quickstart-fp32" / QS_POOL, bf_out / QS_POOL)
        report["quickstart_bf16"] = run_quickstart(bf_out, preset, overrides, "bf16")
        save()
    save()
    print_table(report)
    print(f"\nJSON: {json_path}")
    failed = report.get("tests", {}).get("returncode", 0) != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
