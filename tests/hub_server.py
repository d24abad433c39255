"""A small Hugging Face Hub-compatible HTTP server for the test suite.

It speaks the subset of the Hub's HTTP API that ``huggingface_hub`` (and timm through it)
uses to create repositories, upload with commits, and download with the cache's revision
pinning, so the tests drive the *real* client over real HTTP on 127.0.0.1 instead of
mocking it:

    POST /api/repos/create                          create_repo (models and gradio Spaces)
    DELETE /api/repos/delete, PUT .../settings      delete_repo, update_repo_settings
    GET  /api/whoami-v2                             whoami
    POST /api/validate-yaml                         README front-matter check before a commit
    GET  /api/{models|spaces}/{id}[/revision/{rev}] model_info / space_info / repo_info
    GET  /api/{type}s/{id}/tree/{rev}[/{path}]      list_repo_tree / list_repo_files
    POST /api/{type}s/{id}/paths-info/{rev}         get_paths_info
    POST /api/{type}s/{id}/preupload/{rev}          upload modes (always "regular": content
                                                    travels base64 inside the commit)
    POST /api/{type}s/{id}/commit/{rev}             create_commit (NDJSON body, atomic)
    GET  /api/{type}s/{id}/commits/{rev}, /refs     list_repo_commits, list_repo_refs
    POST /api/{type}s/{id}/tag/{rev}, /branch/{b}   create_tag, create_branch
    GET/POST /api/spaces/{id}/variables             Space variables
    HEAD/GET /[{type}s/]{id}/resolve/{rev}/{path}   hf_hub_download: X-Repo-Commit, ETag; large
                                                    or binary files answer like LFS files on the
                                                    Hub: a 302 to a signed "CDN" URL on another
                                                    origin with X-Linked-Etag / X-Linked-Size
    HEAD/GET /cdn/{sha256}?sig=...                  the "CDN" (never needs the token)
    POST /[datasets/]{id}.git/info/lfs/objects/batch LFS upload actions (dataset shards: preupload
                                                    answers "lfs" for .parquet/.arrow in dataset repos)
    PUT  /lfs-upload/{sha256}?sig=...               the LFS object store (content checked by sha256)

Storage is in memory: content-addressed blobs (git blob sha1), commits with 40-hex ids,
branches and tags. Access control mirrors the Hub: private repositories answer 401/404
``RepoNotFound`` to strangers, gated ones answer ``GatedRepo`` on file downloads, writes need
a write token of the namespace's user or organisation; the ``X-Error-Code`` header is what
makes the client raise its typed errors. Faults (status codes, delays, dropped connections)
can be injected per path to test retries and timeouts. Only the standard library (plus
PyYAML for front matter) is used; the server binds 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

GITATTRIBUTES = (
    "*.bin filter=lfs diff=lfs merge=lfs -text\n"
    "*.pt filter=lfs diff=lfs merge=lfs -text\n"
    "*.pth filter=lfs diff=lfs merge=lfs -text\n"
    "*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
    "*.png filter=lfs diff=lfs merge=lfs -text\n"
).encode()
# Files served the way the Hub serves LFS files (redirect to the CDN with X-Linked-* headers).
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".png", ".jpg", ".jpeg", ".h5", ".msgpack", ".onnx")
LFS_MIN_SIZE = 10 * 1024 * 1024
# Files of dataset repositories uploaded through the LFS batch API (see :func:`_upload_mode`).
DATASET_LFS_SUFFIXES = (".parquet", ".arrow")
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}


def git_blob_oid(content: bytes) -> str:
    """The git object id of a blob (what the Hub reports as ``oid``/``ETag`` of regular files)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _is_lfs(path: str, content: bytes) -> bool:
    return path.lower().endswith(LFS_SUFFIXES) or len(content) >= LFS_MIN_SIZE or b"\0" in content[:8000]


def _upload_mode(repo_type: str, path: str) -> str:
    """What ``preupload`` answers: dataset shards go through LFS (as ``datasets.push_to_hub`` needs,
    since it deletes each shard once pre-uploaded); everything else travels inside the commit."""
    return "lfs" if repo_type == "dataset" and path.lower().endswith(DATASET_LFS_SUFFIXES) else "regular"


def _lfs_pointer(content: bytes) -> bytes:
    digest = hashlib.sha256(content).hexdigest()
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{digest}\nsize {len(content)}\n".encode()


def front_matter(text: str) -> dict[str, Any] | None:
    """The YAML metadata block at the top of a README (None when there is none)."""
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, flags=re.DOTALL)
    if not match:
        return None
    data = yaml.safe_load(match.group(1))
    return data if isinstance(data, dict) else None


