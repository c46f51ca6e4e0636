"""preflight: every problem a run would hit, found before any GPU is
requested and reported together in one PreflightError.

What each check talks to here: the Hub is tests/hubserver.py (FakeHub, with
a scripted /api/whoami-v2 where a test needs another token), registries are
tests/registryserver.py (FakeRegistry), S3 is SeaweedFS (tests/s3server.py).
No Kubernetes API server exists in this environment: the GPU and TrainJob
runtime checks get scripted CoreV1Api / CustomObjectsApi doubles that return
real kubernetes.client model objects (nodes with labels, taints, allocatable
resources and conditions) or raise ApiException (403, 404), in place of
cluster_checks.kube_apis.
"""

import base64
import json
import threading
import time

import pytest
from conftest import RECIPE
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from netguard import no_network
from registryserver import DOCKER_MANIFEST, OCI_INDEX, FakeRegistry

from posttrain import cluster_checks as cc
from posttrain import oci_registry
from posttrain.dag import preflight_cluster_config, stage_configs
from posttrain.recipe import apply_overrides, load_recipe
from posttrain.stages import preflight
from posttrain.stages.context import StageContext

SECRETS = {"HF_TOKEN": "hf_testtokenvalue123", "AWS_ACCESS_KEY_ID": "test-key-id", "AWS_SECRET_ACCESS_KEY": "test-secret-value"}
H100 = {"posttrain.io/pool": "h100"}
GPU_TAINT = ("nvidia.com/gpu", "present", "NoSchedule")


def _config(tmp_path, monkeypatch, overrides=(), store=None):
    monkeypatch.setenv("POSTTRAIN_STORE", store or f"file://{tmp_path / 'store'}")
    return stage_configs(apply_overrides(load_recipe(RECIPE, "tiny"), list(overrides)))["preflight"]


def _preflight(config):
    ctx = StageContext.create(config, {}, {})
    try:
        return preflight.run(ctx)
    finally:
        ctx.cleanup()


def _run(tmp_path, monkeypatch, overrides):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = _config(tmp_path, monkeypatch, overrides)
    return config, _preflight(config)


# -- local runs: today's checks, all problems at once, no network -------------------------------


def test_recipe_models_are_listed_and_resolve(tmp_path, monkeypatch):
    config, _ = _run(tmp_path, monkeypatch, [])
    assert [m["uri"] for m in config["models"]] == ["local:tiny-reward"]


@pytest.mark.parametrize(
    ("model", "why"),
    [("file:///nonexistent/strong", "config.json not found"), ("hf://no-such-org/no-such-model", "not in the local Hub cache")],
)
def test_a_missing_strong_model_fails_in_seconds(tmp_path, monkeypatch, model, why):
    overrides = ["prefgen.method=strong_vs_weak", "prefgen.regenerate=false", f"prefgen.strong={{uri: '{model}'}}", "prefgen.weak={uri: 'local:tiny'}"]
    with pytest.raises(preflight.PreflightError, match=f"model {model}@main: cannot be resolved: .*{why}"):
        _run(tmp_path, monkeypatch, overrides)


