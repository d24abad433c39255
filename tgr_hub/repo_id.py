"""The one parser of Hub repository references: ``org/name``, ``org/name@REV``, ``hf-hub:...``.

Pool entries, meta-model ids (``tgr-hub demo``, the Space), the card's list of Hub teachers
and Hub dataset ids are all read here. A reference is either a *local folder* (it starts with
``./``, ``../``, ``/``, ``~`` or ``local-dir:``, or is ``.``/``..``) or a *Hub reference*; the
rule never looks at the disk, so a text means the same on every machine.

    >>> parse_repo_ref("hf-hub:timm/resnet18.a1_in1k@main")
    RepoRef(repo_id='timm/resnet18.a1_in1k', revision='main')
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import RepoIdError

__all__ = ["HUB_PREFIX", "LOCAL_PREFIX", "RepoRef", "is_local_ref", "is_repo_id", "parse_repo_ref"]

HUB_PREFIX = "hf-hub:"
LOCAL_PREFIX = "local-dir:"
_LOCAL_STARTS = ("./", "../", "/", "~")
# One part of a repo id: letters, digits, "-", "_", "."; starts with a letter or digit, at most 96 characters.
_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?"
_REPO_ID = re.compile(rf"^{_PART}/{_PART}$")
_NAME_ONLY = re.compile(rf"^{_PART}$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/\-]*$")


@dataclass(frozen=True)
class RepoRef:
    """A Hub repository, optionally at a revision.

    Attributes:
        repo_id: ``org/name`` (or ``name`` where a namespace is optional, e.g. datasets).
        revision: branch, tag or commit sha; None for the default branch.
    """

    repo_id: str
    revision: str | None = None

    @property
    def label(self) -> str:
        """``org/name@REV`` (or ``org/name``): how messages name it."""
        return f"{self.repo_id}@{self.revision}" if self.revision else self.repo_id

    @property
    def name(self) -> str:
        """The part after the namespace."""
        return self.repo_id.rsplit("/", 1)[-1]


def is_local_ref(text: str) -> bool:
    """Whether ``text`` names a local folder (by its form alone, never by looking at the disk)."""
    text = text.strip()
    return text.startswith(LOCAL_PREFIX) or text.startswith(_LOCAL_STARTS) or text in (".", "..")


def is_repo_id(text: str, *, namespace: bool = True) -> bool:
    """Whether ``text`` is a bare repo id (``org/name``; ``name`` too when ``namespace`` is False)."""
    if "--" in text or ".." in text:  # the Hub refuses these runs
        return False
    return bool(_REPO_ID.match(text) or (not namespace and _NAME_ONLY.match(text)))


def parse_repo_ref(text: str, *, namespace: bool = True) -> RepoRef:
    """Parse ``org/name``, ``org/name@REVISION`` or ``hf-hub:org/name[@REVISION]``.

    Args:
        text: the reference (surrounding spaces are ignored).
        namespace: require ``org/``; False also accepts ``name`` alone (Hub datasets).

    Raises:
        RepoIdError: ``text`` is not such a reference; the message says which rule it breaks.
    """
    spec = text.strip()
    if spec.startswith(HUB_PREFIX):
        spec = spec[len(HUB_PREFIX) :]
    if any(c.isspace() for c in spec):
        raise RepoIdError("a Hub reference cannot contain spaces")
    if spec.count("@") > 1:
        raise RepoIdError("more than one '@' (only org/name@REVISION is allowed)")
    repo_id, at, revision = spec.partition("@")
    if at and not revision:
        raise RepoIdError("'@' must be followed by a revision (branch, tag or commit)")
    if not is_repo_id(repo_id, namespace=namespace):
        if namespace and "/" not in repo_id and ":" not in repo_id:
            raise RepoIdError("not an org/name Hub repo id (for a local folder write ./NAME)")
        raise RepoIdError(
            "not a Hub repo id: each part of org/name is letters, digits, '-', '_' and '.', "
            "starting with a letter or digit"
        )
    if revision and not _REVISION.match(revision):
        raise RepoIdError(f"invalid revision {revision!r}")
    return RepoRef(repo_id, revision or None)
