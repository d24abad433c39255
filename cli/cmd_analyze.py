"""``tgr-hub analyze cka|fisher|gradients|gain``: the paper's analyses of a pool, each written as JSON + PNG.

``inspect`` shows a pool (table, dissimilarity heatmap, groups); ``analyze`` measures it. Both
work in the same kind of run folder, so an analysis in the folder of an earlier ``inspect``
reuses its recovered tasks and embeddings (the default ``--out`` is inspect's).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from .common import add_config_args, config_from_args, say


def default_out(pool: str | None, analysis: str) -> Path:
    """``runs/inspect-<pool folder>`` (shared with ``inspect``), or ``runs/analyze-fisher-ladder`` without a pool."""
    if pool is None:
        return Path("runs") / f"analyze-{analysis}-ladder"
    return Path("runs") / f"inspect-{Path(pool).resolve().parent.name}"


def _fractions(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers in [0, 1], got {text!r}") from None


def _methods(text: str) -> list[str]:
    from tgr_hub.analyze import GRADIENT_METHODS

    methods = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [m for m in methods if m not in GRADIENT_METHODS]
    if unknown or not methods:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated methods of {', '.join(GRADIENT_METHODS)}, got {text!r}"
        )
    return methods


def _add_ladder_arguments(parser: argparse.ArgumentParser, *, pool_help: str) -> None:
    """The overlap ladder's flags, shared by ``fisher`` and ``gain``."""
    parser.add_argument("--pool", default=None, help=pool_help)
    parser.add_argument(
        "--fractions",
        type=_fractions,
        default=None,
        metavar="P,P,...",
        help="the ladder's class-overlap fractions (default 0,0.2,0.4,0.6,0.8,1)",
    )
    parser.add_argument("--repeats", type=int, default=1, help="ladder pairs per fraction (default 1)")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "analyze",
        help="analyses of a pool: CKA between teachers, validation of the Fisher dissimilarity, gradient dynamics "
        "of TGR against ERM (JSON + PNG)",
        description="Analyses of a teacher pool (Hub or local). Each writes NAME.json and NAME.png into --out, "
        "reusing the recovered tasks and embeddings an earlier inspect/analyze left there.",
    )
    analyses = parser.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)

    cka = analyses.add_parser(
        "cka",
        help="linear CKA between every pair of teachers, beside the Fisher dissimilarity",
        description="Linear CKA of the teachers' penultimate features on one common probe set "
        "(default: images recovered from all teachers, data-free).",
    )
    cka.add_argument("--pool", required=True, help="repo-list.txt naming the teachers")
    cka.add_argument(
        "--dataset",
        default=None,
        help="probe with real images of this dataset (glyphs, a folder or a Hub dataset id) instead of "
        "the recovered ones",
    )
    cka.add_argument(
        "--split",
        default="test",
        choices=("train", "val", "test"),
        help="with --dataset: the split the probe images come from (default test: no teacher's classes)",
    )
    cka.add_argument("--images", type=int, default=500, help="probe images (default 500)")
    cka.set_defaults(func=run_cka)

    fisher = analyses.add_parser(
        "fisher",
        help="Fisher dissimilarity against class overlap, domains, grouping stability",
        description="Without --pool, first trains the overlap ladder (pairs of teachers "
        "sharing a fraction of their classes, pairs of architectures, pairs of "
        "domains; from the config's pool section) into OUT/ladder-pool.",
    )
    _add_ladder_arguments(fisher, pool_help="repo-list.txt to analyse (default: build the overlap ladder)")
    fisher.add_argument(
        "--seeds", type=int, default=10, help="clustering seeds for the grouping stability (default 10)"
    )
    fisher.add_argument(
        "--images",
        choices=("recovered", "real"),
        default="recovered",
        help="embed each teacher's task on recovered images (the pipeline's dissimilarity, default) "
        "or on real images of its classes (the embedding alone)",
    )
    fisher.set_defaults(func=run_fisher)

    gradients = analyses.add_parser(
        "gradients",
        help="do the task gradients align under IGR and not under ERM? (P and cosine against step)",
        description="Meta-trains each method from the same initialisation and, every --every steps, measures on a "
        "fixed probe of pseudo-tasks the gradient-variance penalty P = (1/2m) sum ||g_i - mean g||^2, the "
        "mean pairwise cosine of the task gradients and their relative spread.",
    )
    gradients.add_argument("--pool", required=True, help="repo-list.txt naming the teachers")
    gradients.add_argument(
        "--methods",
        type=_methods,
        default=["erm", "tgr"],
        metavar="M,M,...",
        help="what to train: erm (beta 0, one group), tgr (train.beta, spectral groups), "
        "igr (train.beta, one group), groups (beta 0, spectral groups); default erm,tgr",
    )
    gradients.add_argument(
        "--every",
        type=int,
        default=None,
        help="measure every N steps (and at steps 0 and the last; default about 20 points)",
    )
    gradients.add_argument(
        "--iterations", type=int, default=None, help="meta-training steps per method (train.iterations)"
    )
    gradients.add_argument("--probe-groups", type=int, default=8, help="K, the probe's groups of m tasks (default 8)")
    gradients.add_argument(
        "--loss",
        choices=("head", "episodic"),
        default=None,
        help="the probe's task loss: head (a fixed shared head, the same for every method) or "
        "episodic (the learner's support/query loss); default train.igr_loss",
    )
    gradients.set_defaults(func=run_gradients)

    gain = analyses.add_parser(
        "gain",
        help="accuracy gain of an auxiliary teacher against class overlap (AG, paired over episodes)",
        description="For each pair of the overlap ladder (built into OUT/ladder-pool unless --pool names one), "
        "meta-trains on the basic teacher alone and with the auxiliary teacher, per seed, and scores both on the "
        "same meta-test episodes: AG is their paired difference, with a t-interval per overlap fraction.",
    )
    _add_ladder_arguments(gain, pool_help="a ladder pool's repo-list.txt (default: build the ladder)")
    gain.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds (default 0,1,2)")
    gain.add_argument("--method", choices=("erm", "tgr"), default="erm", help="how both models meta-train")
    gain.set_defaults(func=run_gain)

    for sub in (cka, fisher, gradients, gain):
        sub.add_argument("--out", help="folder for the artefacts (default: inspect's, runs/inspect-<pool folder>)")
        sub.add_argument("--allow-pickle", action="store_true", help="accept pickled teacher weights")
        add_config_args(sub)


