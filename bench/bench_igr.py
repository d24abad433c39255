"""Time of one IGR step over one ERM step (target: IGR <= 2.3x ERM).

m = 4 tasks, a Conv4 meta-model (timm ``conv4`` when registered, else a local copy), a 5-way
cross-entropy loss on a batch of 32x32 images per task, Adam. Steps:

- ERM (fused):  one backward through the mean of the m task losses, Adam step.
- ERM (β = 0):  ``igr_direction(..., beta=0)`` (m backward passes), Adam step.
- IGR (first):  ``igr_direction(..., beta=1e-3)`` (two evaluations of the m tasks), Adam step;
  default ``fuse_tasks`` (fused on an accelerator, one by one on the CPU), then both forced.
- IGR (second): the authors' variant with double backward (for information).
- IGR (training path): exactly what meta-training runs per step (``tgr_hub.train._StepMechanics``):
  ``igr_direction`` with the exact cross-process exchange injected (here one process), each
  task on copies of the BatchNorm buffers, the buffers' mean exchanged too; the verdict uses it.

Run: ``.venv/bin/python bench/bench_igr.py [--device cuda] [--batch 50] [--reps 20]``.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from common import conv4, timed

from tgr_hub.distributed import Distributed, make_accelerator
from tgr_hub.igr import igr_direction
from tgr_hub.train import _StepMechanics

TARGET = 2.3


def make_model(num_classes: int) -> tuple[nn.Module, str]:
    return conv4(num_classes=num_classes), "timm conv4"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--batch", type=int, default=50, help="images per task (5-way)")
    parser.add_argument("--beta", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    model, kind = make_model(5)
    model = model.to(device).train()
    gen = torch.Generator().manual_seed(0)
    tasks = [
        (torch.rand(args.batch, 3, 32, 32, generator=gen).to(device),
         torch.randint(0, 5, (args.batch,), generator=gen).to(device))
        for _ in range(args.tasks)
    ]
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    opt = torch.optim.Adam(params.values(), lr=1e-3)

    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
        return lambda p: F.cross_entropy(functional_call(model, (p, buffers), (x,)), y)

    loss_fns = [loss_fn(x, y) for x, y in tasks]

    def erm_fused() -> None:
        opt.zero_grad(set_to_none=True)
        loss = sum(F.cross_entropy(model(x), y) for x, y in tasks) / len(tasks)
        loss.backward()
        opt.step()

    def igr_step(beta: float, order: str, fuse: bool | None = None) -> Callable[[], None]:
        def step() -> None:
            direction = igr_direction(loss_fns, {k: v.detach() for k, v in params.items()}, beta, order,
                                      fuse_tasks=fuse).direction
            for k, p in params.items():
                p.grad = direction[k]
            opt.step()

        return step

    dist = Distributed(make_accelerator("no"))
    mechanics = _StepMechanics(dist, model, params)

    def training_step(beta: float) -> Callable[[], None]:
        def step() -> None:
            items = {i: mechanics.loss(lambda p, x=x, y=y: F.cross_entropy(functional_call(model, p, (x,)), y))
                     for i, (x, y) in enumerate(tasks)}
            direction = mechanics.direction(items, len(tasks), beta=beta).direction
            for k, p in params.items():
                p.grad = direction[k]
            opt.step()

        return step

    training = "IGR as meta-training runs it"
    rows = [
        ("ERM (fused backward)", erm_fused),
        ("ERM (igr_direction, beta=0)", igr_step(0.0, "first")),
        (f"IGR first order (beta={args.beta:g})", igr_step(args.beta, "first")),
        ("IGR first, tasks fused", igr_step(args.beta, "first", fuse=True)),
        ("IGR first, tasks one by one", igr_step(args.beta, "first", fuse=False)),
        (f"IGR second order (beta={args.beta:g})", igr_step(args.beta, "second")),
        ("ERM as meta-training runs it (beta=0)", training_step(0.0)),
        (training, training_step(args.beta)),
    ]
    medians = {}
    for name, fn in rows:
        medians[name] = statistics.median(timed(fn, device, args.warmup, args.reps))

    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({args.threads} threads)"
    print(f"bench_igr: {kind}, m={args.tasks} tasks x {args.batch} images 32x32, 5-way CE, Adam; "
          f"device {dev_name}; median of {args.reps} after {args.warmup} warm-up")
    erm = medians["ERM (fused backward)"]
    print(f"{'step':<40} {'median ms':>10} {'x ERM':>7}")
    for name, value in medians.items():
        print(f"{name:<40} {value * 1e3:>10.2f} {value / erm:>7.2f}")
    ratio = medians[training] / erm
    ratio0 = medians[training] / medians["ERM as meta-training runs it (beta=0)"]
    verdict = "MET" if ratio <= TARGET else "NOT MET"
    print(f"IGR (training path)/ERM = {ratio:.2f} (vs fused ERM), {ratio0:.2f} (vs the training path at beta=0); "
          f"target <= {TARGET}: {verdict}")


if __name__ == "__main__":
    main()
