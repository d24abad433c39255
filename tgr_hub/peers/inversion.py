"""Model inversion as the generator-based DFML peers run it: a generator's images for a teacher's
classes, optionally pushed towards the student's decision boundary, and the two KL losses they use.

- :func:`invert`: Adam on a generator and fresh codes for a few steps, lowering
  ``CE + bn · BN + adv · adversarial_loss`` on augmented images (BiDf-MKD's query recovery, FREE's
  fast adaptation);
- :func:`adversarial_loss`: the boundary term of BiDf-MKD and FREE;
- :func:`distill_loss`: knowledge distillation, with the public code's probability-space KL as an option.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..bank import RecoveredTask
from ..errors import RecoverError
from ..models.generator import Generator
from ..pool import PoolMember
from ..recover import _BNStatisticsLoss, crop_padding_for, frozen, random_crop_flip
from ..seeds import recovery_seeds, torch_generator

__all__ = ["GENERATOR_BETAS", "adversarial_loss", "distill_loss", "invert", "resized"]

GENERATOR_BETAS = (0.5, 0.999)  # the generators' Adam, as in recovery


def adversarial_loss(teacher_logits: Tensor, student_logits: Tensor, *, on_probabilities: bool = False) -> Tensor:
    """Minus the teacher–student divergence, averaged over all images but counted only on those
    where both predict the same class: lowering it moves those images to where the two disagree
    (BiDf-MKD's and FREE's boundary term). The student is a constant (gradients reach the images
    through the teacher only).

    Args:
        teacher_logits, student_logits: ``[B, N]`` over the same N classes.
        on_probabilities: the public code's ``kl_div(softmax(t), softmax(s))`` per image, i.e.
            ``Σ p_s · (log p_s − p_t)``, instead of ``KL(p_t ‖ p_s)``.

    Returns:
        A scalar.
    """
    student = student_logits.detach().float()
    teacher = teacher_logits.float()
    agree = (teacher.argmax(1) == student.argmax(1)).float()
    if on_probabilities:
        p_s = student.softmax(1)
        divergence = (p_s * (p_s.clamp_min(1e-12).log() - teacher.softmax(1))).sum(1)
    else:
        log_t = teacher.log_softmax(1)
        divergence = (log_t.exp() * (log_t - student.log_softmax(1))).sum(1)
    return -(divergence * agree).mean()


def distill_loss(
    student_logits: Tensor, teacher_logits: Tensor, *, temperature: float = 1.0, on_probabilities: bool = False
) -> Tensor:
    """Knowledge distillation of a teacher into the student on the same images.

    ``T² · KL(p_teacher,T ‖ p_student,T)``, averaged over the images; ``on_probabilities``: the
    public code's ``kl_div(softmax(s), softmax(t))`` (mean over every entry), whose gradient only
    raises ``Σ p_t · p_s``.

    Args:
        student_logits, teacher_logits: ``[B, N]``.
    """
    teacher = teacher_logits.detach().float()
    student = student_logits.float()
    if on_probabilities:
        p_t = teacher.softmax(1)
        return (p_t * (p_t.clamp_min(1e-12).log() - student.softmax(1))).mean()
    log_s, log_t = (student / temperature).log_softmax(1), (teacher / temperature).log_softmax(1)
    return temperature**2 * F.kl_div(log_s, log_t, reduction="batchmean", log_target=True)


def resized(images: Tensor, size: int) -> Tensor:
    """``images`` at ``size`` × ``size`` (a meta-model's input), differentiably."""
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def invert(
    generator: Generator,
    member: PoolMember,
    classes: Sequence[int],
    *,
    steps: int,
    images_per_class: int,
    seed: int,
    lr: float = 1e-3,
    bn_weight: float = 0.0,
    student: Callable[[Tensor], Tensor] | None = None,
    adversarial_weight: float = 0.0,
    kl_on_probabilities: bool = False,
    on_last_backward: Callable[[], None] | None = None,
) -> RecoveredTask:
    """Optimise ``generator`` (in place) and fresh codes for ``steps`` Adam steps so that its images
    are ``member``'s ``classes``, and return the images of the last step.

    The loss is ``CE + bn_weight · BN + adversarial_weight · adversarial_loss`` on randomly cropped
    and flipped images (the last with ``student``, a function from those images ``[B, 3, H, W]`` to
    student logits over ``classes``). The teacher is frozen (restored afterwards).

    Args:
        seed: the codes and the augmentation (:func:`tgr_hub.seeds.recovery_seeds`).
        on_last_backward: called after the last step's backward pass, before its update (FREE
            reads the copy's gradients there).

    Returns:
        ``[len(classes) * images_per_class, 3, H, W]`` images, class by class, with the teacher's
        label ids, as a :class:`~tgr_hub.bank.RecoveredTask`.
    """
    if steps < 1:
        raise RecoverError(f"an inversion takes at least one step, got {steps}")
    _, height, width = (int(v) for v in member.input_size)
    generator.train()
    _, z_seed, aug_seed = recovery_seeds(seed)
    n = len(classes) * images_per_class
    device = next(generator.parameters()).device
    z = torch.randn(n, generator.latent_dim, generator=torch_generator(z_seed)).to(device).requires_grad_(True)
    optimizer = torch.optim.Adam([*generator.parameters(), z], lr=lr, betas=GENERATOR_BETAS)
    aug_rng = torch_generator(aug_seed)
    labels = torch.tensor([int(c) for c in classes]).repeat_interleave(images_per_class)
    target, columns = labels.to(device), torch.tensor([int(c) for c in classes], device=device)
    pad = crop_padding_for(min(height, width))
    ce_history, bn_history = [], []
    bn_hooks = _BNStatisticsLoss(member.model)
    with frozen(member.model), bn_hooks:
        for step in range(steps):
            images = generator(z)
            augmented = random_crop_flip(images, pad, aug_rng)
            logits = member.model(member.normalize(augmented))
            ce = F.cross_entropy(logits, target)
            bn = bn_hooks.pop(ce)
            loss = ce + bn_weight * bn
            if student is not None and adversarial_weight > 0:
                with torch.no_grad():
                    student_logits = student(augmented)
                adversarial = adversarial_loss(logits[:, columns], student_logits, on_probabilities=kl_on_probabilities)
                loss = loss + adversarial_weight * adversarial
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if on_last_backward is not None and step == steps - 1:
                on_last_backward()
            optimizer.step()
            ce_history.append(float(ce.detach()))
            bn_history.append(float(bn.detach()))
    names = list(getattr(member, "label_names", None) or [])
    return RecoveredTask(
        images=images.detach().float().cpu(),
        labels=labels,
        teacher=member.name,
        loss=float(loss.detach()),
        ce_history=ce_history,
        bn_history=bn_history,
        classes=[int(c) for c in classes],
        class_names=[str(names[c]) if c < len(names) else "" for c in classes],
        best_step=steps - 1,
    )
