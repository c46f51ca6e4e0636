"""What preflight checks on a cluster besides the store, models and data:
the pod's secrets, what the Hub token may write, the Kubernetes side (is the
requested GPU type schedulable, does the TrainJob runtime exist), and the
runner that does every check at once under one deadline.

A check returns `Finding`s: a problem (the run cannot work; preflight fails
with all of them), a warning (could not be verified, e.g. no permission to
look; logged and recorded, the run goes on) or a skip (not checked because a
check it depends on failed). Images are checked in posttrain.oci_registry.
Nothing here raises on a failed check; preflight runs `mask` over every
text before logging or raising, so no secret's value gets out.
"""

from __future__ import annotations

import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

PROBLEM, WARNING, SKIPPED = "problem", "warning", "skipped"
# Each network call's limit; a check makes at most a few, one after the other.
CALL_TIMEOUT_S = 10.0
# Where the chart takes each Secret's value (helm/posttrain/values.yaml).
CHART_VALUES = {"posttrain-hf-token": "secrets.hfToken", "posttrain-s3": "secrets.s3"}
HF_TOKEN_ENV = "HF_TOKEN"
# Env vars whose values are secret even when no cluster.secrets entry names them.
SECRET_ENVS = ("HF_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "REGISTRY_AUTH")
# Hub user tokens are hf_ and 34 letters and digits; shorter names (hf_transfer) are left alone.
_HF_TOKEN_RE = re.compile(r"hf_[A-Za-z0-9]{30,}")


@dataclass(frozen=True)
class Finding:
    check: str
    level: str  # PROBLEM | WARNING | SKIPPED
    text: str


def problem(check: str, text: str) -> Finding:
    return Finding(check, PROBLEM, text)


def warning(check: str, text: str) -> Finding:
    return Finding(check, WARNING, text)


def skipped(check: str, text: str) -> Finding:
    return Finding(check, SKIPPED, text)


def one_line(error: BaseException | str, limit: int = 300) -> str:
    """An error as one short line: the report lists one problem per line."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def hub_reason(e: Exception) -> str:
    """A Hub lookup's failure in a few words (the client's messages run to a paragraph)."""
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    if isinstance(e, GatedRepoError):
        return "gated, and the token may not read it (accept its terms with the token's account)"
    if isinstance(e, RepositoryNotFoundError):
        return "repository not found (or private, and the token may not read it)"
    if isinstance(e, RevisionNotFoundError):
        return "no such revision"
    if isinstance(e, HfHubHTTPError):
        return f"HTTP {getattr(e.response, 'status_code', '?')}: {one_line(str(e).splitlines()[0] if str(e) else e, 160)}"
    return one_line(e)


def mask(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret value (and anything shaped like a Hub token) replaced by ***."""
    for value in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        text = text.replace(value, "***")
    return _HF_TOKEN_RE.sub("hf_***", text)


def secret_values(secrets: list[dict], environ: Mapping[str, str] = os.environ) -> list[str]:
    """The values of every env var a Secret feeds, plus the usual secret ones."""
    names = {env for s in secrets for env in s["env"].values()} | set(SECRET_ENVS)
    return [environ[n] for n in names if environ.get(n)]


# -- running checks -----------------------------------------------------------------


def run_parallel(tasks: Mapping[str, Callable[[], list[Finding]]], deadline_s: float, workers: int = 8) -> dict[str, list[Finding]]:
    """Run every task at once (at most `workers` at a time): {task name:
    findings}, in the order of `tasks`. A task still running at the deadline is
    reported as a problem and abandoned: the workers are daemon threads, so a
    call that hangs (the Hub client has no timeout of its own) cannot hold
    preflight or the process up. A task that raises is a problem too, so one
    broken check never hides the others."""
    todo: queue.SimpleQueue = queue.SimpleQueue()
    for item in tasks.items():
        todo.put(item)
    results: dict[str, list[Finding]] = {}
    done = threading.Condition()

    def work() -> None:
        while True:
            try:
                name, task = todo.get_nowait()
            except queue.Empty:
                return
            try:
                found = list(task())
            except Exception as e:  # noqa: BLE001 - reported as this check's problem (not logged here: unmasked)
                found = [problem(name, f"{name}: the check itself failed: {type(e).__name__}: {one_line(e)}")]
            with done:
                results[name] = found
                done.notify_all()

    for i in range(min(workers, len(tasks))):
        threading.Thread(target=work, name=f"preflight-{i}", daemon=True).start()
    end = time.monotonic() + deadline_s
    with done:
        while len(results) < len(tasks) and (left := end - time.monotonic()) > 0:
            done.wait(left)
        finished = dict(results)
    hung = f"no answer within {deadline_s:g} s (a network call hung) — check the pod's network access"
    return {name: finished[name] if name in finished else [problem(name, f"{name}: {hung}")] for name in tasks}


