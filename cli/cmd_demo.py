"""``tgr-hub demo MODEL [--port P]``: run the Space's Gradio app locally.

It is the very app that is uploaded to a Space (``spaces_app/app.py``), loaded from the
source tree, with ``MODEL`` (a meta-model folder, a run folder or a Hub id) in place of the
Space's ``TGR_MODEL_ID`` variable.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from tgr_hub.errors import RunFolderError

from .common import say


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the few-shot Gradio app (the Space) locally",
        description="Serve the Space's Gradio app on this machine for a meta-model: define classes from "
        "your images, adapt, classify; the API endpoint `classify` is served too.",
    )
    parser.add_argument("model", metavar="MODEL", help="meta-model folder, run folder, or Hub repo id (owner/name)")
    parser.add_argument("--port", type=int, default=None, help="port (default: first free from 7860)")
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to listen on (default 127.0.0.1; 0.0.0.0 exposes it to the network)",
    )
    parser.set_defaults(func=run)


def app_path() -> Path:
    """Where the Space app is: ``$TGR_SPACE_APP``, else ``spaces_app/app.py`` beside the package."""
    candidates = []
    if os.environ.get("TGR_SPACE_APP"):
        candidates.append(Path(os.environ["TGR_SPACE_APP"]))
    import tgr_hub

    package = Path(tgr_hub.__file__).resolve().parent
    candidates += [package / "spaces_app" / "app.py", package.parent / "spaces_app" / "app.py"]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise RunFolderError(
        "cannot find the Space app (spaces_app/app.py)",
        hint="run from a source checkout of tgr-hub, or set TGR_SPACE_APP to the app.py path",
    )


def load_app_module() -> ModuleType:
    """Import ``spaces_app/app.py`` as the module ``tgr_hub_space_app``."""
    path = app_path()
    spec = importlib.util.spec_from_file_location("tgr_hub_space_app", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def run(args: argparse.Namespace) -> int:
    from tgr_hub.fewshot_app import load_app_model

    app_path()  # fail early, before any loading, if the app is not there
    say(f"loading meta-model {args.model} ...")
    app_model = load_app_model(args.model)  # a bad MODEL is reported before gradio is even imported
    app = load_app_module()
    say("starting the app; press Ctrl+C to stop")
    app.launch(app_model, host=args.host, port=args.port, block=True)
    return 0
