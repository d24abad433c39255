"""tgr-hub: data-free meta-learning from pools of Hub classifiers with Task Groupings Regularization.

``import tgr_hub`` registers the Conv4 backbone with timm, so that
``timm.create_model("conv4")`` and loading a Conv4 meta-model from the Hub work.
It imports neither gradio nor the CLI, and touches no network.
"""

__version__ = "0.1.0"
from . import models  # noqa: E402,F401  (registers the Conv4 backbone with timm)
