"""The Hub client of tgr-hub: environment, retries and the one translator of Hub failures.

Every Hub call of :mod:`tgr_hub.hub.resolve` and :mod:`tgr_hub.hub.push` goes through here:
the endpoint and offline mode are read at call time (``HF_ENDPOINT``, ``HF_HUB_OFFLINE``),
tokens are scrubbed from every message, transient failures (connection errors, timeouts,
408/429/5xx) are retried with exponential backoff (``TGR_HUB_RETRIES`` attempts after the
first, ``TGR_HUB_RETRY_WAIT`` seconds before the first retry; the module attributes
:data:`RETRIES` and :data:`RETRY_WAIT` can be changed at run time), and :func:`translate`
turns any other failure into a typed error of :mod:`tgr_hub.errors`.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

import huggingface_hub
from huggingface_hub import HfApi, constants
from huggingface_hub import errors as hf_errors

from .. import __version__
from ..errors import (
    GatedRepoError,
    HubError,
    OfflineCacheMissError,
    PushError,
    RepoNotFoundError,
    RevisionNotFoundError,
    TgrHubError,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")


CONFIG_FILE = "config.json"


SAFE_WEIGHTS = "model.safetensors"


_SHA = re.compile(r"[0-9a-f]{40}")


_TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)


_LIBRARY: dict[str, Any] = {"library_name": "tgr-hub", "library_version": __version__}


# Retries of transient failures; module attributes so callers (and tests) can tune them.
RETRIES = int(os.environ.get("TGR_HUB_RETRIES", "3"))


RETRY_WAIT = float(os.environ.get("TGR_HUB_RETRY_WAIT", "1.0"))


MAX_RETRY_WAIT = 30.0


# --- environment -------------------------------------------------------------------------


def hub_endpoint() -> str:
    """The Hub URL in use: ``HF_ENDPOINT`` at call time, else the client's default."""
    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def is_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) asks for no network at all."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    if value is not None:
        return value.upper() in constants.ENV_VARS_TRUE_VALUES
    return bool(constants.HF_HUB_OFFLINE)


def _timeout() -> float:
    return float(os.environ.get("HF_HUB_DOWNLOAD_TIMEOUT") or constants.HF_HUB_DOWNLOAD_TIMEOUT)


def _etag_timeout() -> float:
    return float(os.environ.get("HF_HUB_ETAG_TIMEOUT") or constants.HF_HUB_ETAG_TIMEOUT)


def _api(token: str | None = None) -> HfApi:
    return HfApi(endpoint=hub_endpoint(), token=token, **_LIBRARY)


def _known_token(token: str | None = None) -> str | None:
    return token or huggingface_hub.get_token()


def _scrub(text: str, token: str | None = None) -> str:
    """``text`` without any token in it (the explicit one, the configured one, or any ``hf_...``)."""
    for secret in {token, huggingface_hub.get_token()}:
        if secret:
            text = text.replace(secret, "***")
    return re.sub(r"\bhf_[A-Za-z0-9]{8,}", "hf_***", text)