# -- secrets --------------------------------------------------------------------------


def secret_source(secrets: list[dict], env: str) -> tuple[str, str] | None:
    """(secret name, key) that feeds `env`, if a cluster.secrets entry maps one to it."""
    for s in secrets:
        for key, var in s["env"].items():
            if var == env:
                return s["name"], key
    return None


def _how_to_create(name: str, key: str) -> str:
    if name in CHART_VALUES:
        return f"helm values {CHART_VALUES[name]}"
    return f"kubectl create secret generic {name} --from-literal={key}=..."


def check_secrets(secrets: list[dict], environ: Mapping[str, str] = os.environ) -> list[Finding]:
    """Every env var a Secret should feed is set and non-empty. The preflight
    pod mounts its Secrets as optional, so a missing Secret or key shows up
    here as an unset variable instead of a pod that never starts."""
    out = []
    for s in secrets:
        for key, env in s["env"].items():
            if not environ.get(env, "").strip():
                out.append(problem("secrets", f"secret {s['name']} key {key} (env {env}): not set — "
                                              f"create it ({_how_to_create(s['name'], key)}) or fix cluster.secrets"))
    return out


def missing_envs(secrets: list[dict], environ: Mapping[str, str] = os.environ) -> set[str]:
    return {env for s in secrets for env in s["env"].values() if not environ.get(env, "").strip()}


# -- the Hub token ----------------------------------------------------------------------

# Organisation roles that may write repos (a contributor only those it created, which covers a new repo).
WRITE_ROLES = {"admin", "write", "contributor"}


def hub_write_target(store_uri: str, recipe: str) -> str | None:
    """The Hub repo a run writes: `<namespace>/<recipe>` with an hf:// store
    (store/hf.py). publish.py releases through the store too, so with an s3://
    or file:// store nothing is written to the Hub."""
    if not store_uri.startswith("hf://"):
        return None
    namespace = store_uri.removeprefix("hf://").strip("/").split("/")[0]
    return f"{namespace}/{recipe}"


def hub_can_write(who: dict, repo_id: str) -> tuple[bool | None, str]:
    """Whether the token that `/api/whoami-v2` describes may write `repo_id`
    (creating it if needed): (True, ""), (False, why) or (None, why) when the
    answer does not say. A token never exceeds its user's rights, so both the
    user's standing in the namespace and the token's own scope must allow it."""
    namespace = repo_id.split("/")[0]
    user = who.get("name", "?")
    roles = {o.get("name"): o.get("roleInOrg") for o in who.get("orgs") or []}
    token = (who.get("auth") or {}).get("accessToken") or {}
    kind = token.get("role")
    if kind == "read":
        return False, f"the token of {user} is read-only"
    if namespace != user and namespace not in roles:
        return False, f"{user} is not {namespace} nor a member of organization {namespace}"
    if namespace != user and roles[namespace] not in WRITE_ROLES:
        return False, f"{user}'s role in {namespace} is {roles[namespace]!r} (needs write, contributor or admin)"
    if kind in ("write", "admin"):
        return True, ""
    if kind == "fineGrained":
        return _fine_grained_can_write(token.get("fineGrained") or {}, namespace, repo_id)
    return None, f"the token's type {kind!r} does not say what it may write"


def _fine_grained_can_write(scopes: dict, namespace: str, repo_id: str) -> tuple[bool, str]:
    """A fine-grained token writes where a scoped entry grants `repo.write`: on
    the namespace (user or org), or on the repo itself (which must then exist)."""
    for entry in scopes.get("scoped") or []:
        entity = entry.get("entity") or {}
        if "repo.write" not in (entry.get("permissions") or []):
            continue
        if entity.get("name") == namespace and entity.get("type") in ("user", "org"):
            return True, ""
        if entity.get("name") == repo_id and entity.get("type") == "model":
            return True, ""
    return False, f"the fine-grained token has no repo.write permission on {namespace} (nor on the repo {repo_id})"


