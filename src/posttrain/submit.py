"""Cluster submission through kfp.Client: `posttrain submit | schedule | unschedule`.

Connection. The host comes from --host or KFP_HOST (the KFP API / UI address,
e.g. https://kubeflow.example.com/pipeline or http://localhost:8080 for a
port-forward); there is no default. Credentials, the first that applies:
  KFP_TOKEN      a bearer token (kfp.Client's `existing_token`), e.g.
                 `kubectl create token posttrain -n kubeflow-user --audience pipelines.kubeflow.org`;
  in a pod       the projected Kubeflow Pipelines service-account token at
                 KF_PIPELINES_SA_TOKEN_PATH (default /var/run/secrets/kubeflow/pipelines/token),
                 read by kfp's ServiceAccountTokenVolumeCredentials and refreshed per request;
  otherwise      none: a port-forward to a single-user KFP needs no token.
KFP_COOKIE (a session cookie, e.g. `authservice_session=...` from Dex) and
KFP_CA_CERT (a CA bundle for a private TLS certificate) are passed to
kfp.Client as `cookies` and `ssl_ca_cert`. Multi-user KFP: the profile
namespace from --namespace or KFP_NAMESPACE (else kfp.Client's own context).

Before anything is compiled or created, the server must answer healthz with
KFP's JSON and an authenticated list must succeed: a wrong host, a missing or
bad token or a login page fails there, with nothing on the server changed.
Any later server error names the call, the HTTP status and the server's
message, and lists what this command had already created.

What is created (all idempotent by name, so resubmitting is safe):
  pipeline     recipe.name (one per recipe; namespaced when a namespace is given)
  version      <recipe>-<profile>-<git short sha>; `-dirty` when the work tree has
               changes, and `-<IR hash>` when dirty, outside git or with --set
               overrides, so a different IR never reuses a name. An existing version of
               that name is reused only if its description records the same IR hash.
  experiment   --experiment (default "posttrain")
  run          "<recipe> <version> <UTC time>", with the recipe's service account
  recurring    <recipe>-<profile> (schedule): max concurrency 1, no catch-up, the
               pipeline version pinned; scheduling again replaces it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import yaml

from posttrain.recipe import Recipe

DEFAULT_EXPERIMENT = "posttrain"
IR_HASH_RE = re.compile(r"IR sha256:([0-9a-f]{64})")


class SubmitError(Exception):
    """A failure talking to KFP (or refused by it); the message is for the user as is."""

    exit_code = 1


class SubmitUsageError(SubmitError):
    """Bad input found before anything was sent or created (no host, bad cron, unknown parameter)."""

    exit_code = 2


# -- inputs checked before any request ------------------------------------------


def resolve_host(host: str | None) -> str:
    host = (host or os.environ.get("KFP_HOST") or "").strip()
    if not host:
        raise SubmitUsageError("no KFP host: set KFP_HOST (make submit KFP_HOST=https://kubeflow.example.com/pipeline) or pass --host; "
                               "nothing was sent")
    if not host.startswith(("http://", "https://")):
        raise SubmitUsageError(f"KFP host {host!r} needs a scheme: http://... (a port-forward) or https://...")
    return host.rstrip("/")


def kfp_cron(expr: str) -> str:
    """A cron expression in KFP's 6-field form (seconds first). The usual 5 fields
    (minute hour day-of-month month day-of-week) get "0" seconds; KFP's parser
    would read a 5-field expression as starting with seconds, so it is never sent as is."""
    fields = expr.split()
    if len(fields) == 5:
        fields = ["0", *fields]
    if len(fields) != 6:
        raise SubmitUsageError(f"cron {expr!r}: expected 5 fields (minute hour day-of-month month day-of-week, e.g. '0 3 * * 1') "
                               "or KFP's 6 (seconds first)")
    allowed = re.compile(r"^[0-9A-Za-z*?/,\-LW#]+$")
    bad = [f for f in fields if not allowed.match(f)]
    if bad:
        raise SubmitUsageError(f"cron {expr!r}: field(s) {', '.join(map(repr, bad))} are not cron syntax")
    return " ".join(fields)


# -- what is submitted ----------------------------------------------------------------


@dataclass(frozen=True)
class Revision:
    sha: str  # short commit sha, or "nogit"
    dirty: bool
    in_git: bool


def git_revision(path: Path) -> Revision:
    """The commit of the repository holding `path`, and whether its work tree differs from it."""
    cwd = path if path.is_dir() else path.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain"], cwd=cwd, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return Revision("nogit", dirty=False, in_git=False)
    return Revision(sha, dirty=bool(status.strip()), in_git=True)


def version_name(recipe: Recipe, revision: Revision, ir_sha256: str, overridden: bool) -> str:
    profile = re.sub(r"[^a-z0-9-]+", "-", recipe.profile.lower()).strip("-")
    name = f"{recipe.name}-{profile}-{revision.sha}"
    if revision.dirty:
        name += "-dirty"
    # The commit alone names the IR only for a clean tree without overrides.
    if revision.dirty or not revision.in_git or overridden:
        name += "-" + ir_sha256[:8]
    return name


def version_description(recipe: Recipe, revision: Revision, ir_sha256: str, overrides: list[str]) -> str:
    git = "no git" if not revision.in_git else f"git {revision.sha}{' (dirty)' if revision.dirty else ''}"
    text = f"posttrain {recipe.name}, profile {recipe.profile}, {git}, IR sha256:{ir_sha256}"
    return text + (f", overrides: {' '.join(overrides)}" if overrides else "")


def runtime_parameters(ir_path: Path, assignments: list[str]) -> dict:
    """`--param name=value` checked against the pipeline's declared inputs and converted to their types."""
    if not assignments:
        return {}
    spec = next(yaml.safe_load_all(ir_path.read_text()))
    declared = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    params = {}
    for item in assignments:
        name, sep, raw = item.partition("=")
        if not sep:
            raise SubmitUsageError(f"--param {item!r}: expected name=value")
        if name not in declared:
            known = ", ".join(sorted(declared)) or "none"
            raise SubmitUsageError(f"--param {item!r}: the pipeline has no parameter {name!r}; its parameters: {known}")
        kind = declared[name].get("parameterType", "STRING")
        try:
            if kind == "NUMBER_DOUBLE":
                value = float(raw)
            elif kind == "NUMBER_INTEGER":
                value = int(raw)
            elif kind == "BOOLEAN":
                if raw.lower() not in ("true", "false"):
                    raise ValueError("expected true or false")
                value = raw.lower() == "true"
            elif kind in ("LIST", "STRUCT"):
                value = json.loads(raw)
                if not isinstance(value, list if kind == "LIST" else dict):
                    raise ValueError(f"expected a JSON {'list' if kind == 'LIST' else 'object'}")
            else:
                value = raw
        except ValueError as e:
            raise SubmitUsageError(f"--param {item!r}: {name} is {kind}: {e}") from None
        params[name] = value
    return params


