"""Figures saved with every run: the dissimilarity heatmap with its groups, and training curves."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures are files, never windows
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .io import atomic_path  # noqa: E402


def _save(fig: plt.Figure, path: str | Path) -> None:
    path = Path(path)
    try:
        with atomic_path(path) as tmp:  # the temporary name ends in .tmp: name the format
            fig.savefig(tmp, dpi=120, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)


def plot_dissimilarity(
    dissimilarity: np.ndarray,
    names: Sequence[str],
    groups: Sequence[Sequence[int]],
    path: str | Path,
    title: str = "Teacher dissimilarity (Fisher task embeddings)",
) -> None:
    """Heatmap of the [N, N] dissimilarity matrix, teachers ordered by group, groups outlined."""
    order = [i for group in groups for i in group]
    matrix = np.asarray(dissimilarity)[np.ix_(order, order)]
    size = max(4.0, 0.35 * len(order) + 2)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    image = ax.imshow(matrix, cmap="viridis", vmin=0.0, vmax=max(float(matrix.max()), 1e-12))
    ax.set_xticks(range(len(order)), [names[i] for i in order], rotation=90, fontsize=7)
    ax.set_yticks(range(len(order)), [names[i] for i in order], fontsize=7)
    start = 0
    for index, group in enumerate(groups):
        ax.add_patch(
            plt.Rectangle(
                (start - 0.5, start - 0.5), len(group), len(group), fill=False, edgecolor="white", linewidth=2
            )
        )
        ax.text(
            start - 0.4, start - 0.4, f"G{index}", color="white", ha="left", va="top", fontsize=8, fontweight="bold"
        )
        start += len(group)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="1 - normalised cosine")
    ax.set_title(title, fontsize=10)
    _save(fig, path)


def plot_training_curves(history: dict[str, list[tuple[int, float]]], path: str | Path) -> None:
    """Training curves against step, one panel per metric family.

    Losses (log scale), validation accuracy and, with online recovery (``recover_*`` entries),
    the quality of the recoveries beside them: the teacher's agreement with the intended labels,
    and the BN loss, cross-entropy and feature diversity (log scale).
    """
    recovery = {k: v for k, v in history.items() if k.startswith("recover_") and v}
    losses = {k: v for k, v in history.items() if "loss" in k and v and k not in recovery}
    accuracies = {k: v for k, v in history.items() if "acc" in k and v and k not in recovery}
    agreement = {k: v for k, v in recovery.items() if "agreement" in k}
    recovery_scales = {k: v for k, v in recovery.items() if k not in agreement}
    titled = [
        (losses, "losses", True),
        (accuracies, "meta-validation accuracy", False),
        (agreement, "recovery: teacher agrees with intended label", False),
        (recovery_scales, "recovery: BN loss, CE, feature diversity", True),
    ]
    panels = [(p, title, log) for p, title, log in titled if p]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(5.5 * max(1, len(panels)), 3.8), squeeze=False)
    for ax, (panel, title, log) in zip(axes[0], panels):
        for name, points in panel.items():
            steps, values = zip(*points)
            ax.plot(steps, values, label=name, marker="o" if len(points) < 30 else None, markersize=3)
        ax.set_xlabel("meta-training step")
        ax.set_title(title, fontsize=10)
        if log:
            ax.set_yscale("log")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    _save(fig, path)


def plot_benchmark(report: dict, path: str | Path) -> None:
    """The benchmark figure: per scenario, each method's accuracy and its paired difference from the reference.

    Left: accuracy (%) per method and shot; error bars are the 95% t-interval over seed means with
    two or more seeds, else the episode interval. Right: the paired difference from the reference
    (points) with its 95% interval: across seeds with two or more seeds, else over the episodes;
    with a noise floor in the report (``erm-replicate − erm``), its interval is a shaded band per shot.
    """
    scenarios = [(name, sc) for name, sc in report["scenarios"].items() if sc["methods"]]
    shots = [f"{s}shot" for s in report["eval"]["shots"]]
    ref = report["reference"]
    fig, axes = plt.subplots(len(scenarios), 2, figsize=(12, 0.5 + 4.4 * len(scenarios)), squeeze=False)
    width = 0.8 / max(1, len(shots))
    for row, (name, sc) in enumerate(scenarios):
        methods = list(sc["methods"])
        labels = [sc["methods"][m]["label"] for m in methods]
        several = len(sc["seeds"]) > 1
        ax = axes[row][0]
        for k, shot in enumerate(shots):
            means, errors = [], []
            for m in methods:
                pooled = sc["methods"][m][shot]["pooled"]
                half = pooled["seeds"]["half"] if several and len(sc["methods"][m]["seeds"]) > 1 else pooled["ci95"]
                means.append(100 * pooled["mean"])
                errors.append(100 * (half or 0.0))
            x = np.arange(len(methods)) + (k - (len(shots) - 1) / 2) * width
            ax.bar(x, means, width, yerr=errors, capsize=3, label=f"{shot[:-4]}-shot")
        ax.set_xticks(np.arange(len(methods)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{name}: accuracy ({'95% CI over seeds' if several else '95% CI over episodes'})", fontsize=9)
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        ax = axes[row][1]
        others = [m for m in methods if m in sc["paired"]]
        for k, shot in enumerate(shots):
            ys, xs, lows, highs = [], [], [], []
            for j, m in enumerate(others):
                pair = sc["paired"][m]
                d = (
                    pair[shot]["across_seeds"]
                    if len(pair["seeds"]) > 1
                    else pair[shot]["per_seed"][str(pair["seeds"][0])]
                )
                if d["low"] is None:
                    continue
                ys.append(j + (k - (len(shots) - 1) / 2) * width)
                xs.append(100 * d["mean"])
                lows.append(100 * (d["mean"] - d["low"]))
                highs.append(100 * (d["high"] - d["mean"]))
            bars = ax.errorbar(xs, ys, xerr=[lows, highs], fmt="o", capsize=3, label=f"{shot[:-4]}-shot")
            floor = sc.get("noise_floor")
            if floor:  # ERM − ERM (another training seed): what a difference must exceed to mean anything
                f = (
                    floor[shot]["across_seeds"]
                    if len(floor["seeds"]) > 1
                    else floor[shot]["per_seed"][str(floor["seeds"][0])]
                )
                if f["low"] is not None:
                    ax.axvspan(
                        100 * f["low"],
                        100 * f["high"],
                        color=bars.lines[0].get_color(),
                        alpha=0.12,
                        label=f"noise floor (ERM − ERM), {shot[:-4]}-shot",
                    )
        ax.axvline(0.0, color="black", linewidth=0.8)
        ax.set_yticks(np.arange(len(others)), [sc["methods"][m]["label"] for m in others], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(f"paired difference from {sc['methods'].get(ref, {}).get('label', ref)} (points)")
        ax.set_title(
            f"{name}: − reference, 95% CI ({'over seeds' if several else 'paired t over episodes'})", fontsize=9
        )
        ax.legend(fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def _heatmap(
    ax: plt.Axes, matrix: np.ndarray, names: Sequence[str], title: str, label: str, vmax: float | None = None
) -> None:
    image = ax.imshow(
        np.ma.masked_invalid(matrix),
        cmap="viridis",
        vmin=0.0,
        vmax=vmax if vmax is not None else max(float(np.nanmax(matrix)) if matrix.size else 1.0, 1e-12),
    )
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_title(title, fontsize=10)
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label=label)


def plot_cka(
    cka: np.ndarray,
    dissimilarity: np.ndarray,
    names: Sequence[str],
    path: str | Path,
    *,
    rho: float | None = None,
    source: str = "recovered",
) -> None:
    """Linear CKA between teachers beside their Fisher dissimilarity, and 1 − CKA against the dissimilarity.

    Args:
        cka: ``[N, N]`` linear CKA (``nan`` where undefined).
        dissimilarity: ``[N, N]`` Fisher dissimilarity.
        names: the ``N`` teacher names.
        path: the PNG.
        rho: Spearman's ρ between 1 − CKA and the dissimilarity, shown in the title.
        source: where the probe images came from, shown in the title.
    """
    size = max(4.0, 0.35 * len(names) + 2)
    fig, axes = plt.subplots(1, 3, figsize=(3 * size + 3, size))
    _heatmap(axes[0], cka, names, f"Linear CKA (probe: {source})", "CKA", vmax=1.0)
    _heatmap(axes[1], dissimilarity, names, "Fisher dissimilarity", "1 - normalised cosine")
    rows, cols = np.triu_indices(len(names), k=1)
    axes[2].scatter(1.0 - cka[rows, cols], dissimilarity[rows, cols], s=14)
    axes[2].set_xlabel("1 - CKA")
    axes[2].set_ylabel("Fisher dissimilarity")
    axes[2].set_title(f"teacher pairs (Spearman rho {'n/a' if rho is None else f'{rho:.2f}'})", fontsize=10)
    axes[2].grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def plot_fisher_validation(result: dict, path: str | Path) -> None:
    """The Fisher validation: dissimilarity against class overlap, domain means, grouping stability.

    Args:
        result: :meth:`tgr_hub.analyze.FisherValidation.to_dict`.
        path: the PNG.
    """
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    pairs = result["pairs"]
    ax = axes[0]
    for same, colour, label in (
        (True, "tab:blue", "same architecture"),
        (False, "tab:orange", "different architectures"),
    ):
        chosen = [p for p in pairs if p["same_architecture"] is same]
        if chosen:
            ax.scatter(
                [p["overlap"] for p in chosen],
                [p["dissimilarity"] for p in chosen],
                s=14,
                alpha=0.6,
                color=colour,
                label=label,
            )
    levels = result["by_overlap"]
    ax.plot([lv["overlap"] for lv in levels], [lv["mean"] for lv in levels], color="black", marker="o", label="mean")
    rho = result["spearman"]["rho"]
    ax.set_xlabel("class overlap of the pair")
    ax.set_ylabel("Fisher dissimilarity")
    ax.set_title(f"dissimilarity vs overlap (Spearman rho {'n/a' if rho is None else f'{rho:.2f}'})", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = axes[1]
    bars = [
        ("within domain", result["domain_means"]["within"]),
        ("within, disjoint", result["domain_means"]["within_disjoint"]),
        ("cross domain", result["domain_means"]["cross"]),
        ("same classes,\nsame arch", result["architecture"]["same"]),
        ("same classes,\ncross arch", result["architecture"]["cross"]),
    ]
    ax.bar(range(len(bars)), [b["mean"] if b["mean"] is not None else 0.0 for _, b in bars], color="tab:green")
    ax.set_xticks(range(len(bars)), [f"{name}\n({b['pairs']} pairs)" for name, b in bars], fontsize=7)
    ax.set_ylabel("mean Fisher dissimilarity")
    ax.set_title("domains and architectures", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax = axes[2]
    stability = result["stability"]
    image = ax.imshow(np.asarray(stability["ari"], dtype=np.float64), cmap="viridis", vmin=-0.5, vmax=1.0)
    ax.set_xticks(range(len(stability["seeds"])), stability["seeds"], fontsize=7)
    ax.set_yticks(range(len(stability["seeds"])), stability["seeds"], fontsize=7)
    ax.set_xlabel("clustering seed")
    ax.set_title(
        f"grouping stability: ARI mean {stability['ari_mean']:.2f}, min {stability['ari_min']:.2f}\n"
        f"group sizes (seed {stability['seeds'][0]}): {result['group_sizes'][0]}",
        fontsize=9,
    )
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="adjusted Rand index")
    fig.tight_layout()
    _save(fig, path)


def plot_gradient_dynamics(result: dict, path: str | Path) -> None:
    """Task-gradient statistics against meta-training step, one line per method (the paper's Fig. 5).

    Three panels: the gradient-variance penalty P (log scale), the mean pairwise cosine of the task
    gradients, and the relative spread ``mean ‖g_i − ḡ‖ / ‖ḡ‖``.

    Args:
        result: :meth:`tgr_hub.analyze.GradientsResult.to_dict`.
        path: the PNG.
    """
    colours = {"erm": "tab:gray", "tgr": "tab:red", "igr": "tab:blue", "groups": "tab:green"}
    panels = [
        ("P", "P = (1/2m) Σ‖g_i − ḡ‖²", True),
        ("cosine", "mean pairwise cosine of g_i", False),
        ("relative_spread", "relative spread mean‖g_i − ḡ‖ / ‖ḡ‖", False),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8))
    probe = result.get("probe", {})
    for ax, (key, title, log) in zip(axes, panels):
        for method, trace in result["methods"].items():
            points = [(s, v) for s, v in zip(trace["steps"], trace[key]) if v is not None]
            if not points:
                continue
            steps, values = zip(*points)
            count = len(trace["groups"])
            label = f"{method} (β={trace['beta']:g}, {count} group{'s' if count != 1 else ''})"
            ax.plot(
                steps,
                values,
                label=label,
                color=colours.get(method),
                marker="o" if len(points) < 30 else None,
                markersize=3,
            )
        if log and any(v is not None and v > 0 for trace in result["methods"].values() for v in trace[key]):
            ax.set_yscale("log")
        ax.set_xlabel("meta-training step")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"task gradients on a fixed probe ({probe.get('groups')} groups of {probe.get('tasks_per_group')} "
        f"tasks, {probe.get('kind')} loss)",
        fontsize=10,
    )
    fig.tight_layout()
    _save(fig, path)


def plot_gain(result: dict, path: str | Path) -> None:
    """The accuracy gain of an auxiliary teacher against class overlap (the paper's Fig. 2).

    One line per shot: the mean paired difference per overlap fraction with its 95% t-interval over
    pairs × seeds; the cross-architecture pairs as a separate point on the right.

    Args:
        result: :meth:`tgr_hub.analyze.GainResult.to_dict`.
        path: the PNG.
    """
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    fractions = [float(f) for f in result["by_overlap"]]
    for offset, shot in zip((-0.01, 0.01), result["shots"]):
        key = f"{shot}shot"
        means = [100 * (result["by_overlap"][f][key].get("mean") or 0.0) for f in result["by_overlap"]]
        halves = [100 * (result["by_overlap"][f][key].get("half") or 0.0) for f in result["by_overlap"]]
        ax.errorbar([f + offset for f in fractions], means, yerr=halves, marker="o", capsize=3, label=f"{shot}-shot")
        arch = result["architecture"].get(key) or {}
        if arch.get("mean") is not None:
            ax.errorbar(
                [1.15 + offset],
                [100 * arch["mean"]],
                yerr=[100 * (arch.get("half") or 0.0)],
                marker="s",
                capsize=3,
                color=ax.lines[-1].get_color(),
            )
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks([*fractions, 1.15], [*(f"{f:g}" for f in fractions), "other\narch"])
    ax.set_xlabel("fraction of the basic teacher's classes the auxiliary teacher shares")
    ax.set_ylabel("accuracy gain AG (points)")
    ax.set_title(f"auxiliary teacher's gain ({result['method']}), 95% CI over pairs × seeds", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