def test_a_local_run_does_only_the_local_checks_and_no_network(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = _config(tmp_path, monkeypatch)
    assert "cluster" not in config
    with no_network() as attempts:
        result = _preflight(config)
    assert attempts == []
    checks = result.params["preflight"]["checks"]
    assert set(checks) == {"recipe", "data files", "local models", "checkpoint store", "base model loads"}
    assert set(checks.values()) == {"ok"}
    assert result.metrics["preflight.problems"] == 0 and result.metrics["preflight.checks"] == 5


def test_local_problems_are_all_listed_not_just_the_first(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = _config(tmp_path, monkeypatch)
    config["sources"][0]["path"] = "/nonexistent/sft.jsonl"
    config["models"].append({"uri": "file:///nonexistent/judge", "revision": "v2"})
    config["recipe_values"]["sft"]["lr"] = -1.0  # a bad value typed into the UI
    with pytest.raises(preflight.PreflightError) as e:
        _preflight(config)
    lines = str(e.value).splitlines()
    assert lines[0].startswith("preflight found 3 problems in ")
    assert lines[1].startswith("- recipe field sft.lr: Input should be greater than 0 (got -1.0)")
    assert lines[2].startswith(f"- data source {config['sources'][0]['name']}: /nonexistent/sft.jsonl not found")
    assert lines[3].startswith("- model file:///nonexistent/judge@v2: cannot be resolved: /nonexistent/judge/config.json not found")
    assert lines[4:] == ["not checked:", "- base model: not loaded, fix the problems above first"]


def test_the_store_probe_reports_an_unwritable_store(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the store's folder should be")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = _config(tmp_path, monkeypatch, store=f"file://{blocker}/store")
    with pytest.raises(preflight.PreflightError, match=rf"checkpoint store file://{blocker}/store: not writable: "):
        _preflight(config)


# -- running checks -------------------------------------------------------------------------------


def test_checks_run_in_parallel_under_one_deadline():
    release = threading.Event()

    def slow():
        time.sleep(0.3)
        return [cc.problem("slow", "slow found something")]

    def broken():
        raise RuntimeError("a bug in a check")

    tasks = {"a": slow, "b": slow, "c": slow, "hung": lambda: release.wait(30) and [], "broken": broken, "fine": lambda: []}
    started = time.monotonic()
    results = cc.run_parallel(tasks, deadline_s=1.0)
    took = time.monotonic() - started
    release.set()
    assert 0.9 < took < 1.6  # three 0.3 s checks side by side, then the deadline for the hung one
    assert list(results) == list(tasks)
    assert results["a"] == [cc.problem("slow", "slow found something")]
    assert results["hung"][0].text.startswith("hung: no answer within 1 s")
    assert results["broken"][0].text == "broken: the check itself failed: RuntimeError: a bug in a check"
    assert results["fine"] == []


def test_secret_values_never_reach_a_message():
    values = cc.secret_values([{"name": "s", "env": {"k": "MY_SECRET"}}], {"MY_SECRET": "p4ssw0rd", "HF_TOKEN": "hf_abcdefghijkl", "PATH": "/bin"})
    assert sorted(values) == ["hf_abcdefghijkl", "p4ssw0rd"]
    text = cc.mask(f"saw p4ssw0rd and hf_abcdefghijkl and hf_{'x' * 34} in /bin, not hf_transfer", values)
    assert text == "saw *** and *** and hf_*** in /bin, not hf_transfer"


def test_a_report_never_shows_a_secret_value(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-value")
    config = _config(tmp_path, monkeypatch)
    config["sources"][0]["path"] = "/data/s3cr3t-value.jsonl"  # a secret pasted where it does not belong
    with pytest.raises(preflight.PreflightError) as e:
        _preflight(config)
    assert "/data/***.jsonl not found" in str(e.value) and "s3cr3t" not in str(e.value)


# -- secrets --------------------------------------------------------------------------------------


def test_every_unset_secret_env_is_a_problem_naming_secret_key_and_env():
    secrets = preflight_cluster_config(load_recipe(RECIPE))["secrets"]
    assert cc.check_secrets(secrets, SECRETS) == []
    found = cc.check_secrets(secrets, {**SECRETS, "HF_TOKEN": "", "AWS_SECRET_ACCESS_KEY": " "})
    assert [f.text for f in found] == [
        "secret posttrain-hf-token key token (env HF_TOKEN): not set — create it (helm values secrets.hfToken) or fix cluster.secrets",
        "secret posttrain-s3 key secret_access_key (env AWS_SECRET_ACCESS_KEY): not set — create it (helm values secrets.s3) or fix cluster.secrets",
    ]
    other = cc.check_secrets([{"name": "wandb", "env": {"api_key": "WANDB_API_KEY"}}], {})
    assert "create it (kubectl create secret generic wandb --from-literal=api_key=...)" in other[0].text


# -- the Hub token --------------------------------------------------------------------------------


def _token(role: str, scoped: list | None = None) -> dict:
    token = {"displayName": "t", "role": role}
    if role == "fineGrained":
        token["fineGrained"] = {"canReadGatedRepos": True, "global": ["discussion.write"], "scoped": scoped or []}
    return token


def _who(role: str, scoped: list | None = None, orgs: dict | None = None) -> dict:
    return {"type": "user", "name": "alice", "orgs": [{"name": o, "roleInOrg": r} for o, r in (orgs or {}).items()],
            "auth": {"type": "access_token", "accessToken": _token(role, scoped)}}


def _scope(kind: str, name: str, *permissions: str) -> dict:
    return {"entity": {"_id": "0" * 24, "type": kind, "name": name}, "permissions": list(permissions)}


@pytest.mark.parametrize(("who", "repo", "verdict", "why"), [
    (_who("write"), "alice/smollm3", True, ""),
    (_who("write", orgs={"lab": "write"}), "lab/smollm3", True, ""),
    (_who("write", orgs={"lab": "contributor"}), "lab/smollm3", True, ""),
    (_who("read"), "alice/smollm3", False, "the token of alice is read-only"),
    (_who("write"), "lab/smollm3", False, "alice is not lab nor a member of organization lab"),
    (_who("write", orgs={"lab": "read"}), "lab/smollm3", False, "alice's role in lab is 'read'"),
    (_who("fineGrained", [_scope("org", "lab", "repo.content.read", "repo.write")], {"lab": "admin"}), "lab/smollm3", True, ""),
    (_who("fineGrained", [_scope("model", "lab/smollm3", "repo.write")], {"lab": "write"}), "lab/smollm3", True, ""),
    (_who("fineGrained", [_scope("org", "lab", "repo.content.read")], {"lab": "admin"}), "lab/smollm3", False, "no repo.write permission on lab"),
    (_who("fineGrained", [_scope("user", "alice", "repo.write")], {"lab": "admin"}), "lab/smollm3", False, "no repo.write permission on lab"),
    (_who("oauth"), "alice/smollm3", None, "does not say"),
])
def test_what_a_token_may_write(who, repo, verdict, why):
    allowed, reason = cc.hub_can_write(who, repo)
    assert allowed is verdict and why in reason


def test_the_hub_repo_written_is_the_stores():
    assert cc.hub_write_target("hf://lab", "smollm3") == "lab/smollm3"
    # publish.py releases through the store: with s3:// or file:// nothing goes to the Hub.
    assert cc.hub_write_target("s3://bucket/runs", "smollm3") is None


def _script_whoami(hub, monkeypatch, answer):
    """FakeHub's /api/whoami-v2 answers `answer` (a payload, or an HTTP status) instead of its classic write token."""
    from hubserver import _HubError

    def whoami(req):
        hub._auth(req)
        if isinstance(answer, int):
            raise _HubError(answer, "Invalid credentials in Authorization header")
        return hub._send(req, 200, answer)

    monkeypatch.setattr(hub, "_whoami", whoami)


def test_hub_token_accepted_and_allowed_to_write(hub, monkeypatch):
    secrets = [{"name": "posttrain-hf-token", "env": {"token": "HF_TOKEN"}}]
    monkeypatch.setenv("HF_TOKEN", SECRETS["HF_TOKEN"])
    assert cc.check_hub_token(secrets, "fake-user/smollm3") == []  # FakeHub's own answer: a classic write token of fake-user
    found = cc.check_hub_token(secrets, "other-org/smollm3")
    assert [(f.check, f.level) for f in found] == [("hub_write", "problem")]
    assert found[0].text == ("Hub token (env HF_TOKEN, secret posttrain-hf-token key token): cannot write other-org/smollm3: fake-user is not "
                             "other-org nor a member of organization other-org — use a token with write access to other-org in "
                             "posttrain-hf-token, or change cluster.store_uri")
    assert ("GET", "/api/whoami-v2") in hub.requests


def test_a_rejected_or_read_only_hub_token_is_a_problem(hub, monkeypatch):
    secrets = [{"name": "posttrain-hf-token", "env": {"token": "HF_TOKEN"}}]
    monkeypatch.setenv("HF_TOKEN", SECRETS["HF_TOKEN"])
    _script_whoami(hub, monkeypatch, 401)
    found = cc.check_hub_token(secrets, None)
    assert [f.text for f in found] == ["Hub token (env HF_TOKEN, secret posttrain-hf-token key token): rejected by the Hub (401: invalid, "
                                       "expired or revoked) — put a valid token in secret posttrain-hf-token key token"]
    _script_whoami(hub, monkeypatch, {**_who("read"), "name": "fake-user"})
    assert cc.check_hub_token(secrets, None) == []  # reading is all an s3:// or file:// store needs
    assert "read-only" in cc.check_hub_token(secrets, "fake-user/smollm3")[0].text


# -- images -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("ref", "registry", "repository", "reference"), [
    ("ubuntu", "registry-1.docker.io", "library/ubuntu", "latest"),
    ("docker.io/python:3.11-slim", "registry-1.docker.io", "library/python", "3.11-slim"),
    ("myorg/tool:1", "registry-1.docker.io", "myorg/tool", "1"),
    ("ghcr.io/posttrain/cpu:0.1.0", "ghcr.io", "posttrain/cpu", "0.1.0"),
    ("localhost:5000/a/b@sha256:" + "ab" * 32, "localhost:5000", "a/b", "sha256:" + "ab" * 32),
    # What `make images` locks: tag and digest; the digest is what is pulled.
    ("ghcr.io/posttrain/posttrain-cpu:0.2.0@sha256:" + "cd" * 32, "ghcr.io", "posttrain/posttrain-cpu", "sha256:" + "cd" * 32),
])
def test_image_references_are_read_as_docker_does(ref, registry, repository, reference):
    parsed = oci_registry.parse_image_ref(ref)
    assert (parsed.registry, parsed.repository, parsed.reference) == (registry, repository, reference)


def test_only_loopback_registries_are_asked_over_http():
    assert oci_registry.parse_image_ref("localhost:5000/a:1").manifest_url == "http://localhost:5000/v2/a/manifests/1"
    assert oci_registry.parse_image_ref("registry.example:5000/a:1").manifest_url == "https://registry.example:5000/v2/a/manifests/1"
    with pytest.raises(ValueError, match="not a valid image reference"):
        oci_registry.parse_image_ref("ghcr.io/Posttrain/CPU:0.1")


def test_credentials_never_follow_a_redirect_to_another_host():
    import urllib.request

    handler = oci_registry._NoCredentialsAcrossHosts()
    request = urllib.request.Request("https://registry.example/v2/a/manifests/1", method="HEAD", headers={"Authorization": "Bearer t"})
    same = handler.redirect_request(request, None, 307, "", {}, "https://registry.example/v2/b/manifests/1")
    other = handler.redirect_request(request, None, 307, "", {}, "https://cdn.example/v2/a/manifests/1")
    assert same.get_header("Authorization") == "Bearer t" and other.get_header("Authorization") is None


@pytest.fixture
def registry():
    with FakeRegistry(users={"robot": "pull-secret"}) as r:
        for kind in ("train", "generate", "cpu"):
            r.push(f"posttrain/{kind}", "0.1.0")
        yield r


def test_an_image_that_exists_passes_through_the_bearer_token_flow(registry):
    assert oci_registry.check_image(["cpu"], f"{registry.host}/posttrain/cpu:0.1.0", environ={}) == []
    digest = oci_registry.manifest_lookup(oci_registry.parse_image_ref(f"{registry.host}/posttrain/cpu:0.1.0")).digest
    assert digest == registry.push("posttrain/cpu", "0.1.0")  # the same content again: the same digest
    assert registry.requests[:3] == [
        ("HEAD", "/v2/posttrain/cpu/manifests/0.1.0", None, 401),
        ("GET", "/token", None, 200),
        ("HEAD", "/v2/posttrain/cpu/manifests/0.1.0", "bearer", 200),
    ]


def test_every_manifest_kind_a_node_can_pull_is_accepted(registry):
    # The registry answers 404 to a request whose Accept leaves out the stored media type.
    digest = registry.push("posttrain/single", "1", media_type=DOCKER_MANIFEST)
    index = registry.push("posttrain/multi", "1", media_type=OCI_INDEX)
    for ref in ("posttrain/single:1", f"posttrain/single@{digest}", "posttrain/multi:1", f"posttrain/multi@{index}"):
        assert oci_registry.check_image(["train"], f"{registry.host}/{ref}", environ={}) == [], ref


def test_a_missing_image_names_the_missing_tag_or_repository(registry):
    [tag] = oci_registry.check_image(["train", "generate"], f"{registry.host}/posttrain/train:0.2.0", environ={})
    assert tag.level == "problem"
    assert tag.text == (f"image train, generate {registry.host}/posttrain/train:0.2.0: not found in {registry.host} "
                        "(manifest posttrain/train:0.2.0 unknown) — push it (make images) or fix cluster.images.train")
    [repo] = oci_registry.check_image(["cpu"], f"{registry.host}/posttrain/cpux:0.1.0", environ={})
    assert "(repository posttrain/cpux unknown)" in repo.text


def test_a_private_image_needs_credentials_else_it_is_only_a_warning(registry, tmp_path):
    registry.push("posttrain/private", "1", private=True)
    ref = f"{registry.host}/posttrain/private:1"
    [anonymous] = oci_registry.check_image(["cpu"], ref, environ={"HOME": str(tmp_path)})
    assert anonymous.level == "warning" and "answered 401 and no credentials for" in anonymous.text
    config = {"auths": {f"http://{registry.host}": {"auth": base64.b64encode(b"robot:pull-secret").decode()}}}
    assert oci_registry.check_image(["cpu"], ref, environ={"REGISTRY_AUTH": json.dumps(config)}) == []
    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "config.json").write_text(json.dumps({"auths": {registry.host: {"username": "robot", "password": "wrong"}}}))
    [refused] = oci_registry.check_image(["cpu"], ref, environ={"DOCKER_CONFIG": str(tmp_path / "docker")})
    assert refused.level == "warning" and "the credentials found were refused" in refused.text
    assert "pull-secret" not in json.dumps([anonymous.text, refused.text])


def test_basic_auth_registries_get_the_docker_config_credentials(tmp_path):
    with FakeRegistry(auth="basic", users={"robot": "pull-secret"}) as r:
        r.push("posttrain/cpu", "1")
        (tmp_path / ".docker").mkdir()
        (tmp_path / ".docker" / "config.json").write_text(json.dumps({"auths": {r.host: {"username": "robot", "password": "pull-secret"}}}))
        assert oci_registry.check_image(["cpu"], f"{r.host}/posttrain/cpu:1", environ={"HOME": str(tmp_path)}) == []
        assert [s for _, _, _, s in r.requests] == [401, 200]


def test_an_unreachable_registry_is_a_problem():
    with FakeRegistry() as r:
        host = r.host
    [found] = oci_registry.check_image(["cpu"], f"{host}/posttrain/cpu:1", timeout=2, environ={})
    assert found.level == "problem" and f"registry {host} unreachable" in found.text


# -- GPUs and the TrainJob runtime -------------------------------------------------------------------


def _node(name, labels=None, gpus=8, ready=True, cordoned=False, taints=()):
    return k8s.V1Node(
        metadata=k8s.V1ObjectMeta(name=name, labels=labels or {}),
        spec=k8s.V1NodeSpec(unschedulable=cordoned or None, taints=[k8s.V1Taint(key=k, value=v, effect=e) for k, v, e in taints] or None),
        status=k8s.V1NodeStatus(allocatable={"cpu": "64", "nvidia.com/gpu": str(gpus)} if gpus else {"cpu": "8"},
                                conditions=[k8s.V1NodeCondition(type="Ready", status="True" if ready else "False")]),
    )


class FakeCoreV1:
    def __init__(self, nodes=(), status=None):
        self.nodes, self.status, self.calls = list(nodes), status, []

    def list_node(self, **kwargs):
        self.calls.append(kwargs)
        if self.status:
            raise ApiException(status=self.status, reason="Forbidden" if self.status == 403 else "Error")
        return k8s.V1NodeList(items=self.nodes)


class FakeCustomObjects:
    def __init__(self, runtimes=("torch-distributed",), status=None):
        self.runtimes, self.status, self.calls = set(runtimes), status, []

    def get_cluster_custom_object(self, group, version, plural, name, **kwargs):
        self.calls.append(((group, version, plural, name), kwargs))
        if self.status:
            raise ApiException(status=self.status, reason="Forbidden")
        if (group, version, plural) == cc.RUNTIME_API and name in self.runtimes:
            return {"kind": "ClusterTrainingRuntime", "metadata": {"name": name}}
        raise ApiException(status=404, reason="Not Found")


def _gpu(kind="train", count=8, selector=H100, tolerations=({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},)):
    return {"kind": kind, "accelerator": "nvidia.com/gpu", "count": count, "node_selector": dict(selector), "tolerations": list(tolerations)}


def test_the_recipes_gpu_kinds_are_what_preflight_gets():
    gpus = preflight_cluster_config(load_recipe(RECIPE))["gpus"]
    assert [(g["kind"], g["count"], g["node_selector"]) for g in gpus] == [("train", 8, H100), ("generate", 2, H100)]


@pytest.mark.parametrize(("nodes", "reason"), [
    ([_node("a", H100, taints=[GPU_TAINT])], None),
    ([_node("a", {**H100, "zone": "x"}, taints=[GPU_TAINT, ("soft", "", "PreferNoSchedule")])], None),
    ([_node("a", {"posttrain.io/pool": "a100"}), _node("b")], "no node with posttrain.io/pool=h100 (2 nodes; seen: posttrain.io/pool=a100)"),
    ([_node("a", H100, ready=False), _node("b", H100, cordoned=True)],
     "no node with posttrain.io/pool=h100 is Ready and schedulable (a: NotReady; b: cordoned)"),
    ([_node("a", H100, taints=[("dedicated", "infer", "NoExecute")])],
     "every Ready node with posttrain.io/pool=h100 has a taint the tolerations do not tolerate (a: dedicated=infer:NoExecute)"),
    ([_node("a", H100, gpus=4), _node("b", H100, gpus=2), _node("c", gpus=8)],
     "no node with posttrain.io/pool=h100 has 8 nvidia.com/gpu allocatable (largest: 4 on a)"),
    ([_node("a", H100, gpus=0)], "no node with posttrain.io/pool=h100 has 8 nvidia.com/gpu allocatable (largest: 0 on a)"),
])
def test_a_gpu_kind_is_schedulable_only_on_a_matching_ready_tolerated_big_enough_node(nodes, reason):
    text = cc.gpu_problem(_gpu(), nodes)
    if reason is None:
        assert text is None
    else:
        assert text == f"GPU kind train (8 × nvidia.com/gpu): {reason} — fix cluster.resources.train (gpus, accelerator, node_selector, tolerations) or add such nodes"


def test_tolerations_match_as_kubernetes_matches_them():
    taint = k8s.V1Taint(key="gpu", value="h100", effect="NoSchedule")
    assert cc._tolerates({"key": "gpu", "operator": "Equal", "value": "h100", "effect": "NoSchedule"}, taint)
    assert cc._tolerates({"operator": "Exists"}, taint)  # empty key, no effect: tolerates everything
    assert not cc._tolerates({"key": "gpu", "operator": "Equal", "value": "a100"}, taint)
    assert not cc._tolerates({"key": "gpu", "operator": "Exists", "effect": "NoExecute"}, taint)


def test_no_permission_to_list_nodes_or_read_runtimes_is_a_warning_not_a_failure():
    apis = cc.KubeApis(FakeCoreV1(status=403), FakeCustomObjects(status=403))
    found = cc.check_kubernetes([_gpu()], "torch-distributed", lambda: (apis, ""))
    assert [(f.level, f.text) for f in found] == [("warning", cc.NO_NODE_READ), ("warning", cc.NO_RUNTIME_READ)]
    assert "enable rbac.readNodes in the chart" in cc.NO_NODE_READ and "rbac.readTrainingRuntimes" in cc.NO_RUNTIME_READ
    # Every call is bounded: (connect, read) timeouts of at most CALL_TIMEOUT_S.
    assert max(apis.core.calls[0]["_request_timeout"]) <= 10


def test_the_trainjob_runtime_must_exist():
    apis = cc.KubeApis(FakeCoreV1([_node("a", H100, taints=[GPU_TAINT])]), FakeCustomObjects(runtimes=["torch-distributed"]))
    assert cc.check_kubernetes([_gpu()], "torch-distributed", lambda: (apis, "")) == []
    [missing] = cc.check_kubernetes([], "deepspeed-distributed", lambda: (apis, ""))
    assert missing.text.startswith("ClusterTrainingRuntime deepspeed-distributed (trainer.kubeflow.org/v1alpha1): not found")


def test_no_kubernetes_api_at_all_is_a_problem(monkeypatch, tmp_path):
    from kubernetes.config import kube_config

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(tmp_path / "no-kubeconfig"))
    [found] = cc.check_kubernetes([_gpu()], None)
    assert found.level == "problem"
    assert found.text.startswith("Kubernetes API: not reachable (not in a cluster (")
    assert found.text.endswith("— the GPU checks need it; run preflight in the cluster")
    assert cc.check_kubernetes([], None) == []  # nothing to ask: no API needed


