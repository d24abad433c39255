"""The memory layout model inputs run fastest in."""

from __future__ import annotations

import torch


def fast_layout(images: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` in the layout convolutions run fastest in: same shape, same values up to float rounding.

    Conv4, the generator and every teacher call it on their input. On the CPU, oneDNN's convolution,
    batch-norm and pooling kernels run on channels-last tensors 1.2-2.9x faster than on the default
    layout (``bench/bench_layout.py``: Conv4, ResNet-10t and the generator, one thread). Other
    devices keep their layout, and so does code under a torch.func transform (vmap cannot re-lay a
    batched tensor out).
    """
    if images.device.type == "cpu" and images.dim() == 4 and not torch._C._are_functorch_transforms_active():
        return images.contiguous(memory_format=torch.channels_last)
    return images
