"""Few-shot adaptation and prediction on people's own images: the library side of the Space.

The Gradio Space (``spaces_app/app.py``) and ``tgr-hub demo`` are thin layers over this
package, which does not import Gradio. Three modules, one per seam:

- :mod:`~tgr_hub.space.images`: image intake (strict, explained validation; class labels;
  the built-in glyph examples);
- :mod:`~tgr_hub.space.session`: a few-shot task built from named classes, the meta-model
  adapted to it (prototypes for ProtoNet, a few fine-tuning steps for MAML), per-class
  probabilities for query images;
- :mod:`~tgr_hub.space.summary`: loading the meta-model (folder or Hub id) and describing it.

    app_model = load_app_model("me/my-meta-model")          # or a local meta-model folder
    session = FewShotSession.for_app_model(app_model)
    session.define_classes({"cat": ["cat1.jpg", "cat2.png"], "dog": ["dog1.jpg"]})
    session.adapt()
    session.classify(["query.jpg"])
"""

from __future__ import annotations

from .images import (
    DEFAULT_LIMITS,
    ImageSource,
    InputLimits,
    group_by_label,
    load_image,
    load_images,
    parse_labels,
    write_glyph_examples,
)
from .session import (
    FewShotSession,
    SessionBNMode,
    calibrate_batchnorm,
    classify_episode,
)
from .summary import AppModel, load_app_model, model_summary_markdown

__all__ = [
    "DEFAULT_LIMITS",
    "AppModel",
    "FewShotSession",
    "ImageSource",
    "InputLimits",
    "SessionBNMode",
    "calibrate_batchnorm",
    "classify_episode",
    "group_by_label",
    "load_app_model",
    "load_image",
    "load_images",
    "model_summary_markdown",
    "parse_labels",
    "write_glyph_examples",
]
