"""The image generator used for model inversion (docs/method.md stage 1).

This is the reference generator of the data-free meta-learning literature (CMI / PURER / TGR):

    z ∈ R^latent_dim → Linear → 128×(s/4)² → BN → Upsample×2 → Conv3×3(128) → BN → LeakyReLU(0.2)
      → Upsample×2 → Conv3×3(64) → BN → LeakyReLU(0.2) → Conv3×3(3) → Sigmoid

where ``s`` is the teacher's input size. The two ×2 upsamplings need ``s`` divisible by 4; when it
is not (e.g. a 30×30 teacher), the network generates at the next multiple of 4 (here 32) and
resizes the result bilinearly to ``s`` — the extra pixels cost a little compute and nothing else.
Non-square sizes ``(H, W)`` are handled the same way per side.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import seeds
from .layout import fast_layout


def _round_up4(n: int) -> int:
    return 4 * math.ceil(n / 4)


class Generator(nn.Module):
    """Maps latent codes to images in [0, 1].

    Args:
        latent_dim: size of a latent code ``z`` (reference 256).
        image_size: side ``s`` of the output, or ``(H, W)``.
        channels: output channels (3 for RGB teachers).
        width: channels after the linear layer (reference 128; the last hidden block has ``width // 2``).
        seed: seeds the parameter initialisation (a private ``torch.Generator``; the global RNG is
            left untouched).
    """

    def __init__(
        self,
        latent_dim: int = 256,
        image_size: int | tuple[int, int] = 32,
        channels: int = 3,
        width: int = 128,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        height, wide = (int(v) for v in image_size)
        if latent_dim < 1 or height < 4 or wide < 4 or channels < 1 or width < 2:
            raise ValueError(
                f"Generator needs latent_dim >= 1, image sides >= 4, channels >= 1 and width >= 2; "
                f"got latent_dim={latent_dim}, image_size={image_size}, channels={channels}, width={width}"
            )
        self.latent_dim = int(latent_dim)
        self.image_size: tuple[int, int] = (height, wide)
        self.channels = int(channels)
        self.width = int(width)
        # Generate at multiples of 4, resize down to the requested size afterwards (see module doc).
        self.work_size: tuple[int, int] = (_round_up4(height), _round_up4(wide))
        self.init_size: tuple[int, int] = (self.work_size[0] // 4, self.work_size[1] // 4)

        # Layers draw their default init from the global RNG; on a forked, seeded copy of it, so that
        # building a generator leaves the caller's random state alone (the real init comes from ``seed`` below).
        with seeds.seeded_torch(seed):
            self._build(latent_dim, width, channels)
        self.reset_parameters(seed)

    def _build(self, latent_dim: int, width: int, channels: int) -> None:
        self.fc = nn.Linear(latent_dim, width * self.init_size[0] * self.init_size[1])
        self.blocks = nn.Sequential(
            nn.BatchNorm2d(width),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(width, width, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(width, width // 2, 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(width // 2),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width // 2, channels, 3, stride=1, padding=1),
            nn.Sigmoid(),
        )

    @torch.no_grad()
    def reset_parameters(self, seed: int = 0) -> None:
        """Re-initialise all weights from ``seed`` (PyTorch's default init, drawn from a private RNG).

        Linear/Conv weights and biases: U(-1/√fan_in, 1/√fan_in) (what ``kaiming_uniform_(a=√5)``
        amounts to); BatchNorm: weight 1, bias 0, fresh running statistics.
        """
        rng = seeds.torch_generator(seed)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                fan_in = module.weight[0].numel()
                bound = 1.0 / math.sqrt(fan_in)
                # Draw on CPU (torch.Generator is per device), then copy to wherever the module is.
                weight = torch.empty(module.weight.shape).uniform_(-bound, bound, generator=rng)
                module.weight.copy_(weight)
                if module.bias is not None:
                    bias = torch.empty(module.bias.shape).uniform_(-bound, bound, generator=rng)
                    module.bias.copy_(bias)
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Generate images.

        Args:
            z: latent codes ``[B, latent_dim]``.

        Returns:
            Images ``[B, channels, H, W]`` in [0, 1], ``(H, W) = image_size``.
        """
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"Generator expects z of shape [B, {self.latent_dim}], got {tuple(z.shape)}")
        x = self.fc(z).view(z.shape[0], self.width, self.init_size[0], self.init_size[1])
        x = self.blocks(fast_layout(x))
        if self.work_size != self.image_size:
            # Bilinear keeps the result in [0, 1] (a convex combination of sigmoid outputs).
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False, antialias=True)
        return x
