"""Channels-last against the default memory layout on the CPU, at equal work.

Times forward+backward (training) and no-grad forward (evaluation) of the models a run spends its
time in, on a batch of 90 images at 32x32 (one quick-preset pseudo-task: 5 classes x 12 images x
1.5 oversampling): Conv4, ResNet-10t and the recovery generator. Also reports the largest absolute
difference between the two layouts' outputs (float rounding; the values agree, the bytes need not).

Run (one thread, the benchmark's setting):
    OMP_NUM_THREADS=1 .venv/bin/python bench/bench_layout.py [--batch 90] [--repeats 10]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import timm
import torch

import tgr_hub  # noqa: F401  (registers conv4 with timm)
from tgr_hub.models.generator import Generator


def _ms_per_call(fn: Callable[[], object], repeats: int) -> float:
    for _ in range(2):
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3


def _time_model(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> tuple[float, float]:
    def train_step() -> None:
        model.train()
        model(x).sum().backward()

    @torch.no_grad()
    def eval_step() -> None:
        model.eval()
        model(x)

    return _ms_per_call(train_step, repeats), _ms_per_call(eval_step, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=90)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, 32, 32)
    latents = torch.randn(args.batch, 256)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), batch {args.batch}, ms per call")
    print(f"{'model':<12} {'pass':<14} {'default':>9} {'chan-last':>9} {'speed-up':>8} {'max |diff|':>11}")
    for name in ("conv4", "resnet10t"):
        model = timm.create_model(name, num_classes=5)
        default = _time_model(model, images, args.repeats)
        channels_last = _time_model(model, images.contiguous(memory_format=torch.channels_last), args.repeats)
        with torch.no_grad():
            model.eval()
            diff = (model(images) - model(images.contiguous(memory_format=torch.channels_last))).abs().max().item()
        for label, a, b in zip(("train fwd+bwd", "eval fwd"), default, channels_last):
            print(f"{name:<12} {label:<14} {a:9.1f} {b:9.1f} {a / b:7.2f}x {diff:11.2e}")

    # The generator is built in the default layout; tgr_hub's forward hands its first feature map to
    # fast_layout, so compare against the same blocks run on the default layout.
    generator = Generator(latent_dim=256, image_size=32, channels=3, width=64)

    def generate(layout: torch.memory_format) -> torch.Tensor:
        x = generator.fc(latents).view(args.batch, generator.width, *generator.init_size)
        return generator.blocks(x.contiguous(memory_format=layout))

    times = [
        _ms_per_call(lambda layout=layout: generate(layout).sum().backward(), args.repeats)
        for layout in (torch.contiguous_format, torch.channels_last)
    ]
    with torch.no_grad():
        diff = (generate(torch.contiguous_format) - generate(torch.channels_last)).abs().max().item()
    speedup = times[0] / times[1]
    print(f"{'generator':<12} {'train fwd+bwd':<14} {times[0]:9.1f} {times[1]:9.1f} {speedup:7.2f}x {diff:11.2e}")


if __name__ == "__main__":
    main()