def run_cka(args: argparse.Namespace) -> int:
    from tgr_hub.analyze import run_cka as analyze_cka

    cfg = config_from_args(args)
    out = Path(args.out) if args.out else default_out(args.pool, "cka")
    start = time.perf_counter()
    result = analyze_cka(
        args.pool,
        out,
        cfg,
        dataset=args.dataset,
        split=args.split,
        max_images=args.images,
        allow_pickle=args.allow_pickle,
    )
    width = max(len(n) for n in result.names)
    say(f"linear CKA on {result.probe['images']} {result.probe['source']} images:")
    say(" " * (width + 1) + " ".join(f"{n[:7]:>7}" for n in result.names))
    for name, row in zip(result.names, result.cka):
        say(f"{name:<{width}} " + " ".join("    n/a" if v is None else f"{v:7.3f}" for v in row))
    rho = result.spearman["rho"]
    say(
        f"Spearman rho(1 - CKA, Fisher dissimilarity) = {'n/a' if rho is None else f'{rho:.3f}'} "
        f"over {result.spearman['pairs']} pairs"
    )
    say(f"written: {out / 'cka.json'}, {out / 'cka.png'} ({time.perf_counter() - start:.1f} s)")
    return 0


def run_fisher(args: argparse.Namespace) -> int:
    from tgr_hub.analyze import DEFAULT_FRACTIONS
    from tgr_hub.analyze import run_fisher as analyze_fisher

    cfg = config_from_args(args)
    out = Path(args.out) if args.out else default_out(args.pool, "fisher")
    start = time.perf_counter()
    result = analyze_fisher(
        args.pool,
        out,
        cfg,
        fractions=args.fractions or DEFAULT_FRACTIONS,
        repeats=args.repeats,
        seeds=args.seeds,
        images=args.images,
        allow_pickle=args.allow_pickle,
    )

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    say(f"Fisher dissimilarity of {len(result.names)} teachers ({result.images} images) against class overlap:")
    for level in result.by_overlap:
        say(f"  overlap {level['overlap']:.2f}: {fmt(level['mean'])} ({level['pairs']} pairs)")
    say(
        f"Spearman rho(overlap, dissimilarity) = {fmt(result.spearman['rho'])} (p {fmt(result.spearman['p'])}, "
        f"{result.spearman['pairs']} pairs)"
    )
    d = result.domain_means
    say(
        f"within domain {fmt(d['within']['mean'])} ({d['within']['pairs']} pairs; no shared class "
        f"{fmt(d['within_disjoint']['mean'])}), cross domain {fmt(d['cross']['mean'])} ({d['cross']['pairs']} pairs)"
    )
    a = result.architecture
    say(
        f"same classes: same architecture {fmt(a['same']['mean'])} ({a['same']['pairs']} pairs), "
        f"different architectures {fmt(a['cross']['mean'])} ({a['cross']['pairs']} pairs)"
    )
    s = result.stability
    say(
        f"grouping stability over {len(s['seeds'])} seeds: ARI mean {s['ari_mean']:.3f}, min {s['ari_min']:.3f}; "
        f"group sizes (seed {s['seeds'][0]}) {result.group_sizes[0]}"
    )
    say(f"written: {out / 'fisher.json'}, {out / 'fisher.png'} ({time.perf_counter() - start:.1f} s)")
    return 0


