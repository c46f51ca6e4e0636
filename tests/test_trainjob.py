"""Multi-node stages as Kubeflow Trainer TrainJobs (posttrain/trainjob.py and
posttrain/trainjob_worker.py), without a cluster:

- the generated manifests against the v2.3 TrainJob CRD's openAPIV3Schema
  (strict: unknown fields refused as the API server would prune them, list-map
  keys unique, the CEL rules that apply on create checked one by one);
- the launcher's state handling against scripted API responses (fake
  CustomObjectsApi / CoreV1Api);
- a real stage (sft, tiny profile) through the launcher, with a fake cluster
  that runs the manifest's container command in this process: inputs go up to a
  file:// store, the worker fetches them, trains, uploads, the launcher
  downloads the outputs and returns the worker's StageResult."""

import copy
import os
import re
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema
import pytest
import yaml
from conftest import RECIPE, ROOT, write_tokenized
from kubernetes.client import (
    V1ContainerState,
    V1ContainerStateRunning,
    V1ContainerStatus,
    V1ObjectMeta,
    V1OwnerReference,
    V1Pod,
    V1PodList,
    V1PodSpec,
    V1PodStatus,
)
from kubernetes.client.exceptions import ApiException

from posttrain import launch, trainjob, trainjob_worker
from posttrain.dag import CACHE_MOUNT, launcher_config, stage_configs
from posttrain.recipe import RecipeError, apply_overrides, load_recipe
from posttrain.stages.context import StageContext, StageResult

CRD_PATH = ROOT.parent / "shared" / "schemas" / "kubeflow-trainer-v2.3.0" / "trainer.kubeflow.org_trainjobs.yaml"
RUNTIME_PATH = CRD_PATH.with_name("runtime-torch-distributed.yaml")


# -- the CRD's schema, as strictly as the API server applies it --------------------------


def crd_schema() -> dict:
    crd = yaml.safe_load(CRD_PATH.read_text())
    assert crd["spec"]["group"] == trainjob.GROUP and crd["spec"]["names"]["plural"] == trainjob.PLURAL
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == trainjob.VERSION]
    return version["schema"]["openAPIV3Schema"]


def strict(schema: dict) -> dict:
    """A JSON Schema for jsonschema: a structural schema's object with
    `properties` prunes unknown fields (so a misspelt field would silently do
    nothing): here it refuses them. `x-kubernetes-int-or-string` becomes the
    anyOf it means where the CRD does not spell it out. Other `x-kubernetes-*`
    keywords are annotations to jsonschema; list types and CEL rules are
    checked by `k8s_rules`."""
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {k: strict(v) for k, v in out["properties"].items()}
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if isinstance(out.get("items"), dict):
        out["items"] = strict(out["items"])
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = strict(out["additionalProperties"])
    if out.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    return out


def unknown_fields(value, schema: dict, path: str = "") -> list[str]:
    """Every field of `value` that the schema does not name (independent of `strict`)."""
    if isinstance(value, dict):
        if "properties" in schema:
            return [f for k, v in value.items()
                    for f in ([f"{path}.{k}"] if k not in schema["properties"] else unknown_fields(v, schema["properties"][k], f"{path}.{k}"))]
        if isinstance(schema.get("additionalProperties"), dict):
            return [f for k, v in value.items() for f in unknown_fields(v, schema["additionalProperties"], f"{path}.{k}")]
        return []  # an open object (metadata): checked by `metadata_errors`
    if isinstance(value, list) and "items" in schema:
        return [f for i, v in enumerate(value) for f in unknown_fields(v, schema["items"], f"{path}[{i}]")]
    return []


NAME_RULE = "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')"
# Every CEL rule of the CRD, as Python. Transition rules (`oldSelf`) only apply to updates.
CEL = {
    NAME_RULE: lambda obj: re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", obj["metadata"]["name"]) is not None,
    "size(self.metadata.name) <= 63": lambda obj: len(obj["metadata"]["name"]) <= 63,
    "self == oldSelf": lambda v: True,
    "self in ['trainer.kubeflow.org/trainjob-controller', 'kueue.x-k8s.io/multikueue']":
        lambda v: v in ("trainer.kubeflow.org/trainjob-controller", "kueue.x-k8s.io/multikueue"),
    "self == '' || self.matches('^[A-Za-z][A-Za-z0-9+.-]*://.+$')": lambda v: v == "" or re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*://.+", v),
    "has(self.lastUpdatedTime)": lambda v: "lastUpdatedTime" in v,
}


def k8s_rules(value, schema: dict, path: str = "") -> list[str]:
    """The CEL rules and list types the API server enforces, where `value` has data."""
    errors = []
    for rule in schema.get("x-kubernetes-validations", []):
        if rule["rule"] not in CEL:
            errors.append(f"{path}: CEL rule this test does not know: {rule['rule']}")
        elif not CEL[rule["rule"]](value):
            errors.append(f"{path}: {rule['message']}")
    if isinstance(value, list):
        kind = schema.get("x-kubernetes-list-type")
        keys = [tuple(v.get(k) for k in schema.get("x-kubernetes-list-map-keys", [])) for v in value] if kind == "map" else value
        if kind in ("map", "set") and len({repr(k) for k in keys}) != len(keys):
            errors.append(f"{path}: duplicate entries in a list of type {kind}")
        errors += [e for i, v in enumerate(value) for e in k8s_rules(v, schema.get("items", {}), f"{path}[{i}]")]
    elif isinstance(value, dict):
        for k, v in value.items():
            sub = schema.get("properties", {}).get(k) or (schema["additionalProperties"] if isinstance(schema.get("additionalProperties"), dict) else None)
            if sub:
                errors += k8s_rules(v, sub, f"{path}.{k}")
    return errors


LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
LABEL_KEY = re.compile(r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")


def metadata_errors(meta: dict) -> list[str]:
    """What the API server checks of the ObjectMeta fields set here (the CRD leaves metadata open)."""
    allowed = {"name", "namespace", "labels", "annotations", "ownerReferences"}
    errors = [f"metadata.{k}: not set by the launcher" for k in meta if k not in allowed]
    for key, value in meta.get("labels", {}).items():
        if not LABEL_KEY.fullmatch(key) or len(key.rpartition("/")[2]) > 63 or not LABEL_VALUE.fullmatch(value) or len(value) > 63:
            errors.append(f"metadata.labels: {key}={value} is not a valid label")
    for ref in meta.get("ownerReferences", []):
        if not {"apiVersion", "kind", "name", "uid"} <= set(ref):
            errors.append(f"metadata.ownerReferences: {ref} lacks a required field")
    return errors


def schema_errors(manifest: dict) -> list[str]:
    schema = crd_schema()
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in jsonschema.Draft7Validator(strict(schema)).iter_errors(manifest)]
    errors += [f"{f}: not in the CRD" for f in unknown_fields(manifest, schema)]
    return errors + k8s_rules(manifest, schema) + metadata_errors(manifest["metadata"])


# -- launcher configs, as dag.py makes them ---------------------------------------------------

FULL = [
    "cluster.nodes={midtrain: 8}",
    "cluster.cache_pvc=posttrain-cache",
    "cluster.store_uri=s3://posttrain-ckpt/runs",
    "cluster.resources.train.cpu='96'",
    "cluster.resources.train.tolerations=[{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}, "
    "{key: dedicated, operator: Equal, value: training, effect: NoExecute}]",
]
MINIMAL = [
    "cluster.nodes={sft: 2}",
    "cluster.cache_pvc=scratch",
    "cluster.store_uri=file:///mnt/posttrain/cache/checkpoints",
    "cluster.secrets=[]",
    "cluster.resources.train={gpus: 8}",
]


def launcher_for(overrides: list[str], stage: str) -> dict:
    return launcher_config(apply_overrides(load_recipe(RECIPE), overrides), stage)


def manifest_for(overrides: list[str], stage: str, **kw) -> dict:
    launcher = launcher_for(overrides, stage)
    name = trainjob.job_name({"task": stage, "launcher": launcher}, "run-1")
    return trainjob.build_manifest(name, "team-a", launcher, trainjob.Staging.for_job("smollm3", name), service_account="posttrain", **kw)


OWNER = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "name": "smollm3-x7k2p", "uid": "5f0c-11", "blockOwnerDeletion": False}


def test_full_manifest_is_valid_and_carries_every_setting():
    m = manifest_for(FULL, "midtrain", labels={"posttrain/recipe": "smollm3", "posttrain/task": "midtrain"}, owner=OWNER)
    assert schema_errors(m) == []
    trainer = m["spec"]["trainer"]
    assert trainer["numNodes"] == 8 and trainer["numProcPerNode"] == 8
    assert trainer["resourcesPerNode"] == {"limits": {"nvidia.com/gpu": "8", "cpu": "96", "memory": "1600Gi"}}
    assert trainer["command"] == ["python3", "-m", "posttrain.trainjob_worker"]
    assert m["metadata"]["annotations"]["posttrain/staging"] == f"s3://posttrain-ckpt/runs/{trainer['args'][0]}"
    env = {e["name"]: e for e in trainer["env"]}
    assert env["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "posttrain-hf-token", "key": "token"}}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"] == {"secretKeyRef": {"name": "posttrain-s3", "key": "secret_access_key"}}
    assert env["POSTTRAIN_STORE"]["value"] == "s3://posttrain-ckpt/runs"
    assert env["POSTTRAIN_CACHE"]["value"].startswith(CACHE_MOUNT) and env["HF_HOME"]["value"].startswith(CACHE_MOUNT)
    assert not {n for n in env if n.startswith("PET_")}  # torchrun's: the Trainer's webhook refuses them
    assert m["spec"]["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime", "name": "torch-distributed"}
    assert m["spec"]["activeDeadlineSeconds"] == 259200
    (patch,) = m["spec"]["runtimePatches"]
    (rjob,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = rjob["template"]["spec"]["template"]["spec"]
    assert rjob["name"] == "node" and pod["serviceAccountName"] == "posttrain"
    assert pod["nodeSelector"] == {"posttrain.io/pool": "h100"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                                  {"key": "dedicated", "operator": "Equal", "value": "training", "effect": "NoExecute"}]
    assert pod["volumes"] == [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Gi"}},
                              {"name": "posttrain-cache", "persistentVolumeClaim": {"claimName": "posttrain-cache"}}]
    assert pod["containers"] == [{"name": "node", "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"},
                                                                   {"name": "posttrain-cache", "mountPath": CACHE_MOUNT}]}]
    assert pod["terminationGracePeriodSeconds"] > launch.SHUTDOWN_TIMEOUT_S
    assert m["metadata"]["ownerReferences"] == [OWNER]


