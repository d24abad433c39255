"""Model-inversion throughput, and what the inversion machinery adds to the bare network cost.

Teacher: a 5-way Conv4 at 32×32 (timm ``conv4`` from ``import tgr_hub``; a local copy if it
is not registered). Batch: ``way × images_per_class`` images (reference 5 × 30 = 150). One
optimisation step of each variant, cumulatively:

- bare:        z → G → T → CE, backward, Adam step (generator + codes)   — the unavoidable cost
- + normalise: the teacher's own (x − mean)/std
- + aug:       batched random crop (padding 4) + flip
- + BN hooks:  the BN-statistics loss (forward hooks on every BN layer)
- recover_task: the library function (adds loss history, lowest-loss bookkeeping); timed as
  the difference between a ``warmup + steps`` run and a ``warmup`` run, so set-up is excluded.

"overhead" is each row's time per step over the bare row's. "recovery/s" is how many full
recoveries of this batch (``--ref-steps`` steps, reference 200) that speed gives per second,
reported as recovered images per second.

Convergence (``--pool LIST [--pool LIST2]``): for each teacher of the pool list(s) and each
``--ipc`` (and ``--bn-weight``), recover all its classes with the reference settings for each of ``--checkpoints``
steps (same seed, so a shorter run is a prefix of a longer one) and report how often the teacher
classifies the kept images as their intended class; "first≥95%" is the first step whose
*augmented* batch the teacher already classifies at ≥ 95%.

Run: ``.venv/bin/python bench/bench_recover.py [--threads 2] [--ipc 30] [--steps 10] [--device cpu]``
or   ``.venv/bin/python bench/bench_recover.py --pool pool/repo-list.txt --ipc 10 20 30 --device cuda``.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from common import conv4

from tgr_hub.config import RecoverConfig
from tgr_hub.models.generator import Generator
from tgr_hub.pool import PoolMember
from tgr_hub.recover import _BNStatisticsLoss, crop_padding_for, random_crop_flip, recover_task


def make_teacher(way: int, size: int, device: str) -> tuple[PoolMember, str]:
    torch.manual_seed(0)
    model, arch = conv4(num_classes=way, img_size=size), "timm conv4"
    # non-trivial running statistics, as a trained teacher would have
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    model.to(device).eval().requires_grad_(False)
    member = PoolMember(name="bench", source="bench", model=model, architecture=arch, label_names=[str(i) for i in range(way)],
                        input_size=(3, size, size), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    return member, arch


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_steps(step: Callable[[], None], steps: int, warmup: int, device: str) -> float:
    """Median seconds per call of ``step``."""
    for _ in range(warmup):
        step()
    sync(device)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def variant(member: PoolMember, cfg: RecoverConfig, n: int, device: str, *, normalise: bool, aug: bool, hooks: bool):
    size = member.input_size[1]
    gen = Generator(cfg.latent_dim, size, seed=0).to(device).train()
    z = torch.randn(n, cfg.latent_dim, generator=torch.Generator().manual_seed(0)).to(device).requires_grad_(True)
    labels = torch.arange(member.num_classes).repeat_interleave(n // member.num_classes).to(device)
    opt = torch.optim.Adam([*gen.parameters(), z], lr=cfg.lr, betas=cfg.betas)
    rng = torch.Generator().manual_seed(0)
    pad = crop_padding_for(size)
    bn = _BNStatisticsLoss(member.model)

    def step() -> None:
        x = gen(z)
        if aug:
            x = random_crop_flip(x, pad, rng)
        if normalise:
            x = member.normalize(x)
        loss = F.cross_entropy(member.model(x), labels)
        if hooks:
            loss = loss + cfg.bn_weight * bn.pop(loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, bn


class _Recorder(nn.Module):
    """Wraps a teacher and records its accuracy on every batch it sees (the augmented batches)."""

    def __init__(self, model: nn.Module, labels: torch.Tensor) -> None:
        super().__init__()
        self.model, self.labels, self.accuracies = model, labels, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        self.accuracies.append(float((out.argmax(1) == self.labels).float().mean()))
        return out


def convergence(pools: list[str], ipcs: list[int], checkpoints: list[int], device: str,
                bn_weights: list[float]) -> None:
    from tgr_hub.pool import load_pool

    header = (f"{'teacher':<16} {'arch':<10} {'held-out':>8} {'λ_BN':>6} {'ipc':>4} "
              + " ".join(f"{'@' + str(c):>6}" for c in checkpoints) + f" {'first>=95%':>10} {'s/step':>7}")
    print(header)
    print("-" * len(header))
    for pool in pools:
        for member in load_pool(pool):
            member.to(device)
            report = (member.config.get("tgr_teacher") or {}).get("report") or {}
            heldout = report.get("heldout_accuracy", report.get("accuracy"))
            classes = list(range(member.num_classes))
            for bn_weight, ipc in [(w, i) for w in bn_weights for i in ipcs]:
                accs = []
                for steps in checkpoints:
                    cfg = RecoverConfig(images_per_class=ipc, steps=steps, bn_weight=bn_weight)
                    labels = torch.tensor(classes).repeat_interleave(ipc).to(device)
                    inner = member.model
                    if steps == max(checkpoints):
                        member.model = recorder = _Recorder(inner, labels)
                    sync(device)
                    start = time.perf_counter()
                    try:
                        task = recover_task(member, classes, cfg, seed=0)
                    finally:
                        member.model = inner
                    sync(device)
                    per_step = (time.perf_counter() - start) / steps
                    with torch.no_grad():
                        predicted = member.logits(task.images.to(device)).argmax(1).cpu()
                    accs.append(float((predicted == task.labels).float().mean()))
                first = next((i + 1 for i, a in enumerate(recorder.accuracies) if a >= 0.95), None)
                name = f"{Path(pool).parent.name}/{member.name}"
                held = f"{heldout:.1%}" if isinstance(heldout, (int, float)) else "?"
                print(f"{name:<16} {member.architecture:<10} {held:>8} {bn_weight:>6g} {ipc:>4} "
                      + " ".join(f"{a:>6.1%}" for a in accs) + f" {str(first):>10} {per_step:>7.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--way", type=int, default=5)
    parser.add_argument("--ipc", type=int, nargs="+", default=[30], help="images per class (one table block each)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--ref-steps", type=int, default=200, help="steps of one recovery, for recoveries/s")
    parser.add_argument("--pool", action="append", default=[], help="repo-list file(s): run the convergence table instead")
    parser.add_argument("--checkpoints", type=int, nargs="+", default=[10, 20, 40, 60, 100, 200])
    parser.add_argument("--bn-weight", type=float, nargs="+", default=[1.0], help="convergence: λ_BN values to try")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.pool:
        print(f"convergence: reference settings (lr 1e-3, betas (0.5, 0.999), latent 256), seed 0, "
              f"device {args.device}, torch threads {torch.get_num_threads()}")
        convergence(args.pool, args.ipc, sorted(args.checkpoints), args.device, args.bn_weight)
        return

    member, arch = make_teacher(args.way, args.size, args.device)
    print(f"teacher: {arch}, {args.way}-way, {args.size}x{args.size}; device {args.device}, "
          f"torch threads {torch.get_num_threads()}; median of {args.steps} steps after {args.warmup} warm-up")
    header = f"{'variant':<14} {'batch':>5} {'ms/step':>9} {'images/s':>9} {'overhead':>9} {'rec. img/s':>11}"
    for ipc in args.ipc:
        cfg = RecoverConfig(images_per_class=ipc)
        n = ipc * args.way
        print()
        print(header)
        print("-" * len(header))
        rows = []
        for name, flags in [
            ("bare", dict(normalise=False, aug=False, hooks=False)),
            ("+ normalise", dict(normalise=True, aug=False, hooks=False)),
            ("+ aug", dict(normalise=True, aug=True, hooks=False)),
            ("+ BN hooks", dict(normalise=True, aug=True, hooks=True)),
        ]:
            step, bn = variant(member, cfg, n, args.device, **flags)
            with bn if flags["hooks"] else contextlib.nullcontext():
                rows.append((name, time_steps(step, args.steps, args.warmup, args.device)))

        # the library function, set-up excluded: (warmup + steps) run minus warmup run
        def run(steps: int) -> float:
            sync(args.device)
            start = time.perf_counter()
            recover_task(member, list(range(args.way)), RecoverConfig(images_per_class=ipc, steps=steps), seed=0)
            sync(args.device)
            return time.perf_counter() - start

        run(1)  # warm caches
        short, long = run(args.warmup), run(args.warmup + args.steps)
        rows.append(("recover_task", (long - short) / args.steps))

        bare = rows[0][1]
        for name, seconds in rows:
            print(f"{name:<14} {n:>5} {1000 * seconds:>9.1f} {n / seconds:>9.0f} {seconds / bare - 1:>+9.1%} "
                  f"{n / (seconds * args.ref_steps):>11.2f}")


if __name__ == "__main__":
    main()
