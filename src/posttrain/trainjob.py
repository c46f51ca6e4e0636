"""A training stage on several nodes: its KFP task launches a Kubeflow Trainer
TrainJob (v2.3, the `torch-distributed` ClusterTrainingRuntime) and follows it.

The task's pod is small (no GPU). It
1. stages the stage spec (stage, config minus `launcher`) and every input
   directory in the checkpoint store under `<recipe>/trainjob/<job>/`, since
   the nodes cannot see the task's local artifact paths;
2. creates the TrainJob, or adopts the one a previous attempt of the same run
   left running (the job name is deterministic per run and task);
3. follows it: streams node 0's log into its own, succeeds only on the
   `Complete=True` condition, raises with reason and message on
   `Failed=True`, deletes it and raises past `resources.timeout_s`;
4. downloads the outputs and the StageResult that global rank 0 uploaded
   (posttrain/trainjob_worker.py) into the KFP output paths.
SIGTERM (a cancelled run) deletes the TrainJob and exits 143.

Everything the nodes need comes from the CRD and the runtime in
../shared/schemas/kubeflow-trainer-v2.3.0: `spec.trainer` (image, command,
env, numNodes, numProcPerNode, resourcesPerNode) and one `runtimePatches`
entry for the pod-level settings v2.3 lets a TrainJob patch (serviceAccountName,
nodeSelector, tolerations, volumes, the `node` container's volumeMounts,
terminationGracePeriodSeconds). The runtime gives every node torchrun's
variables (PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR,
PET_MASTER_PORT), which the worker passes to `accelerate launch`.

This module imports no Kubernetes client at import time: the worker uses its
store layout (`Staging`) and runs where only posttrain is needed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from posttrain.store import MANIFEST, CheckpointStore, open_store

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL, KIND = "trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob"
# The runtime's replicated job and its container (runtime-torch-distributed.yaml): the
# pod patches and the log stream name them.
NODE = "node"
# Labels JobSet puts on every pod of a TrainJob's JobSet (named like the TrainJob), and the
# Job controller's completion index of an Indexed Job's pod: node 0 is index 0. The index is
# a pod label since Kubernetes 1.28 and always an annotation; both are read.
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"
REPLICATED_JOB_LABEL = "jobset.sigs.k8s.io/replicatedjob-name"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
# The same mount and variables as every other task of the pipeline (dag.py).
CACHE_MOUNT = "/mnt/posttrain/cache"
CACHE_ENV = "POSTTRAIN_CACHE"
# The nodes put their shared scratch folder here (see trainjob_worker.py).
SHARED_WORKDIR_ENV = "POSTTRAIN_SHARED_WORKDIR"
WORKER_MODULE = "posttrain.trainjob_worker"
MANAGER = "posttrain"
DEFAULT_SERVICE_ACCOUNT = "posttrain"
SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
# Trainer/JobSet name pods `<job>-node-0-<index>` and use that as the hostname (a DNS
# label, at most 63 characters); a 40-character job name leaves room for any index.
MAX_NAME = 40
POLL_S = 10.0
# Consecutive failed API calls (an API server restarting) tolerated while following.
MAX_API_ERRORS = 6
# Nodes get SIGTERM when the TrainJob is deleted or preempted; they save a checkpoint
# (launch.SHUTDOWN_TIMEOUT_S) before the kubelet kills them.
GRACE_MARGIN_S = 60


class TrainJobFailed(RuntimeError):
    pass


class Cancelled(SystemExit):
    """SIGTERM: the run was cancelled (or this pod evicted); the TrainJob is deleted."""

    def __init__(self):
        super().__init__(143)


# -- the store layout shared with the nodes -------------------------------------------


@dataclass(frozen=True)
class Staging:
    """Where a TrainJob's spec, inputs, outputs and result live in the store."""

    prefix: str

    @classmethod
    def for_job(cls, recipe: str, job: str) -> Staging:
        return cls(f"{recipe}/trainjob/{job}")

    @property
    def spec(self) -> str:
        return f"{self.prefix}/spec"

    @property
    def result(self) -> str:
        return f"{self.prefix}/result"

    def input(self, name: str) -> str:
        return f"{self.prefix}/inputs/{name}"

    def output(self, name: str) -> str:
        return f"{self.prefix}/outputs/{name}"


SPEC_FILE = "spec.json"
RESULT_FILE = "result.json"