def compile_ir(recipe: Recipe, build_dir: Path) -> tuple[Path, str]:
    from posttrain.dag import compile_pipeline

    build_dir.mkdir(parents=True, exist_ok=True)
    path = build_dir / f"{recipe.name}-{recipe.profile}.yaml"
    compile_pipeline(recipe, str(path))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


# -- the KFP session ----------------------------------------------------------------------


def _filter(name: str) -> str:
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})


def _server_message(e) -> str:
    body = e.body.decode(errors="replace") if isinstance(e.body, bytes) else (e.body or "")
    try:
        parsed = json.loads(body)
        message = parsed.get("message") or parsed.get("error") if isinstance(parsed, dict) else None
    except ValueError:
        message = None
    return message or " ".join(body.split())[:300] or (e.reason or "")


@contextlib.contextmanager
def _conflict_is_none() -> Iterator[SimpleNamespace]:
    """A 409 (already exists: another submit won the race) leaves `.value` None; other errors pass."""
    import kfp_server_api

    result = SimpleNamespace(value=None)
    try:
        yield result
    except kfp_server_api.ApiException as e:
        if e.status != 409:
            raise


@dataclass
class Session:
    """One kfp.Client plus the record of what this command created."""

    client: object
    host: str
    namespace: str
    created: list[str] = field(default_factory=list)

    @contextlib.contextmanager
    def call(self, what: str) -> Iterator[None]:
        """Turn the client's exceptions into one SubmitError naming the call, and keep
        kfp.Client's own "... details: URL" prints out of the output."""
        import kfp_server_api
        import urllib3

        try:
            with contextlib.redirect_stdout(io.StringIO()):
                yield
        except kfp_server_api.ApiException as e:
            if e.status == 0:  # kfp_server_api's wrapper for a TLS failure
                raise SubmitError(f"{what}: cannot reach KFP at {self.host}: {e.reason}{self._created_note()}") from None
            hint = ""
            if e.status in (401, 403):
                hint = (" (authentication: set KFP_TOKEN to a bearer token KFP accepts, or KFP_COOKIE to a session cookie; "
                        "in a pod, check the pipelines service-account token)")
            raise SubmitError(f"{what}: KFP answered {e.status} {e.reason}: {_server_message(e)}{hint}{self._created_note()}") from None
        except urllib3.exceptions.HTTPError as e:
            raise SubmitError(f"{what}: cannot reach KFP at {self.host}: {getattr(e, 'reason', None) or e}{self._created_note()}") from None

    def _created_note(self) -> str:
        if not self.created:
            return "\nnothing was created on the server"
        return "\nalready created on the server: " + "; ".join(self.created) + " (a new submit reuses them)"

    def _all(self, list_call: Callable[..., object], key: str, **kwargs) -> list:
        items, token = [], ""
        while True:
            page = list_call(page_token=token, page_size=100, **kwargs)
            items += getattr(page, key) or []
            token = page.next_page_token
            if not token:
                return items

    def verify(self) -> None:
        """The host is a KFP API server and the credentials work, before anything else."""
        with self.call(f"checking {self.host}/apis/v2beta1/healthz"):
            raw = self.client.healthzs.healthz_service_get_healthz(_preload_content=False)
            content_type = raw.headers.get("Content-Type", "")
            body = raw.data
        try:
            health = json.loads(body) if "json" in content_type else None
        except ValueError:
            health = None
        if not isinstance(health, dict):
            raise SubmitError(f"{self.host} is not answering as the KFP API: /apis/v2beta1/healthz returned {content_type or 'no content type'}, "
                              "not KFP's JSON. A login page means the request was not authenticated (set KFP_TOKEN or KFP_COOKIE); "
                              "otherwise check KFP_HOST (the KFP UI/API address)\nnothing was created on the server")
        if health.get("multi_user") and not self.namespace:
            raise SubmitUsageError("KFP runs in multi-user mode: give the profile namespace with --namespace or KFP_NAMESPACE\n"
                                   "nothing was created on the server")
        # healthz needs no credentials on the KFP API server itself; a list does.
        with self.call("checking access (listing pipelines)"):
            self.client.list_pipelines(page_size=1, namespace=self.namespace or None)

    def find_pipeline(self, name: str):
        with self.call(f"looking up pipeline {name!r}"):
            found = self._all(self.client.list_pipelines, "pipelines", filter=_filter(name), namespace=self.namespace or None)
        found = [p for p in found if name in (p.display_name, p.name)]
        if len(found) > 1:
            raise SubmitError(f"{len(found)} pipelines are named {name!r} on {self.host}; delete the extra ones")
        return found[0] if found else None

    def ensure_pipeline(self, name: str, description: str):
        import kfp_server_api

        pipeline = self.find_pipeline(name)
        if pipeline is not None:
            return pipeline, False
        # A pipeline without versions: every version, the first included, is then named by commit.
        body = kfp_server_api.V2beta1Pipeline(name=name, display_name=name, description=description, namespace=self.namespace or None)
        with self.call(f"creating pipeline {name!r}"), _conflict_is_none() as result:
            result.value = self.client.pipelines.pipeline_service_create_pipeline(pipeline=body)
        if result.value is None:  # created by someone else since the lookup: use theirs
            pipeline = self.find_pipeline(name)
            if pipeline is None:
                raise SubmitError(f"creating pipeline {name!r}: KFP answered 409 (exists) but lists no such pipeline{self._created_note()}")
            return pipeline, False
        self.created.append(f"pipeline {name} ({result.value.pipeline_id})")
        return result.value, True

    def find_version(self, pipeline_id: str, name: str):
        with self.call(f"looking up pipeline version {name!r}"):
            found = self._all(self.client.list_pipeline_versions, "pipeline_versions", pipeline_id=pipeline_id, filter=_filter(name))
        found = [v for v in found if name in (v.display_name, v.name)]
        return found[0] if found else None

    def ensure_version(self, pipeline_id: str, name: str, ir_path: Path, description: str, ir_sha256: str):
        version = self.find_version(pipeline_id, name)
        if version is None:
            with self.call(f"uploading {ir_path} as pipeline version {name!r}"), _conflict_is_none() as result:
                result.value = self.client.upload_pipeline_version(str(ir_path), name, pipeline_id=pipeline_id, description=description)
            if result.value is not None:
                self.created.append(f"pipeline version {name} ({result.value.pipeline_version_id})")
                return result.value, True
            version = self.find_version(pipeline_id, name)  # uploaded by someone else since the lookup: checked below
            if version is None:
                raise SubmitError(f"uploading version {name!r}: KFP answered 409 (exists) but lists no such version{self._created_note()}")
        recorded = IR_HASH_RE.search(version.description or "")
        if not recorded or recorded.group(1) != ir_sha256:
            raise SubmitError(
                f"pipeline version {name!r} ({version.pipeline_version_id}) exists with a different IR "
                f"(recorded: {recorded.group(1)[:12] if recorded else 'none'}, this compile: {ir_sha256[:12]}). The same commit and recipe "
                "should compile to the same IR: check that kfp and posttrain match the lock (make setup), or delete that version"
                + self._created_note())
        return version, False

    def ensure_experiment(self, name: str):
        with self.call(f"looking up experiment {name!r}"):
            found = self._all(self.client.list_experiments, "experiments", filter=_filter(name), namespace=self.namespace or None)
        found = [e for e in found if e.display_name == name]
        if found:
            return found[0], False
        with self.call(f"creating experiment {name!r}"):
            experiment = self.client.create_experiment(name, description="posttrain runs", namespace=self.namespace or None)
        self.created.append(f"experiment {name} ({experiment.experiment_id})")
        return experiment, True

    def find_recurring_runs(self, experiment_id: str, name: str) -> list:
        with self.call(f"listing recurring runs named {name!r}"):
            found = self._all(self.client.list_recurring_runs, "recurring_runs", experiment_id=experiment_id, filter=_filter(name))
        return [j for j in found if j.display_name == name]


