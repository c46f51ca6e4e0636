"""A fake Kubeflow Pipelines API server (REST, v2beta1) on 127.0.0.1 for tests.

A test double written against kfp.Client 2.17's contract, not a copy of the
KFP backend: the paths, methods, query parameters and JSON shapes are the ones
kfp_server_api's generated client (kfp_server_api/api/*.py, models/*.py) sends
and parses. Field names are snake_case, as the KFP API server writes them
(except ListRecurringRunsResponse.recurringRuns, camelCase in the proto);
empty lists are left out of responses, as proto3 JSON does, so callers must
cope with `None`. Errors are grpc-gateway style ({"code", "message"}) with the
HTTP status KFP maps them to (400, 401, 404, 409).

Served: healthz; pipelines list/get/create, upload (multipart) and
upload_version (multipart), versions list/get; experiments list/get/create;
runs create/get; recurring runs create/list/get/delete. State is in memory;
every request (method, path, query, headers, body) is recorded in `requests`.

Options: `token` makes every /apis/ request without `Authorization: Bearer
<token>` fail with 401; `login_redirect` instead answers it with a 302 to an
HTML login page, as a Kubeflow gateway (Dex / oauth2-proxy) does;
`multi_user` makes experiments need a namespace, as KFP's multi-user mode
does; `page_cap` caps every page, to exercise pagination; `fail(...)` makes
the next matching request fail; `before(...)` runs a hook before a handler
(to simulate another client racing this one).
"""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import re
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import yaml

API = "/apis/v2beta1"
LOGIN_PATH = "/dex/auth"

# google.rpc.Code values the KFP API server returns, with grpc-gateway's HTTP status for each.
INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, UNAUTHENTICATED, INTERNAL = 3, 5, 6, 16, 13
HTTP_STATUS = {INVALID_ARGUMENT: 400, NOT_FOUND: 404, ALREADY_EXISTS: 409, UNAUTHENTICATED: 401, INTERNAL: 500}


class ApiError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code, self.message = code, message


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # names lower-cased
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body or b"{}")

    def arg(self, name: str, default: str | None = None) -> str | None:
        return self.query.get(name, [default])[0]

    def files(self) -> dict[str, tuple[str, bytes]]:
        """multipart/form-data parts: field name -> (file name, content)."""
        raw = b"Content-Type: " + self.headers["content-type"].encode() + b"\r\n\r\n" + self.body
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
        if not message.is_multipart():
            raise ApiError(INVALID_ARGUMENT, "expected a multipart/form-data body")
        parts = {}
        for part in message.iter_parts():
            parts[part.get_param("name", header="content-disposition")] = (part.get_filename(), part.get_payload(decode=True))
        return parts


@dataclass
class State:
    pipelines: dict[str, dict] = field(default_factory=dict)
    versions: dict[str, dict] = field(default_factory=dict)
    uploads: dict[str, bytes] = field(default_factory=dict)  # version id -> the uploaded file, as sent
    experiments: dict[str, dict] = field(default_factory=dict)
    runs: dict[str, dict] = field(default_factory=dict)
    recurring_runs: dict[str, dict] = field(default_factory=dict)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _matches(obj: dict, filter_json: str | None) -> bool:
    """KFP's filter: a JSON-serialised Filter proto. EQUALS on a string key only;
    anything else is refused, so a client sending more is noticed."""
    if not filter_json:
        return True
    predicates = json.loads(filter_json).get("predicates", [])
    for p in predicates:
        # protojson accepts the enum by name or by number (kfp.Client sends 1), and camelCase or proto names.
        if p.get("operation") not in ("EQUALS", 1):
            raise ApiError(INVALID_ARGUMENT, f"fake KFP: unsupported filter operation {p.get('operation')!r}")
        value = p.get("string_value", p.get("stringValue"))
        if value is None or p.get("key") not in ("display_name", "name"):
            raise ApiError(INVALID_ARGUMENT, f"fake KFP: unsupported filter predicate {p!r}")
        if obj.get(p["key"]) != value:
            return False
    return True