def output_kinds(outputs: dict[str, Path]) -> dict[str, str | None]:
    """Each output's file name, or None for a directory artifact (the rule of
    stages/__main__.py: a path with a suffix is a single file)."""
    return {name: (path.name if path.suffix else None) for name, path in outputs.items()}


def copy_contents(src: Path, dest: Path) -> None:
    """A fetched checkpoint's files, without the store's manifest, into `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        if item.name == MANIFEST:
            continue
        if item.is_dir():
            shutil.copytree(item, dest / item.name, dirs_exist_ok=True)
        else:
            shutil.copy2(item, dest / item.name)


def put_json(store: CheckpointStore, key: str, filename: str, data: dict) -> None:
    with tempfile.TemporaryDirectory(prefix="posttrain-trainjob-") as tmp:
        (Path(tmp) / filename).write_text(json.dumps(data, sort_keys=True))
        store.put(Path(tmp), key)


def get_json(store: CheckpointStore, key: str, filename: str, cache_dir: Path) -> dict:
    return json.loads((store.get(key, cache_dir) / filename).read_text())


def stage_inputs(store: CheckpointStore, staging: Staging, stage: str, config: dict, inputs: dict[str, Path],
                 outputs: dict[str, Path]) -> None:
    """Upload each input directory, then the spec (last: a node that finds the
    spec finds the inputs)."""
    for name, path in inputs.items():
        store.put(path, staging.input(name))
    # Leftovers of a replaced attempt must not pass for this one's result.
    for key in (staging.result, *(staging.output(n) for n in outputs)):
        store.delete(key)
    # `attempt`: this TrainJob's nodes share a scratch folder named after it; one
    # that replaces a failed TrainJob of the same name starts with an empty one.
    spec = {"stage": stage, "config": config, "inputs": sorted(inputs), "outputs": output_kinds(outputs), "attempt": uuid.uuid4().hex[:12]}
    put_json(store, staging.spec, SPEC_FILE, spec)


def fetch_outputs(store: CheckpointStore, staging: Staging, outputs: dict[str, Path]):
    """Copy what global rank 0 uploaded into the KFP output paths; return its StageResult."""
    from posttrain.stages.context import StageResult

    if store.manifest(staging.result) is None:
        raise TrainJobFailed(f"the TrainJob completed but left no result at {store.key_uri(staging.result)}: rank 0 never finished uploading")
    with tempfile.TemporaryDirectory(prefix="posttrain-trainjob-") as tmp:
        for name, path in outputs.items():
            fetched = store.get(staging.output(name), Path(tmp))
            if path.suffix:
                path.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(fetched / path.name, path)
            else:
                copy_contents(fetched, path)
        return StageResult(**get_json(store, staging.result, RESULT_FILE, Path(tmp)))


def drop_inputs(store: CheckpointStore, staging: Staging, inputs: dict[str, Path]) -> None:
    """Staged datasets can be large; once the outputs are home they are not needed."""
    for name in inputs:
        store.delete(staging.input(name))


# -- the manifest -------------------------------------------------------------------------


def check_launcher(launcher: dict) -> None:
    """Refuse what a multi-node run cannot do, before any GPU is requested."""
    if launcher["nodes"] < 2 or launcher["resources"].get("gpus", 0) < 1:
        raise ValueError(f"a TrainJob needs nodes >= 2 and gpus >= 1 per node (got {launcher['nodes']} x {launcher['resources'].get('gpus')})")
    # Every rank writes its ZeRO-3 shards into the checkpoint folder and rank 0
    # uploads that folder: on node-local disks it would hold node 0's shards only.
    if not launcher.get("cache_pvc"):
        raise ValueError("a multi-node stage needs cluster.cache_pvc (a ReadWriteMany claim): its nodes share their checkpoint folder on it")


def slug(text: str, limit: int) -> str:
    """Lower-case letters, digits and dashes, at most `limit` long, trimmed of dashes."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower())[:limit].strip("-")


def job_name(config: dict, run_id: str) -> str:
    """Deterministic per run and task config (a retried task finds its TrainJob),
    different across runs, sweep branches and configs; an RFC 1035 label short
    enough for the pod hostnames Trainer derives from it."""
    digest = hashlib.sha256(json.dumps({"run": run_id, "config": config}, sort_keys=True).encode()).hexdigest()
    task = slug(config.get("task", "stage"), MAX_NAME - len("pt--") - 10) or "stage"
    return f"pt-{task}-{digest[:10]}"