def _make_client(host: str, namespace: str | None):
    import kfp
    import kfp_server_api
    from kfp.client import KF_PIPELINES_SA_TOKEN_ENV, KF_PIPELINES_SA_TOKEN_PATH
    from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

    class Client(kfp.Client):
        # kfp.Client's own healthz (called from its constructor) retries 5 times,
        # 5 s apart, on any API error, a 401 included, then raises a TimeoutError
        # that hides the status: one attempt, so the real error shows at once.
        def get_kfp_healthz(self, sleep_duration: int = 5) -> kfp_server_api.V2beta1GetHealthzResponse:
            return self.healthzs.healthz_service_get_healthz()

    kwargs = {"host": host, "cookies": os.environ.get("KFP_COOKIE") or None, "ssl_ca_cert": os.environ.get("KFP_CA_CERT") or None}
    token_file = os.environ.get(KF_PIPELINES_SA_TOKEN_ENV) or KF_PIPELINES_SA_TOKEN_PATH
    if os.environ.get("KFP_TOKEN"):
        kwargs["existing_token"] = os.environ["KFP_TOKEN"].strip()
    elif os.path.isfile(token_file):
        # With an explicit host kfp.Client skips its in-cluster credentials; pass them.
        kwargs["credentials"] = ServiceAccountTokenVolumeCredentials(token_file)
    if namespace:
        kwargs["namespace"] = namespace
    with contextlib.redirect_stdout(io.StringIO()):
        return Client(**kwargs)


