"""``tgr-hub push``: upload a trained meta-model (and its demo Space) to the Hugging Face Hub.

    tgr-hub push runs/NAME --repo me/my-meta-model [--private] [--space me/my-meta-model-demo]

The model repository gets config.json, model.safetensors, tgr_config.json, the figures and a
model card, in one commit; ``--space`` also creates/updates a Gradio Space that loads it. The
token comes from ``HF_TOKEN`` (or the variable named by ``--token-env``), else from
``hf auth login``; it is never printed.
"""

from __future__ import annotations

import argparse
import logging
import os

from tgr_hub.errors import PushError

from .common import say


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "push",
        help="upload a meta-model (model card, figures, config) and optionally its demo Space to the Hub",
        description="Upload a run's meta-model to the Hugging Face Hub in one commit: config.json, "
        "model.safetensors, tgr_config.json, the figures and a model card. With --space, also create or "
        "update a Gradio Space that loads it. Pushing again updates the repository in one new commit.",
    )
    parser.add_argument("run", help="run folder (runs/NAME) or meta-model folder")
    parser.add_argument("--repo", required=True, metavar="NAMESPACE/NAME", help="model repository to push to")
    parser.add_argument("--private", action="store_true", help="make the repository (and Space) private")
    parser.add_argument("--space", metavar="NAMESPACE/NAME", default=None, help="also push the demo Space")
    parser.add_argument(
        "--token-env",
        metavar="VAR",
        default=None,
        help="read the token from this environment variable (default: HF_TOKEN, then hf auth login)",
    )
    parser.add_argument("--license", default="apache-2.0", help="license of the model card (default apache-2.0)")
    parser.set_defaults(func=run)


def token_from_env(name: str | None) -> str | None:
    """The token in environment variable ``name`` (None: let huggingface_hub find it)."""
    if name is None:
        return None
    token = os.environ.get(name, "").strip()
    if not token:
        raise PushError(f"environment variable {name} holds no token", hint="export it, or drop --token-env")
    return token


def run(args: argparse.Namespace) -> int:
    from tgr_hub.hub import push_meta_model

    # The HTTP client logs every request at INFO; the URLs are enough detail only with --debug.
    if logging.getLogger().level > logging.DEBUG:
        for name in ("httpx", "httpx2"):
            logging.getLogger(name).setLevel(logging.WARNING)
    result = push_meta_model(
        args.run,
        args.repo,
        private=args.private,
        space_id=args.space,
        token=token_from_env(args.token_env),
        license=args.license,
    )
    say(f"model: {result.repo_url} (commit {result.commit_sha[:12]})")
    if result.space_url:
        say(f"space: {result.space_url} (commit {(result.space_commit_sha or '')[:12]})")
    return 0