def run_gradients(args: argparse.Namespace) -> int:
    from tgr_hub.analyze import run_gradients as analyze_gradients

    cfg = config_from_args(args, {"train": {"iterations": args.iterations}} if args.iterations is not None else None)
    out = Path(args.out) if args.out else default_out(args.pool, "gradients")
    start = time.perf_counter()
    result = analyze_gradients(
        args.pool,
        out,
        cfg,
        methods=args.methods,
        every=args.every,
        probe_groups=args.probe_groups,
        kind=args.loss,
        allow_pickle=args.allow_pickle,
    )

    def fmt(value: float | None, spec: str) -> str:
        return "n/a" if value is None or not math.isfinite(value) else format(value, spec)

    probe = result.probe
    say(
        f"task gradients on a fixed probe ({probe['groups']} groups of {probe['tasks_per_group']} tasks, "
        f"{probe['kind']} loss), {result.iterations} steps per method:"
    )
    say(f"  {'method':<8} {'beta':>8} {'step':>6} {'P':>10} {'cosine':>8} {'rel. spread':>12} {'|mean g|':>10}")
    for trace in result.methods.values():
        for index in sorted({0, len(trace.steps) - 1}):
            say(
                f"  {trace.method:<8} {trace.beta:>8g} {trace.steps[index]:>6} {fmt(trace.P[index], '10.4g')} "
                f"{fmt(trace.cosine[index], '8.3f')} {fmt(trace.relative_spread[index], '12.3f')} "
                f"{fmt(trace.mean_norm[index], '10.4g')}"
            )
    say(f"written: {out / 'gradients.json'}, {out / 'gradients.png'} ({time.perf_counter() - start:.1f} s)")
    return 0


def run_gain(args: argparse.Namespace) -> int:
    from tgr_hub.analyze import DEFAULT_FRACTIONS, write_gain
    from tgr_hub.analyze import run_gain as analyze_gain

    cfg = config_from_args(args)
    try:
        seeds = [int(v) for v in args.seeds.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"tgr-hub: error: --seeds expects comma-separated integers, got {args.seeds!r}") from None
    out = Path(args.out) if args.out else default_out(args.pool, "gain")
    start = time.perf_counter()
    result = analyze_gain(
        args.pool,
        out,
        cfg,
        seeds=seeds,
        fractions=args.fractions or DEFAULT_FRACTIONS,
        repeats=args.repeats,
        method=args.method,
        allow_pickle=args.allow_pickle,
    )
    json_path, png_path = write_gain(result, out)
    say(f"accuracy gain of an auxiliary teacher ({result.method}; points, 95% CI over pairs x seeds):")
    groups = [(f"overlap {level}", summary) for level, summary in result.by_overlap.items()]
    groups.append(("other architecture", result.architecture))
    for name, summary in groups:
        parts = []
        for shot in result.shots:
            value = summary.get(f"{shot}shot") or {}
            if value.get("mean") is None:
                continue
            half = value.get("half")
            parts.append(f"{shot}-shot {100 * value['mean']:+.2f}" + (f" ± {100 * half:.2f}" if half else ""))
        say(f"  {name}: {', '.join(parts) or 'n/a'} ({summary['rows']} runs)")
    say(f"written: {json_path}, {png_path} ({time.perf_counter() - start:.1f} s)")
    return 0
