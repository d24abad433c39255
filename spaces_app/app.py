"""Few-shot image classification with a tgr-hub meta-model (a Gradio Space).

The meta-model named by the ``TGR_MODEL_ID`` environment variable (a Space variable: a Hub
repo id such as ``me/my-meta-model``, or a local meta-model folder) is loaded once at
start-up. A person defines 2 to 10 classes, each a name and a few images (uploaded, or
picked from the offline glyph benchmark), adapts the meta-model to them, and classifies
query images.

API: the named endpoint ``classify`` takes support images, their labels (one per image,
comma- or newline-separated) and query images, and returns
``{"classes": [...], "predictions": [{"image", "label", "confidence", "probabilities"}], "notes": [...]}``:

    from gradio_client import Client, handle_file
    client = Client("me/my-meta-model-demo")            # or "http://127.0.0.1:7860/"
    result = client.predict([handle_file("cat1.jpg"), handle_file("dog1.jpg")], "cat, dog",
                            [handle_file("query.jpg")], api_name="/classify")

This file is a thin layer over :mod:`tgr_hub.fewshot_app`, which does the validation,
adaptation and prediction; run it with ``python app.py`` (on a Space) or ``tgr-hub demo MODEL``.
"""

from __future__ import annotations

import os

# Before gradio is imported: no telemetry or version checks leave the machine.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import argparse  # noqa: E402
import html  # noqa: E402
import inspect  # noqa: E402
import logging  # noqa: E402
import re  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from collections.abc import Callable  # noqa: E402
from functools import wraps  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gradio as gr  # noqa: E402

from tgr_hub.errors import TgrHubError  # noqa: E402
from tgr_hub.fewshot_app import (  # noqa: E402
    DEFAULT_LIMITS,
    AppModel,
    FewShotSession,
    classify_episode,
    load_app_model,
    model_summary_markdown,
    write_glyph_examples,
)

logger = logging.getLogger("tgr_hub.space")

LIMITS = DEFAULT_LIMITS
SLOTS = LIMITS.max_classes  # class slots in the page; the slider shows the first N
EXAMPLES_DIR = Path(tempfile.gettempdir()) / "tgr_hub_space_examples"

API_HELP = """\
**API.** The endpoint `classify` adapts to labelled support images and classifies query images in one call:

```python
from gradio_client import Client, handle_file
client = Client("{where}")
result = client.predict(
    [handle_file("cat1.jpg"), handle_file("cat2.jpg"), handle_file("dog1.jpg")],  # support images
    "cat, cat, dog",                                                            # one label per support image
    [handle_file("query.jpg")],                                                 # images to classify
    api_name="/classify",
)
result["predictions"][0]["label"], result["predictions"][0]["probabilities"]
```

Bad input raises an error whose message says what to fix. Limits: {limits}.
"""


def _paths(files: Any) -> list[str]:
    """File paths from a gr.File value (None, a path, or a list of paths / file objects)."""
    if not files:
        return []
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    return [str(getattr(f, "path", None) or getattr(f, "name", None) or f) for f in files]


def _user_errors(fn: Callable) -> Callable:
    """Show library errors as a plain message (never a traceback); hide internal ones."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except TgrHubError as error:
            logger.info("refused input: %s", error)
            raise gr.Error(str(error), title="Invalid input", print_exception=False) from None
        except Exception:  # a bug: log it here, tell the user without internals
            logger.exception("unexpected error in %s", fn.__name__)
            raise gr.Error("Something went wrong on the server while processing this request; please try again "
                           "with other images, or report it.", title="Server error", print_exception=False) from None

    return wrapper


def _with_progress(fn: Callable[[list, gr.Progress], Any], inputs: int) -> Callable:
    """A handler of ``inputs`` positional inputs plus a gradio progress tracker, calling ``fn(values, progress)``.

    Why: gradio finds the progress tracker by a parameter default, which cannot follow ``*args``.
    """

    def handler(*args: Any) -> Any:
        return fn(list(args[:inputs]), args[inputs])

    params = [inspect.Parameter(f"input_{i}", inspect.Parameter.POSITIONAL_ONLY) for i in range(inputs)]
    params.append(inspect.Parameter("progress", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=gr.Progress()))
    handler.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    handler.__name__ = getattr(fn, "__name__", "handler")
    return handler


def _classes_from_slots(count: int, names: list[str], files: list[Any]) -> list[tuple[str, list[str]]]:
    """The classes in the first ``count`` slots; wholly empty slots are skipped."""
    classes = []
    for name, slot_files in list(zip(names, files))[: int(count)]:
        paths = _paths(slot_files)
        if (name or "").strip() or paths:
            classes.append((name or "", paths))
    return classes


def _fingerprint(classes: list[tuple[str, list[str]]]) -> tuple:
    """What the adaptation depends on: names and uploaded files (gradio's paths are per upload)."""
    return tuple((" ".join(name.split()), tuple(paths)) for name, paths in classes)


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~])")