def test_a_kubeconfig_is_used_outside_a_cluster(monkeypatch, tmp_path):
    from kubernetes.config import kube_config

    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": "https://127.0.0.1:6443"}}],
        "users": [{"name": "u", "user": {"token": "abc"}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
    }))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
    apis, why = cc.kube_apis()
    assert why == "" and apis.core.api_client.configuration.host == "https://127.0.0.1:6443"


# -- a whole cluster preflight ---------------------------------------------------------------------


def _cluster_config(tmp_path, monkeypatch, registry, nodes):
    """The tiny profile's preflight config with the cluster part a cluster compile adds
    (the default profile's, images on the fake registry), and scripted Kubernetes APIs."""
    config = _config(tmp_path, monkeypatch)
    cluster = preflight_cluster_config(load_recipe(RECIPE))
    cluster["images"] = {k: f"{registry.host}/posttrain/{k}:0.1.0" for k in ("train", "generate", "cpu")}
    cluster["store_uri"] = f"file://{tmp_path / 'store'}"
    cluster["trainjob_runtime"] = "torch-distributed"
    config["cluster"] = cluster
    apis = cc.KubeApis(FakeCoreV1(nodes), FakeCustomObjects())
    monkeypatch.setattr(cc, "kube_apis", lambda: (apis, ""))
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    return config


