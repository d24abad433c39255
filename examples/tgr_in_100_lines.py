"""TGR in about 100 lines: a meta-model from a pool of classifiers, without their training data.

This walks through the method with the library's public functions, one stage at a time
(``tgr-hub train`` runs the same stages with checkpoints, several processes and a run folder;
docs/method.md explains each stage):

    python examples/tgr_in_100_lines.py --out /tmp/tgr-example            # about a minute on a CPU
    python examples/tgr_in_100_lines.py --out /tmp/tgr-example --tiny     # seconds: the test's size

1. build a small pool of glyph classifiers (the offline stand-in for Hub checkpoints),
2. recover pseudo-tasks from each teacher by model inversion,
3. embed each teacher's task (diagonal Fisher) and group dissimilar teachers,
4. meta-train with the IGR direction inside a group, then ProtoNet replay on mixed episodes,
5. evaluate on real few-shot episodes of unseen classes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from tgr_hub.config import PoolBuildConfig, RecoverConfig
from tgr_hub.data import load_split
from tgr_hub.embed import dissimilarity_matrix, fisher_diagonal
from tgr_hub.evaluate import evaluate_model
from tgr_hub.group import group_teachers
from tgr_hub.igr import igr_direction
from tgr_hub.learners import ProtoNet
from tgr_hub.metamodel import create_meta_model
from tgr_hub.pool import load_pool
from tgr_hub.bank import MemoryBank
from tgr_hub.recover import recover_teachers
from tgr_hub.teachers import make_pool


def main(out: Path, tiny: bool, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    # 1. the pool: 4 five-way conv4 classifiers on Latin and Greek glyphs, listed in repo-list.txt
    make_pool(out / "pool", PoolBuildConfig(domains=["latin", "greek"], archs=["conv4"], teachers=4, way=5,
                                            epochs=1 if tiny else 5), seed=seed, progress=False)
    teachers = load_pool(out / "pool" / "repo-list.txt")

    # 2. model inversion: a generator per teacher synthesises images the teacher classifies confidently
    recover_cfg = RecoverConfig(steps=5 if tiny else 60, images_per_class=6 if tiny else 12, generator_width=16,
                                bank_size=2)
    bank = MemoryBank(recover_cfg.bank_size)
    recover_teachers(teachers, recover_cfg, bank, seed=seed)

    # 3. one Fisher embedding per teacher through the same probe, then spectral groups of dissimilar teachers
    model = create_meta_model("conv4", image_size=32, seed=seed)
    embeddings = []
    for i, teacher in enumerate(teachers):
        images, labels = bank.task_for(teacher.name, None, None, rng)
        classes = sorted(set(labels.tolist()))
        local = torch.tensor([classes.index(c) for c in labels.tolist()])
        embeddings.append(fisher_diagonal(model, images, local, num_classes=len(classes), head_steps=5, seed=i))
    dissimilarity = dissimilarity_matrix(embeddings).numpy()
    groups = group_teachers(dissimilarity, num_groups=2, n_init=5, seed=seed)
    print("groups:", [[teachers[i].name for i in group] for group in groups])

    # 4. meta-training: an IGR step on one pseudo-task per teacher of a group, then a replay episode
    learner, beta = ProtoNet(), 1e-3
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    buffers = dict(model.named_buffers())

    def task_loss(teacher):  # L_i(θ): ProtoNet on a 2-shot split of the teacher's recovered images
        images, labels = bank.task_for(teacher.name, None, 4, rng, allow_fewer=True)
        local = torch.tensor([sorted(set(labels.tolist())).index(c) for c in labels.tolist()])
        support = torch.arange(len(local)) % 4 < 2  # the first 2 of each class's 4 images
        x_s, y_s, x_q, y_q = images[support], local[support], images[~support], local[~support]
        return lambda p: learner.episode_loss(model, x_s, y_s, x_q, y_q, params={**p, **buffers})

    for step in range(4 if tiny else 60):
        group = groups[rng.integers(len(groups))]
        params = {name: p.detach() for name, p in model.named_parameters()}
        result = igr_direction([task_loss(teachers[i]) for i in group], params, beta)
        optimiser.zero_grad()
        for name, p in model.named_parameters():
            p.grad = result.direction[name]
        optimiser.step()
        # replay: a 5-way episode mixing classes of different teachers, from the memory bank
        picks = [(teachers[i], c) for i in rng.permutation(len(teachers)) for c in bank.classes_of(teachers[i].name)]
        chosen = [picks[k] for k in rng.choice(len(picks), 5, replace=False)]
        xs = [bank.task_for(t.name, [c], 3, rng, allow_fewer=True)[0] for t, c in chosen]
        y = torch.cat([torch.full((len(x),), k) for k, x in enumerate(xs)])
        first = torch.cat([torch.arange(len(x)) == 0 for x in xs])  # one support image per class
        x = torch.cat(xs)
        optimiser.zero_grad()
        learner.episode_loss(model, x[first], y[first], x[~first], y[~first]).backward()
        optimiser.step()
        if step % 20 == 0:
            print(f"step {step}: task losses {[round(v, 3) for v in result.losses]}")

    # 5. real few-shot episodes of glyph classes no teacher has seen
    test = load_split("glyphs", "test")
    metrics = evaluate_model(model.eval(), test, way=5, shots=(1,), query=5, episodes=20 if tiny else 200,
                             learner="protonet", seed=seed, progress=False)
    print(f"5-way 1-shot: {100 * metrics['1shot']['mean']:.1f}% ± {100 * metrics['1shot']['ci95']:.1f}")
    return metrics


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/example"))
    parser.add_argument("--tiny", action="store_true", help="the test's size: seconds, not a useful model")
    args = parser.parse_args()
    main(args.out, args.tiny)