def _md(text: str) -> str:
    """User text (class and file names) shown literally in Markdown: no markup, no HTML."""
    return _MD_SPECIAL.sub(r"\\\1", html.escape(str(text), quote=False))


def _predictions_markdown(predictions: list[dict[str, Any]]) -> str:
    rows = ["| Image | Predicted class | Confidence | Runner-up |", "|---|---|---|---|"]
    for p in predictions:
        others = list(p["probabilities"].items())[1:2]
        runner = f"{_md(others[0][0])} ({others[0][1]:.1%})" if others else ""
        rows.append(f"| {_md(p['image'])} | **{_md(p['label'])}** | {p['confidence']:.1%} | {runner} |")
    return "\n".join(rows)


def build_demo(app_model: AppModel, *, where: str | None = None) -> gr.Blocks:
    """The Gradio Blocks of the app for a loaded meta-model.

    Args:
        app_model: from :func:`tgr_hub.fewshot_app.load_app_model`.
        where: what the API snippet passes to ``Client`` (the Space id or the local URL).
    """
    space_id = os.environ.get("SPACE_ID")
    where = where or space_id or "http://127.0.0.1:7860/"

    # --- handlers (thin: all checks and maths are in tgr_hub.fewshot_app) ---

    def ui_adapt(values: list, progress: gr.Progress) -> tuple[dict, str]:
        """Inputs: number of classes, the SLOTS names, the SLOTS file lists."""
        classes = _classes_from_slots(values[0], values[1:SLOTS + 1], values[SLOTS + 1:])
        session = FewShotSession.for_app_model(app_model, limits=LIMITS)
        progress(0.0, desc="loading images")
        notes = session.define_classes(classes)

        def report(done: int, total: int, description: str) -> None:
            progress((done, total), desc=description)

        session.adapt(progress_cb=report)
        how = ("prototypes computed" if app_model.learner == "protonet"
               else f"fine-tuned for {session.learner.inner_steps} steps")
        sizes = ", ".join(f"{n} ({len(p)})" for n, p in classes)
        status = f"Adapted to {len(classes)} classes ({how}): {_md(sizes)}."
        if notes:
            status += "\n\n" + "\n".join(f"- {_md(n)}" for n in notes)
        return {"session": session, "fingerprint": _fingerprint(classes)}, status

    @_user_errors
    def ui_classify(adapted: dict | None, count_value: int, *values: Any) -> tuple[dict, list, str]:
        """Inputs: the adaptation (state), number of classes, the SLOTS names and file lists, the query files."""
        if not adapted:
            raise gr.Error("Adapt the model to your classes first (step 2), then classify.", title="Not adapted",
                           print_exception=False)
        classes = _classes_from_slots(count_value, values[:SLOTS], values[SLOTS:2 * SLOTS])
        if _fingerprint(classes) != adapted["fingerprint"]:
            raise gr.Error("The classes changed since the last adaptation: click Adapt again, then classify.",
                           title="Not adapted", print_exception=False)
        paths = _paths(values[2 * SLOTS])
        predictions = adapted["session"].classify(paths)
        top = {name: prob for name, prob in predictions[0]["probabilities"].items()}
        gallery = [(path, f"{p['label']} ({p['confidence']:.0%})") for path, p in zip(paths, predictions)]
        return top, gallery, _predictions_markdown(predictions)

    @_user_errors
    def api_classify(support_images: list[str] | None, labels: str | None, query_images: list[str] | None) -> dict:
        """Adapt to labelled support images and classify the query images.

        Args:
            support_images: support images (2 to 10 classes, at least one image each).
            labels: one class name per support image, in order, comma- or newline-separated.
            query_images: images to classify.

        Returns:
            {"classes": [...], "predictions": [{"image", "label", "confidence", "probabilities"}], "notes": [...]}
        """
        return classify_episode(app_model.model, _paths(support_images), labels or "", _paths(query_images),
                                learner=app_model.learner, inner_steps=app_model.inner_steps,
                                inner_lr=app_model.inner_lr, limits=LIMITS)

    def show_slots(count: int) -> list:
        return [gr.update(visible=i < int(count)) for i in range(SLOTS)]

    @_user_errors
    def fill_examples(picked: list[str] | None, way: int, shot: int, seed: int) -> list:
        support, queries = write_glyph_examples(EXAMPLES_DIR, classes=picked or None, way=int(way), shot=int(shot),
                                                query=2, seed=int(seed))
        if not 2 <= len(support) <= SLOTS:
            raise gr.Error(f"Pick 2 to {SLOTS} glyph classes.", title="Invalid input", print_exception=False)
        names = [gr.update(value=support[i][0] if i < len(support) else "") for i in range(SLOTS)]
        files = [gr.update(value=[str(p) for p in support[i][1]] if i < len(support) else None) for i in range(SLOTS)]
        visible = [gr.update(visible=i < len(support)) for i in range(SLOTS)]
        return [gr.update(value=len(support)), *visible, *names, *files, [str(p) for _, p in queries]]

    threading.Thread(target=_warm_glyphs, name="glyph-examples", daemon=True).start()

    # --- layout ---

    with gr.Blocks(title="tgr-hub few-shot demo", analytics_enabled=False) as demo:
        state = gr.State(None)
        gr.Markdown(f"# Few-shot classification with `{html.escape(app_model.model_id)}`\n"
                    "Teach the meta-model new classes from a handful of images, then classify new images.")
        with gr.Accordion("About this model", open=True, elem_id="about-model"):
            with gr.Row():
                gr.Markdown(model_summary_markdown(app_model), elem_id="model-info")
                if app_model.heatmap is not None:
                    gr.Image(str(app_model.heatmap), label="Teacher dissimilarity and groups", interactive=False,
                             show_label=False, elem_id="model-heatmap")

        gr.Markdown("## 1. Define classes\nGive each class a name and one or more images "
                    f"({html.escape(LIMITS.describe())}).")
        with gr.Accordion("Built-in examples (offline glyph benchmark)", open=False):
            with gr.Row():
                picked = gr.Dropdown(choices=[], multiselect=True, label="Glyph classes (empty: random)", scale=3,
                                     elem_id="glyph-classes")
                way = gr.Slider(2, SLOTS, value=5, step=1, label="Classes (when random)")
                shot = gr.Slider(1, 10, value=5, step=1, label="Images per class")
                seed = gr.Number(value=0, precision=0, label="Seed")
            use_examples = gr.Button("Use these examples", elem_id="use-examples")
        count = gr.Slider(LIMITS.min_classes, SLOTS, value=3, step=1, label="Number of classes", elem_id="class-count")
        groups, names, files = [], [], []
        for i in range(SLOTS):
            with gr.Row(visible=i < 3, equal_height=True, elem_id=f"class-{i}") as group:
                names.append(gr.Textbox(label=f"Class {i + 1} name", elem_id=f"class-name-{i}", scale=1))
                files.append(gr.File(label=f"Class {i + 1} images", file_count="multiple",
                                     elem_id=f"class-files-{i}", scale=3, height=140))
            groups.append(group)

        gr.Markdown("## 2. Adapt")
        adapt_button = gr.Button("Adapt", variant="primary", elem_id="adapt-button")
        status = gr.Markdown("Not adapted yet.", elem_id="adapt-status")

        gr.Markdown("## 3. Classify")
        query = gr.File(label="Query images", file_count="multiple", elem_id="query-files", height=140)
        classify_button = gr.Button("Classify", variant="primary", elem_id="classify-button")
        with gr.Row():
            top = gr.Label(label="First query image", num_top_classes=5, elem_id="top-label")
            gallery = gr.Gallery(label="Query images with predictions", columns=5, height=260, elem_id="query-gallery")
        table = gr.Markdown(elem_id="predictions")

        with gr.Accordion("Use it from code (API)", open=False):
            gr.Markdown(API_HELP.format(where=where, limits=html.escape(LIMITS.describe())))

        # The API endpoint has its own (hidden) components: it is stateless, unlike the page.
        with gr.Column(visible=False):
            api_support = gr.File(label="support_images", file_count="multiple")
            api_labels = gr.Textbox(label="labels")
            api_query = gr.File(label="query_images", file_count="multiple")
            api_result = gr.JSON(label="result")
            api_button = gr.Button("classify")

        demo.load(_glyph_choices, None, picked, api_visibility="private")  # filled once the benchmark is ready
        count.change(show_slots, count, groups, api_visibility="private")
        use_examples.click(fill_examples, [picked, way, shot, seed], [count, *groups, *names, *files, query],
                           api_visibility="private")
        # The page's own endpoints are callable by gradio_client too (undocumented: the API is `classify`).
        adapt_button.click(_with_progress(_user_errors(ui_adapt), 1 + 2 * SLOTS), [count, *names, *files],
                           [state, status], api_name="ui_adapt", api_visibility="undocumented")
        classify_button.click(ui_classify, [state, count, *names, *files, query], [top, gallery, table],
                              api_name="ui_classify", api_visibility="undocumented")
        api_button.click(api_classify, [api_support, api_labels, api_query], api_result, api_name="classify",
                         api_description="Adapt to labelled support images and classify query images: returns "
                                         "{classes, predictions: [{image, label, confidence, probabilities}], notes}.")
    demo.queue(default_concurrency_limit=2, max_size=32)  # a 2-vCPU Space: two requests at a time
    return demo