def test_a_cluster_preflight_that_passes_reports_its_checks(tmp_path, monkeypatch, registry, hub):
    config = _cluster_config(tmp_path, monkeypatch, registry, [_node("gpu-1", H100, taints=[GPU_TAINT])])
    result = _preflight(config)
    checks = result.params["preflight"]["checks"]
    assert {k: v for k, v in checks.items() if k.startswith(("secrets", "hub", "image", "kubernetes", "checkpoint"))} == {
        "secrets": "ok", "hub token": "ok", "checkpoint store": "ok", "kubernetes": "ok",
        **{f"image {registry.host}/posttrain/{k}:0.1.0": "ok" for k in ("train", "generate", "cpu")},
    }
    assert result.metrics["preflight.problems"] == 0 and result.metrics["preflight.warnings"] == 0
    assert result.metrics["preflight.seconds"] < 10


def test_a_warning_is_recorded_and_the_run_goes_on(tmp_path, monkeypatch, registry, hub, caplog):
    config = _cluster_config(tmp_path, monkeypatch, registry, [])
    monkeypatch.setattr(cc, "kube_apis", lambda: (cc.KubeApis(FakeCoreV1(status=403), FakeCustomObjects()), ""))
    result = _preflight(config)
    assert result.metrics["preflight.warnings"] == 1
    assert result.params["preflight"]["warnings"] == [cc.NO_NODE_READ]
    assert result.params["preflight"]["checks"]["kubernetes"] == "warning"
    assert cc.NO_NODE_READ in caplog.text