@dataclass
class User:
    """An account a token authenticates as."""

    name: str
    orgs: tuple[str, ...] = ()
    write: bool = True

    def namespaces(self) -> set[str]:
        return {self.name, *self.orgs}


@dataclass
class Commit:
    oid: str
    parent: str | None
    files: dict[str, str]  # path -> blob oid
    title: str
    message: str
    author: str
    date: str


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool = False
    gated: bool | str = False
    gated_allowed: set[str] = field(default_factory=set)
    sdk: str | None = None
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)
    variables: dict[str, dict[str, Any]] = field(default_factory=dict)
    created: str = field(default_factory=_now)

    @property
    def namespace(self) -> str:
        return self.repo_id.split("/")[0]

    def resolve(self, revision: str) -> Commit | None:
        """A branch, a tag or a full commit id, as the Hub accepts them."""
        oid = self.branches.get(revision) or self.tags.get(revision)
        if oid is None and re.fullmatch(r"[0-9a-f]{40}", revision):
            oid = revision
        return self.commits.get(oid) if oid else None

    def head(self) -> Commit:
        return self.commits[self.branches["main"]]


@dataclass
class Fault:
    """A failure injected into requests whose method and path match."""

    method: str
    pattern: re.Pattern[str]
    status: int | None
    times: int
    delay: float
    drop: bool
    drop_after: bool
    echo_token: bool = False


@dataclass
class RequestRecord:
    """What the server saw of one request (the token itself is never stored)."""

    method: str
    path: str
    host: str
    authenticated: bool
    status: int = 0