def _short(error: BaseException, token: str | None = None) -> str:
    """The first meaningful line of an error, scrubbed of tokens, at most 200 characters."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    if re.fullmatch(r"\d{3} Client Error\.?", text) and len(lines) > 1:
        text = f"{text} {lines[1]}"
    text = _scrub(text, token)
    return text if len(text) <= 200 else text[:197] + "..."


# --- retries and error translation ---------------------------------------------------------


def _transient_exceptions() -> tuple[type[BaseException], ...]:
    try:
        import httpx2 as httpx  # the HTTP library of huggingface_hub >= 2
    except ImportError:  # pragma: no cover - older huggingface_hub
        import httpx  # type: ignore[no-redef]
    return (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError, ConnectionError, TimeoutError)


def _is_transient(error: BaseException) -> bool:
    """Connection trouble, timeouts and 408/429/5xx answers: worth another try."""
    if isinstance(error, hf_errors.OfflineModeIsEnabled):
        return False
    if isinstance(error, _transient_exceptions()):
        return True
    if isinstance(error, hf_errors.HfHubHTTPError):
        response = getattr(error, "response", None)
        return response is not None and response.status_code in _TRANSIENT_STATUS
    if isinstance(error, hf_errors.LocalEntryNotFoundError) and not is_offline():
        # hf_hub_download reports "could not reach the Hub and not cached" this way; the cause says why.
        cause = error.__cause__
        return cause is not None and _is_transient(cause)
    return False


def _with_retries(what: str, call: Callable[[], T]) -> T:
    """Run ``call``; retry transient failures with exponential backoff, re-raise the rest."""
    attempt = 0
    while True:
        try:
            return call()
        except Exception as error:
            if attempt >= RETRIES or not _is_transient(error):
                raise
            delay = min(MAX_RETRY_WAIT, RETRY_WAIT * 2**attempt)
            attempt += 1
            logger.warning("%s failed (%s); retry %d/%d in %.1fs", what, _short(error), attempt, RETRIES, delay)
            time.sleep(delay)


def _location(where: tuple[str | None, int | None] | None) -> dict[str, Any]:
    if where is None or where[1] is None:
        return {}
    return {"path": where[0] or "<pool>", "line": where[1]}


def translate(
    error: Exception,
    repo_id: str,
    revision: str | None = None,
    *,
    where: tuple[str | None, int | None] | None = None,
    token: str | None = None,
    action: str | None = None,
) -> TgrHubError:
    """Turn a ``huggingface_hub`` (or network) error about ``repo_id`` into a tgr-hub error.

    The one translator of Hub failures: resolving and downloading get the precise types
    (:class:`RepoNotFoundError`, :class:`GatedRepoError`, :class:`RevisionNotFoundError`,
    :class:`OfflineCacheMissError`, :class:`HubError`); a push (``action``, e.g.
    ``"pushing me/x"``) gets a :class:`PushError` whose message starts with ``action``.

    Args:
        error: what the client (or the network) raised.
        repo_id: the repository the request was about.
        revision: the revision asked for, if any.
        where: ``(list file, line)`` of a pool entry, for the message.
        token: the token in use (scrubbed from messages; its presence shapes the hint).
        action: set for pushes: what was being pushed.
    """
    label = f"{repo_id}@{revision}" if revision else repo_id
    if isinstance(error, TgrHubError):
        if action is None or isinstance(error, PushError):
            return error
        return PushError(f"{action}: {error}")
    response = getattr(error, "response", None) if isinstance(error, hf_errors.HfHubHTTPError) else None
    status = getattr(response, "status_code", None)
    if action is not None:
        if status in (401, 403):
            return PushError(
                f"{action}: the token may not write to {repo_id} ({_short(error, token)})",
                hint="use a token with write access to that user or organisation",
            )
        if isinstance(error, hf_errors.HFValidationError):
            return PushError(
                f"{action}: {repo_id!r} is not a valid repository id ({_short(error, token)})",
                hint="use NAMESPACE/NAME with letters, digits, '-', '_' and '.'",
            )
        if _is_transient(error):
            return PushError(
                f"{action}: could not reach the Hub at {hub_endpoint()} ({_short(error, token)})",
                hint="nothing half-written was left behind; run the same push again",
            )
        return PushError(f"{action}: {_short(error, token)}")
    loc = _location(where)
    has_token = _known_token(token) is not None
    if isinstance(error, hf_errors.GatedRepoError):
        return GatedRepoError(
            f"{label} is gated and " + ("this token has no access to it" if has_token else "no token was given"),
            hint="accept the repository's conditions on the Hub, then set HF_TOKEN to a token of that account",
            **loc,
        )
    if isinstance(error, hf_errors.RevisionNotFoundError):
        return RevisionNotFoundError(
            f"revision {revision!r} does not exist in {repo_id}",
            hint="use a branch, a tag or a full commit sha of the repository",
            **loc,
        )
    if isinstance(error, hf_errors.RepositoryNotFoundError):
        why = "or this token has no access to it" if has_token else "or it is private and no token was given"
        return RepoNotFoundError(
            f"repository {repo_id} not found on {hub_endpoint()}, {why}",
            hint="check the id; for a private repository set HF_TOKEN or run `hf auth login`",
            **loc,
        )
    if isinstance(error, hf_errors.HFValidationError):
        return RepoNotFoundError(f"{label} is not a valid Hub repository id: {_short(error, token)}", **loc)
    if is_offline() and isinstance(error, (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled)):
        return OfflineCacheMissError(
            f"{label} is not in the local Hub cache and HF_HUB_OFFLINE=1 forbids downloading it",
            hint="run once with network access (the cache then serves it), or unset HF_HUB_OFFLINE",
            **loc,
        )
    if _is_transient(error) or isinstance(error, hf_errors.LocalEntryNotFoundError):
        return HubError(
            f"could not reach the Hub at {hub_endpoint()} for {label} ({_short(error, token)})",
            hint="check the network and HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use the local cache",
        )
    if isinstance(error, hf_errors.HfHubHTTPError):
        return HubError(f"the Hub refused a request about {label}: {_short(error, token)}")
    return HubError(f"Hub request about {label} failed: {type(error).__name__}: {_short(error, token)}")
