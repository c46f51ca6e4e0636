"""An in-memory Hugging Face Hub for tests.

`FakeHub` serves, on 127.0.0.1, the part of the Hub HTTP API that the
`huggingface_hub` client (2.4.0) calls to create repos and branches, commit
regular and LFS files, list refs/trees/commits and download files. It is a test
double written against the client's code and the Hub's documented contract; it
keeps everything in memory and forgets it on `stop()`.

What a test must do on the client side (see tests/test_hubserver.py):

* set `huggingface_hub.constants.HF_HUB_OFFLINE = False` (tests/conftest.py turns
  offline mode on, and the client reads the flag from `constants` at call time);
* set `huggingface_hub.constants.HF_HUB_DISABLE_XET = True`: with `hf_xet`
  installed the client picks the Xet upload protocol by itself, before asking
  the server anything, and this server only speaks Git LFS "basic". It never
  advertises Xet (no `X-Xet-*` headers, `"transfer": "basic"` in LFS batch
  answers) and answers the Xet token routes with 501;
* pass `endpoint=hub.endpoint` to `HfApi`/`hf_hub_download`/`snapshot_download`.

Hub behaviours reproduced:

* `create_repo` answers 409 (with the repo `url`) when the repo exists; a new
  repo has a `main` branch whose first commit holds a `.gitattributes` with the
  usual LFS patterns.
* Preupload decides "lfs" for files of at least `lfs_threshold` bytes (1 MiB),
  files whose 512-byte sample contains a NUL byte, and files matched by a
  `filter=lfs` pattern of the revision's `.gitattributes`; "regular" otherwise.
  It returns the current `oid` of each existing path (sha256 for LFS files,
  git blob sha1 for regular ones), as the client uses it to drop no-op files.
* The LFS batch endpoint offers the "basic" transfer only: objects already
  stored in the repo come back without actions (the client then skips them),
  others get a presigned-style PUT href (no auth header needed, like S3) and a
  verify action. The PUT checks size and sha256 before storing anything.
* Commits (ndjson) are atomic: every operation is validated against a copy of
  the branch head and the branch moves only if all of them apply. Commit ids
  are real git commit hashes over real git tree hashes. `parentCommit` that is
  not the branch head (a prefix of it is accepted) gives 412 "A commit has
  happened since. Please refresh and try again.". Deleting a missing file or
  folder gives 404 EntryNotFound ("A file with this name doesn't exist").
* Resolve (HEAD/GET) returns `X-Repo-Commit`, `ETag` (git blob id), and for LFS
  files `X-Linked-Etag` (sha256) and `X-Linked-Size`; LFS content is served
  directly (no CDN redirect). GET honours a single `Range` (206/416).
* Errors carry `X-Error-Code` (RepoNotFound / RevisionNotFound / EntryNotFound)
  and `X-Error-Message`, plus a JSON body `{"error": ...}`.
* Write endpoints need `Authorization: Bearer <any non-empty token>` (401).

Fault injection: `fail_next` (503 for the next N requests, optionally only
those matching `fail_filter(method, path)`), `fail_uploads_after(n)` (an LFS PUT
drops the connection after n body bytes; nothing is stored) and
`fail_downloads_after(n)` (a resolve GET drops after n body bytes, so the client
resumes with a Range request).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

USER = "fake-user"
MiB = 1024 * 1024
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}

# The LFS patterns a new Hub repo starts with (a representative subset).
DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in (
        "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lfs.*",
        "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb",
        "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors", "saved_model/**/*", "*.tar.*",
        "*.tar", "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst", "*tfevents*",
    )
)

_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_SHORT_SHA_RE = re.compile(r"[0-9a-f]{7,40}")
_RANGE_RE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", re.IGNORECASE)


# --------------------------------------------------------------------------- git objects


def _git_oid(kind: str, body: bytes) -> str:
    return hashlib.sha1(f"{kind} {len(body)}\0".encode() + body).hexdigest()


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass(frozen=True)
class _Blob:
    """A file at some commit: regular content, or a pointer to an LFS object of the repo."""

    size: int
    oid: str  # git blob id (of the content, or of the LFS pointer file)
    sha256: str | None = None  # LFS object id, for LFS files
    data: bytes | None = None  # content, for regular files

    @staticmethod
    def regular(data: bytes) -> _Blob:
        return _Blob(size=len(data), oid=_git_oid("blob", data), data=data)

    @staticmethod
    def lfs(sha256: str, size: int) -> _Blob:
        return _Blob(size=size, oid=_git_oid("blob", _lfs_pointer(sha256, size)), sha256=sha256)

    @property
    def pointer_size(self) -> int:
        return len(_lfs_pointer(self.sha256 or "", self.size))


def _parent_dirs(path: str) -> list[str]:
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


def _tree_oids(files: dict[str, _Blob]) -> dict[str, str]:
    """Git tree id of every directory ("" is the root), computed bottom-up."""
    children: dict[str, dict[str, str | None]] = {"": {}}  # dir -> {name: blob oid, or None for a subdir}
    for path, blob in files.items():
        parent = ""
        for d in _parent_dirs(path):
            children.setdefault(d, {})
            children[parent][d.rsplit("/", 1)[-1]] = None
            parent = d
        children[parent][path.rsplit("/", 1)[-1]] = blob.oid
    oids: dict[str, str] = {}
    for d in sorted(children, key=lambda p: p.count("/") if p else -1, reverse=True):
        entries = []
        for name, blob_oid in children[d].items():
            sub = f"{d}/{name}" if d else name
            mode, oid, sort_key = (b"100644", blob_oid, name) if blob_oid else (b"40000", oids[sub], name + "/")
            entries.append((sort_key, mode + b" " + name.encode() + b"\0" + bytes.fromhex(oid)))
        oids[d] = _git_oid("tree", b"".join(e for _, e in sorted(entries)))
    return oids


@dataclass
class _Commit:
    id: str
    parent: str | None
    title: str
    description: str
    date: datetime
    files: dict[str, _Blob]
    added: list[str]  # paths added or modified, relative to the parent
    deleted: list[str]
    _trees: dict[str, str] | None = field(default=None, repr=False)

    def dirs(self) -> set[str]:
        return {d for path in self.files for d in _parent_dirs(path)}

    def tree_oid(self, path: str = "") -> str:
        if self._trees is None:
            self._trees = _tree_oids(self.files)
        return self._trees[path]


@dataclass
class _Repo:
    type: str
    id: str
    private: bool
    created: datetime
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, _Commit] = field(default_factory=dict)
    lfs: dict[str, bytes] = field(default_factory=dict)  # sha256 -> content


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.000Z")


# --------------------------------------------------------------------------- HTTP plumbing


class _HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None, body: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers = headers or {}
        self.body = body


class _Dropped(Exception):
    """The connection is cut on purpose (fault injection): send nothing more.

    `reset` closes with a TCP reset (an upload cut mid-body); otherwise the server
    closes normally, so a response cut mid-body reads as an incomplete message.
    """

    def __init__(self, reset: bool):
        super().__init__()
        self.reset = reset


class _Request:
    def __init__(self, handler: BaseHTTPRequestHandler):
        self.h = handler
        self.method = handler.command
        split = urlsplit(handler.path)
        self.raw_path = split.path
        self.query = parse_qs(split.query, keep_blank_values=True)
        self.segments = [unquote(s) for s in split.path.split("/")[1:]]
        self._body: bytes | None = None

    def header(self, name: str) -> str | None:
        return self.h.headers.get(name)

    def param(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def flag(self, name: str) -> bool:
        return (self.param(name) or "").lower() in ("1", "true", "yes")

    def _chunks(self):
        """Yield the request body as it arrives (Content-Length or chunked)."""
        rfile = self.h.rfile
        if (self.header("Transfer-Encoding") or "").lower() == "chunked":
            while True:
                size = int(rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                yield rfile.read(size)
                rfile.readline()
        else:
            left = int(self.header("Content-Length") or 0)
            while left > 0:
                chunk = rfile.read(min(left, 1 << 20))
                if not chunk:
                    return
                left -= len(chunk)
                yield chunk

    def body(self, drop_after: int | None = None) -> bytes:
        if self._body is None:
            buf = bytearray()
            for chunk in self._chunks():
                buf += chunk
                if drop_after is not None and len(buf) >= drop_after:
                    raise _Dropped(reset=True)
            if drop_after is not None:
                raise _Dropped(reset=True)
            self._body = bytes(buf)
        return self._body

    def json(self) -> Any:
        try:
            return json.loads(self.body() or b"null")
        except ValueError:
            raise _HubError(400, "Invalid JSON body") from None

    def token(self) -> str | None:
        scheme, _, token = (self.header("Authorization") or "").partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)

    def finish(self) -> None:
        self.server.track(self.connection, False)
        super().finish()

    def _dispatch(self) -> None:
        self.server.hub._handle(self)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, hub: FakeHub):
        self.hub = hub
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def track(self, conn: socket.socket, alive: bool) -> None:
        with self._conns_lock:
            (self._conns.add if alive else self._conns.discard)(conn)

    def close_connections(self) -> None:
        with self._conns_lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


# --------------------------------------------------------------------------- the fake Hub


class FakeHub:
    """In-memory Hugging Face Hub served over HTTP on 127.0.0.1 (see the module docstring)."""

    def __init__(self, *, lfs_threshold: int = MiB, tree_page_size: int = 1000, verify_lfs: bool = True):
        self.lfs_threshold = lfs_threshold
        self.tree_page_size = tree_page_size
        self.verify_lfs = verify_lfs
        self.endpoint = ""
        self.requests: list[tuple[str, str]] = []  # (method, path as sent, still percent-encoded) of every request
        self.request_log: list[dict[str, Any]] = []  # the same with query, Range header, auth and answer status
        self.lfs_uploads: list[str] = []  # oids of LFS objects actually stored by a PUT
        self.lfs_aborted: list[str] = []  # oids of LFS PUTs cut by fail_uploads_after
        self.fail_next = 0
        self.fail_status = 503
        self.fail_filter: Callable[[str, str], bool] | None = None
        self._drop_uploads: list[int] = []
        self._drop_downloads: list[int] = []
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._lock = threading.RLock()
        self._secret = secrets.token_bytes(16)
        self._clock = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._server = _Server(self)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="FakeHub", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.close_connections()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FakeHub:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ test helpers

    def fail_uploads_after(self, n_bytes: int, times: int = 1) -> None:
        """The next `times` LFS PUTs read `n_bytes` of the body, then drop the connection (nothing is stored)."""
        with self._lock:
            self._drop_uploads += [n_bytes] * times

    def settled(self, timeout: float = 5.0) -> list[dict]:
        """The request log once every request has its status: a handler records
        it after the response is written, so a fast client can finish first."""
        deadline = time.monotonic() + timeout
        while any(e["status"] is None for e in self.request_log) and time.monotonic() < deadline:
            threading.Event().wait(0.01)  # not time.sleep: tests patch it to count backoff sleeps
        return self.request_log

    def fail_downloads_after(self, n_bytes: int, times: int = 1) -> None:
        """The next `times` resolve GETs send the headers and `n_bytes` of the body, then drop the connection."""
        with self._lock:
            self._drop_downloads += [n_bytes] * times

    def commits(self, repo_id: str, branch: str = "main", repo_type: str = "model") -> list[dict[str, Any]]:
        """First-parent history of `branch`, oldest first (newest last)."""
        with self._lock:
            repo = self._repo(repo_type, repo_id)
            out, cid = [], repo.branches[branch]
            while cid is not None:
                c = repo.commits[cid]
                out.append({"id": c.id, "parent": c.parent, "message": c.title, "description": c.description,
                            "date": c.date, "added": list(c.added), "deleted": list(c.deleted)})
                cid = c.parent
            return out[::-1]

    def head(self, repo_id: str, branch: str = "main", repo_type: str = "model") -> str:
        with self._lock:
            return self._repo(repo_type, repo_id).branches[branch]

    def files(self, repo_id: str, branch: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """The content of every file at the head of `branch`."""
        with self._lock:
            repo = self._repo(repo_type, repo_id)
            commit = repo.commits[repo.branches[branch]]
            return {p: self._content(repo, b) for p, b in sorted(commit.files.items())}

    # ------------------------------------------------------------------ request handling

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        req = _Request(h)
        entry = {"method": req.method, "path": req.raw_path, "query": req.query, "range": req.header("Range"),
                 "auth": req.token() is not None, "status": None}
        with self._lock:
            self.requests.append((req.method, req.raw_path))
            self.request_log.append(entry)
            inject = self.fail_next > 0 and (self.fail_filter is None or self.fail_filter(req.method, req.raw_path))
            if inject:
                self.fail_next -= 1
        try:
            if inject:
                req.body()  # drain, so the keep-alive connection stays usable
                raise _HubError(self.fail_status, "Service Unavailable (injected by FakeHub)")
            status = self._route(req)
            req.body()  # a body nobody read must not be taken for the next request on this connection
        except _Dropped as e:
            entry["status"] = "dropped"
            h.close_connection = True
            if e.reset:
                h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return
        except _HubError as e:
            try:
                req.body()
            except _Dropped:  # pragma: no cover - never armed outside _route
                pass
            headers = dict(e.headers)
            if e.code:
                headers["X-Error-Code"] = e.code
            headers["X-Error-Message"] = e.message.encode("ascii", "replace").decode()
            status = self._send(req, e.status, e.body or {"error": e.message}, headers)
        except Exception as e:  # a bug in the double answers 500 rather than hanging the client
            h.close_connection = True
            status = self._send(req, 500, {"error": f"FakeHub internal error: {e!r}"})
        entry["status"] = status

    def _send(self, req: _Request, status: int, body: Any = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json; charset=utf-8", length: int | None = None) -> int:
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
        h = req.h
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body) if length is None else length))
        h.send_header("X-Request-Id", f"fakehub-{uuid.uuid4().hex[:16]}")
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        if req.method != "HEAD" and body:
            h.wfile.write(body)
        return status

    def _route(self, req: _Request) -> int:
        s, m = req.segments, req.method
        if s[:1] == ["api"]:
            if s[1:] == ["repos", "create"] and m == "POST":
                return self._create_repo(req)
            if s[1:] == ["repos", "delete"] and m == "DELETE":
                return self._delete_repo(req)
            if s[1:] == ["whoami-v2"] and m == "GET":
                return self._whoami(req)
            if s[1:] == ["validate-yaml"] and m == "POST":
                req.body()
                return self._send(req, 200, {"errors": [], "warnings": []})
            if len(s) >= 4 and s[1] in REPO_TYPES:
                return self._repo_api(req, REPO_TYPES[s[1]], f"{s[2]}/{s[3]}", s[4:])
        if s[:1] == ["lfs-upload"] and len(s) == 5 and m == "PUT":
            return self._lfs_put(req, s[1], f"{s[2]}/{s[3]}", s[4])
        if s[:1] == ["lfs-verify"] and len(s) == 4 and m == "POST":
            return self._lfs_verify(req, s[1], f"{s[2]}/{s[3]}")
        repo_type = "model"
        if s[:1] and s[0] in ("datasets", "spaces") and len(s) >= 3 and (s[2].endswith(".git") or s[3:4] == ["resolve"]):
            repo_type, s = REPO_TYPES[s[0]], s[1:]
        if len(s) == 6 and s[1].endswith(".git") and s[2:] == ["info", "lfs", "objects", "batch"] and m == "POST":
            return self._lfs_batch(req, repo_type, f"{s[0]}/{s[1][:-4]}")
        if len(s) >= 5 and s[2] == "resolve" and m in ("GET", "HEAD"):
            return self._resolve_file(req, repo_type, f"{s[0]}/{s[1]}", s[3], "/".join(s[4:]))
        raise _HubError(404, f"FakeHub has no route for {m} {req.raw_path}")

    def _repo_api(self, req: _Request, repo_type: str, repo_id: str, rest: list[str]) -> int:
        m = req.method
        action = rest[0] if rest else None
        if action is None and m == "GET":
            return self._info(req, repo_type, repo_id, None)
        if action == "revision" and m == "GET" and len(rest) >= 2:
            return self._info(req, repo_type, repo_id, "/".join(rest[1:]))
        if action == "refs" and m == "GET":
            return self._refs(req, repo_type, repo_id)
        if action == "branch" and len(rest) >= 2 and m in ("POST", "DELETE"):
            return self._branch(req, repo_type, repo_id, "/".join(rest[1:]))
        if action == "preupload" and len(rest) >= 2 and m == "POST":
            return self._preupload(req, repo_type, repo_id, "/".join(rest[1:]))
        if action == "commit" and len(rest) >= 2 and m == "POST":
            return self._commit(req, repo_type, repo_id, "/".join(rest[1:]))
        if action == "tree" and len(rest) >= 2 and m == "GET":
            return self._tree(req, repo_type, repo_id, rest[1], "/".join(rest[2:]))
        if action == "paths-info" and len(rest) >= 2 and m == "POST":
            return self._paths_info(req, repo_type, repo_id, "/".join(rest[1:]))
        if action == "commits" and len(rest) >= 2 and m == "GET":
            return self._list_commits(req, repo_type, repo_id, "/".join(rest[1:]))
        if action in ("xet-write-token", "xet-read-token"):
            raise _HubError(501, "FakeHub does not implement Xet storage: set HF_HUB_DISABLE_XET=1 so the client uses Git LFS")
        raise _HubError(404, f"FakeHub has no route for {m} {req.raw_path}")

    # ------------------------------------------------------------------ state helpers (call with the lock held)

    def _now(self) -> int:
        """Strictly increasing seconds, so that two identical commits still get distinct ids."""
        self._clock = max(int(datetime.now(UTC).timestamp()), self._clock + 1)
        return self._clock

    def _repo(self, repo_type: str, repo_id: str, req: _Request | None = None) -> _Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None or (repo.private and req is not None and req.token() is None):
            raise _HubError(404 if repo is None else 401, f"Repository Not Found for {repo_type} '{repo_id}'", "RepoNotFound")
        return repo

    def _auth(self, req: _Request) -> None:
        if req.token() is None:
            msg = "Invalid credentials in Authorization header" if req.header("Authorization") else "You must be authenticated to do this"
            raise _HubError(401, msg)

    def _resolve(self, repo: _Repo, rev: str) -> _Commit:
        if rev in repo.branches:
            return repo.commits[repo.branches[rev]]
        if _SHORT_SHA_RE.fullmatch(rev):
            hits = [c for cid, c in repo.commits.items() if cid.startswith(rev)]
            if len(hits) == 1:
                return hits[0]
        raise _HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    def _content(self, repo: _Repo, blob: _Blob) -> bytes:
        return blob.data if blob.sha256 is None else repo.lfs[blob.sha256]

    def _make_commit(self, repo: _Repo, parent: _Commit | None, files: dict[str, _Blob], title: str, description: str) -> _Commit:
        old = parent.files if parent else {}
        added = sorted(p for p, b in files.items() if old.get(p) != b)
        deleted = sorted(p for p in old if p not in files)
        ts = self._now()
        c = _Commit("", parent.id if parent else None, title, description, datetime.fromtimestamp(ts, UTC), files, added, deleted)
        who = f"{USER} <{USER}@users.noreply.huggingface.co> {ts} +0000"
        text = f"tree {c.tree_oid()}\n" + (f"parent {c.parent}\n" if c.parent else "") + f"author {who}\ncommitter {who}\n\n{title}\n"
        if description:
            text += f"\n{description}\n"
        c.id = _git_oid("commit", text.encode())
        repo.commits[c.id] = c
        return c

    def _is_lfs(self, files: dict[str, _Blob], path: str, size: int, sample: bytes) -> bool:
        if size >= self.lfs_threshold or b"\0" in sample:
            return True
        attrs = files.get(".gitattributes")
        text = attrs.data.decode("utf-8", "replace") if attrs is not None and attrs.data is not None else ""
        name = path.rsplit("/", 1)[-1]
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 2 and not parts[0].startswith("#") and "filter=lfs" in parts[1:]:
                pattern = parts[0].lstrip("/")
                if fnmatchcase(path if "/" in pattern else name, pattern):
                    return True
        return False

    @staticmethod
    def _ignored(gitignore: str | None, path: str) -> bool:
        if not gitignore:
            return False
        name = path.rsplit("/", 1)[-1]
        for line in gitignore.splitlines():
            pattern = line.strip()
            if pattern and not pattern.startswith(("#", "!")):
                pattern = pattern.lstrip("/").rstrip("/")
                if fnmatchcase(path if "/" in pattern else name, pattern) or path.startswith(pattern + "/"):
                    return True
        return False

    @staticmethod
    def _clean_path(path: Any) -> str:
        if not isinstance(path, str) or not path.strip("/"):
            raise _HubError(400, f"Invalid path: {path!r}")
        path = path.strip("/")
        parts = path.split("/")
        if any(p in ("", ".", "..") for p in parts) or parts[0] == ".git":
            raise _HubError(400, f"Invalid path: {path!r}")
        return path

    def _entry(self, repo: _Repo, commit: _Commit, path: str, expand: bool) -> dict[str, Any]:
        blob = commit.files.get(path)
        if blob is None:
            item: dict[str, Any] = {"type": "directory", "oid": commit.tree_oid(path), "size": 0, "path": path}
        else:
            item = {"type": "file", "oid": blob.oid, "size": blob.size, "path": path}
            if blob.sha256 is not None:
                item["lfs"] = {"oid": blob.sha256, "size": blob.size, "pointerSize": blob.pointer_size}
        if expand:
            last = self._last_change(repo, commit, path)
            item["lastCommit"] = {"id": last.id, "title": last.title, "date": _iso(last.date)}
        return item

    def _last_change(self, repo: _Repo, commit: _Commit, path: str) -> _Commit:
        def snapshot(c: _Commit) -> dict[str, _Blob]:
            return {p: b for p, b in c.files.items() if p == path or p.startswith(path + "/")}

        current = commit
        while current.parent is not None:
            parent = repo.commits[current.parent]
            if snapshot(parent) != snapshot(current):
                return current
            current = parent
        return current

    # ------------------------------------------------------------------ endpoints: repos and refs

    def _create_repo(self, req: _Request) -> int:
        self._auth(req)
        payload = req.json() or {}
        name, org = payload.get("name"), payload.get("organization") or USER
        repo_type = payload.get("type") or "model"
        if not isinstance(name, str) or not re.fullmatch(r"[\w.-]{1,96}", name) or repo_type not in URL_PREFIX:
            raise _HubError(400, f"Invalid repo name or type: {name!r} ({repo_type!r})")
        repo_id = f"{org}/{name}"
        url = f"{self.endpoint}/{URL_PREFIX[repo_type]}{repo_id}"
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        with self._lock:
            if (repo_type, repo_id) in self._repos:
                raise _HubError(409, f"You already created this {repo_type} repo", body={"error": f"You already created this {repo_type} repo", "url": url})
            repo = _Repo(repo_type, repo_id, private, datetime.now(UTC))
            first = self._make_commit(repo, None, {".gitattributes": _Blob.regular(DEFAULT_GITATTRIBUTES.encode())}, "initial commit", "")
            repo.branches["main"] = first.id
            self._repos[(repo_type, repo_id)] = repo
        return self._send(req, 200, {"url": url, "name": repo_id, "id": uuid.uuid4().hex[:24]})

    def _delete_repo(self, req: _Request) -> int:
        self._auth(req)
        payload = req.json() or {}
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or USER}/{payload.get('name')}"
        with self._lock:
            self._repo(repo_type, repo_id)
            del self._repos[(repo_type, repo_id)]
        return self._send(req, 200, b"", content_type="text/plain")

    def _whoami(self, req: _Request) -> int:
        self._auth(req)
        return self._send(req, 200, {"type": "user", "id": "0" * 24, "name": USER, "fullname": "Fake User", "orgs": [],
                                     "auth": {"type": "access_token", "accessToken": {"displayName": "test", "role": "write"}}})

    def _info(self, req: _Request, repo_type: str, repo_id: str, rev: str | None) -> int:
        with self._lock:
            repo = self._repo(repo_type, repo_id, req)
            commit = self._resolve(repo, rev or "main")
            blobs = req.flag("blobs")
            siblings = []
            for path, blob in sorted(commit.files.items()):
                sib: dict[str, Any] = {"rfilename": path}
                if blobs:
                    sib.update(size=blob.size, blobId=blob.oid)
                    if blob.sha256 is not None:
                        sib["lfs"] = {"size": blob.size, "sha256": blob.sha256, "pointerSize": blob.pointer_size}
                siblings.append(sib)
            info = {"_id": repo_id.replace("/", "-"), "id": repo_id, "author": repo_id.split("/")[0], "sha": commit.id,
                    "lastModified": _iso(commit.date), "createdAt": _iso(repo.created), "private": repo.private,
                    "gated": False, "disabled": False, "downloads": 0, "likes": 0, "tags": [], "siblings": siblings,
                    "usedStorage": sum(len(v) for v in repo.lfs.values())}
            if repo_type == "model":
                info["modelId"] = repo_id
        return self._send(req, 200, info)

    def _refs(self, req: _Request, repo_type: str, repo_id: str) -> int:
        with self._lock:
            repo = self._repo(repo_type, repo_id, req)
            branches = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": c} for b, c in sorted(repo.branches.items())]
        body: dict[str, Any] = {"branches": branches, "converts": [], "tags": []}
        if req.flag("include_prs"):
            body["pullRequests"] = []
        return self._send(req, 200, body)

    def _branch(self, req: _Request, repo_type: str, repo_id: str, branch: str) -> int:
        self._auth(req)
        payload = (req.json() or {}) if req.method == "POST" else {}
        with self._lock:
            repo = self._repo(repo_type, repo_id, req)
            if req.method == "DELETE":
                if branch not in repo.branches:
                    raise _HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
                if branch == "main":
                    raise _HubError(403, "Cannot delete the default branch")
                del repo.branches[branch]
                return self._send(req, 200, b"", content_type="text/plain")
            if branch in repo.branches:
                raise _HubError(409, f"Reference already exists: refs/heads/{branch}")
            if not re.fullmatch(r"[\w.\-/]+", branch) or branch.startswith(("refs/", "/")) or ".." in branch:
                raise _HubError(400, f"Invalid branch name: {branch!r}")
            start = self._resolve(repo, payload.get("startingPoint") or "main")
            repo.branches[branch] = start.id
        return self._send(req, 200, b"", content_type="text/plain")

    def _list_commits(self, req: _Request, repo_type: str, repo_id: str, rev: str) -> int:
        with self._lock:
            repo = self._repo(repo_type, repo_id, req)
            commit: _Commit | None = self._resolve(repo, rev)
            out = []
            while commit is not None:
                out.append({"id": commit.id, "title": commit.title, "message": commit.description, "date": _iso(commit.date),
                            "authors": [{"user": USER}]})
                commit = repo.commits[commit.parent] if commit.parent else None
        return self._send(req, 200, out)

    # ------------------------------------------------------------------ endpoints: listing

    def _tree(self, req: _Request, repo_type: str, repo_id: str, rev: str, path: str) -> int:
        with self._lock:
            repo = self._repo(repo_type, repo_id, req)
            commit = self._resolve(repo, rev)
            path = path.strip("/")
            dirs = commit.dirs()
            if path and path not in dirs:
                raise _HubError(404, f"Entry not found: '{path}' is not a folder at {commit.id}", "EntryNotFound",
                                {"X-Repo-Commit": commit.id})
            prefix = f"{path}/" if path else ""
            under = sorted(p for p in (*commit.files, *dirs) if p.startswith(prefix))
            if not req.flag("recursive"):
                under = [p for p in under if "/" not in p[len(prefix):]]
            try:
                start = int(base64.urlsafe_b64decode((req.param("cursor") or "MA==").encode()))
            except ValueError:
                raise _HubError(400, "Invalid cursor") from None
            page = under[start:start + self.tree_page_size]
            items = [self._entry(repo, commit, p, req.flag("expand")) for p in page]
        headers = {}
        if start + self.tree_page_size < len(under):
            cursor = base64.urlsafe_b64encode(str(start + self.tree_page_size).encode()).decode()
            params = urlencode({"recursive": str(req.flag("recursive")).lower(), "expand": str(req.flag("expand")).lower(), "cursor": cursor})
            headers["Link"] = f'<{self.endpoint}{req.raw_path}?{params}>; rel="next"'
        return self._send(req, 200, items, headers)

    def _paths_info(self, req: _Request, repo_type: str, repo_id: str, rev: str) -> int:
        ctype = req.header("Content-Type") or ""
        if "json" in ctype:
            payload = req.json() or {}
            paths, expand = payload.get("paths") or [], bool(payload.get("expand"))
        else:
            form = parse_qs(req.body().decode(), keep_blank_values=True)
            paths, expand = form.get("paths", []), (form.get("expand") or ["false"])[0].lower() in ("1", "true")
        with self._lock:
            repo = self._repo(repo_type, repo_id, req)
            commit = self._resolve(repo, rev)
            dirs = commit.dirs()
            out = []
            for p in paths:
                p = p.strip("/")
                if p in commit.files or p in dirs:
                    out.append(self._entry(repo, commit, p, expand))
        return self._send(req, 200, out)

    # ------------------------------------------------------------------ endpoints: upload and commit

    def _preupload(self, req: _Request, repo_type: str, repo_id: str, rev: str) -> int:
        self._auth(req)
        payload = req.json() or {}
        if req.flag("create_pr"):
            raise _HubError(501, "FakeHub does not implement pull requests")
        with self._lock:
            repo = self._repo(repo_type, repo_id, req)
            commit = self._resolve(repo, rev)
            gitignore = payload.get("gitIgnore")
            if gitignore is None and ".gitignore" in commit.files:
                gitignore = self._content(repo, commit.files[".gitignore"]).decode("utf-8", "replace")
            out = []
            for f in payload.get("files") or []:
                path = self._clean_path(f.get("path"))
                sample = base64.b64decode(f.get("sample") or "")
                mode = "lfs" if self._is_lfs(commit.files, path, int(f.get("size") or 0), sample) else "regular"
                item: dict[str, Any] = {"path": path, "uploadMode": mode, "shouldIgnore": self._ignored(gitignore, path)}
                existing = commit.files.get(path)
                if existing is not None:
                    item["oid"] = existing.sha256 or existing.oid
                out.append(item)
        return self._send(req, 200, {"files": out, "commitOid": commit.id})

    def _sign(self, repo_type: str, repo_id: str, oid: str, size: int) -> str:
        return hmac.new(self._secret, f"{repo_type}/{repo_id}/{oid}/{size}".encode(), hashlib.sha256).hexdigest()

    def _lfs_batch(self, req: _Request, repo_type: str, repo_id: str) -> int:
        self._auth(req)
        payload = req.json() or {}
        if payload.get("operation") != "upload":
            raise _HubError(422, "FakeHub's LFS batch endpoint only implements the 'upload' operation")
        objects = []
        with self._lock:
            repo = self._repo(repo_type, repo_id, req)
            for obj in payload.get("objects") or []:
                oid, size = obj.get("oid"), obj.get("size")
                item: dict[str, Any] = {"oid": oid if isinstance(oid, str) else "", "size": size if isinstance(size, int) else -1}
                if not isinstance(oid, str) or not _SHA256_RE.fullmatch(oid) or not isinstance(size, int) or size < 0:
                    item["error"] = {"code": 422, "message": "Invalid oid or size"}
                elif oid in repo.lfs:
                    pass  # already stored: no actions, the client skips the upload
                else:
                    query = urlencode({"size": size, "sig": self._sign(repo_type, repo_id, oid, size)})
                    item["authenticated"] = True
                    item["actions"] = {"upload": {"href": f"{self.endpoint}/lfs-upload/{repo_type}/{quote(repo_id)}/{oid}?{query}",
                                                  "expires_in": 3600}}
                    if self.verify_lfs:
                        item["actions"]["verify"] = {"href": f"{self.endpoint}/lfs-verify/{repo_type}/{quote(repo_id)}", "expires_in": 3600}
                objects.append(item)
        return self._send(req, 200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                          content_type="application/vnd.git-lfs+json")

    def _lfs_put(self, req: _Request, repo_type: str, repo_id: str, oid: str) -> int:
        try:
            size = int(req.param("size") or "")
        except ValueError:
            raise _HubError(400, "Missing size") from None
        if not hmac.compare_digest(req.param("sig") or "", self._sign(repo_type, repo_id, oid, size)):
            raise _HubError(403, "SignatureDoesNotMatch")
        with self._lock:
            self._repo(repo_type, repo_id)
            drop = self._drop_uploads.pop(0) if self._drop_uploads else None
        if drop is not None:
            with self._lock:
                self.lfs_aborted.append(oid)
            req.body(drop_after=drop)
        data = req.body()
        if len(data) != size:
            raise _HubError(400, f"IncompleteBody: got {len(data)} bytes, expected {size}")
        if hashlib.sha256(data).hexdigest() != oid:
            raise _HubError(400, "BadDigest: the sha256 of the body does not match the object id")
        with self._lock:
            repo = self._repo(repo_type, repo_id)
            repo.lfs.setdefault(oid, data)
            self.lfs_uploads.append(oid)
        return self._send(req, 200, b"", {"ETag": f'"{hashlib.md5(data).hexdigest()}"'}, content_type="text/plain")

    def _lfs_verify(self, req: _Request, repo_type: str, repo_id: str) -> int:
        self._auth(req)
        payload = req.json() or {}
        with self._lock:
            repo = self._repo(repo_type, repo_id, req)
            data = repo.lfs.get(payload.get("oid"))
        if data is None or len(data) != payload.get("size"):
            raise _HubError(404, "LFS object not found or of another size")
        return self._send(req, 200, {"success": True})

    def _commit(self, req: _Request, repo_type: str, repo_id: str, rev: str) -> int:
        self._auth(req)
        if req.flag("create_pr"):
            raise _HubError(501, "FakeHub does not implement pull requests")
        try:
            lines = [json.loads(line) for line in req.body().splitlines() if line.strip()]
        except ValueError:
            raise _HubError(400, "Invalid ndjson body") from None
        if not lines or lines[0].get("key") != "header":
            raise _HubError(400, "The first line of a commit must be its header")
        header = lines[0].get("value") or {}
        title = header.get("summary")
        if not isinstance(title, str) or not title.strip():
            raise _HubError(400, "A commit summary is required")
        with self._lock:
            repo = self._repo(repo_type, repo_id, req)
            if rev not in repo.branches:
                raise _HubError(404, f"Invalid rev id: {rev} (commits go to branches)", "RevisionNotFound")
            head = repo.commits[repo.branches[rev]]
            parent = header.get("parentCommit")
            if parent is not None and not (isinstance(parent, str) and _SHORT_SHA_RE.fullmatch(parent.lower()) and head.id.startswith(parent.lower())):
                raise _HubError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(head.files)
            for line in lines[1:]:
                self._apply(repo, files, line.get("key"), line.get("value") or {})
            dirs = {d for p in files for d in _parent_dirs(p)}
            if clash := sorted(dirs & files.keys()):
                raise _HubError(400, f"A path cannot be both a file and a folder: {clash[0]}")
            commit = self._make_commit(repo, head, files, title, header.get("description") or "")
            repo.branches[rev] = commit.id
        url = f"{self.endpoint}/{URL_PREFIX[repo_type]}{repo_id}/commit/{commit.id}"
        return self._send(req, 200, {"success": True, "commitOid": commit.id, "commitUrl": url, "hookOutput": "", "pullRequestUrl": None})

    def _apply(self, repo: _Repo, files: dict[str, _Blob], key: Any, value: dict[str, Any]) -> None:
        """Apply one commit operation to `files` (a scratch copy), or raise without side effects on the repo."""
        if key in ("deletedFile", "deletedFolder"):
            path = self._clean_path(value.get("path"))
            if key == "deletedFile":
                if path not in files:
                    raise _HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
                del files[path]
                return
            victims = [p for p in files if p.startswith(path + "/")]
            if not victims:
                raise _HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
            for p in victims:
                del files[p]
            return
        path = self._clean_path(value.get("path"))
        if key == "file":
            content = value.get("content", "")
            try:
                data = base64.b64decode(content, validate=True) if value.get("encoding") == "base64" else content.encode()
            except (ValueError, AttributeError):
                raise _HubError(400, f"Invalid content for {path}") from None
            if data and self._is_lfs(files, path, len(data), data[:512]):
                raise _HubError(400, f"Your push was rejected because {path} must be stored with Git LFS (binary or large file)")
            files[path] = _Blob.regular(data)
        elif key == "lfsFile":
            oid, size = value.get("oid"), value.get("size")
            if value.get("algo", "sha256") != "sha256" or oid not in repo.lfs:
                raise _HubError(400, f"Your push was rejected because an LFS pointer pointed to a file that does not exist: {path}")
            if size is not None and size != len(repo.lfs[oid]):
                raise _HubError(400, f"LFS object size mismatch for {path}")
            files[path] = _Blob.lfs(oid, len(repo.lfs[oid]))
        else:
            raise _HubError(400, f"Unknown commit operation: {key!r}")

    # ------------------------------------------------------------------ endpoints: download

    def _resolve_file(self, req: _Request, repo_type: str, repo_id: str, rev: str, path: str) -> int:
        with self._lock:
            repo = self._repo(repo_type, repo_id, req)
            commit = self._resolve(repo, rev)
            blob = commit.files.get(path)
            if blob is None:
                raise _HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.id})
            data = self._content(repo, blob)
            drop = self._drop_downloads.pop(0) if (req.method == "GET" and self._drop_downloads) else None
        headers = {"X-Repo-Commit": commit.id, "ETag": f'"{blob.oid}"', "Accept-Ranges": "bytes",
                   "Content-Disposition": f"inline; filename*=UTF-8''{quote(path.rsplit('/', 1)[-1])}"}
        if blob.sha256 is not None:
            headers.update({"X-Linked-Etag": f'"{blob.sha256}"', "X-Linked-Size": str(blob.size)})
        status, body = 200, data
        rng = req.header("Range") if req.method == "GET" else None
        if rng and (match := _RANGE_RE.fullmatch(rng)) and (match[1] or match[2]):
            size = len(data)
            if match[1]:
                start, end = int(match[1]), min(int(match[2]) if match[2] else size - 1, size - 1)
            else:
                start, end = max(size - int(match[2]), 0), size - 1
            if start >= size or start > end:
                raise _HubError(416, "Range Not Satisfiable", headers={"Content-Range": f"bytes */{size}"})
            status, body = 206, data[start:end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        if drop is not None:
            h = req.h
            h.send_response(status)
            h.send_header("Content-Type", "application/octet-stream")
            h.send_header("Content-Length", str(len(body)))
            for k, v in headers.items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(body[:drop])
            h.wfile.flush()
            raise _Dropped(reset=False)
        return self._send(req, status, body, headers, content_type="application/octet-stream")
