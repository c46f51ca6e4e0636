"""The Helm chart in helm/posttrain, checked with the real tools: `helm lint --strict`,
`helm template`, values.schema.json through helm, `kubernetes-validate --strict` for
Kubernetes 1.30 and 1.33, and checkov. The tools live in .venv-tools, installed by
helm/install-tools.sh (`make tools`); nothing is downloaded here."""

import base64
import json
import os
import re
import subprocess
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "posttrain"
TOOLS = ROOT / ".venv-tools" / "bin"
NS = "posttrain"
ALL_ON = CHART / "ci" / "all-on-values.yaml"
EXISTING = CHART / "ci" / "existing-secrets-values.yaml"
VALUE_SETS = {"default": (), "all-on": (ALL_ON,), "existing-secrets": (EXISTING,)}
KUBE_VERSIONS = ["1.30.0", "1.33.0"]
CLUSTER_SCOPED = {"PriorityClass", "ClusterRole", "ClusterRoleBinding"}

# The brief's least-privilege rules for pipeline pods, and what KFP's executor adds.
POSTTRAIN_RULES = [
    {"apiGroups": ["trainer.kubeflow.org"], "resources": ["trainjobs"], "verbs": ["create", "get", "list", "watch", "delete"]},
    {"apiGroups": ["trainer.kubeflow.org"], "resources": ["trainjobs/status"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
]
EVENTS_RULE = {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "list", "watch"]}
KFP_RULES = [
    {"apiGroups": ["argoproj.io"], "resources": ["workflowtaskresults"], "verbs": ["create", "patch"]},
    {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["kfp-launcher"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["mlpipeline-minio-artifact"], "verbs": ["get"]},
]


def tool(name: str) -> str:
    path = TOOLS / name
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing: run `make tools` (helm/install-tools.sh) first")
    return str(path)


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    """helm with its own scratch homes and no cluster: nothing read from or written to ~."""
    home = tmp_path_factory.mktemp("helm-home")
    e = {k: v for k, v in os.environ.items() if not k.startswith("HELM_")}
    e.update(HELM_CACHE_HOME=str(home / "cache"), HELM_CONFIG_HOME=str(home / "config"), HELM_DATA_HOME=str(home / "data"),
             KUBECONFIG=str(home / "no-kubeconfig"), PATH=f"{TOOLS}{os.pathsep}{os.environ.get('PATH', '')}")
    return e


def run(cmd: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def helm(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return run([tool("helm"), *args], env)


def value_args(files=(), sets=()) -> list[str]:
    return [a for f in files for a in ("-f", str(f))] + [a for s in sets for a in ("--set", s)]


def template(env, files=(), sets=(), extra=()) -> subprocess.CompletedProcess:
    return helm(env, "template", "posttrain", str(CHART), "--namespace", NS, *value_args(files, sets), *extra)


def render(env, files=(), sets=(), extra=()) -> list[dict]:
    out = template(env, files, sets, extra)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def only(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def kinds(docs: list[dict]) -> list[str]:
    return sorted(d["kind"] for d in docs)


def canon(rules: list[dict]) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True) for r in rules)


@cache
def pins() -> dict[str, str]:
    """The versions helm/install-tools.sh and helm/requirements-tools.txt pin."""
    script = (ROOT / "helm" / "install-tools.sh").read_text()
    reqs = (ROOT / "helm" / "requirements-tools.txt").read_text()
    return {
        "helm": re.search(r"^HELM_VERSION=(\S+)$", script, re.M).group(1),
        "kubernetes-validate": re.search(r"^kubernetes-validate==(\S+)$", reqs, re.M).group(1),
        "checkov": re.search(r"^checkov==(\S+)$", reqs, re.M).group(1),
    }


# -- the tools -------------------------------------------------------------------------


def test_tools_are_the_pinned_versions(env):
    assert helm(env, "version", "--template", "{{.Version}}").stdout.strip() == pins()["helm"]
    kv = run([tool("kubernetes-validate"), "--version"], env)
    assert kv.stdout.strip().endswith(pins()["kubernetes-validate"]), kv.stdout
    ck = run([tool("checkov"), "--version"], env)
    assert ck.stdout.strip() == pins()["checkov"], ck.stdout


# -- helm lint ---------------------------------------------------------------------------


@pytest.mark.parametrize("values", VALUE_SETS, ids=list(VALUE_SETS))
def test_lint_strict(env, values):
    out = helm(env, "lint", "--strict", str(CHART), "--namespace", NS, *value_args(VALUE_SETS[values]))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in out.stdout
    assert "[WARNING]" not in out.stdout and "[ERROR]" not in out.stdout


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_renders_for_supported_kubernetes(env, version):
    out = template(env, extra=("--kube-version", version))
    assert out.returncode == 0, out.stderr


def test_refuses_kubernetes_older_than_1_30(env):
    # Chart.yaml kubeVersion: TrainJobs (Kubeflow Trainer v2) need 1.30+.
    out = template(env, extra=("--kube-version", "1.29.0"))
    assert out.returncode != 0
    assert "kubeVersion" in out.stderr and "1.29.0" in out.stderr, out.stderr


# -- what the defaults render -------------------------------------------------------------


def test_default_objects(env):
    docs = render(env)
    assert kinds(docs) == sorted(["ServiceAccount", "Role", "RoleBinding", "PersistentVolumeClaim", "PriorityClass", "PriorityClass"])
    # Nothing cluster-wide but the PriorityClasses, which have no namespaced form.
    assert {d["kind"] for d in docs} & CLUSTER_SCOPED == {"PriorityClass"}
    for d in docs:
        if d["kind"] not in CLUSTER_SCOPED:
            assert d["metadata"]["namespace"] == NS, d
        assert d["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"


def test_role_is_least_privilege(env):
    role = only(render(env), "Role", "posttrain")
    assert role["metadata"]["namespace"] == NS
    assert canon(role["rules"]) == canon(POSTTRAIN_RULES + KFP_RULES)
    text = json.dumps(role["rules"])
    assert "*" not in text
    for rule in role["rules"]:
        # Secrets and ConfigMaps only by name: never the posttrain Secrets, never a list.
        if set(rule["resources"]) & {"secrets", "configmaps"}:
            assert rule["verbs"] == ["get"] and rule.get("resourceNames"), rule


def test_role_options(env):
    role = only(render(env, sets=("rbac.kfpExecutor.enabled=false",)), "Role")
    assert canon(role["rules"]) == canon(POSTTRAIN_RULES)
    role = only(render(env, sets=("rbac.kfpExecutor.enabled=false", "rbac.readEvents=true")), "Role")
    assert canon(role["rules"]) == canon(POSTTRAIN_RULES + [EVENTS_RULE])
    role = only(render(env, sets=("rbac.kfpExecutor.artifactSecrets=null",)), "Role")
    assert canon(role["rules"]) == canon(POSTTRAIN_RULES + KFP_RULES[:2])


def test_rolebinding_binds_the_role_to_the_service_account(env):
    docs = render(env)
    binding = only(docs, "RoleBinding", "posttrain")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "posttrain"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "posttrain", "namespace": NS}]
    sa = only(docs, "ServiceAccount", "posttrain")
    # Pipeline pods call the API server (TrainJobs, logs) with this token.
    assert sa["automountServiceAccountToken"] is True


def test_extra_subjects_and_renamed_service_account(env):
    docs = render(env, files=(ALL_ON,))
    assert only(docs, "RoleBinding")["subjects"] == [
        {"kind": "ServiceAccount", "name": "posttrain", "namespace": NS},
        {"kind": "ServiceAccount", "name": "pipeline-runner", "namespace": "kubeflow"},
        {"kind": "ServiceAccount", "name": "default-editor", "namespace": NS},
    ]
    assert canon(only(docs, "Role")["rules"]) == canon(POSTTRAIN_RULES + [EVENTS_RULE] + KFP_RULES)
    sa = only(docs, "ServiceAccount")
    assert sa["imagePullSecrets"] == [{"name": "registry-credentials"}]
    assert sa["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": "arn:aws:iam::000000000000:role/posttrain-test"}
    # create: false binds the Role to a ServiceAccount that exists already.
    docs = render(env, files=(EXISTING,))
    assert "ServiceAccount" not in kinds(docs)
    assert only(docs, "RoleBinding")["subjects"] == [{"kind": "ServiceAccount", "name": "kfp-posttrain", "namespace": NS}]
    assert only(docs, "Role")["metadata"]["name"] == only(docs, "RoleBinding")["roleRef"]["name"] == "kfp-posttrain"


def test_cluster_wide_grants_only_when_asked(env):
    docs = render(env, files=(ALL_ON,))
    roles = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ClusterRole"}
    assert {n: r["rules"] for n, r in roles.items()} == {
        "posttrain-read-nodes-posttrain": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list"]}],
        "posttrain-read-runtimes-posttrain": [
            {"apiGroups": ["trainer.kubeflow.org"], "resources": ["clustertrainingruntimes"], "verbs": ["get"]}],
    }
    bindings = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ClusterRoleBinding"}
    assert bindings.keys() == roles.keys()
    for name, b in bindings.items():
        assert b["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name}
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": "posttrain", "namespace": NS}]
    only_nodes = render(env, sets=("rbac.readNodes=true",))
    assert [d["metadata"]["name"] for d in only_nodes if d["kind"] == "ClusterRole"] == ["posttrain-read-nodes-posttrain"]
    # rbac.create=false: no RBAC object at all, opted-in cluster reads included.
    none = render(env, sets=("rbac.create=false", "rbac.readNodes=true"))
    assert not {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"} & set(kinds(none))


# -- secrets ------------------------------------------------------------------------------


def secret_data(doc: dict) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in doc["data"].items()}


def test_secrets_are_created_only_when_asked(env):
    assert "Secret" not in kinds(render(env))
    assert "Secret" not in kinds(render(env, files=(EXISTING,)))
    docs = render(env, files=(ALL_ON,))
    assert secret_data(only(docs, "Secret", "posttrain-hf-token")) == {"token": "hf_fake_token_for_chart_tests"}
    assert secret_data(only(docs, "Secret", "posttrain-s3")) == {
        "access_key_id": "FAKE_ACCESS_KEY_ID",
        "secret_access_key": "fake-secret-access-key-for-chart-tests",
        "endpoint_url": "http://seaweedfs-s3.storage.svc:8333",
        "region": "us-east-1",
    }
    for doc in docs:
        if doc["kind"] == "Secret":
            assert doc["type"] == "Opaque" and doc["metadata"]["namespace"] == NS
            assert all(secret_data(doc).values()), doc["metadata"]["name"]
    # One created, the other referenced; a disabled one is neither.
    docs = render(env, sets=("secrets.hfToken.create=true", "secrets.hfToken.value=hf_x", "secrets.s3.enabled=false"))
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "Secret"] == ["posttrain-hf-token"]


def test_secret_values_from_files_lose_the_final_newline(env, tmp_path):
    # --set-file keeps a file's newline; in AWS_SECRET_ACCESS_KEY it would break signing.
    (tmp_path / "secret.txt").write_text("s3cr3t\n")
    docs = render(env, sets=("secrets.s3.create=true", "secrets.s3.accessKeyId=a"),
                  extra=("--set-file", f"secrets.s3.secretAccessKey={tmp_path / 'secret.txt'}"))
    assert secret_data(only(docs, "Secret", "posttrain-s3"))["secret_access_key"] == "s3cr3t"
    # Whitespace alone passes the schema's minLength but is no secret: refused.
    out = template(env, sets=("secrets.hfToken.create=true", "secrets.hfToken.value=  "))
    assert out.returncode != 0 and "secrets.hfToken.value is required" in out.stderr


def test_values_yaml_holds_no_secret_value():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert "value" not in values["secrets"]["hfToken"]
    assert not {"accessKeyId", "secretAccessKey"} & values["secrets"]["s3"].keys()
    assert values["secrets"]["hfToken"]["create"] is False and values["secrets"]["s3"]["create"] is False


def test_template_guards_secret_values_without_the_schema(env):
    # `required` in the template still refuses an empty Secret under --skip-schema-validation.
    out = template(env, sets=("secrets.hfToken.create=true",), extra=("--skip-schema-validation",))
    assert out.returncode != 0
    assert "secrets.hfToken.value is required" in out.stderr
    out = template(env, sets=("secrets.s3.create=true", "secrets.s3.accessKeyId=a"), extra=("--skip-schema-validation",))
    assert out.returncode != 0
    assert "secrets.s3.secretAccessKey is required" in out.stderr


# -- PVC, PriorityClasses, quota --------------------------------------------------------------


def test_cache_pvc(env):
    pvc = only(render(env), "PersistentVolumeClaim", "posttrain-cache")
    assert pvc["spec"] == {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "500Gi"}}}
    assert pvc["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    pvc = only(render(env, files=(ALL_ON,)), "PersistentVolumeClaim")
    assert pvc["spec"]["storageClassName"] == "cephfs" and pvc["spec"]["resources"]["requests"]["storage"] == "2Ti"
    assert pvc["metadata"]["annotations"] == {"posttrain.io/purpose": "model-and-dataset-cache"}
    # "-": no dynamic provisioning, bound to a named PersistentVolume.
    pvc = only(render(env, sets=("cache.storageClass=-", "cache.volumeName=nfs-cache", "cache.accessModes={ReadWriteOnce}")),
               "PersistentVolumeClaim")
    assert pvc["spec"]["storageClassName"] == "" and pvc["spec"]["volumeName"] == "nfs-cache"
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "PersistentVolumeClaim" not in kinds(render(env, files=(EXISTING,)))


def test_priority_classes(env):
    docs = render(env)
    training = only(docs, "PriorityClass", "posttrain-training")
    evaluation = only(docs, "PriorityClass", "posttrain-evaluation")
    # Evaluation gates releases and is short: ahead of training in the queue; neither evicts.
    assert evaluation["value"] > training["value"] > 0
    for pc in (training, evaluation):
        assert pc["globalDefault"] is False and pc["preemptionPolicy"] == "Never"
        assert "namespace" not in pc["metadata"]
    assert "PriorityClass" not in kinds(render(env, files=(EXISTING,)))
    # A large value stays an integer (Helm reads YAML numbers as floats).
    big = only(render(env, sets=("priorityClasses.evaluation.value=1000000000",)), "PriorityClass", "posttrain-evaluation")
    assert big["value"] == 1000000000 and isinstance(big["value"], int)


def test_resource_quota_only_when_enabled(env):
    assert not {"ResourceQuota", "LimitRange"} & set(kinds(render(env)))
    docs = render(env, files=(ALL_ON,))
    quota = only(docs, "ResourceQuota", "posttrain")
    assert quota["spec"]["hard"] == {"requests.nvidia.com/gpu": "32", "requests.cpu": "1024", "requests.memory": "8Ti", "pods": "1000000"}
    limits = only(docs, "LimitRange", "posttrain-defaults")
    assert limits["spec"]["limits"] == [{"type": "Container", "defaultRequest": {"cpu": "100m", "memory": "256Mi"}}]
    docs = render(env, sets=("resourceQuota.enabled=true", "resourceQuota.defaultRequests=null"))
    assert "LimitRange" not in kinds(docs)
    assert only(docs, "ResourceQuota")["spec"]["hard"]["requests.nvidia.com/gpu"] == "16"


# -- values.schema.json ----------------------------------------------------------------------

BAD_VALUES = {
    "size-not-a-string": (["--set", "cache.size=100"], "/cache/size", "want string"),
    "size-not-a-quantity": (["--set", "cache.size=lots"], "/cache/size", "does not match pattern"),
    "unknown-top-level-key": (["--set", "bogus=1"], "additional properties 'bogus' not allowed", ""),
    "unknown-nested-key": (["--set", "rbac.readSecrets=true"], "additional properties 'readSecrets' not allowed", "/rbac"),
    "hf-create-without-value": (["--set", "secrets.hfToken.create=true"], "/secrets/hfToken", "missing property 'value'"),
    "hf-empty-value": (["--set", "secrets.hfToken.create=true", "--set", "secrets.hfToken.value="], "/secrets/hfToken/value", "minLength"),
    "s3-create-without-secret-key": (["--set", "secrets.s3.create=true", "--set", "secrets.s3.accessKeyId=a"], "/secrets/s3",
                                     "missing property 'secretAccessKey'"),
    "create-and-existing": (["--set", "secrets.hfToken.create=true", "--set", "secrets.hfToken.value=x",
                             "--set", "secrets.hfToken.existingSecret=mine"], "/secrets/hfToken/existingSecret", "maxLength"),
    "disabled-but-created": (["--set", "secrets.s3.enabled=false", "--set", "secrets.s3.create=true", "--set", "secrets.s3.accessKeyId=a",
                              "--set", "secrets.s3.secretAccessKey=b"], "/secrets/s3/create", "value must be false"),
    "endpoint-on-a-referenced-secret": (["--set", "secrets.s3.endpoint=http://minio:9000"], "/secrets/s3/endpoint", "maxLength"),
    "bad-access-mode": (["--set", "cache.accessModes={ReadWriteAlways}"], "/cache/accessModes/0", "ReadWriteMany"),
    "priority-above-user-range": (["--set", "priorityClasses.training.value=2000000000"], "/priorityClasses/training/value", "maximum"),
    "bad-preemption-policy": (["--set", "priorityClasses.evaluation.preemptionPolicy=Always"],
                              "/priorityClasses/evaluation/preemptionPolicy", "PreemptLowerPriority"),
    "bad-service-account-name": (["--set", "serviceAccount.name=Post_Train"], "/serviceAccount/name", "does not match pattern"),
    "extra-subject-without-name": (["--set", "rbac.extraSubjects[0].namespace=kubeflow"], "/rbac/extraSubjects/0", "missing property 'name'"),
    "read-nodes-not-boolean": (["--set-string", "rbac.readNodes=yes"], "/rbac/readNodes", "want boolean"),
    "quota-bad-quantity": (["--set", "resourceQuota.enabled=true", "--set-string", "resourceQuota.hard.pods=many"],
                           "/resourceQuota/hard/pods", "does not match pattern"),
}


@pytest.mark.parametrize("case", BAD_VALUES, ids=list(BAD_VALUES))
def test_schema_rejects_bad_values(env, case):
    args, field, detail = BAD_VALUES[case]
    for cmd in (["template", "posttrain"], ["lint", "--strict"]):
        out = helm(env, *cmd, str(CHART), *args)
        said = out.stdout + out.stderr
        assert out.returncode != 0, f"helm {cmd[0]} accepted {args}"
        assert "values don't meet the specifications of the schema" in said, said
        assert field in said and detail in said, said


# -- NOTES.txt -------------------------------------------------------------------------------


def notes(env, files=(), sets=()) -> str:
    # A client-side dry run prints NOTES.txt without a cluster (lookup finds nothing).
    out = helm(env, "install", "posttrain", str(CHART), "--namespace", NS, "--dry-run=client", *value_args(files, sets))
    assert out.returncode == 0, out.stderr
    return out.stdout.split("NOTES:", 1)[1]


def test_notes_tell_the_next_command_and_the_secrets(env):
    text = notes(env)
    assert "make submit PIPELINE=smollm3 KFP_HOST=" in text and "EXPERIMENT=" in text
    assert "make schedule PIPELINE=smollm3 KFP_HOST=https://<your-kfp-host> CRON='0 3 * * 1'" in text
    assert f"KFP must run the pipeline's pods in {NS}" in text and f"KFP_NAMESPACE={NS}" in text
    assert "service_account: posttrain" in text and "cache_pvc: posttrain-cache" in text
    assert "- {name: posttrain-hf-token, env: {token: HF_TOKEN}}" in text
    assert "- {name: posttrain-s3, env: {access_key_id: AWS_ACCESS_KEY_ID, secret_access_key: AWS_SECRET_ACCESS_KEY}}" in text
    # Referenced Secrets the release cannot see: say so, and how to create them.
    assert "WARNING: 2 referenced Secret(s) missing in posttrain: posttrain-hf-token, posttrain-s3" in text
    assert f"kubectl -n {NS} create secret generic posttrain-hf-token --from-file=token=" in text
    assert "Nothing cluster-wide" in text and "rbac.readNodes=true" in text


def test_notes_for_created_and_existing_secrets(env):
    text = notes(env, files=(ALL_ON,))
    assert "Secret posttrain-hf-token created by this chart" in text and "Secret posttrain-s3 created by this chart" in text
    assert "WARNING" not in text and "NOT FOUND" not in text
    assert "hf_fake_token_for_chart_tests" not in text and "fake-secret-access-key" not in text
    assert "ClusterRole posttrain-read-nodes-posttrain: get/list nodes" in text
    assert "endpoint_url: AWS_ENDPOINT_URL" in text and "ResourceQuota posttrain" in text
    text = notes(env, files=(EXISTING,))
    assert "Secret team-hf-token referenced, NOT FOUND" in text and "Secret team-minio referenced, NOT FOUND" in text
    assert "- {name: team-hf-token, env: {hf_token: HF_TOKEN}}" in text
    assert "service_account: kfp-posttrain   (not created here: it must exist)" in text
    assert "PriorityClasses not created here" in text
    text = notes(env, sets=("secrets.hfToken.enabled=false", "secrets.s3.enabled=false"))
    assert "Hub token: not used" in text and "S3 credentials: not used" in text and "WARNING" not in text


# -- kubernetes-validate --------------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered(env, tmp_path_factory) -> dict[str, Path]:
    """Each value set rendered once into a file, for the validators."""
    out = tmp_path_factory.mktemp("rendered")
    files = {}
    for name, values in VALUE_SETS.items():
        result = template(env, values)
        assert result.returncode == 0, result.stderr
        files[name] = out / f"{name}.yaml"
        files[name].write_text(result.stdout)
    return files


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_every_manifest_validates_strictly(env, rendered, version):
    out = run([tool("kubernetes-validate"), "--strict", "--kubernetes-version", version, *map(str, rendered.values())], env)
    assert out.returncode == 0, out.stdout + out.stderr
    # Every document validated against a schema (an unknown kind would only warn).
    expected = sum(len([d for d in yaml.safe_load_all(p.read_text()) if d]) for p in rendered.values())
    passed = re.findall(rf"passed for resource \S+ against version {version.rsplit('.', 1)[0]}$", out.stdout, re.M)
    assert len(passed) == expected, out.stdout
    assert "WARN" not in out.stdout + out.stderr


def test_strict_validation_catches_an_unknown_field(env, rendered, tmp_path):
    # The same pipeline on a manifest with a field Kubernetes does not know must fail.
    docs = [d for d in yaml.safe_load_all(rendered["default"].read_text()) if d]
    only(docs, "PersistentVolumeClaim")["spec"]["sizeLimit"] = "1Ti"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump_all(docs))
    out = run([tool("kubernetes-validate"), "--strict", "--kubernetes-version", KUBE_VERSIONS[0], str(bad)], env)
    assert out.returncode != 0 and "sizeLimit" in out.stdout + out.stderr