def test_minimal_manifest_is_valid():
    m = manifest_for(MINIMAL, "sft")
    assert schema_errors(m) == []
    assert m["spec"]["trainer"]["resourcesPerNode"] == {"limits": {"nvidia.com/gpu": "8"}}
    pod = m["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    assert "nodeSelector" not in pod and "tolerations" not in pod
    assert [v["name"] for v in pod["volumes"]] == ["posttrain-cache"]
    assert not [e for e in m["spec"]["trainer"]["env"] if "valueFrom" in e]


@pytest.mark.parametrize("breakage, expected", [
    (lambda m: m["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
     .__setitem__("nodeSelecter", {"a": "b"}), "nodeSelecter"),
    (lambda m: m["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
     .__setitem__("priorityClassName", "posttrain-training"), "priorityClassName"),
    (lambda m: m["spec"]["trainer"].__setitem__("numNodes", "8"), "numNodes"),
    (lambda m: m["spec"]["trainer"]["resourcesPerNode"]["limits"].__setitem__("memory", "1600 GiB"), "memory"),
    (lambda m: m["spec"]["trainer"]["env"].append(dict(m["spec"]["trainer"]["env"][0])), "duplicate"),
    (lambda m: m["metadata"].__setitem__("name", "Pt-" + "x" * 70), "metadata.name"),
    (lambda m: m["metadata"]["labels"].__setitem__("posttrain/run", "run id"), "not a valid label"),
])
def test_schema_check_catches_what_the_api_server_would_refuse_or_prune(breakage, expected):
    m = copy.deepcopy(manifest_for(FULL, "midtrain"))
    breakage(m)
    assert any(expected in e for e in schema_errors(m)), schema_errors(m)


def test_the_runtime_provides_what_the_launcher_assumes():
    """The torch-distributed runtime: its trainer job and container are `node`, and
    its policy is torch (the PET_* variables); the cache mount is dag.py's."""
    runtime = yaml.safe_load(re.sub(r"^\s*\{\{.*\}\}\s*$", "", RUNTIME_PATH.read_text(), flags=re.M))
    assert runtime["metadata"]["name"] == "torch-distributed" and "torch" in runtime["spec"]["mlPolicy"]
    (rjob,) = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    assert rjob["name"] == trainjob.NODE and rjob["template"]["metadata"]["labels"]["trainer.kubeflow.org/trainjob-ancestor-step"] == "trainer"
    assert [c["name"] for c in rjob["template"]["spec"]["template"]["spec"]["containers"]] == [trainjob.NODE]
    assert trainjob.CACHE_MOUNT == CACHE_MOUNT


def test_job_names_are_deterministic_short_labels_that_differ_per_run_and_config():
    config = {"task": "preference_train_12", "recipe": "smollm3", "preference": {"lr": 1e-6}}
    name = trainjob.job_name(config, "run-a")
    assert name == trainjob.job_name(dict(config), "run-a")
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= trainjob.MAX_NAME
    assert len(f"{name}-node-0-127") <= 63  # the pod hostname Trainer derives
    assert trainjob.job_name(config, "run-b") != name
    assert trainjob.job_name({**config, "variant": "lr-high", "preference": {"lr": 1e-5}}, "run-a") != name
    long = trainjob.job_name({"task": "X" * 200}, "r")
    assert len(long) <= trainjob.MAX_NAME and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", long)


def test_a_multi_node_stage_needs_a_shared_cache_volume():
    # Refused when the recipe is validated, and again by the launcher.
    with pytest.raises(RecipeError, match="cluster.nodes: sft on several nodes needs cluster.cache_pvc"):
        launcher_for(["cluster.nodes={sft: 4}", "cluster.cache_pvc=null"], "sft")
    with pytest.raises(RecipeError, match="cluster.store_uri: a file:// store on several nodes"):
        launcher_for(["cluster.nodes={sft: 4}", "cluster.store_uri=file:///mnt/elsewhere"], "sft")
    launcher = launcher_for(["cluster.nodes={sft: 4}"], "sft")
    with pytest.raises(ValueError, match="cache_pvc"):
        trainjob.check_launcher({**launcher, "cache_pvc": None})


# -- scripted API responses ---------------------------------------------------------------


def cond(kind: str, status: str = "True", reason: str = "", message: str = "") -> dict:
    return {"type": kind, "status": status, "reason": reason or kind, "message": message, "lastTransitionTime": "2025-01-01T00:00:00Z"}


def tj(*conditions) -> dict:
    return {"apiVersion": "trainer.kubeflow.org/v1alpha1", "kind": "TrainJob", "metadata": {"name": "x"},
            "status": {"conditions": list(conditions)} if conditions else {}}


RUNNING = tj()
CREATED = tj(cond("Suspended", "False", "Resumed"))
COMPLETE = tj(cond("Suspended", "False", "Resumed"), cond("Complete", "True", "JobSetCompleted", "jobset completed successfully"))
FAILED = tj(cond("Failed", "True", "FailedJobs", "jobset failed due to one or more job failures"))


def missing() -> ApiException:
    return ApiException(status=404, reason="Not Found")


class FakeCustom:
    """CustomObjectsApi for trainjobs: `get` answers from a script (a TrainJob,
    an exception to raise, or a callable run first); the last entry repeats."""

    def __init__(self, gets: list, create_errors: list[Exception] | None = None, on_create=None):
        self.gets, self.create_errors, self.on_create = list(gets), list(create_errors or []), on_create
        self.calls: list[tuple] = []
        self.created: list[dict] = []

    def _check(self, group, version, plural):
        assert (group, version, plural) == (trainjob.GROUP, trainjob.VERSION, trainjob.PLURAL)

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        self._check(group, version, plural)
        self.calls.append(("get", name))
        item = self.gets.pop(0) if len(self.gets) > 1 else self.gets[0]
        while callable(item):
            item = item()
        if isinstance(item, Exception):
            raise item
        return copy.deepcopy(item)

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        self._check(group, version, plural)
        self.calls.append(("create", body["metadata"]["name"]))
        if self.create_errors:
            raise self.create_errors.pop(0)
        self.created.append(body)
        if self.on_create:
            self.on_create(body)
        return body

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name, propagation_policy=None):
        self._check(group, version, plural)
        self.calls.append(("delete", name, propagation_policy))


class FakeLog:
    def __init__(self, lines: list[str]):
        self.data = "".join(f"{line}\n" for line in lines).encode()
        self.released = False

    def stream(self, amt=None, decode_content=False):
        yield from (self.data[i:i + 7] for i in range(0, len(self.data), 7))  # lines split across chunks

    def release_conn(self):
        self.released = True


def node_pod(job: str, index: int, uid: str, phase: str = "Running", restarts: int = 0, running: bool = False, age_s: int = 0) -> V1Pod:
    labels = {trainjob.JOBSET_NAME_LABEL: job, trainjob.REPLICATED_JOB_LABEL: "node"}
    state = V1ContainerState(running=V1ContainerStateRunning()) if running else V1ContainerState()
    return V1Pod(
        metadata=V1ObjectMeta(name=f"{job}-node-0-{index}-{uid}", uid=uid, labels=labels, annotations={trainjob.COMPLETION_INDEX: str(index)},
                              creation_timestamp=datetime(2025, 1, 1, tzinfo=UTC) + timedelta(seconds=age_s)),
        status=V1PodStatus(phase=phase, container_statuses=[V1ContainerStatus(name="node", restart_count=restarts, ready=True, image="i",
                                                                                image_id="i", state=state)]))


class FakeCore:
    """CoreV1Api: this task's pod, the TrainJob's pods (a script of pod lists), their logs."""

    def __init__(self, own=None, pods: list[list[V1Pod]] | None = None, logs: dict[tuple[str, int], list[str]] | None = None):
        self.own, self.pods, self.logs = own, list(pods or [[]]), logs or {}
        self.log_calls: list[dict] = []

    def read_namespaced_pod(self, name, namespace):
        if self.own is None:
            raise ApiException(status=403, reason="Forbidden")
        return self.own

    def list_namespaced_pod(self, namespace, label_selector):
        assert label_selector.split(",") == [f"{trainjob.JOBSET_NAME_LABEL}={label_selector.split('=')[1].split(',')[0]}",
                                             f"{trainjob.REPLICATED_JOB_LABEL}=node"]
        return V1PodList(items=self.pods.pop(0) if len(self.pods) > 1 else self.pods[0])

    def read_namespaced_pod_log(self, name, namespace, container, follow, _preload_content, since_seconds=None):
        assert container == "node" and follow and not _preload_content
        self.log_calls.append({"name": name, "since_seconds": since_seconds})
        restarts = sum(1 for c in self.log_calls if c["name"] == name) - 1
        return FakeLog(self.logs.get((name, restarts), []))


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def follower(custom: FakeCustom, clock: Clock | None = None) -> trainjob.Follower:
    clock = clock or Clock()
    return trainjob.Follower(trainjob.Cluster(custom, FakeCore(), "team-a"), "pt-sft-0123456789", poll_s=10, clock=clock, sleep=clock.sleep)


def test_follow_succeeds_only_on_the_complete_condition():
    custom = FakeCustom([RUNNING, CREATED, tj(cond("Complete", "False", "Running")), COMPLETE])
    assert trainjob.job_state(follower(custom).follow(3600)) == trainjob.State("complete", "JobSetCompleted", "jobset completed successfully")
    assert [c[0] for c in custom.calls] == ["get"] * 4


def test_follow_raises_the_failed_condition_with_reason_and_message():
    custom = FakeCustom([RUNNING, FAILED])
    with pytest.raises(trainjob.TrainJobFailed, match="FailedJobs: jobset failed due to one or more job failures"):
        follower(custom).follow(3600)
    assert not [c for c in custom.calls if c[0] == "delete"]  # kept for its logs and events


def test_failed_wins_over_complete_and_other_conditions_are_not_terminal():
    assert trainjob.job_state(tj(cond("Complete"), cond("Failed", reason="DeadlineExceeded"))).phase == "failed"
    for job in (RUNNING, CREATED, tj(cond("Suspended", "True", "Suspended")), tj(cond("Failed", "False")), tj(cond("Complete", "Unknown"))):
        assert trainjob.job_state(job).phase == "running"


def test_a_trainjob_deleted_while_followed_fails_the_task():
    with pytest.raises(trainjob.TrainJobFailed, match="deleted"):
        follower(FakeCustom([RUNNING, missing()])).follow(3600)


def test_api_errors_are_retried_then_raised_without_deleting():
    flaky = FakeCustom([ApiException(status=500), ApiException(status=503), COMPLETE])
    assert trainjob.job_state(follower(flaky).follow(3600)).phase == "complete"
    down = FakeCustom([ApiException(status=500)])
    with pytest.raises(trainjob.TrainJobFailed, match="6 API errors in a row"):
        follower(down).follow(3600)
    assert not [c for c in down.calls if c[0] == "delete"]  # a retry of the task adopts it


def test_timeout_deletes_the_trainjob_and_fails():
    clock = Clock()
    custom = FakeCustom([RUNNING])
    with pytest.raises(trainjob.TrainJobFailed, match="timed out after 60s"):
        follower(custom, clock).follow(60)
    assert custom.calls[-1] == ("delete", "pt-sft-0123456789", "Foreground")
    assert 60 < clock.now <= 80


def test_start_creates_a_missing_trainjob_after_staging_its_inputs():
    staged = []
    custom = FakeCustom([missing()])
    follower(custom).start({"metadata": {"name": "pt-sft-0123456789"}, "spec": {"trainer": {"numNodes": 8}}}, lambda: staged.append(1))
    assert staged == [1] and [c[0] for c in custom.calls] == ["get", "create"]


@pytest.mark.parametrize("existing", [RUNNING, CREATED, COMPLETE])
def test_start_adopts_a_running_or_completed_trainjob_of_the_same_run(existing):
    staged = []
    custom = FakeCustom([existing])
    follower(custom).start({"metadata": {"name": "pt-sft-0123456789"}}, lambda: staged.append(1))
    assert staged == [] and [c[0] for c in custom.calls] == ["get"]


def test_start_replaces_a_failed_trainjob():
    staged = []
    custom = FakeCustom([FAILED, FAILED, missing(), missing()])
    follower(custom).start({"metadata": {"name": "pt-sft-0123456789"}, "spec": {"trainer": {"numNodes": 2}}}, lambda: staged.append(1))
    assert [c[0] for c in custom.calls] == ["get", "delete", "get", "get", "get", "create"]
    assert ("delete", "pt-sft-0123456789", "Foreground") in custom.calls and staged == [1]


@pytest.mark.parametrize("then, calls", [
    (RUNNING, ["get", "create", "get"]),  # another attempt created it meanwhile: adopt it
    (FAILED, ["get", "create", "get", "delete", "get", "get", "create"]),  # and it failed already: replace it
])
def test_start_on_409_looks_again(then, calls):
    custom = FakeCustom([missing(), then, missing()], create_errors=[ApiException(status=409, reason="AlreadyExists")])
    follower(custom).start({"metadata": {"name": "pt-sft-0123456789"}, "spec": {"trainer": {"numNodes": 2}}}, lambda: None)
    assert [c[0] for c in custom.calls] == calls


def test_node0_log_is_streamed_once_per_pod_and_restart():
    job = "pt-sft-0123456789"
    first, second = node_pod(job, 0, "a", restarts=0), node_pod(job, 0, "a", restarts=1)
    replaced = node_pod(job, 0, "b", phase="Succeeded", age_s=60)
    core = FakeCore(pods=[[], [node_pod(job, 0, "a", phase="Pending")], [first, node_pod(job, 1, "c")], [second], [second, replaced]],
                    logs={(first.metadata.name, 0): ["step 1", "step 2"], (first.metadata.name, 1): ["restarted", "step 3"],
                          (replaced.metadata.name, 0): ["resumed on a new pod", "done"]})
    lines = []
    streamer = trainjob.LogStreamer(trainjob.Cluster(None, core, "team-a"), job, emit=lines.append, wait_s=0.01)
    streamer.start()
    deadline = datetime.now() + timedelta(seconds=10)
    while len(lines) < 6 and datetime.now() < deadline:
        streamer.finishing.wait(0.01)
    streamer.stop(5)
    assert lines == ["step 1", "step 2", "restarted", "step 3", "resumed on a new pod", "done"]
    assert [c["name"] for c in core.log_calls] == [first.metadata.name] * 2 + [replaced.metadata.name]


def test_a_cut_log_stream_of_a_running_container_is_resumed_from_where_it_stopped():
    job = "pt-sft-0123456789"
    pod = node_pod(job, 0, "a", running=True)
    core = FakeCore(pods=[[pod]], logs={(pod.metadata.name, 0): ["before the cut"], (pod.metadata.name, 1): ["after the cut"]})
    lines = []
    streamer = trainjob.LogStreamer(trainjob.Cluster(None, core, "team-a"), job, emit=lines.append, wait_s=0.01)
    streamer.stream(pod, None)
    assert streamer.next_stream(final=False)[1] >= 1  # since_seconds: from the cut on
    assert streamer.next_stream(final=True) is None  # the job is over: no reconnecting
    streamer.stream(*streamer.next_stream(final=False))
    assert lines == ["before the cut", "after the cut"] and core.log_calls[1]["since_seconds"] >= 1


def own_pod(sa: str = "team-a-runner") -> V1Pod:
    return V1Pod(metadata=V1ObjectMeta(name="smollm3-x7k2p-system-container-impl-1234", labels={"workflows.argoproj.io/workflow": "smollm3-x7k2p"},
                                       owner_references=[V1OwnerReference(api_version="argoproj.io/v1alpha1", kind="Workflow", name="smollm3-x7k2p",
                                                                          uid="5f0c-11")]),
                 spec=V1PodSpec(containers=[], service_account_name=sa))


def test_identity_comes_from_the_task_pod(monkeypatch):
    monkeypatch.delenv("POSTTRAIN_RUN_ID", raising=False)
    monkeypatch.delenv("POSTTRAIN_SERVICE_ACCOUNT", raising=False)
    who = trainjob.identity(own_pod(), {})
    assert who == trainjob.Identity(run_id="smollm3-x7k2p", owner=OWNER, service_account="team-a-runner")
    assert trainjob.identity(own_pod(), {"service_account": "posttrain"}).service_account == "posttrain"
    monkeypatch.setenv("POSTTRAIN_RUN_ID", "run-42")
    assert trainjob.identity(own_pod(), {}).run_id == "run-42"
    monkeypatch.delenv("POSTTRAIN_RUN_ID")
    monkeypatch.setenv("HOSTNAME", "some-pod")
    assert trainjob.identity(None, {}) == trainjob.Identity(run_id="some-pod", owner=None, service_account="posttrain")


# -- the launcher as a KFP task runs it -------------------------------------------------------


@pytest.fixture
def task_env(monkeypatch, tmp_path):
    store = f"file://{tmp_path / 'store'}"
    monkeypatch.setenv("POSTTRAIN_STORE", store)
    monkeypatch.setenv("KFP_POD_NAME", "smollm3-x7k2p-system-container-impl-1234")
    for var in ("POSTTRAIN_RUN_ID", "POSTTRAIN_SERVICE_ACCOUNT", "POSTTRAIN_LOG_DIR"):
        monkeypatch.delenv(var, raising=False)
    return store


def tiny_sft_config(steps: int = 2) -> dict:
    recipe = apply_overrides(load_recipe(RECIPE, "tiny"), [f"sft.max_steps={steps}", "sft.save_steps=100", "cluster.nodes={sft: 2}",
                                                           "cluster.cache_pvc=posttrain-cache",
                                                           # the test's own store comes from POSTTRAIN_STORE
                                                           "cluster.store_uri=file:///mnt/posttrain/cache/checkpoints"])
    config = stage_configs(recipe)["sft"]
    config["launcher"] = launcher_config(recipe, "sft")
    return config


def small_inputs(tmp_path: Path) -> dict[str, Path]:
    from posttrain.datasets_io import read_jsonl
    from posttrain.models import ModelRef, write_model_ref

    write_model_ref(tmp_path / "in" / "policy", ModelRef(uri="local:tiny"))
    tokenized = write_tokenized(tmp_path / "in" / "data", read_jsonl(ROOT / "data/local/sft.jsonl")[:8], load_recipe(RECIPE, "tiny"))
    return {"policy": tmp_path / "in" / "policy", "tokenized": tokenized}


def test_sigterm_deletes_the_trainjob_and_exits_143(task_env, tmp_path, caplog):
    def cancel():
        os.kill(os.getpid(), signal.SIGTERM)
        return RUNNING

    custom = FakeCustom([missing(), RUNNING, cancel, RUNNING])
    previous = signal.getsignal(signal.SIGTERM)
    cluster = trainjob.Cluster(custom, FakeCore(own_pod()), "team-a")
    with pytest.raises(SystemExit) as exit_info:
        trainjob.run_trainjob("sft", tiny_sft_config(), small_inputs(tmp_path), {"model": tmp_path / "out"}, cluster=cluster, poll_s=0.01)
    assert exit_info.value.code == 143
    (name,) = {c[1] for c in custom.calls}
    assert custom.calls[-1] == ("delete", name, "Foreground") and "SIGTERM" in caplog.text
    assert signal.getsignal(signal.SIGTERM) == previous


def test_a_failed_trainjob_fails_the_task_with_node0s_last_lines(task_env, tmp_path, caplog):
    caplog.set_level("INFO")
    custom = FakeCustom([missing(), RUNNING, FAILED])
    core = FakeCore(own_pod())

    def pods_of_created_job():
        name = custom.created[0]["metadata"]["name"]
        pod = node_pod(name, 0, "a", phase="Failed")
        core.logs = {(pod.metadata.name, 0): ["Traceback (most recent call last):", "torch.OutOfMemoryError: CUDA out of memory"]}
        return V1PodList(items=[pod])

    core.list_namespaced_pod = lambda namespace, label_selector: pods_of_created_job()
    with pytest.raises(trainjob.TrainJobFailed, match="FailedJobs"):
        trainjob.run_trainjob("sft", tiny_sft_config(), small_inputs(tmp_path), {"model": tmp_path / "out"},
                              cluster=trainjob.Cluster(custom, core, "team-a"), poll_s=0.01)
    assert "node-0] torch.OutOfMemoryError: CUDA out of memory" in caplog.text
    assert schema_errors(custom.created[0]) == []
    assert custom.created[0]["metadata"]["ownerReferences"] == [OWNER]


def test_a_completed_trainjob_without_a_result_fails_the_task(task_env, tmp_path):
    custom = FakeCustom([missing(), COMPLETE])
    with pytest.raises(trainjob.TrainJobFailed, match="left no result"):
        trainjob.run_trainjob("sft", tiny_sft_config(), small_inputs(tmp_path), {"model": tmp_path / "out"},
                              cluster=trainjob.Cluster(custom, FakeCore(own_pod()), "team-a"), poll_s=0.01)


class RunsTheContainer:
    """A fake cluster's `create`: runs the manifest's container command in this
    process with its env, as a single node with a single process. The cache
    volume is not mounted here, so the cache variables keep the test's values."""

    def __init__(self, monkeypatch):
        self.monkeypatch, self.results = monkeypatch, []

    def __call__(self, manifest: dict) -> None:
        trainer = manifest["spec"]["trainer"]
        assert trainer["command"] == ["python3", "-m", trainjob.WORKER_MODULE]
        for env in trainer["env"]:
            if "value" in env and env["name"] not in ("POSTTRAIN_CACHE", "HF_HOME"):
                self.monkeypatch.setenv(env["name"], env["value"])
        for var, value in {"PET_NNODES": "1", "PET_NPROC_PER_NODE": "1", "PET_NODE_RANK": "0", "PET_MASTER_ADDR": "127.0.0.1",
                           "PET_MASTER_PORT": "29500"}.items():
            self.monkeypatch.setenv(var, value)
        real = trainjob_worker.run_stage
        self.monkeypatch.setattr(trainjob_worker, "run_stage", lambda *a: self.results.append(real(*a)) or self.results[-1])
        trainjob_worker.main(*trainer["args"])


def test_round_trip_through_the_store_with_a_real_stage(task_env, tmp_path, monkeypatch):
    from posttrain.models import read_model_ref
    from posttrain.store import open_store

    config = tiny_sft_config(steps=2)
    inputs = small_inputs(tmp_path)
    outputs = {"model": tmp_path / "kfp" / "model"}
    worker = RunsTheContainer(monkeypatch)
    custom = FakeCustom([missing(), COMPLETE], on_create=worker)
    result = trainjob.run_trainjob("sft", config, inputs, outputs, cluster=trainjob.Cluster(custom, FakeCore(own_pod()), "team-a"), poll_s=0.01)

    assert [r for r in worker.results] == [result] and isinstance(result, StageResult)
    assert result.metrics["train.steps"] == 2.0
    ref = read_model_ref(outputs["model"])
    assert result.metadata["model"]["uri"] == ref.uri and not (outputs["model"] / "manifest.json").exists()
    # The nodes saw the same inputs as the task: the same fingerprint, so the same checkpoint keys.
    stage_config = {k: v for k, v in config.items() if k != "launcher"}
    local = StageContext.create(stage_config, inputs, outputs)
    try:
        assert ref.uri == local.store.key_uri(local.checkpoint_key("final"))
    finally:
        local.cleanup()
    # Staged datasets are dropped once the outputs are home; spec, outputs and result stay.
    store = open_store(task_env)
    (name,) = {c[1] for c in custom.calls}
    staging = trainjob.Staging.for_job(config["recipe"], name)
    assert store.manifest(staging.input("data")) is None and store.manifest(staging.spec) is not None
    assert store.manifest(staging.result) is not None and store.manifest(staging.output("model")) is not None


def test_two_nodes_on_localhost_share_their_checkpoints_and_node_0_uploads(task_env, tmp_path):
    """The worker as the torch-distributed runtime starts it on 2 nodes (here 2
    processes on this machine, 1 CPU process each, gloo): accelerate's
    multi-machine launch with static rendezvous, both ranks writing into the
    shared folder, global rank 0 on node 0 uploading outputs and result."""
    import subprocess
    import sys

    from posttrain.store import open_store

    config = tiny_sft_config(steps=2)
    stage_config = {k: v for k, v in config.items() if k != "launcher"}
    inputs, outputs = small_inputs(tmp_path), {"model": tmp_path / "kfp" / "model"}
    store, staging = open_store(task_env), trainjob.Staging.for_job(config["recipe"], "pt-sft-0123456789")
    trainjob.stage_inputs(store, staging, "sft", stage_config, inputs, outputs)
    torchrun = {"PET_NNODES": "2", "PET_NPROC_PER_NODE": "1", "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(launch.free_port())}
    env = {**os.environ, **torchrun, trainjob.SHARED_WORKDIR_ENV: str(tmp_path / "volume" / "trainjob")}
    nodes = [subprocess.Popen([sys.executable, "-m", trainjob.WORKER_MODULE, staging.prefix], env={**env, "PET_NODE_RANK": str(rank)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    logs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    assert "--num_machines 2 --machine_rank 1" in logs[1] and "outputs and result uploaded" not in logs[1]

    result = trainjob.fetch_outputs(store, staging, outputs)
    assert result.metrics["train.steps"] == 2.0
    # Rank 1 (node 1) wrote its part of the checkpoint into the folder rank 0 uploaded.
    (checkpoint,) = (tmp_path / "store").rglob("checkpoint-2")
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in checkpoint.iterdir()}
    assert not any((tmp_path / "volume" / "trainjob").iterdir())  # node 0 removed the shared scratch folder


# -- the node side and the dispatch ---------------------------------------------------------


def test_worker_reads_torchruns_variables():
    env = {"PET_NNODES": "8", "PET_NPROC_PER_NODE": "8", "PET_NODE_RANK": "3", "PET_MASTER_ADDR": "pt-sft-1-node-0-0.pt-sft-1",
           "PET_MASTER_PORT": "29500"}
    machines, per_node = trainjob_worker.machines_from_env(env)
    assert machines == launch.Machines(count=8, rank=3, main_ip="pt-sft-1-node-0-0.pt-sft-1", main_port=29500) and per_node == 8


def test_multi_node_launch_command_is_what_accelerate_parses(tmp_path):
    from accelerate.commands.launch import launch_command_parser

    m = launch.Machines(count=8, rank=3, main_ip="pt-sft-1-node-0-0.pt-sft-1", main_port=29500)
    cmd = launch.launch_command(tmp_path / "spec.json", 64, "bf16", deepspeed_config=launch.deepspeed_config_path(), machines=m)
    args = launch_command_parser().parse_args(cmd[3:])
    assert (args.num_processes, args.num_machines, args.machine_rank) == (64, 8, 3)
    assert args.main_process_ip == m.main_ip and args.main_process_port == 29500 and args.rdzv_backend == "static"
    assert args.use_deepspeed and args.deepspeed_multinode_launcher == "standard" and args.zero3_init_flag == "true"


def test_only_machine_zero_returns_the_result(monkeypatch, tmp_path):
    class Done:
        def __init__(self, cmd, env):
            self.cmd = cmd

        def wait(self):
            return 0

    monkeypatch.setattr(launch.subprocess, "Popen", Done)
    other = launch.Machines(count=2, rank=1, main_ip="node-0", main_port=29500)
    assert launch.run_launched("sft", {"task": "sft"}, {}, {}, 16, machines=other, shared_workdir=tmp_path) is None
    with pytest.raises(RuntimeError, match="launched stage failed"):  # machine 0 must have rank 0's result
        launch.run_launched("sft", {"task": "sft"}, {}, {}, 16, machines=launch.Machines(2, 0, "node-0", 29500), shared_workdir=tmp_path)


def test_execute_sends_a_multi_node_stage_to_a_trainjob(monkeypatch):
    calls = []
    monkeypatch.setattr(trainjob, "run_trainjob", lambda stage, config, i, o: calls.append((stage, "trainjob")) or "r")
    monkeypatch.setattr(launch, "run_in_process", lambda stage, *a: calls.append((stage, "in_process")))
    monkeypatch.setattr(launch, "visible_gpus", lambda: 0)
    launch.execute("midtrain", {"launcher": {"nodes": 8}}, {}, {})
    launch.execute("sft", {}, {}, {})
    assert calls == [("midtrain", "trainjob"), ("sft", "in_process")]


def test_a_node_without_the_shared_folder_refuses_a_multi_node_run():
    spec = {"stage": "sft", "config": {}}
    with pytest.raises(RuntimeError, match="POSTTRAIN_SHARED_WORKDIR"):
        trainjob_worker.run_stage(spec, {}, {}, launch.Machines(2, 0, "node-0", 29500), 8, None)


def test_worker_inputs_link_the_fetched_files_without_the_manifest(tmp_path):
    from conftest import make_checkpoint

    from posttrain.store import open_store

    store = open_store(f"file://{tmp_path / 'store'}")
    store.put(make_checkpoint(tmp_path), "r/trainjob/j/inputs/data")
    (local,) = trainjob_worker.fetch_inputs(store, trainjob.Staging("r/trainjob/j"), ["data"], tmp_path / "node").values()
    assert sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file()) == ["model.safetensors", "sub/config.json"]
    assert (local / "model.safetensors").read_bytes() == b"weights"


def test_directory_and_single_file_outputs_come_home(tmp_path):
    from posttrain.store import open_store

    store, staging = open_store(f"file://{tmp_path / 'store'}"), trainjob.Staging("r/trainjob/j")
    kfp = {"model": tmp_path / "kfp" / "model", "report": tmp_path / "kfp" / "report" / "report.md"}
    node = trainjob_worker.output_paths(trainjob.output_kinds(kfp), tmp_path / "node")
    (node["model"] / "model.json").write_text('{"uri": "file:///x"}')
    node["report"].write_text("# report")
    trainjob_worker.upload_outputs(store, staging, node, StageResult(metrics={"m": 1.0}, metadata={"model": {"uri": "file:///x"}}))
    result = trainjob.fetch_outputs(store, staging, kfp)
    assert result == StageResult(metrics={"m": 1.0}, metadata={"model": {"uri": "file:///x"}})
    assert (kfp["model"] / "model.json").read_text() == '{"uri": "file:///x"}' and sorted(p.name for p in kfp["model"].iterdir()) == ["model.json"]
    assert kfp["report"].read_text() == "# report"