def connect(host: str, namespace: str | None = None) -> Session:
    import warnings

    namespace = namespace or os.environ.get("KFP_NAMESPACE") or None
    session = Session(client=None, host=host, namespace=namespace or "")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "This client only works with KFP v2.0.0-beta.2 and later"
        with session.call(f"connecting to {host}"):
            session.client = _make_client(host, namespace)
    session.namespace = session.namespace or session.client.get_user_namespace() or ""
    session.verify()
    return session


# -- the commands ---------------------------------------------------------------------


@dataclass
class Uploaded:
    ir_path: Path
    pipeline: object
    version: object
    experiment: object
    lines: list[str]


def _upload(session: Session, recipe: Recipe, recipe_path: Path, overrides: list[str], experiment: str, build_dir: Path,
            params: list[str]) -> tuple[Uploaded, dict]:
    ir_path, ir_sha = compile_ir(recipe, build_dir)
    parameters = runtime_parameters(ir_path, params)
    revision = git_revision(recipe_path.resolve())
    name = version_name(recipe, revision, ir_sha, bool(overrides))
    pipeline, p_new = session.ensure_pipeline(recipe.name, recipe.description)
    version, v_new = session.ensure_version(pipeline.pipeline_id, name, ir_path, version_description(recipe, revision, ir_sha, overrides), ir_sha)
    exp, e_new = session.ensure_experiment(experiment)
    lines = [
        f"  pipeline    {recipe.name}  {pipeline.pipeline_id}  ({'created' if p_new else 'existing'})",
        f"  version     {name}  {version.pipeline_version_id}  ({f'uploaded {ir_path}' if v_new else 'existing, same IR'})",
        f"  experiment  {experiment}  {exp.experiment_id}  ({'created' if e_new else 'existing'})",
    ]
    if revision.dirty or not revision.in_git:
        lines.append(f"  note: {'uncommitted changes' if revision.dirty else 'not in a git repository'}; the version is named by its IR hash")
    return Uploaded(ir_path, pipeline, version, exp, lines), parameters