def label_value(text: str) -> str:
    """A valid label value (63 characters, alphanumerics at both ends)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:63].strip("-_.")


def container_env(launcher: dict) -> list[dict]:
    env = [{"name": "POSTTRAIN_STORE", "value": launcher["store_uri"]}, {"name": "PYTHONUNBUFFERED", "value": "1"}]
    if launcher.get("cache_pvc"):
        env += [{"name": CACHE_ENV, "value": f"{CACHE_MOUNT}/posttrain"}, {"name": "HF_HOME", "value": f"{CACHE_MOUNT}/huggingface"},
                {"name": SHARED_WORKDIR_ENV, "value": f"{CACHE_MOUNT}/trainjob"}]
    for secret in launcher.get("secrets", []):
        env += [{"name": var, "valueFrom": {"secretKeyRef": {"name": secret["name"], "key": key}}} for key, var in secret["env"].items()]
    return env


def resources_per_node(res: dict) -> dict:
    """Limits only: Kubernetes takes requests equal to limits, as for the other
    tasks (kfp's set_*_limit), and GPUs must have requests == limits anyway."""
    limits = {res.get("accelerator", "nvidia.com/gpu"): str(res["gpus"])}
    for key in ("cpu", "memory"):
        if res.get(key):
            limits[key] = str(res[key])
    return {"limits": limits}


def volumes(launcher: dict) -> tuple[list[dict], list[dict]]:
    """(pod volumes, the node container's mounts): /dev/shm in memory, the cache PVC."""
    res, vols, mounts = launcher["resources"], [], []
    if res.get("shm_size"):
        vols.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": res["shm_size"]}})
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    if launcher.get("cache_pvc"):
        vols.append({"name": "posttrain-cache", "persistentVolumeClaim": {"claimName": launcher["cache_pvc"]}})
        mounts.append({"name": "posttrain-cache", "mountPath": CACHE_MOUNT})
    return vols, mounts


def pod_patch(launcher: dict, service_account: str) -> dict:
    from posttrain.launch import SHUTDOWN_TIMEOUT_S

    res = launcher["resources"]
    vols, mounts = volumes(launcher)
    spec: dict = {"serviceAccountName": service_account, "terminationGracePeriodSeconds": SHUTDOWN_TIMEOUT_S + GRACE_MARGIN_S}
    if res.get("node_selector"):
        spec["nodeSelector"] = dict(res["node_selector"])
    if res.get("tolerations"):
        spec["tolerations"] = [{k: v for k, v in t.items() if v is not None} for t in res["tolerations"]]
    if vols:
        spec["volumes"] = vols
        spec["containers"] = [{"name": NODE, "volumeMounts": mounts}]
    return {"spec": spec}


def build_manifest(name: str, namespace: str, launcher: dict, staging: Staging, *, service_account: str,
                   labels: dict[str, str] | None = None, owner: dict | None = None) -> dict:
    """The TrainJob for a stage staged at `staging`. Not settable through a v2.3
    TrainJob: the pods' priorityClassName (PodSpecPatch has no such field); it
    has to come from the runtime's own pod template."""
    check_launcher(launcher)
    res = launcher["resources"]
    metadata = {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/managed-by": MANAGER, **(labels or {})},
                "annotations": {"posttrain/staging": f"{launcher['store_uri'].rstrip('/')}/{staging.prefix}"}}
    if owner:
        metadata["ownerReferences"] = [owner]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": metadata,
        "spec": {
            "runtimeRef": {"apiGroup": GROUP, "kind": "ClusterTrainingRuntime", "name": launcher["runtime"]},
            # The Trainer fails the job past this (reason DeadlineExceeded) even if this pod is gone.
            "activeDeadlineSeconds": int(res["timeout_s"]),
            "trainer": {
                "image": launcher["image"],
                "command": ["python3", "-m", WORKER_MODULE],
                "args": [staging.prefix],
                "env": container_env(launcher),
                "numNodes": int(launcher["nodes"]),
                "numProcPerNode": int(res["gpus"]),
                "resourcesPerNode": resources_per_node(res),
            },
            "runtimePatches": [{
                "manager": MANAGER,
                "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [
                    {"name": NODE, "template": {"spec": {"template": pod_patch(launcher, service_account)}}},
                ]}}},
            }],
        },
    }


# -- TrainJob state -------------------------------------------------------------------


@dataclass(frozen=True)
class State:
    phase: str  # "complete", "failed" or "running" (anything not terminal)
    reason: str = ""
    message: str = ""