# -- checkov --------------------------------------------------------------------------------


def checkov(env, *args: str) -> dict:
    # --skip-download: offline, no policy metadata fetched from the vendor's API.
    out = run([tool("checkov"), "--skip-download", "--compact", "--output", "json", *args], env, timeout=300)
    assert out.returncode in (0, 1), out.stdout + out.stderr
    reports = json.loads(out.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    assert len(reports) == 1, [r.get("check_type") for r in reports]
    return reports[0]


@pytest.mark.parametrize("values", VALUE_SETS, ids=list(VALUE_SETS))
def test_checkov_passes_on_the_chart(env, values):
    # checkov renders the chart with the helm on PATH, into the namespace the chart is
    # installed in (the default namespace would itself fail CKV_K8S_21).
    files = VALUE_SETS[values]
    report = checkov({**env, "HELM_NAMESPACE": NS}, "--directory", str(CHART), "--framework", "helm",
                     *[a for f in files for a in ("--var-file", str(f))])
    assert report["check_type"] == "helm"
    failed = report["results"]["failed_checks"]
    assert not failed, [(c["check_id"], c["check_name"], c["resource"]) for c in failed]
    # checkov drops a chart whose render printed anything on stderr: make sure it scanned every object.
    assert report["summary"]["resource_count"] == len(render(env, files)), report["summary"]
    assert report["summary"]["parsing_errors"] == 0
    assert "CKV_K8S_49" in {c["check_id"] for c in report["results"]["passed_checks"]}  # no wildcards in the Role
    # A skip must say why, in a checkov.io/skipN annotation "CKV_ID=reason".
    for skipped in report["results"]["skipped_checks"]:
        assert skipped.get("suppress_comment", "No comment provided") != "No comment provided", skipped


def test_checkov_reports_a_failure(env, tmp_path):
    # The same invocation flags a wildcard Role: a pass above is not a scan that saw nothing.
    (tmp_path / "role.yaml").write_text(yaml.safe_dump({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "too-much", "namespace": NS},
        "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}],
    }))
    report = checkov(env, "--directory", str(tmp_path), "--framework", "kubernetes")
    assert "CKV_K8S_49" in {c["check_id"] for c in report["results"]["failed_checks"]}