def test_every_problem_of_a_cluster_run_comes_in_one_error(tmp_path, monkeypatch, registry, hub):
    config = _cluster_config(tmp_path, monkeypatch, registry, [_node("node-a", H100, gpus=4, taints=[GPU_TAINT])])
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    config["cluster"]["images"]["cpu"] = f"{registry.host}/posttrain/cpu:0.2.0"
    config["sources"].append({"name": "ghost", "hub": "fake-user/no-such-dataset", "subset": None, "split": "train", "revision": "main"})
    started = time.monotonic()
    with pytest.raises(preflight.PreflightError) as e:
        _preflight(config)
    assert time.monotonic() - started < 10
    message = str(e.value)
    print(message)  # the report, as a user sees it (pytest -s)
    lines = message.splitlines()
    assert lines[0].startswith("preflight found 4 problems in ")
    assert lines[1] == ("- secret posttrain-s3 key secret_access_key (env AWS_SECRET_ACCESS_KEY): not set — create it "
                        "(helm values secrets.s3) or fix cluster.secrets")
    assert lines[2] == ("- data source ghost: Hub dataset fake-user/no-such-dataset@main: repository not found (or private, and the token "
                        "may not read it) — check the dataset id and revision (and that HF_TOKEN may read it if it is gated or private)")
    assert lines[3] == (f"- image cpu {registry.host}/posttrain/cpu:0.2.0: not found in {registry.host} (manifest posttrain/cpu:0.2.0 "
                        "unknown) — push it (make images) or fix cluster.images.cpu")
    assert lines[4] == ("- GPU kind train (8 × nvidia.com/gpu): no node with posttrain.io/pool=h100 has 8 nvidia.com/gpu allocatable "
                        "(largest: 4 on node-a) — fix cluster.resources.train (gpus, accelerator, node_selector, tolerations) or add such nodes")
    assert lines[5:] == ["not checked:", "- base model: not loaded, fix the problems above first"]
    assert not any(value in message for value in SECRETS.values())