def condition(job: dict, kind: str) -> dict | None:
    return next((c for c in (job.get("status") or {}).get("conditions") or [] if c.get("type") == kind), None)


def job_state(job: dict) -> State:
    """Terminal only on the Trainer's conditions: `Failed=True` (checked first)
    or `Complete=True`; `Suspended` and anything else mean not finished."""
    for kind, phase in (("Failed", "failed"), ("Complete", "complete")):
        c = condition(job, kind)
        if c and c.get("status") == "True":
            return State(phase, c.get("reason", ""), c.get("message", ""))
    return State("running")


def describe(job: dict) -> str:
    conditions = (job.get("status") or {}).get("conditions") or []
    return ", ".join(f"{c.get('type')}={c.get('status')} ({c.get('reason', '')})" for c in conditions) or "no conditions yet"


# -- the Kubernetes side ----------------------------------------------------------------


def api_status(error: BaseException) -> int | None:
    return getattr(error, "status", None)


@dataclass
class Cluster:
    """The two APIs the launcher uses and the namespace it works in."""

    custom: object  # kubernetes.client.CustomObjectsApi
    core: object  # kubernetes.client.CoreV1Api
    namespace: str

    @classmethod
    def connect(cls) -> Cluster:
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        return cls(client.CustomObjectsApi(), client.CoreV1Api(), own_namespace())

    def get(self, name: str) -> dict | None:
        try:
            return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        except Exception as e:
            if api_status(e) == 404:
                return None
            raise

    def create(self, manifest: dict) -> dict:
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, manifest)

    def delete(self, name: str) -> None:
        """Foreground: the JobSet and pods go before the TrainJob does. 404: already gone."""
        try:
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name, propagation_policy="Foreground")
        except Exception as e:
            if api_status(e) != 404:
                raise


def own_namespace() -> str:
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    path = SA_DIR / "namespace"
    if path.is_file():
        return path.read_text().strip()
    from kubernetes import config

    _, context = config.list_kube_config_contexts()
    return context["context"].get("namespace", "default")


def own_pod(core, namespace: str):
    """This task's pod (KFP sets KFP_POD_NAME; HOSTNAME is the pod name), or None."""
    name = os.environ.get("KFP_POD_NAME") or os.environ.get("HOSTNAME")
    if not name:
        return None
    try:
        return core.read_namespaced_pod(name, namespace)
    except Exception as e:  # noqa: BLE001 - only a fallback for names and ownership
        log.warning("cannot read this pod (%s): the TrainJob gets no owner and the run id falls back to the pod name", e)
        return None


@dataclass(frozen=True)
class Identity:
    """Which run this task belongs to, who owns the TrainJob, as whom its pods run."""

    run_id: str
    owner: dict | None
    service_account: str


def identity(pod, launcher: dict) -> Identity:
    """The run id: POSTTRAIN_RUN_ID, else the pod's KFP run label, else its Argo
    workflow (one per KFP run), else the pod name (then a retry cannot adopt).
    The owner: the Argo Workflow that owns the pod, so deleting the run deletes
    the TrainJob. The service account: the launcher's, else the pod's."""
    meta = getattr(pod, "metadata", None)
    labels = (meta.labels if meta else None) or {}
    run_id = (os.environ.get("POSTTRAIN_RUN_ID") or labels.get("pipeline/runid") or labels.get("workflows.argoproj.io/workflow")
              or (meta.name if meta else None) or os.environ.get("HOSTNAME", "local"))
    owner = None
    for ref in (meta.owner_references if meta else None) or []:
        if ref.kind == "Workflow":
            owner = {"apiVersion": ref.api_version, "kind": ref.kind, "name": ref.name, "uid": ref.uid, "blockOwnerDeletion": False}
    spec = getattr(pod, "spec", None)
    sa = (launcher.get("service_account") or os.environ.get("POSTTRAIN_SERVICE_ACCOUNT")
          or (spec.service_account_name if spec else None) or DEFAULT_SERVICE_ACCOUNT)
    return Identity(run_id=run_id, owner=owner, service_account=sa)


# -- node 0's log ------------------------------------------------------------------------


def completion_index(pod) -> str | None:
    meta = pod.metadata
    return (meta.labels or {}).get(COMPLETION_INDEX) or (meta.annotations or {}).get(COMPLETION_INDEX)


def node_status(pod):
    return next((s for s in (pod.status.container_statuses if pod.status else None) or [] if s.name == NODE), None)