_GLYPHS: dict[str, Any] = {}


def _warm_glyphs() -> None:
    """Build (first time: about a minute) or load the glyph benchmark's test classes, in the background."""
    try:
        from tgr_hub.data import load_split

        _GLYPHS["names"] = list(load_split("glyphs", "test").class_names)
    except Exception as error:  # the examples are optional: the app works without them
        logger.warning("built-in glyph examples unavailable: %s", error)
        _GLYPHS["names"] = []


def _glyph_choices() -> dict:
    return gr.update(choices=_GLYPHS.get("names", []))


def launch(model: str | AppModel, *, host: str = "127.0.0.1", port: int | None = None, block: bool = True,
           quiet: bool = False) -> tuple[gr.Blocks, str]:
    """Load the meta-model (once) and serve the app.

    Args:
        model: meta-model folder or Hub id, or an already loaded :class:`AppModel`.
        host: interface to listen on (``0.0.0.0`` on a Space).
        port: port (``None``: GRADIO_SERVER_PORT or the first free one from 7860).
        block: serve until interrupted; else return once the server is up.
        quiet: suppress gradio's start-up messages.

    Returns:
        ``(demo, local_url)``.
    """
    app_model = model if isinstance(model, AppModel) else load_app_model(model)
    url_hint = f"http://{host}:{port or 7860}/" if host in ("127.0.0.1", "localhost") else None
    demo = build_demo(app_model, where=url_hint)
    _, url, _ = demo.launch(
        server_name=host, server_port=port, share=False, prevent_thread_lock=not block, quiet=quiet,
        show_error=False,  # internal errors reach users as one generic line (see _user_errors)
        max_file_size="64mb",  # hard cap on uploads; the library refuses files over 20 MB with its own message
        state_session_capacity=256,  # each session keeps its adapted model: bound the memory on a small Space
        footer_links=["api"], ssr_mode=False, mcp_server=False,
    )
    return demo, url


def _default_model_id() -> str | None:
    """``TGR_MODEL_ID`` (the Space variable), else ``tgr_model_id.txt`` (written beside app.py by tgr-hub push)."""
    if os.environ.get("TGR_MODEL_ID", "").strip():
        return os.environ["TGR_MODEL_ID"].strip()
    recorded = Path(__file__).resolve().parent / "tgr_model_id.txt"
    if recorded.is_file():
        return recorded.read_text(encoding="utf-8").strip() or None
    return None


def main(argv: list[str] | None = None) -> int:
    """``python app.py [--model ID] [--host H] [--port P]`` (a Space runs ``python app.py``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=_default_model_id(),
                        help="meta-model (default: $TGR_MODEL_ID, else tgr_model_id.txt beside this file)")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME",
                                                         "0.0.0.0" if os.environ.get("SPACE_ID") else "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ["GRADIO_SERVER_PORT"])
                        if os.environ.get("GRADIO_SERVER_PORT") else None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args.model:
        parser.error("no meta-model: set the TGR_MODEL_ID variable (a Hub id or a local folder) or pass --model")
    try:
        launch(args.model, host=args.host, port=args.port)
    except TgrHubError as error:
        parser.exit(2, f"error: {error}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