def test_checks_that_depend_on_a_failed_one_are_skipped_and_say_so(tmp_path, monkeypatch, registry, hub):
    config = _cluster_config(tmp_path, monkeypatch, registry, [_node("gpu-1", H100, taints=[GPU_TAINT])])
    config["sources"].append({"name": "remote", "hub": "fake-user/some-dataset", "subset": None, "split": "train", "revision": "main"})
    _script_whoami(hub, monkeypatch, 401)
    with pytest.raises(preflight.PreflightError) as e:
        _preflight(config)
    lines = str(e.value).splitlines()
    assert lines[0].startswith("preflight found 1 problem in ")
    assert lines[1].startswith("- Hub token (env HF_TOKEN, secret posttrain-hf-token key token): rejected by the Hub (401")
    assert "- Hub models and datasets: not looked up, the Hub token does not work (see above)" in lines
    assert not [r for r in hub.requests if "datasets" in r[1]]


def test_an_hf_store_the_token_cannot_write_is_not_probed(tmp_path, monkeypatch, registry, hub):
    config = _cluster_config(tmp_path, monkeypatch, registry, [_node("gpu-1", H100, taints=[GPU_TAINT])])
    monkeypatch.setenv("POSTTRAIN_STORE", "hf://other-org")
    config["cluster"]["store_uri"] = "hf://other-org"
    with pytest.raises(preflight.PreflightError) as e:
        _preflight(config)
    message = str(e.value)
    assert "cannot write other-org/smollm3: fake-user is not other-org nor a member of organization other-org" in message
    assert "- checkpoint store hf://other-org: not probed, the Hub token cannot write it (see above)" in message
    assert not [r for r in hub.requests if r[0] == "POST"]  # nothing was written