class LogStreamer(threading.Thread):
    """Follows the `node` container of node 0's pod, line by line, into this log.
    The pod may not exist yet, be pending, be replaced (a new pod of the same
    index) or restart its container: each (pod, restart) is streamed once, and
    a stream the API server cut while the container runs is resumed from the
    time it was cut (a line or two may repeat)."""

    def __init__(self, cluster: Cluster, job: str, emit: Callable[[str], None] | None = None, wait_s: float = 5.0):
        super().__init__(name=f"logs-{job}", daemon=True)
        self.cluster, self.job, self.wait_s = cluster, job, wait_s
        self.emit = emit or (lambda line: log.info("[%s node-0] %s", job, line))
        self.finishing = threading.Event()
        self.ended: dict[tuple[str, int], float] = {}

    def node0(self):
        selector = f"{JOBSET_NAME_LABEL}={self.job},{REPLICATED_JOB_LABEL}={NODE}"
        pods = [p for p in self.cluster.core.list_namespaced_pod(self.cluster.namespace, label_selector=selector).items
                if completion_index(p) == "0"]
        return max(pods, key=lambda p: str(p.metadata.creation_timestamp or ""), default=None)

    def next_stream(self, final: bool):
        """(node 0's pod, since_seconds or None) for a log to stream now, or None."""
        pod = self.node0()
        if pod is None or (pod.status and pod.status.phase == "Pending"):
            return None
        status = node_status(pod)
        key = (pod.metadata.uid, status.restart_count if status else 0)
        if key not in self.ended:
            return pod, None
        running = status is not None and status.state is not None and status.state.running is not None
        if running and not final:
            return pod, max(1, math.ceil(time.time() - self.ended[key]))
        return None

    def stream(self, pod, since_s: int | None) -> None:
        from kubernetes.watch.watch import iter_resp_lines

        status = node_status(pod)
        key = (pod.metadata.uid, status.restart_count if status else 0)
        extra = {"since_seconds": since_s} if since_s else {}
        try:
            resp = self.cluster.core.read_namespaced_pod_log(pod.metadata.name, self.cluster.namespace, container=NODE, follow=True,
                                                             _preload_content=False, **extra)
            try:
                for line in iter_resp_lines(resp):
                    self.emit(line)
            finally:
                resp.release_conn()
        finally:
            self.ended[key] = time.time()

    def run(self) -> None:
        while True:
            final = self.finishing.is_set()
            try:
                target = self.next_stream(final)
                if target is not None:
                    self.stream(*target)
                    continue
            except Exception as e:  # noqa: BLE001 - logs are best effort; the job's conditions decide
                log.debug("log stream of %s: %s", self.job, e)
            if final:
                return
            self.finishing.wait(self.wait_s)

    def stop(self, drain_s: float) -> None:
        """Stream what node 0's finished pod has not shown yet (a failure's
        traceback), waiting at most `drain_s`."""
        self.finishing.set()
        self.join(drain_s)


# -- launching and following ------------------------------------------------------------