class FakeKFP:
    def __init__(self, token: str | None = None, login_redirect: bool = False, multi_user: bool = False, page_cap: int | None = None):
        self.token, self.login_redirect, self.multi_user, self.page_cap = token, login_redirect, multi_user, page_cap
        self.state = State()
        self.requests: list[Request] = []
        self._failures: list[tuple[str, re.Pattern, int, str]] = []
        self._hooks: list[tuple[str, re.Pattern, object]] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- test controls -------------------------------------------------------

    @property
    def host(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> FakeKFP:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server._handle(self)

            do_POST = do_DELETE = do_PATCH = do_GET

            def log_message(self, *args):  # keep pytest output clean
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=10)
            self._httpd = None

    def fail(self, method: str, path_regex: str, status: int, message: str) -> None:
        """The next request matching method and path (a full match) gets `status` with `message`."""
        self._failures.append((method, re.compile(path_regex), status, message))

    def before(self, method: str, path_regex: str, hook) -> None:
        """Run hook(server) once, before handling the next matching request."""
        self._hooks.append((method, re.compile(path_regex), hook))

    def api_requests(self, method: str | None = None, path: str | None = None) -> list[Request]:
        return [r for r in self.requests if r.path.startswith(API) and (method is None or r.method == method) and (path is None or r.path == path)]

    def new_id(self, kind: str) -> str:
        return f"{kind}-{next(self._ids):04d}"

    # -- HTTP plumbing -------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        url = urlsplit(h.path)
        length = int(h.headers.get("Content-Length") or 0)
        request = Request(h.command, url.path, parse_qs(url.query), {k.lower(): v for k, v in h.headers.items()}, h.rfile.read(length))
        with self._lock:
            self.requests.append(request)
            status, content_type, payload, extra = self._respond(request)
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(payload)))
        for k, v in extra.items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(payload)

    def _respond(self, r: Request) -> tuple[int, str, bytes, dict]:
        if r.path == LOGIN_PATH:
            return 200, "text/html; charset=utf-8", b"<html><body><form>Log in to Kubeflow</form></body></html>", {}
        if self.token is not None or self.login_redirect:
            if r.headers.get("authorization") != f"Bearer {self.token}":
                if self.login_redirect:
                    return 302, "text/html", b"", {"Location": LOGIN_PATH}
                return self._error(ApiError(UNAUTHENTICATED, "Unauthenticated: missing or invalid bearer token"))
        for i, (method, pattern, status, message) in enumerate(self._failures):
            if method == r.method and pattern.fullmatch(r.path):
                del self._failures[i]
                return status, "application/json", json.dumps({"code": INTERNAL, "message": message}).encode(), {}
        for i, (method, pattern, hook) in enumerate(self._hooks):
            if method == r.method and pattern.fullmatch(r.path):
                del self._hooks[i]
                hook(self)
                break
        for method, pattern, handler in ROUTES:
            m = re.fullmatch(pattern, r.path)
            if m and method == r.method:
                try:
                    return 200, "application/json", json.dumps(handler(self, r, **m.groupdict())).encode(), {}
                except ApiError as e:
                    return self._error(e)
        return self._error(ApiError(NOT_FOUND, "Not Found"))

    @staticmethod
    def _error(e: ApiError) -> tuple[int, str, bytes, dict]:
        return HTTP_STATUS[e.code], "application/json", json.dumps({"error": e.message, "code": e.code, "message": e.message}).encode(), {}

    def _page(self, r: Request, items: list[dict], key: str) -> dict:
        size = int(r.arg("page_size") or 20) or 20
        if self.page_cap:
            size = min(size, self.page_cap)
        start = int(r.arg("page_token") or 0)
        page = items[start : start + size]
        out = {"total_size": len(items)}
        if page:
            out[key] = page
        if start + size < len(items):
            out["next_page_token"] = str(start + size)
        return out

    # -- endpoints -----------------------------------------------------------

    def healthz(self, r: Request) -> dict:
        return {"multi_user": self.multi_user, "pipeline_store": "database"}

    def list_pipelines(self, r: Request) -> dict:
        namespace = r.arg("namespace") or ""
        found = [p for p in self.state.pipelines.values() if p.get("namespace", "") == namespace and _matches(p, r.arg("filter"))]
        return self._page(r, found, "pipelines")

    def _add_pipeline(self, name: str, display_name: str | None, description: str, namespace: str) -> dict:
        if not name:
            raise ApiError(INVALID_ARGUMENT, "Invalid input error: pipeline name is empty")
        if any(p["name"] == name and p.get("namespace", "") == namespace for p in self.state.pipelines.values()):
            raise ApiError(ALREADY_EXISTS, f"Already exist error: pipeline with name {name!r} already exists in namespace {namespace!r}")
        pipeline = {"pipeline_id": self.new_id("pipeline"), "name": name, "display_name": display_name or name,
                    "description": description, "created_at": _now()}
        if namespace:
            pipeline["namespace"] = namespace
        self.state.pipelines[pipeline["pipeline_id"]] = pipeline
        return pipeline

    def create_pipeline(self, r: Request) -> dict:
        body = r.json()
        return self._add_pipeline(body.get("name") or body.get("display_name"), body.get("display_name"), body.get("description", ""),
                                  body.get("namespace", ""))

    def get_pipeline(self, r: Request, pipeline_id: str) -> dict:
        if pipeline_id not in self.state.pipelines:
            raise ApiError(NOT_FOUND, f"Pipeline {pipeline_id} not found")
        return self.state.pipelines[pipeline_id]

    def _add_version(self, pipeline_id: str, name: str, description: str, upload: bytes) -> dict:
        if pipeline_id not in self.state.pipelines:
            raise ApiError(NOT_FOUND, f"Pipeline {pipeline_id} not found")
        if any(v["pipeline_id"] == pipeline_id and v["name"] == name for v in self.state.versions.values()):
            raise ApiError(ALREADY_EXISTS, f"Already exist error: pipeline version {name!r} already exists in pipeline {pipeline_id}")
        try:
            docs = list(yaml.safe_load_all(upload))
        except yaml.YAMLError as e:
            raise ApiError(INVALID_ARGUMENT, f"Invalid input error: the file is not YAML: {e}") from None
        if not docs or not isinstance(docs[0], dict) or "pipelineInfo" not in docs[0] or "root" not in docs[0]:
            raise ApiError(INVALID_ARGUMENT, "Invalid input error: not a KFP pipeline spec (no pipelineInfo / root)")
        version = {"pipeline_id": pipeline_id, "pipeline_version_id": self.new_id("version"), "name": name, "display_name": name,
                   "description": description, "created_at": _now()}
        self.state.versions[version["pipeline_version_id"]] = version
        self.state.uploads[version["pipeline_version_id"]] = upload
        return version

    def upload_pipeline(self, r: Request) -> dict:
        """A new pipeline and its first version, named as the pipeline (KFP's behaviour)."""
        filename, content = r.files()["uploadfile"]
        name = r.arg("name") or r.arg("display_name") or filename
        pipeline = self._add_pipeline(name, r.arg("display_name"), r.arg("description", ""), r.arg("namespace", ""))
        self._add_version(pipeline["pipeline_id"], name, r.arg("description", ""), content)
        return pipeline

    def upload_version(self, r: Request) -> dict:
        filename, content = r.files()["uploadfile"]
        return self._add_version(r.arg("pipelineid") or "", r.arg("name") or filename, r.arg("description", ""), content)

    def list_versions(self, r: Request, pipeline_id: str) -> dict:
        if pipeline_id not in self.state.pipelines:
            raise ApiError(NOT_FOUND, f"Pipeline {pipeline_id} not found")
        found = [v for v in self.state.versions.values() if v["pipeline_id"] == pipeline_id and _matches(v, r.arg("filter"))]
        return self._page(r, found, "pipeline_versions")

    def get_version(self, r: Request, pipeline_id: str, version_id: str) -> dict:
        version = self.state.versions.get(version_id)
        if version is None or version["pipeline_id"] != pipeline_id:
            raise ApiError(NOT_FOUND, f"Pipeline version {version_id} not found")
        return version

    def _namespace(self, namespace: str, what: str) -> str:
        if self.multi_user and not namespace:
            raise ApiError(INVALID_ARGUMENT, f"Invalid input error: in multi-user mode, {what} requires a namespace")
        return namespace if self.multi_user else ""

    def list_experiments(self, r: Request) -> dict:
        namespace = self._namespace(r.arg("namespace") or "", "listing experiments")
        found = [e for e in self.state.experiments.values() if e.get("namespace", "") == namespace and _matches(e, r.arg("filter"))]
        return self._page(r, found, "experiments")

    def create_experiment(self, r: Request) -> dict:
        body = r.json()
        namespace = self._namespace(body.get("namespace") or "", "creating an experiment")
        name = body.get("display_name")
        if not name:
            raise ApiError(INVALID_ARGUMENT, "Invalid input error: experiment name is empty")
        if any(e["display_name"] == name and e.get("namespace", "") == namespace for e in self.state.experiments.values()):
            raise ApiError(ALREADY_EXISTS, f"Already exist error: experiment {name!r} already exists")
        experiment = {"experiment_id": self.new_id("experiment"), "display_name": name, "description": body.get("description") or "",
                      "created_at": _now(), "storage_state": "AVAILABLE"}
        if namespace:
            experiment["namespace"] = namespace
        self.state.experiments[experiment["experiment_id"]] = experiment
        return experiment

    def get_experiment(self, r: Request, experiment_id: str) -> dict:
        if experiment_id not in self.state.experiments:
            raise ApiError(NOT_FOUND, f"Experiment {experiment_id} not found")
        return self.state.experiments[experiment_id]

    def _check_target(self, body: dict) -> None:
        if body.get("experiment_id") not in self.state.experiments:
            raise ApiError(NOT_FOUND, f"Experiment {body.get('experiment_id')} not found")
        ref = body.get("pipeline_version_reference") or {}
        version = self.state.versions.get(ref.get("pipeline_version_id"))
        if version is None or version["pipeline_id"] != ref.get("pipeline_id"):
            if not body.get("pipeline_spec"):
                raise ApiError(NOT_FOUND, f"Pipeline version {ref} not found")

    def create_run(self, r: Request) -> dict:
        body = r.json()
        self._check_target(body)
        if not body.get("display_name"):
            raise ApiError(INVALID_ARGUMENT, "Invalid input error: run name is empty")
        run = {**body, "run_id": self.new_id("run"), "state": "PENDING", "created_at": _now(), "scheduled_at": _now(), "storage_state": "AVAILABLE"}
        self.state.runs[run["run_id"]] = run
        return run

    def get_run(self, r: Request, run_id: str) -> dict:
        if run_id not in self.state.runs:
            raise ApiError(NOT_FOUND, f"Run {run_id} not found")
        return self.state.runs[run_id]

    def create_recurring_run(self, r: Request) -> dict:
        body = r.json()
        self._check_target(body)
        cron = ((body.get("trigger") or {}).get("cron_schedule") or {}).get("cron")
        periodic = (body.get("trigger") or {}).get("periodic_schedule")
        # kfp.Client documents a 6-field cron, seconds first (robfig/cron with seconds); a 5-field one would be misread.
        if not periodic and (cron is None or len(cron.split()) != 6):
            raise ApiError(INVALID_ARGUMENT, f"Invalid input error: cron {cron!r} must have 6 fields (seconds first)")
        concurrency = int(body.get("max_concurrency") or 1)
        if not 1 <= concurrency <= 10:
            raise ApiError(INVALID_ARGUMENT, f"Invalid input error: max concurrency {concurrency} must be in [1, 10]")
        job = {**body, "recurring_run_id": self.new_id("recurring"), "max_concurrency": str(concurrency),  # int64: a JSON string
               "status": "ENABLED" if body.get("mode") == "ENABLE" else "DISABLED", "created_at": _now(), "updated_at": _now()}
        self.state.recurring_runs[job["recurring_run_id"]] = job
        return job

    def list_recurring_runs(self, r: Request) -> dict:
        experiment_id = r.arg("experiment_id")
        found = [j for j in self.state.recurring_runs.values()
                 if (experiment_id is None or j["experiment_id"] == experiment_id) and _matches(j, r.arg("filter"))]
        return self._page(r, found, "recurringRuns")  # camelCase in the proto itself, so on the wire too (see the model's attribute_map)

    def get_recurring_run(self, r: Request, recurring_run_id: str) -> dict:
        if recurring_run_id not in self.state.recurring_runs:
            raise ApiError(NOT_FOUND, f"Recurring run {recurring_run_id} not found")
        return self.state.recurring_runs[recurring_run_id]

    def delete_recurring_run(self, r: Request, recurring_run_id: str) -> dict:
        if self.state.recurring_runs.pop(recurring_run_id, None) is None:
            raise ApiError(NOT_FOUND, f"Recurring run {recurring_run_id} not found")
        return {}


