"""The few-shot app's library side, under the name the Space and ``tgr-hub demo`` import.

Everything lives in :mod:`tgr_hub.space` (image intake, session, model summary); this module
only re-exports its public names so that ``from tgr_hub.fewshot_app import ...`` keeps working.
"""

from __future__ import annotations

from .space import (  # noqa: F401  (re-exported)
    DEFAULT_LIMITS,
    AppModel,
    FewShotSession,
    ImageSource,
    InputLimits,
    SessionBNMode,
    __all__,  # noqa: F401
    calibrate_batchnorm,
    classify_episode,
    group_by_label,
    load_app_model,
    load_image,
    load_images,
    model_summary_markdown,
    parse_labels,
    write_glyph_examples,
)