@dataclass
class Follower:
    """Creates or adopts one TrainJob and follows it to a terminal condition."""

    cluster: Cluster
    name: str
    poll_s: float = POLL_S
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep

    def start(self, manifest: dict, stage: Callable[[], None]) -> None:
        """Adopt a running or completed TrainJob of this name; replace a failed
        one (a Failed TrainJob never runs again and its spec is immutable; the
        new one resumes from the store's checkpoints); create it if absent,
        calling `stage` (upload the inputs) first. A 409 on create means another
        attempt created it meanwhile: look again."""
        for _ in range(3):
            job = self.cluster.get(self.name)
            if job is None:
                stage()
                try:
                    self.cluster.create(manifest)
                    log.info("created TrainJob %s/%s (%d nodes)", self.cluster.namespace, self.name, manifest["spec"]["trainer"]["numNodes"])
                    return
                except Exception as e:
                    if api_status(e) != 409:
                        raise
                    log.info("TrainJob %s appeared meanwhile", self.name)
                    continue
            state = job_state(job)
            if state.phase == "failed":
                log.warning("TrainJob %s failed before (%s: %s); replacing it", self.name, state.reason, state.message)
                self.delete_and_wait()
                continue
            log.info("adopting TrainJob %s from an earlier attempt of this run (%s)", self.name, describe(job))
            return
        raise TrainJobFailed(f"TrainJob {self.name}: could not create or adopt it")

    def delete_and_wait(self, timeout_s: float = 600) -> None:
        self.cluster.delete(self.name)
        deadline = self.clock() + timeout_s
        while self.cluster.get(self.name) is not None:
            if self.clock() > deadline:
                raise TrainJobFailed(f"TrainJob {self.name} still exists {timeout_s:.0f}s after its deletion")
            self.sleep(self.poll_s)

    def follow(self, timeout_s: float) -> dict:
        """Poll until a terminal condition; return the completed TrainJob.
        Raises TrainJobFailed on Failed=True, on the TrainJob disappearing, past
        `timeout_s` (after deleting it) and after MAX_API_ERRORS API errors in a
        row (without deleting it: a retry of this task adopts it)."""
        deadline, errors, last = self.clock() + timeout_s, 0, None
        while True:
            try:
                job = self.cluster.get(self.name)
                errors = 0
            except Exception as e:
                errors += 1
                if errors >= MAX_API_ERRORS:
                    raise TrainJobFailed(f"TrainJob {self.name}: {errors} API errors in a row, last: {e}") from e
                log.warning("reading TrainJob %s failed (%s); retrying", self.name, e)
                job = {}
            if job is None:
                raise TrainJobFailed(f"TrainJob {self.name} was deleted while running")
            if job and (status := describe(job)) != last:
                log.info("TrainJob %s: %s", self.name, status)
                last = status
            state = job_state(job) if job else State("running")
            if state.phase == "complete":
                return job
            if state.phase == "failed":
                raise TrainJobFailed(f"TrainJob {self.name} failed: {state.reason}: {state.message}")
            if self.clock() > deadline:
                log.error("TrainJob %s: still running after %.0fs; deleting it", self.name, timeout_s)
                self.cluster.delete(self.name)
                raise TrainJobFailed(f"TrainJob {self.name} timed out after {timeout_s:.0f}s")
            self.sleep(self.poll_s)


class DeleteOnCancel:
    """While active, SIGTERM deletes the TrainJob and exits 143. Nothing else
    deletes it on the way out: after a crash of this pod, a retry adopts it."""

    def __init__(self, cluster: Cluster, name: str):
        self.cluster, self.name, self.previous = cluster, name, None

    def handle(self, signum, frame) -> None:
        log.warning("SIGTERM: the run was cancelled; deleting TrainJob %s", self.name)
        try:
            self.cluster.delete(self.name)
        finally:
            raise Cancelled()

    def __enter__(self):
        self.previous = signal.signal(signal.SIGTERM, self.handle)
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGTERM, self.previous)


def run_trainjob(stage: str, config: dict, inputs: dict[str, Path], outputs: dict[str, Path], *,
                 cluster: Cluster | None = None, poll_s: float = POLL_S, drain_s: float = 30.0):
    """Run `stage` as a TrainJob (see the module docstring); return its StageResult."""
    from posttrain.stages.context import STORE_ENV

    launcher = {**config["launcher"], "store_uri": os.environ.get(STORE_ENV) or config["launcher"]["store_uri"]}
    check_launcher(launcher)
    cluster = cluster or Cluster.connect()
    who = identity(own_pod(cluster.core, cluster.namespace), launcher)
    name = job_name(config, who.run_id)
    staging = Staging.for_job(config["recipe"], name)
    store = open_store(launcher["store_uri"])
    stage_config = {k: v for k, v in config.items() if k != "launcher"}
    labels = {"posttrain/recipe": label_value(config["recipe"]), "posttrain/task": label_value(config.get("task", stage)),
              "posttrain/run": label_value(who.run_id)}
    manifest = build_manifest(name, cluster.namespace, launcher, staging, service_account=who.service_account, labels=labels, owner=who.owner)
    follower = Follower(cluster, name, poll_s=poll_s)
    with DeleteOnCancel(cluster, name):
        follower.start(manifest, lambda: stage_inputs(store, staging, stage, stage_config, inputs, outputs))
        logs = LogStreamer(cluster, name)
        logs.start()
        try:
            follower.follow(float(launcher["resources"]["timeout_s"]))
        except Cancelled:
            drain_s = 0  # the pod's grace period is short
            raise
        finally:
            logs.stop(drain_s)
    result = fetch_outputs(store, staging, outputs)
    drop_inputs(store, staging, inputs)
    log.info("TrainJob %s complete: %s", name, json.dumps(result.metrics, sort_keys=True))
    return result