def ui_url(host: str, path: str) -> str:
    # kfp.Client's own links use KF_PIPELINES_UI_ENDPOINT when set, else the host.
    return f"{(os.environ.get('KF_PIPELINES_UI_ENDPOINT') or host).rstrip('/')}/#/{path}"


def submit(recipe: Recipe, recipe_path: Path, *, host: str | None, experiment: str | None = None, namespace: str | None = None,
           run_name: str | None = None, overrides: Sequence[str] = (), params: Sequence[str] = (), build_dir: Path = Path("build"),
           echo: Callable[[str], None] = print) -> object:
    host = resolve_host(host)
    experiment = experiment or DEFAULT_EXPERIMENT
    session = connect(host, namespace)
    up, parameters = _upload(session, recipe, recipe_path, list(overrides), experiment, build_dir, list(params))
    run_name = run_name or f"{recipe.name} {up.version.display_name or up.version.name} {datetime.now(UTC):%Y-%m-%d %H:%M:%SZ}"
    with session.call(f"creating run {run_name!r}"):
        run = session.client.run_pipeline(up.experiment.experiment_id, run_name, params=parameters or None, pipeline_id=up.pipeline.pipeline_id,
                                          version_id=up.version.pipeline_version_id, service_account=recipe.cluster.service_account)
    echo(f"submitted {recipe_path} (profile {recipe.profile}) to {host}")
    for line in up.lines:
        echo(line)
    echo(f"  run         {run_name}  {run.run_id}  (service account {recipe.cluster.service_account}"
         + (f", parameters {json.dumps(parameters)}" if parameters else "") + ")")
    echo(f"Run: {ui_url(host, 'runs/details/' + run.run_id)}")
    return run