def test_an_hf_store_the_token_can_write_is_probed(tmp_path, monkeypatch, registry, hub):
    config = _cluster_config(tmp_path, monkeypatch, registry, [_node("gpu-1", H100, taints=[GPU_TAINT])])
    monkeypatch.setenv("POSTTRAIN_STORE", "hf://fake-user")
    config["cluster"]["store_uri"] = "hf://fake-user"
    result = _preflight(config)
    assert result.params["preflight"]["checks"]["checkpoint store"] == "ok"
    assert "manifest.json" in "".join(hub.files("fake-user/smollm3", "preflight"))


def test_a_hub_base_model_is_resolved_not_downloaded(tmp_path, monkeypatch, hub):
    from huggingface_hub import HfApi

    config = _config(tmp_path, monkeypatch)
    config["base_model"] = {"uri": "hf://fake-user/base", "revision": "main"}
    with pytest.raises(preflight.PreflightError, match=r"- base_model hf://fake-user/base@main: cannot be resolved: repository not found"):
        _preflight(config)
    api = HfApi(endpoint=hub.endpoint, token="test-token")
    api.create_repo("fake-user/base")
    with pytest.raises(preflight.PreflightError, match="- base_model hf://fake-user/base@main: no config.json in the repo"):
        _preflight(config)
    api.upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id="fake-user/base")
    result = _preflight(config)
    assert "base model loads" not in result.params["preflight"]["checks"]
    assert not [path for _, path in hub.requests if "/resolve/" in path]  # no file was downloaded