class HubError(Exception):
    """An error answer: status, X-Error-Code and a message."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


class HubServer:
    """The Hub-compatible server; start it, point ``HF_ENDPOINT`` at :attr:`url`.

    Args:
        host: the address to bind; only loopback makes sense for tests.
        port: the port to bind (0: a free one).
        cdn_host: the host name LFS redirects point to. It must reach this same server but be a
            *different origin* from ``host`` (the client then treats it as the CDN: it does not
            follow the redirect on HEAD and sends no token to it), so ``localhost`` by default.
    """

    def __init__(self, host: str = "127.0.0.1", cdn_host: str = "localhost", port: int = 0) -> None:
        self.lock = threading.RLock()
        self.blobs: dict[str, bytes] = {}
        self.by_sha256: dict[str, str] = {}  # sha256 of content -> blob oid (the "LFS" index)
        self.repos: dict[tuple[str, str], Repo] = {}
        self.tokens: dict[str, User] = {}
        self.faults: list[Fault] = []
        self.requests: list[RequestRecord] = []
        self.in_flight = 0
        self.max_in_flight = 0  # most requests served at the same time (shows client concurrency)
        self._secret = uuid.uuid4().hex.encode()
        self._counter = 0
        handler = type("Handler", (_Handler,), {"hub": self})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self.cdn_url = f"http://{cdn_host}:{self.port}"
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> "HubServer":
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def reset(self) -> None:
        """Forget every repository, fault and request (tokens stay)."""
        with self.lock:
            self.blobs.clear()
            self.by_sha256.clear()
            self.repos.clear()
            self.faults.clear()
            self.requests.clear()
            self.max_in_flight = 0

    # --- test helpers ------------------------------------------------------------------

    def add_token(self, token: str, user: str, orgs: tuple[str, ...] = (), write: bool = True) -> None:
        self.tokens[token] = User(user, tuple(orgs), write)

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        with self.lock:
            return self.repos[(repo_type, repo_id)]

    def has_repo(self, repo_id: str, repo_type: str = "model") -> bool:
        with self.lock:
            return (repo_type, repo_id) in self.repos

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """The files of a repository at a revision, as bytes."""
        with self.lock:
            commit = self.repo(repo_id, repo_type).resolve(revision)
            assert commit is not None, f"no revision {revision} in {repo_id}"
            return {path: self.blobs[oid] for path, oid in commit.files.items()}

    def commit_count(self, repo_id: str, repo_type: str = "model") -> int:
        with self.lock:
            repo = self.repo(repo_id, repo_type)
            count, oid = 0, repo.branches["main"]
            while oid is not None:
                count, oid = count + 1, repo.commits[oid].parent
            return count

    def set_private(self, repo_id: str, private: bool = True, repo_type: str = "model") -> None:
        with self.lock:
            self.repo(repo_id, repo_type).private = private

    def set_gated(self, repo_id: str, gated: bool | str = "manual", allowed_users: tuple[str, ...] = (),
                  repo_type: str = "model") -> None:
        with self.lock:
            repo = self.repo(repo_id, repo_type)
            repo.gated, repo.gated_allowed = gated, set(allowed_users)

    def inject_fault(self, pattern: str, *, method: str = "*", status: int | None = 503, times: int = 1,
                     delay: float = 0.0, drop: bool = False, drop_after: bool = False,
                     echo_token: bool = False) -> None:
        """Make the next ``times`` requests whose path matches ``pattern`` (regex) fail.

        ``status`` answers with that HTTP status; ``drop`` closes the connection without an
        answer and without handling the request; ``drop_after`` handles it (a commit lands) but
        loses the answer; ``delay`` waits first (with ``status=None`` and no drop: a slow success).
        ``echo_token`` puts the request's bearer token in the error message (body and
        ``X-Error-Message``), as a careless proxy might: what the client must never repeat.
        """
        with self.lock:
            self.faults.append(Fault(method.upper(), re.compile(pattern), None if drop or drop_after else status,
                                     times, delay, drop, drop_after, echo_token))

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    def requests_matching(self, pattern: str, method: str | None = None) -> list[RequestRecord]:
        with self.lock:
            return [r for r in self.requests if re.search(pattern, r.path) and (method is None or r.method == method)]

    # --- storage -----------------------------------------------------------------------

    def _new_oid(self, *parts: str) -> str:
        self._counter += 1
        return hashlib.sha1("\0".join((*parts, str(self._counter), self._secret.decode())).encode()).hexdigest()

    def _store(self, content: bytes) -> str:
        oid = git_blob_oid(content)
        if oid not in self.blobs:
            self.blobs[oid] = content
            self.by_sha256[hashlib.sha256(content).hexdigest()] = oid
        return oid

    def _make_commit(self, repo: Repo, parent: str | None, files: dict[str, str], title: str, message: str,
                     author: str) -> Commit:
        oid = self._new_oid(repo.repo_id, parent or "", json.dumps(files, sort_keys=True), title)
        commit = Commit(oid, parent, dict(files), title, message, author, _now())
        repo.commits[oid] = commit
        return commit

    def create_repo(self, repo_id: str, *, repo_type: str = "model", private: bool = False, sdk: str | None = None,
                    author: str = "hub") -> Repo:
        """Create a repository directly (its first commit holds ``.gitattributes``, as on the Hub)."""
        with self.lock:
            repo = Repo(repo_type, repo_id, private=private, sdk=sdk)
            first = self._make_commit(repo, None, {".gitattributes": self._store(GITATTRIBUTES)},
                                      "initial commit", "", author)
            repo.branches["main"] = first.oid
            self.repos[(repo_type, repo_id)] = repo
            return repo

    def sign(self, sha256: str) -> str:
        return hmac.new(self._secret, sha256.encode(), hashlib.sha256).hexdigest()[:32]

    def blob_by_sha256(self, sha256: str) -> bytes | None:
        oid = self.by_sha256.get(sha256)
        return self.blobs[oid] if oid is not None else None


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"
    server_version = "TestHub/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
        pass

    # --- plumbing ----------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802
        self._handle("GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self._handle("HEAD")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._handle("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._handle("DELETE")

    def _body(self) -> bytes:
        return self._raw_body

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length) if length else b""
        if len(data) != length:
            raise ConnectionError("request body cut short")
        return data

    def _user(self) -> User | None:
        auth = self.headers.get("Authorization") or ""
        if not auth.lower().startswith("bearer "):
            return None
        token = auth.split(" ", 1)[1].strip()
        user = self.hub.tokens.get(token)
        if user is None:
            raise HubError(401, "Invalid username or password.", headers={
                "X-Error-Message": "Invalid credentials in Authorization header"})
        return user

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        self._status = status
        if self._swallow:  # injected "answer lost" fault: the work is done, the client hears nothing
            self.close_connection = True
            return
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)

    def _json(self, data: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), headers)

    def _handle(self, method: str) -> None:
        self._status = 0
        self._swallow = False
        # Read the whole body before anything can fail: on a kept-alive connection an unread
        # body would be taken for the next request.
        try:
            self._raw_body = self._read_body()
        except (ConnectionError, ValueError):
            self.close_connection = True
            return
        split = urlsplit(self.path)
        record = RequestRecord(method, split.path, self.headers.get("Host", ""),
                               bool(self.headers.get("Authorization")))
        with self.hub.lock:
            self.hub.requests.append(record)
            self.hub.in_flight += 1
            self.hub.max_in_flight = max(self.hub.max_in_flight, self.hub.in_flight)
            fault = next((f for f in self.hub.faults if f.times > 0 and f.pattern.search(split.path)
                          and f.method in ("*", method)), None)
            if fault is not None:
                fault.times -= 1
        try:
            if fault is not None:
                if fault.delay:
                    time.sleep(fault.delay)
                if fault.drop:
                    self.close_connection = True
                    return
                self._swallow = fault.drop_after
                if fault.status is not None:
                    message = f"injected fault {fault.status}"
                    if fault.echo_token:
                        message += f": request refused for token {self.headers.get('Authorization', '').removeprefix('Bearer ')}"
                    raise HubError(fault.status, message)
            self._route(method, split.path, parse_qs(split.query))
        except HubError as error:
            headers = dict(error.headers)
            if error.code:
                headers["X-Error-Code"] = error.code
            headers.setdefault("X-Error-Message", error.message)
            self._json({"error": error.message}, error.status, headers)
        except (ConnectionError, BrokenPipeError):
            self.close_connection = True
        except Exception as error:  # a bug in the server: answer 500 rather than hang the client
            self._json({"error": f"test hub server error: {error!r}"}, 500)
        finally:
            record.status = self._status
            with self.hub.lock:
                self.hub.in_flight -= 1

    # --- routing -----------------------------------------------------------------------

    def _route(self, method: str, path: str, query: dict[str, list[str]]) -> None:
        parts = [unquote(p) for p in path.strip("/").split("/")] if path.strip("/") else []
        if parts[:1] == ["cdn"] and len(parts) == 2 and method in ("GET", "HEAD"):
            return self._cdn(parts[1], query)
        if self._route_lfs(method, parts, query):
            return None
        if parts[:1] != ["api"]:
            # /[datasets|spaces/]ns/name/resolve/rev/path...
            repo_type = "model"
            if parts and parts[0] in ("datasets", "spaces"):
                repo_type, parts = REPO_TYPES[parts[0]], parts[1:]
            if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
                return self._resolve(repo_type, f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
            raise HubError(404, "Not found")
        rest = parts[1:]
        if rest == ["whoami-v2"] and method == "GET":
            return self._whoami()
        if rest == ["validate-yaml"] and method == "POST":
            return self._validate_yaml()
        if rest == ["repos", "create"] and method == "POST":
            return self._create_repo()
        if rest == ["repos", "delete"] and method == "DELETE":
            return self._delete_repo()
        if len(rest) >= 3 and rest[0] in REPO_TYPES:
            repo_type, repo_id, tail = REPO_TYPES[rest[0]], f"{rest[1]}/{rest[2]}", rest[3:]
            return self._repo_api(method, repo_type, repo_id, tail, query)
        raise HubError(404, "Not found")

    def _repo_api(self, method: str, repo_type: str, repo_id: str, tail: list[str],
                  query: dict[str, list[str]]) -> None:
        if not tail and method == "GET":
            return self._info(repo_type, repo_id, "main", query)
        action = tail[0] if tail else ""
        if action == "revision" and len(tail) >= 2 and method == "GET":
            return self._info(repo_type, repo_id, "/".join(tail[1:]), query)
        if action == "tree" and len(tail) >= 2 and method == "GET":
            return self._tree(repo_type, repo_id, tail[1], "/".join(tail[2:]), query)
        if action == "paths-info" and len(tail) == 2 and method == "POST":
            return self._paths_info(repo_type, repo_id, tail[1])
        if action == "preupload" and len(tail) == 2 and method == "POST":
            return self._preupload(repo_type, repo_id, tail[1])
        if action == "commit" and len(tail) == 2 and method == "POST":
            return self._commit(repo_type, repo_id, tail[1], query)
        if action == "commits" and len(tail) == 2 and method == "GET":
            return self._commits(repo_type, repo_id, tail[1])
        if action == "refs" and method == "GET":
            return self._refs(repo_type, repo_id)
        if action in ("tag", "branch") and len(tail) == 2 and method == "POST":
            return self._create_ref(action, repo_type, repo_id, tail[1])
        if action == "settings" and method == "PUT":
            return self._settings(repo_type, repo_id)
        if action == "variables" and repo_type == "space" and method in ("GET", "POST"):
            return self._variables(method, repo_id)
        raise HubError(404, "Not found")

    # --- access control ----------------------------------------------------------------

    def _readable(self, repo_type: str, repo_id: str) -> tuple[Repo, User | None]:
        user = self._user()
        repo = self.hub.repos.get((repo_type, repo_id))
        visible = repo is not None and (not repo.private or (user is not None and repo.namespace in user.namespaces()))
        if not visible:
            # As on the Hub: 401 to anonymous callers (missing and private look the same), 404 otherwise.
            raise HubError(401 if user is None else 404, "Repository not found", "RepoNotFound")
        assert repo is not None
        return repo, user

    def _check_gate(self, repo: Repo, user: User | None) -> None:
        if not repo.gated:
            return
        if user is None:
            raise HubError(401, "Access to this repository is restricted: you must be authenticated.", "GatedRepo")
        if repo.namespace not in user.namespaces() and user.name not in repo.gated_allowed:
            raise HubError(403, f"Access to gated repo {repo.repo_id} is restricted; ask for access.", "GatedRepo")

    def _writable(self, repo_type: str, repo_id: str | None = None, namespace: str | None = None) -> User:
        user = self._user()
        if user is None:
            raise HubError(401, "You must be authenticated to write.", headers={
                "X-Error-Message": "Invalid credentials in Authorization header"})
        namespace = namespace or (repo_id or "").split("/")[0]
        if repo_id is not None:
            self._readable(repo_type, repo_id)
        if not user.write or namespace not in user.namespaces():
            raise HubError(403, f"You don't have the rights to write to {namespace}")
        return user

    def _revision(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    # --- endpoints ---------------------------------------------------------------------

    def _whoami(self) -> None:
        user = self._user()
        if user is None:
            raise HubError(401, "Invalid username or password.", headers={
                "X-Error-Message": "Invalid credentials in Authorization header"})
        self._json({
            "type": "user", "id": hashlib.md5(user.name.encode()).hexdigest()[:24], "name": user.name,
            "fullname": user.name, "email": None, "isPro": False,
            "orgs": [{"type": "org", "name": org, "fullname": org} for org in user.orgs],
            "auth": {"type": "access_token", "accessToken": {
                "displayName": "test", "role": "write" if user.write else "read"}},
        })

    def _validate_yaml(self) -> None:
        payload = json.loads(self._body() or b"{}")
        content = payload.get("content", "")
        try:
            meta = front_matter(content)
        except yaml.YAMLError as error:
            return self._json({"errors": [{"message": f"Invalid YAML: {error}"}], "warnings": []}, 400)
        errors = []
        if meta is not None:
            if "license" in meta and not isinstance(meta["license"], str):
                errors.append({"message": "\"license\" must be a string"})
            base = meta.get("base_model")
            if base is not None and not (isinstance(base, str) or
                                         (isinstance(base, list) and all(isinstance(b, str) for b in base))):
                errors.append({"message": "\"base_model\" must be a string or a list of strings"})
            if "tags" in meta and not isinstance(meta["tags"], list):
                errors.append({"message": "\"tags\" must be an array"})
        warnings = [] if meta else [{"message": "empty or missing yaml metadata in repo card"}]
        self._json({"errors": errors, "warnings": warnings}, 400 if errors else 200)

    def _create_repo(self) -> None:
        payload = json.loads(self._body() or b"{}")
        repo_type = payload.get("type") or "model"
        user = self._user()
        if user is None:
            raise HubError(401, "You must be authenticated to create a repo.", headers={
                "X-Error-Message": "Invalid credentials in Authorization header"})
        namespace = payload.get("organization") or user.name
        self._writable(repo_type, namespace=namespace)
        repo_id = f"{namespace}/{payload['name']}"
        url = f"{self.hub.url}/{URL_PREFIX[repo_type]}{repo_id}"
        with self.hub.lock:
            if (repo_type, repo_id) in self.hub.repos:  # the Hub answers 409 with the repo's url
                return self._json({"error": "You already created this repo", "url": url}, 409,
                                  {"X-Error-Message": "You already created this repo"})
            if repo_type == "space" and payload.get("sdk") not in ("gradio", "streamlit", "docker", "static"):
                raise HubError(400, "A Space needs an sdk")
            private = payload.get("visibility") == "private" or bool(payload.get("private"))
            repo = self.hub.create_repo(repo_id, repo_type=repo_type, private=private, sdk=payload.get("sdk"),
                                        author=user.name)
            for variable in payload.get("variables") or []:
                repo.variables[variable["key"]] = {"value": variable["value"],
                                                   "description": variable.get("description"), "updatedAt": _now()}
        self._json({"url": url, "name": repo_id, "id": hashlib.md5(repo_id.encode()).hexdigest()[:24]})

    def _delete_repo(self) -> None:
        payload = json.loads(self._body() or b"{}")
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization')}/{payload['name']}"
        self._writable(repo_type, repo_id)
        with self.hub.lock:
            del self.hub.repos[(repo_type, repo_id)]
        self._json({})

    def _settings(self, repo_type: str, repo_id: str) -> None:
        payload = json.loads(self._body() or b"{}")
        self._writable(repo_type, repo_id)
        with self.hub.lock:
            repo = self.hub.repos[(repo_type, repo_id)]
            if "private" in payload:
                repo.private = bool(payload["private"])
            if "gated" in payload:
                repo.gated = payload["gated"] or False
        self._json({})

    def _file_entry(self, path: str, oid: str, expand: bool = False, commit: Commit | None = None) -> dict[str, Any]:
        content = self.hub.blobs[oid]
        entry: dict[str, Any] = {"type": "file", "oid": oid, "size": len(content), "path": path}
        if _is_lfs(path, content):
            pointer = _lfs_pointer(content)
            entry["oid"] = git_blob_oid(pointer)
            entry["lfs"] = {"oid": hashlib.sha256(content).hexdigest(), "size": len(content),
                            "pointerSize": len(pointer)}
        if expand and commit is not None:
            entry["lastCommit"] = {"id": commit.oid, "title": commit.title, "date": commit.date}
        return entry

    def _info(self, repo_type: str, repo_id: str, revision: str, query: dict[str, list[str]]) -> None:
        with self.hub.lock:
            repo, _ = self._readable(repo_type, repo_id)
            commit = self._revision(repo, revision)
            blobs = query.get("blobs", ["false"])[0].lower() in ("1", "true")
            siblings = []
            for path, oid in sorted(commit.files.items()):
                sibling: dict[str, Any] = {"rfilename": path}
                if blobs:
                    entry = self._file_entry(path, oid)
                    sibling.update(size=entry["size"], blobId=entry["oid"])
                    if "lfs" in entry:
                        sibling["lfs"] = {"sha256": entry["lfs"]["oid"], "size": entry["lfs"]["size"],
                                          "pointerSize": entry["lfs"]["pointerSize"]}
                siblings.append(sibling)
            card: dict[str, Any] | None = None
            if "README.md" in commit.files:
                try:
                    card = front_matter(self.hub.blobs[commit.files["README.md"]].decode("utf-8", "replace"))
                except yaml.YAMLError:
                    card = None
            info: dict[str, Any] = {
                "_id": hashlib.md5(repo_id.encode()).hexdigest()[:24], "id": repo_id, "author": repo.namespace,
                "sha": commit.oid, "lastModified": commit.date, "createdAt": repo.created,
                "private": repo.private, "gated": repo.gated, "disabled": False, "likes": 0,
                "tags": list((card or {}).get("tags") or []), "siblings": siblings,
            }
            if card:
                info["cardData"] = card
            if repo_type == "model":
                info.update(downloads=0, library_name=(card or {}).get("library_name"),
                            pipeline_tag=(card or {}).get("pipeline_tag"), modelId=repo_id)
            if repo_type == "space":
                info.update(sdk=repo.sdk, subdomain=repo_id.replace("/", "-"),
                            runtime={"stage": "BUILDING", "hardware": {"current": None, "requested": "cpu-basic"}})
        self._json(info)

    def _tree(self, repo_type: str, repo_id: str, revision: str, prefix: str, query: dict[str, list[str]]) -> None:
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        expand = query.get("expand", ["false"])[0].lower() in ("1", "true")
        with self.hub.lock:
            repo, _ = self._readable(repo_type, repo_id)
            commit = self._revision(repo, revision)
            prefix = prefix.strip("/")
            base = f"{prefix}/" if prefix else ""
            entries: dict[str, dict[str, Any]] = {}
            for path, oid in sorted(commit.files.items()):
                if not path.startswith(base):
                    continue
                relative = path[len(base):].split("/")
                # Non-recursive listings show the first level only: files, and folders as folders.
                depth = len(relative) - 1 if recursive else min(1, len(relative) - 1)
                for level in range(depth):
                    folder = base + "/".join(relative[: level + 1])
                    entries.setdefault(folder, {"type": "directory", "size": 0, "path": folder,
                                                "oid": hashlib.sha1(folder.encode()).hexdigest()})
                if recursive or len(relative) == 1:
                    entries[path] = self._file_entry(path, oid, expand, commit)
            if prefix and not entries:
                raise HubError(404, f"{prefix} does not exist on {revision}", "EntryNotFound")
        self._json(list(entries.values()))

    def _paths_info(self, repo_type: str, repo_id: str, revision: str) -> None:
        form = parse_qs(self._body().decode())
        paths = form.get("paths", [])
        expand = form.get("expand", ["false"])[0].lower() in ("1", "true")
        with self.hub.lock:
            repo, _ = self._readable(repo_type, repo_id)
            commit = self._revision(repo, revision)
            found = []
            for wanted in paths:
                wanted = wanted.strip("/")
                if wanted in commit.files:
                    found.append(self._file_entry(wanted, commit.files[wanted], expand, commit))
                elif any(p.startswith(wanted + "/") for p in commit.files):
                    found.append({"type": "directory", "size": 0, "path": wanted,
                                  "oid": hashlib.sha1(wanted.encode()).hexdigest()})
        self._json(found)

    def _preupload(self, repo_type: str, repo_id: str, revision: str) -> None:
        payload = json.loads(self._body() or b"{}")
        self._writable(repo_type, repo_id)
        with self.hub.lock:
            repo = self.hub.repos[(repo_type, repo_id)]
            commit = repo.resolve(revision)
            current = commit.files if commit else {}
            files = [{"path": f["path"], "uploadMode": _upload_mode(repo_type, f["path"]), "shouldIgnore": False,
                      "oid": current.get(f["path"])} for f in payload.get("files", [])]
            head = commit.oid if commit else None
        self._json({"files": files, "commitOid": head})

    def _commit(self, repo_type: str, repo_id: str, revision: str, query: dict[str, list[str]]) -> None:
        body = self._body()  # read in full before anything: a cut-off upload never becomes a commit
        user = self._writable(repo_type, repo_id)
        if query.get("create_pr"):
            raise HubError(400, "pull requests are not supported by the test server")
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "the commit payload must start with a header line")
        header = lines[0]["value"]
        with self.hub.lock:
            repo = self.hub.repos[(repo_type, repo_id)]
            if revision not in repo.branches:
                raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            head = repo.commits[repo.branches[revision]]
            parent = header.get("parentCommit")
            if parent is not None and parent != head.oid:
                raise HubError(412, f"A commit has happened since {parent}. Please refresh and try again.")
            files = dict(head.files)
            for line in lines[1:]:
                key, value = line.get("key"), line.get("value", {})
                path = str(value.get("path", "")).strip("/")
                if not path or ".." in path.split("/") or path.startswith(".git/"):
                    raise HubError(400, f"invalid path {path!r}")
                if key == "file":
                    if value.get("encoding") != "base64":
                        raise HubError(400, "only base64 file content is supported")
                    files[path] = self.hub._store(base64.b64decode(value["content"]))
                elif key == "lfsFile":
                    content = self.hub.blob_by_sha256(value.get("oid", ""))
                    if content is None:
                        raise HubError(400, f"LFS object {value.get('oid')} was never uploaded")
                    files[path] = self.hub._store(content)
                elif key == "deletedFile":
                    if path not in files:
                        raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                    del files[path]
                elif key == "deletedFolder":
                    for existing in [p for p in files if p.startswith(path + "/")]:
                        del files[existing]
                else:
                    raise HubError(400, f"unknown commit operation {key!r}")
            commit = self.hub._make_commit(repo, head.oid, files, header.get("summary", ""),
                                           header.get("description", ""), user.name)
            repo.branches[revision] = commit.oid
        url = f"{self.hub.url}/{URL_PREFIX[repo_type]}{repo_id}/commit/{commit.oid}"
        self._json({"success": True, "commitOid": commit.oid, "commitUrl": url, "hookOutput": "",
                    "pullRequestUrl": None})

    def _commits(self, repo_type: str, repo_id: str, revision: str) -> None:
        with self.hub.lock:
            repo, _ = self._readable(repo_type, repo_id)
            commit: Commit | None = self._revision(repo, revision)
            history = []
            while commit is not None:
                history.append({"id": commit.oid, "title": commit.title, "message": commit.message,
                                "authors": [{"user": commit.author}], "date": commit.date})
                commit = repo.commits.get(commit.parent) if commit.parent else None
        self._json(history)

    def _refs(self, repo_type: str, repo_id: str) -> None:
        with self.hub.lock:
            repo, _ = self._readable(repo_type, repo_id)
            refs = {
                "branches": [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": o} for n, o in repo.branches.items()],
                "tags": [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": o} for n, o in repo.tags.items()],
                "converts": [], "pullRequests": [],
            }
        self._json(refs)

    def _create_ref(self, kind: str, repo_type: str, repo_id: str, name_or_rev: str) -> None:
        payload = json.loads(self._body() or b"{}")
        self._writable(repo_type, repo_id)
        with self.hub.lock:
            repo = self.hub.repos[(repo_type, repo_id)]
            if kind == "tag":  # POST .../tag/{revision} {"tag": name}
                target, name, refs = self._revision(repo, name_or_rev), payload["tag"], repo.tags
            else:  # POST .../branch/{name} {"startingPoint": revision}
                target, name, refs = self._revision(repo, payload.get("startingPoint") or "main"), name_or_rev, repo.branches
            if name in refs:
                raise HubError(409, f"{kind} {name} already exists")
            refs[name] = target.oid
        self._json({})

    def _variables(self, method: str, repo_id: str) -> None:
        if method == "POST":
            payload = json.loads(self._body() or b"{}")
            self._writable("space", repo_id)
            with self.hub.lock:
                self.hub.repos[("space", repo_id)].variables[payload["key"]] = {
                    "value": payload["value"], "description": payload.get("description"), "updatedAt": _now()}
        else:
            self._writable("space", repo_id)
        with self.hub.lock:
            variables = dict(self.hub.repos[("space", repo_id)].variables)
        self._json(variables)

    def _resolve(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        with self.hub.lock:
            repo, user = self._readable(repo_type, repo_id)
            commit = self._revision(repo, revision)
            self._check_gate(repo, user)
            if path not in commit.files:
                raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
            content = self.hub.blobs[commit.files[path]]
        headers = {"X-Repo-Commit": commit.oid, "Accept-Ranges": "bytes"}
        if _is_lfs(path, content):
            sha256 = hashlib.sha256(content).hexdigest()
            headers.update({
                "ETag": f'"{git_blob_oid(_lfs_pointer(content))}"', "X-Linked-Etag": f'"{sha256}"',
                "X-Linked-Size": str(len(content)),
                "Location": f"{self.hub.cdn_url}/cdn/{sha256}?sig={self.hub.sign(sha256)}",
            })
            return self._send(302, b"", headers)
        headers["ETag"] = f'"{commit.files[path]}"'
        self._send_content(content, headers)

    def _send_content(self, content: bytes, headers: dict[str, str]) -> None:
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", "") or "")
        if match:
            start = int(match.group(1))
            end = int(match.group(2)) if match.group(2) else len(content) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
            return self._send(206, content[start:end + 1], headers, "application/octet-stream")
        self._send(200, content, headers, "application/octet-stream")

    def _cdn(self, sha256: str, query: dict[str, list[str]]) -> None:
        if not hmac.compare_digest(query.get("sig", [""])[0], self.hub.sign(sha256)):
            raise HubError(403, "Signature does not match")
        with self.hub.lock:
            content = self.hub.blob_by_sha256(sha256)
        if content is None:
            raise HubError(404, "No such object")
        self._send_content(content, {"ETag": f'"{sha256}"'})

    # --- LFS uploads (git-lfs batch API, as huggingface_hub's non-Xet upload path uses it) ----

    def _route_lfs(self, method: str, parts: list[str], query: dict[str, list[str]]) -> bool:
        """Handle the LFS routes; False when ``parts`` is none of them.

        ``POST /[datasets/|spaces/]ns/name.git/info/lfs/objects/batch`` answers upload actions;
        ``PUT /lfs-upload/{sha256}?sig=...`` receives the content (stored by sha256, so a commit's
        ``lfsFile`` operation finds it).
        """
        if parts[:1] == ["lfs-upload"] and len(parts) == 2 and method == "PUT":
            self._lfs_upload(parts[1], query)
            return True
        rest, repo_type = parts, "model"
        if rest and rest[0] in ("datasets", "spaces"):
            repo_type, rest = REPO_TYPES[rest[0]], rest[1:]
        if (len(rest) == 6 and rest[1].endswith(".git") and rest[2:] == ["info", "lfs", "objects", "batch"]
                and method == "POST"):
            self._lfs_batch(repo_type, f"{rest[0]}/{rest[1][:-4]}")
            return True
        return False

    def _lfs_batch(self, repo_type: str, repo_id: str) -> None:
        payload = json.loads(self._body() or b"{}")
        self._writable(repo_type, repo_id)
        if payload.get("operation") != "upload":
            raise HubError(400, "only LFS uploads are supported by the test server")
        objects = []
        for item in payload.get("objects", []):
            oid, size = str(item["oid"]), int(item["size"])
            entry: dict[str, Any] = {"oid": oid, "size": size}
            with self.hub.lock:
                known = self.hub.blob_by_sha256(oid) is not None
            if not known:  # already-stored objects get no action, as on the Hub
                entry["actions"] = {"upload": {
                    "href": f"{self.hub.url}/lfs-upload/{oid}?sig={self.hub.sign(oid)}", "header": {}}}
            objects.append(entry)
        self._json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def _lfs_upload(self, sha256: str, query: dict[str, list[str]]) -> None:
        if not hmac.compare_digest(query.get("sig", [""])[0], self.hub.sign(sha256)):
            raise HubError(403, "Signature does not match")
        content = self._body()
        if hashlib.sha256(content).hexdigest() != sha256:
            raise HubError(400, "uploaded content does not match its sha256")
        with self.hub.lock:
            self.hub._store(content)
        self._send(200, b"")