def schedule(recipe: Recipe, recipe_path: Path, *, cron: str, host: str | None, experiment: str | None = None, namespace: str | None = None,
             name: str | None = None, overrides: Sequence[str] = (), params: Sequence[str] = (), build_dir: Path = Path("build"),
             echo: Callable[[str], None] = print) -> object:
    cron6 = kfp_cron(cron)  # checked before the host: a bad cron never reaches a server
    host = resolve_host(host)
    experiment = experiment or DEFAULT_EXPERIMENT
    name = name or recurring_run_name(recipe)
    session = connect(host, namespace)
    up, parameters = _upload(session, recipe, recipe_path, list(overrides), experiment, build_dir, list(params))
    previous = session.find_recurring_runs(up.experiment.experiment_id, name)
    version = up.version.display_name or up.version.name
    with session.call(f"creating recurring run {name!r}"):
        job = session.client.create_recurring_run(
            up.experiment.experiment_id, name, description=f"posttrain {recipe.name} ({recipe.profile}) on cron {cron}, version {version}",
            cron_expression=cron6, max_concurrency=1, no_catchup=True, params=parameters or None, pipeline_id=up.pipeline.pipeline_id,
            version_id=up.version.pipeline_version_id, enabled=True, service_account=recipe.cluster.service_account)
    session.created.append(f"recurring run {name} ({job.recurring_run_id})")
    # The new schedule exists before the old one goes: a failure here leaves one too many, never none.
    for old in previous:
        with session.call(f"deleting the previous recurring run {name!r} ({old.recurring_run_id})"):
            session.client.delete_recurring_run(old.recurring_run_id)
    echo(f"scheduled {recipe_path} (profile {recipe.profile}) on {host}")
    for line in up.lines:
        echo(line)
    echo(f"  recurring   {name}  {job.recurring_run_id}  (cron '{cron6}' in KFP's 6-field form, max concurrency 1, no catch-up, "
         f"service account {recipe.cluster.service_account})")
    for old in previous:
        echo(f"  replaced    {name}  {old.recurring_run_id}  (deleted)")
    echo(f"Recurring run: {ui_url(host, 'recurringrun/details/' + job.recurring_run_id)}")
    return job


def recurring_run_name(recipe: Recipe) -> str:
    return f"{recipe.name}-{re.sub(r'[^a-z0-9-]+', '-', recipe.profile.lower()).strip('-')}"


def unschedule(name: str, *, host: str | None, experiment: str | None = None, namespace: str | None = None,
               echo: Callable[[str], None] = print) -> list:
    host = resolve_host(host)
    experiment = experiment or DEFAULT_EXPERIMENT
    session = connect(host, namespace)
    with session.call(f"looking up experiment {experiment!r}"):
        found = session._all(session.client.list_experiments, "experiments", filter=_filter(experiment), namespace=session.namespace or None)
    found = [e for e in found if e.display_name == experiment]
    if not found:
        echo(f"no experiment {experiment!r} on {host}: no recurring run {name!r} to delete")
        return []
    jobs = session.find_recurring_runs(found[0].experiment_id, name)
    if not jobs:
        echo(f"no recurring run {name!r} in experiment {experiment!r} on {host}: nothing deleted")
        return []
    for job in jobs:
        with session.call(f"deleting recurring run {name!r} ({job.recurring_run_id})"):
            session.client.delete_recurring_run(job.recurring_run_id)
        cron = job.trigger.cron_schedule.cron if job.trigger and job.trigger.cron_schedule else "?"
        echo(f"deleted recurring run {name} {job.recurring_run_id} (cron '{cron}') from experiment {experiment!r} on {host}")
    return jobs