def test_hub_datasets_resolve_at_their_revision_each_looked_up_once(tmp_path, monkeypatch, hub):
    from huggingface_hub import HfApi

    HfApi(endpoint=hub.endpoint, token="test-token").create_repo("fake-user/mix", repo_type="dataset")
    config = _config(tmp_path, monkeypatch)
    remote = {"subset": None, "split": "train", "hub": "fake-user/mix"}
    config["sources"] += [{**remote, "name": f"part-{i}", "revision": "main"} for i in range(6)]
    assert _preflight(config).params["preflight"]["checks"]["dataset fake-user/mix@main"] == "ok"
    assert len([p for _, p in hub.requests if p.startswith("/api/datasets/fake-user/mix")]) == 1
    config["sources"] += [{**remote, "name": "pinned", "revision": "v2"}]
    with pytest.raises(preflight.PreflightError) as e:
        _preflight(config)
    assert "- data source pinned: Hub dataset fake-user/mix@v2: no such revision — check" in str(e.value)


# -- an S3 store --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("store", "env", "why"), [
    ("s3://ckpt/runs", {}, None),
    ("s3://nope/runs", {}, "bucket nope does not exist — create it or fix cluster.store_uri"),
    ("s3://ckpt/runs", {"AWS_SECRET_ACCESS_KEY": "wrong"}, "bucket ckpt: credentials rejected (SignatureDoesNotMatch)"),
    ("s3://ckpt/runs", {"AWS_ACCESS_KEY_ID": "nobody"}, "bucket ckpt: credentials rejected (InvalidAccessKeyId)"),
    ("s3://ckpt/runs", {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None}, "bucket ckpt: no credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY unset"),
])
def test_an_s3_store_failure_names_the_bucket_and_why(tmp_path, monkeypatch, seaweed, store, env, why):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # No credentials from anywhere else (files, the instance metadata service: that would be the network).
    for name, value in {**seaweed.env(), "AWS_EC2_METADATA_DISABLED": "true", "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
                        "AWS_CONFIG_FILE": str(tmp_path / "none"), **env}.items():
        monkeypatch.delenv(name, raising=False) if value is None else monkeypatch.setenv(name, value)
    config = _config(tmp_path, monkeypatch, store=store)
    started = time.monotonic()
    if why is None:
        assert _preflight(config).params["preflight"]["checks"]["checkpoint store"] == "ok"
    else:
        with pytest.raises(preflight.PreflightError) as e:
            _preflight(config)
        assert f"- checkpoint store {store}: not writable: {why}" in str(e.value)
    assert time.monotonic() - started < 10


def test_s3_access_denied_is_told_apart_from_bad_credentials():
    from botocore.exceptions import ClientError

    denied = ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "PutObject")
    assert preflight._s3_reason("ckpt", denied) == ("bucket ckpt: access denied (AccessDenied) to these credentials — grant them read, "
                                                    "write, list and delete on ckpt")
