"""Every Hugging Face Hub call of tgr-hub: resolving teachers, pushing meta-models and Spaces.

This package is the one place that talks to the Hub (DESIGN.md). It goes through the real
``huggingface_hub`` client and honours its environment:

- ``HF_ENDPOINT``: the Hub to talk to (read at call time, so a mirror or a test server works).
- ``HF_TOKEN`` / ``hf auth login``: the token, which is never logged, printed or written.
- ``HF_HUB_OFFLINE=1``: nothing goes to the network; teachers come from the local cache.
- ``HF_HUB_DOWNLOAD_TIMEOUT`` / ``HF_HUB_ETAG_TIMEOUT``: timeouts of API calls and downloads.
- ``HF_HUB_CACHE`` / ``HF_HOME``: where the standard cache lives.

Three modules:

- :mod:`tgr_hub.hub.client`: environment, retries of transient failures and
  :func:`~tgr_hub.hub.client.translate`, the one translator of Hub failures into the typed
  errors of :mod:`tgr_hub.errors`;
- :mod:`tgr_hub.hub.resolve`: pull and pin teachers and meta-models (offline cache, retries);
- :mod:`tgr_hub.hub.push`: model repositories, teachers, pools and the demo Space, each in
  one commit.

The public names are importable from ``tgr_hub.hub`` itself.
"""

from __future__ import annotations

from .client import hub_endpoint, is_offline
from .push import PushResult, default_space_app_dir, push_meta_model, push_pool, push_space, push_teacher
from .resolve import FIGURES, ResolvedRepo, download_meta_model, resolve_hub_entry, resolve_many, resolve_repo

__all__ = [
    "FIGURES",
    "PushResult",
    "ResolvedRepo",
    "default_space_app_dir",
    "download_meta_model",
    "hub_endpoint",
    "is_offline",
    "push_meta_model",
    "push_pool",
    "push_space",
    "push_teacher",
    "resolve_hub_entry",
    "resolve_many",
    "resolve_repo",
]