def check_hub_token(secrets: list[dict], target_repo: str | None, endpoint: str | None = None,
                    environ: Mapping[str, str] = os.environ) -> list[Finding]:
    """The Hub token is accepted (problems of check "hub") and, where the run
    writes to the Hub, may write there (check "hub_write")."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    source = secret_source(secrets, HF_TOKEN_ENV)
    named = f"Hub token (env {HF_TOKEN_ENV}" + (f", secret {source[0]} key {source[1]})" if source else ")")
    fix = f"put a valid token in secret {source[0]} key {source[1]}" if source else f"set {HF_TOKEN_ENV} (cluster.secrets)"
    token = environ.get(HF_TOKEN_ENV, "").strip()
    if not token:
        return [problem("hub", f"{named}: not set, and the hf:// store writes {target_repo} — {fix}")] if target_repo else []
    endpoint = endpoint or environ.get("HF_ENDPOINT") or None
    try:
        who = HfApi(endpoint=endpoint, token=token).whoami()
    except HfHubHTTPError as e:
        status = getattr(e.response, "status_code", None)
        if status == 401:
            return [problem("hub", f"{named}: rejected by the Hub (401: invalid, expired or revoked) — {fix}")]
        return [problem("hub", f"{named}: whoami failed ({status}): {one_line(e)} — check HF_ENDPOINT and the pod's network access")]
    except Exception as e:  # noqa: BLE001 - DNS, TLS, connection: all mean the Hub is unreachable
        return [problem("hub", f"{named}: the Hub is unreachable: {one_line(e)} — check HF_ENDPOINT and the pod's network access")]
    if target_repo is None:
        return []
    allowed, why = hub_can_write(who, target_repo)
    if allowed is None:
        return [warning("hub_write", f"{named}: cannot tell whether it may write {target_repo} ({why}); the store probe tries a write")]
    if not allowed:
        return [problem("hub_write", f"{named}: cannot write {target_repo}: {why} — use a token with write access to "
                               f"{target_repo.split('/')[0]} in {source[0] if source else HF_TOKEN_ENV}, or change cluster.store_uri")]
    return []


# -- Kubernetes -----------------------------------------------------------------------

NO_NODE_READ = "GPU check skipped: the pipeline's ServiceAccount may not list nodes; enable rbac.readNodes in the chart"
NO_RUNTIME_READ = ("TrainJob runtime check skipped: the pipeline's ServiceAccount may not read ClusterTrainingRuntimes; "
                   "enable rbac.readTrainingRuntimes in the chart")
RUNTIME_API = ("trainer.kubeflow.org", "v1alpha1", "clustertrainingruntimes")


@dataclass
class KubeApis:
    core: Any  # kubernetes.client.CoreV1Api, or a test double with list_node
    custom: Any  # kubernetes.client.CustomObjectsApi, or a test double with get_cluster_custom_object


def kube_apis() -> tuple[KubeApis | None, str]:
    """Clients for this pod's cluster (its ServiceAccount), else the kubeconfig's; (None, why) if neither exists."""
    from kubernetes import client, config

    try:
        cfg = client.Configuration()
        config.load_incluster_config(client_configuration=cfg)
        api = client.ApiClient(cfg)
    except config.ConfigException as in_cluster:
        try:
            api = config.new_client_from_config()
        except Exception as e:  # noqa: BLE001 - no file, a bad file, no context: all mean no API
            return None, f"not in a cluster ({one_line(in_cluster, 120)}) and no usable kubeconfig ({one_line(e, 120)})"
    return KubeApis(client.CoreV1Api(api), client.CustomObjectsApi(api)), ""


def check_kubernetes(gpus: list[dict], runtime: str | None, apis: Callable[[], tuple[KubeApis | None, str]] = kube_apis) -> list[Finding]:
    """GPU kinds schedulable and the TrainJob runtime present, on one set of clients."""
    if not gpus and not runtime:
        return []
    clients, why = apis()
    if clients is None:
        what = " and ".join(w for w, needed in (("GPU", gpus), ("TrainJob runtime", runtime)) if needed)
        return [problem("kubernetes", f"Kubernetes API: not reachable ({why}) — the {what} checks need it; run preflight in the cluster")]
    out = check_gpus(clients.core, gpus) if gpus else []
    return out + (check_trainjob_runtime(clients.custom, runtime) if runtime else [])


def check_gpus(core, gpus: list[dict]) -> list[Finding]:
    """Each GPU kind fits on some node as it is: see `gpu_problem`. Reads
    allocatable GPUs, not free ones (that would need every pod in the cluster):
    a full cluster passes here and queues later."""
    from kubernetes.client.exceptions import ApiException

    try:
        nodes = core.list_node(_request_timeout=(3, CALL_TIMEOUT_S)).items
    except ApiException as e:
        if e.status == 403:
            return [warning("gpus", NO_NODE_READ)]
        return [problem("gpus", f"Kubernetes API: listing nodes failed ({e.status} {e.reason}) — check the API server and the ServiceAccount")]
    except Exception as e:  # noqa: BLE001 - connection errors of any kind
        return [problem("gpus", f"Kubernetes API: unreachable: {one_line(e)} — check the pod's access to the API server")]
    return [problem("gpus", text) for req in gpus if (text := gpu_problem(req, nodes))]


def gpu_problem(req: dict, nodes: list) -> str | None:
    """Why no node can run one pod of this GPU kind, naming the nearest miss; None if one can.
    A node can if it carries the node_selector labels, is Ready and not cordoned,
    every NoSchedule/NoExecute taint is tolerated, and it has `count` of the accelerator allocatable."""
    sel = req.get("node_selector") or {}
    where = "with " + ",".join(f"{k}={v}" for k, v in sel.items()) if sel else "in the cluster"
    tail = f" — fix cluster.resources.{req['kind']} (gpus, accelerator, node_selector, tolerations) or add such nodes"
    head = f"GPU kind {req['kind']} ({req['count']} × {req['accelerator']}): "
    selected = [n for n in nodes if all((n.metadata.labels or {}).get(k) == v for k, v in sel.items())]
    if not selected:
        return head + f"no node {where} ({len(nodes)} nodes{_label_values(nodes, sel)})" + tail
    usable = [n for n in selected if _ready(n) and not n.spec.unschedulable]
    if not usable:
        states = "; ".join(f"{n.metadata.name}: {'cordoned' if n.spec.unschedulable else 'NotReady'}" for n in selected[:3])
        return head + f"no node {where} is Ready and schedulable ({states})" + tail
    tolerated = [n for n in usable if not _untolerated(n, req.get("tolerations") or [])]
    if not tolerated:
        taints = "; ".join(f"{n.metadata.name}: {_untolerated(n, req.get('tolerations') or [])[0]}" for n in usable[:3])
        return head + f"every Ready node {where} has a taint the tolerations do not tolerate ({taints})" + tail
    best = max(tolerated, key=lambda n: _allocatable(n, req["accelerator"]))
    have = _allocatable(best, req["accelerator"])
    if have < req["count"]:
        return head + f"no node {where} has {req['count']} {req['accelerator']} allocatable (largest: {have:g} on {best.metadata.name})" + tail
    return None


def _label_values(nodes: list, sel: dict) -> str:
    """The values the selector's label keys do have, as a hint at a typo."""
    seen = sorted({f"{k}={n.metadata.labels[k]}" for n in nodes for k in sel if k in (n.metadata.labels or {})})
    return f"; seen: {', '.join(seen[:6])}" if seen else ""


