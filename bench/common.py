"""What the bench scripts share: the Conv4 under test and a timer. Scripts run as `python bench/NAME.py`."""

from __future__ import annotations

import time
from collections.abc import Callable

import timm
import torch
from torch import nn

import tgr_hub  # noqa: F401  (registers conv4 with timm)


def conv4(num_classes: int = 0, img_size: int = 32) -> nn.Module:
    """The few-shot-standard Conv4 (width 32); ``num_classes=0`` gives the feature extractor."""
    return timm.create_model("conv4", num_classes=num_classes, img_size=img_size)


def timed(fn: Callable[[], object], device: torch.device, warmup: int, reps: int) -> list[float]:
    """Wall-clock seconds of ``reps`` calls of ``fn`` after ``warmup`` calls (CUDA synchronised)."""
    for _ in range(warmup):
        fn()
    seconds = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return seconds
