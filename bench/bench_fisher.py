"""Vmapped Fisher vs a per-sample Python loop (target: vmapped >= 5x faster).

A Conv4 probe (timm ``conv4`` with ``num_classes=0``),
100 images 32x32 of a 5-way task, Task2Vec method (head fit, sampled labels, per-sample
gradients, per-filter average). Both timings include the same preparation (probe features
of all images and the L-BFGS head fit: the ``prep only`` row, 40-55 ms on a 2-core CPU).

The ``floor`` row is the same preparation plus one plain batched forward+backward of the same
samples: it computes only the batch gradient, not one per sample, so no per-sample method can
beat it. Its speed-up over the loop is the most any per-sample engine could reach on the device.

Run: ``.venv/bin/python bench/bench_fisher.py [--device cuda] [--samples 100] [--reps 5]``.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch import nn

from common import conv4, timed

from tgr_hub.embed import _EvalMode, _prepare, fisher_diagonal, fisher_diagonal_loop

TARGET = 5.0


def make_probe() -> tuple[nn.Module, str]:
    return conv4(num_classes=0), "timm conv4"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--chunk-sizes", default="32,100")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="also print a torch.profiler table of both")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    probe, kind = make_probe()
    probe = probe.to(device)
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(args.samples, 3, 32, 32, generator=gen).to(device)
    labels = torch.randint(0, 5, (args.samples,), generator=gen).to(device)
    common = dict(num_classes=5, head_steps=50, seed=0)

    medians: dict[str, float] = {}
    def prep_only() -> None:
        with _EvalMode(probe):
            _prepare(probe, images, labels, method="task2vec", num_classes=5, head_steps=50, head_l2=1e-3, seed=0,
                     chunk_size=32, mc_samples=1, include_head=False, param_filter=None)

    medians["prep only (features+head)"] = statistics.median(timed(prep_only, device, args.warmup, args.reps))
    loop_name = "per-sample loop"
    medians[loop_name] = statistics.median(
        timed(lambda: fisher_diagonal_loop(probe, images, labels, **common), device, args.warmup, args.reps))
    vmap_names = []
    for cs in [int(c) for c in args.chunk_sizes.split(",")]:
        name = f"vmapped (chunk_size={cs})"
        vmap_names.append(name)
        medians[name] = statistics.median(timed(
            lambda cs=cs: fisher_diagonal(probe, images, labels, **common, chunk_size=cs), device, args.warmup, args.reps))

    def floor() -> None:
        prep_only()
        with _EvalMode(probe):  # as in the Fisher: BatchNorm on its running statistics
            probe.zero_grad(set_to_none=True)
            torch.log_softmax(head(probe(images)), dim=1).sum().backward()

    head = nn.Linear(probe.num_features, 5).to(device)
    medians["floor: batched backward"] = statistics.median(timed(floor, device, args.warmup, args.reps))

    best = min(vmap_names, key=medians.__getitem__)
    best_cs = int(best.split("=")[1].rstrip(")"))
    # Same chunk_size: the probe features (hence the fitted head and sampled labels) are then
    # computed with the same batching, so only the gradient engine differs.
    fast = fisher_diagonal(probe, images, labels, **common, chunk_size=best_cs)
    slow = fisher_diagonal_loop(probe, images, labels, **common, chunk_size=best_cs)
    rel = max(float((fast[k] - slow[k]).abs().max() / slow[k].abs().max().clamp_min(1e-30)) for k in fast)

    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({args.threads} threads)"
    print(f"bench_fisher: {kind} probe, {args.samples} images 32x32, 5-way, task2vec; device {dev_name}; "
          f"median of {args.reps} after {args.warmup} warm-up")
    print(f"{'method':<30} {'median ms':>10} {'speed-up':>9}")
    loop = medians[loop_name]
    for name, value in medians.items():
        print(f"{name:<30} {value * 1e3:>10.2f} {loop / value:>8.2f}x")
    speedup = loop / medians[best]
    verdict = "MET" if speedup >= TARGET else "NOT MET"
    print(f"max relative difference vmapped vs loop: {rel:.2e}")
    print(f"floor (one plain batched backward, no per-sample gradients) over loop = "
          f"{loop / medians['floor: batched backward']:.2f}x: the ceiling for any per-sample method here")
    prep = medians["prep only (features+head)"]
    print(f"without the shared prep: {best} {(loop - prep) / (medians[best] - prep):.2f}x, "
          f"floor {(loop - prep) / (medians['floor: batched backward'] - prep):.2f}x over the loop")
    print(f"speed-up {best} over loop = {speedup:.2f}x (both include the prep); target >= {TARGET:g}x: {verdict}")
    if args.profile:
        from torch.profiler import profile

        for name, fn in (("vmapped", lambda: fisher_diagonal(probe, images, labels, **common, chunk_size=best_cs)),
                         ("loop", lambda: fisher_diagonal_loop(probe, images, labels, **common))):
            with profile() as prof:
                fn()
            print(f"--- profile: {name}")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=40))


if __name__ == "__main__":
    main()