def _ready(node) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in (node.status.conditions or []))


def _untolerated(node, tolerations: list[dict]) -> list[str]:
    """The node's scheduling taints that no toleration matches, as key=value:effect."""
    out = []
    for t in node.spec.taints or []:
        if t.effect in ("NoSchedule", "NoExecute") and not any(_tolerates(tol, t) for tol in tolerations):
            out.append(f"{t.key}={t.value or ''}:{t.effect}")
    return out


def _tolerates(tol: dict, taint) -> bool:
    """Kubernetes' matching rule: same effect (or none given), and Exists on the
    key (an empty key matches every key) or Equal on key and value."""
    if tol.get("effect") and tol["effect"] != taint.effect:
        return False
    if (tol.get("operator") or "Equal") == "Exists":
        return not tol.get("key") or tol["key"] == taint.key
    return tol.get("key") == taint.key and (tol.get("value") or "") == (taint.value or "")


def _allocatable(node, accelerator: str) -> float:
    from kubernetes.utils import parse_quantity

    value = (node.status.allocatable or {}).get(accelerator)
    return float(parse_quantity(value)) if value else 0.0


def check_trainjob_runtime(custom, name: str) -> list[Finding]:
    """The ClusterTrainingRuntime multi-node TrainJobs are launched with exists."""
    from kubernetes.client.exceptions import ApiException

    try:
        custom.get_cluster_custom_object(*RUNTIME_API, name, _request_timeout=(3, CALL_TIMEOUT_S))
    except ApiException as e:
        if e.status == 403:
            return [warning("trainjob_runtime", NO_RUNTIME_READ)]
        if e.status == 404:
            return [problem("trainjob_runtime", f"ClusterTrainingRuntime {name} (trainer.kubeflow.org/v1alpha1): not found — install "
                                                "Kubeflow Trainer and its runtimes, or set cluster.trainjob_runtime to an installed one")]
        return [problem("trainjob_runtime", f"ClusterTrainingRuntime {name}: lookup failed ({e.status} {e.reason})")]
    except Exception as e:  # noqa: BLE001 - connection errors of any kind
        return [problem("trainjob_runtime", f"Kubernetes API: unreachable: {one_line(e)} — check the pod's access to the API server")]
    return []