ID = r"(?P<{}>[^/:]+)"
ROUTES = [
    ("GET", f"{API}/healthz", FakeKFP.healthz),
    ("GET", f"{API}/pipelines", FakeKFP.list_pipelines),
    ("POST", f"{API}/pipelines", FakeKFP.create_pipeline),
    ("POST", f"{API}/pipelines/upload", FakeKFP.upload_pipeline),
    ("POST", f"{API}/pipelines/upload_version", FakeKFP.upload_version),
    ("GET", f"{API}/pipelines/{ID.format('pipeline_id')}", FakeKFP.get_pipeline),
    ("GET", f"{API}/pipelines/{ID.format('pipeline_id')}/versions", FakeKFP.list_versions),
    ("GET", f"{API}/pipelines/{ID.format('pipeline_id')}/versions/{ID.format('version_id')}", FakeKFP.get_version),
    ("GET", f"{API}/experiments", FakeKFP.list_experiments),
    ("POST", f"{API}/experiments", FakeKFP.create_experiment),
    ("GET", f"{API}/experiments/{ID.format('experiment_id')}", FakeKFP.get_experiment),
    ("POST", f"{API}/runs", FakeKFP.create_run),
    ("GET", f"{API}/runs/{ID.format('run_id')}", FakeKFP.get_run),
    ("POST", f"{API}/recurringruns", FakeKFP.create_recurring_run),
    ("GET", f"{API}/recurringruns", FakeKFP.list_recurring_runs),
    ("GET", f"{API}/recurringruns/{ID.format('recurring_run_id')}", FakeKFP.get_recurring_run),
    ("DELETE", f"{API}/recurringruns/{ID.format('recurring_run_id')}", FakeKFP.delete_recurring_run),
]
