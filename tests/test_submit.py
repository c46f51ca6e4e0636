"""`posttrain submit | schedule | unschedule` with the real kfp.Client against
tests/kfpserver.py, a fake KFP v2beta1 API server on 127.0.0.1: the requests
the client sends are asserted, and the server's state after them. No live
cluster is involved."""

import hashlib
import json
import shutil
import subprocess

import pytest
import yaml
from conftest import RECIPE
from kfpserver import API, FakeKFP

from posttrain.cli import main
from posttrain.dag import compile_pipeline
from posttrain.recipe import load_recipe
from posttrain.submit import SubmitUsageError, kfp_cron, runtime_parameters

TOKEN = "test-token-123"
KFP_ENV = ("KFP_HOST", "KFP_TOKEN", "KFP_COOKIE", "KFP_CA_CERT", "KFP_NAMESPACE", "KF_PIPELINES_UI_ENDPOINT", "KF_PIPELINES_ENDPOINT")


def git(repo, *args) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A scratch working directory (build/ goes there) and an environment without KFP settings of the machine's."""
    for name in KFP_ENV:
        monkeypatch.delenv(name, raising=False)
    # No pod token here; and a real one on the test machine must not be picked up.
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(tmp_path / "no-sa-token"))
    # kfp.Client reads a saved namespace and auth header from ~/.config/kfp/context.json.
    import kfp.client

    monkeypatch.setattr(kfp.client.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))
    # The machine's git config (signing, hooks) stays out of the test repositories.
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "no-gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    d = tmp_path / "work"
    d.mkdir()
    monkeypatch.chdir(d)
    return d


@pytest.fixture
def repo(tmp_path, work):
    """A git repository holding pipelines/smollm3.yaml, one commit."""
    r = tmp_path / "repo"
    (r / "pipelines").mkdir(parents=True)
    shutil.copy(RECIPE, r / "pipelines" / "smollm3.yaml")
    git(r, "init", "-q")
    commit(r, "recipe")
    return r


def commit(r, message: str) -> str:
    git(r, "add", "-A")
    git(r, "-c", "user.name=test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false", "commit", "-q", "-m", message)
    return git(r, "rev-parse", "--short", "HEAD")


@pytest.fixture
def server(monkeypatch):
    s = FakeKFP(token=TOKEN).start()
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    try:
        yield s
    finally:
        s.stop()


def cli(capsys, *args) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def recipe_path(r):
    return r / "pipelines" / "smollm3.yaml"


def calls(server) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in server.api_requests()]


def writes(server) -> list[tuple[str, str]]:
    return [c for c in calls(server) if c[0] != "GET"]


# -- submit -----------------------------------------------------------------------


def test_submit_creates_pipeline_version_experiment_and_run(capsys, repo, server, work):
    sha = git(repo, "rev-parse", "--short", "HEAD")
    rc, out, err = cli(capsys, "submit", recipe_path(repo), "--host", server.host)
    assert rc == 0, err
    st = server.state
    (pipeline,), (version,), (experiment,), (run,) = st.pipelines.values(), st.versions.values(), st.experiments.values(), st.runs.values()

    # Every call carries the token from KFP_TOKEN; the first ones only read (healthz, then an authenticated list).
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in server.api_requests())
    assert calls(server)[:3] == [("GET", f"{API}/healthz"), ("GET", f"{API}/healthz"), ("GET", f"{API}/pipelines")]
    assert writes(server) == [("POST", f"{API}/pipelines"), ("POST", f"{API}/pipelines/upload_version"),
                              ("POST", f"{API}/experiments"), ("POST", f"{API}/runs")]
    lookup = server.api_requests("GET", f"{API}/pipelines")[1]
    assert json.loads(lookup.arg("filter"))["predicates"] == [{"operation": "EQUALS", "key": "display_name", "stringValue": "smollm3"}]

    # The pipeline is named by the recipe and holds only commit-named versions.
    assert server.api_requests("POST", f"{API}/pipelines")[0].json()["name"] == "smollm3"
    assert pipeline["name"] == "smollm3"
    upload = server.api_requests("POST", f"{API}/pipelines/upload_version")[0]
    assert upload.arg("name") == version["name"] == f"smollm3-cluster-{sha}"
    assert upload.arg("pipelineid") == pipeline["pipeline_id"]

    # The uploaded file is this recipe's cluster IR: the file in build/, byte for byte the same as a compile of its own.
    sent = st.uploads[version["pipeline_version_id"]]
    built = work / "build" / "smollm3-cluster.yaml"
    assert sent == built.read_bytes()
    reference = work / "reference.yaml"
    compile_pipeline(load_recipe(recipe_path(repo)), str(reference))
    assert sent == reference.read_bytes()
    spec, platform = yaml.safe_load_all(sent)
    assert spec["pipelineInfo"]["name"] == "smollm3"
    assert "kubernetes" in platform["platforms"]  # the cluster settings came along
    assert f"IR sha256:{hashlib.sha256(sent).hexdigest()}" in upload.arg("description")

    assert experiment["display_name"] == "posttrain"
    body = server.api_requests("POST", f"{API}/runs")[0].json()
    assert body["experiment_id"] == experiment["experiment_id"]
    assert body["pipeline_version_reference"] == {"pipeline_id": pipeline["pipeline_id"], "pipeline_version_id": version["pipeline_version_id"]}
    assert body["service_account"] == "posttrain"
    assert body["display_name"].startswith(f"smollm3 smollm3-cluster-{sha} ")
    assert body["runtime_config"].get("parameters", {}) == {}  # no parameters: the IR's defaults
    assert "pipeline_spec" not in body

    assert f"Run: {server.host}/#/runs/details/{run['run_id']}" in out
    for ident in (pipeline["pipeline_id"], version["pipeline_version_id"], experiment["experiment_id"]):
        assert ident in out
    assert "Pipeline details" not in out and "Run details" not in out  # kfp.Client's own prints are kept out


def test_resubmitting_the_same_commit_reuses_pipeline_and_version(capsys, repo, server):
    assert cli(capsys, "submit", recipe_path(repo), "--host", server.host)[0] == 0
    rc, out, err = cli(capsys, "submit", recipe_path(repo), "--host", server.host, "--experiment", "posttrain")
    assert rc == 0, err
    st = server.state
    assert (len(st.pipelines), len(st.versions), len(st.experiments), len(st.runs)) == (1, 1, 1, 2)
    assert len(server.api_requests("POST", f"{API}/pipelines/upload_version")) == 1
    (version,) = st.versions.values()
    assert all(r["pipeline_version_reference"]["pipeline_version_id"] == version["pipeline_version_id"] for r in st.runs.values())
    assert "(existing, same IR)" in out and "(existing)" in out


def test_a_new_commit_is_a_new_version_of_the_same_pipeline(capsys, repo, server):
    first = git(repo, "rev-parse", "--short", "HEAD")
    assert cli(capsys, "submit", recipe_path(repo), "--host", server.host)[0] == 0
    text = recipe_path(repo).read_text().replace("beta: 0.05 ", "beta: 0.1  ")
    recipe_path(repo).write_text(text)
    second = commit(repo, "beta 0.1")
    rc, out, err = cli(capsys, "submit", recipe_path(repo), "--host", server.host)
    assert rc == 0, err
    st = server.state
    assert len(st.pipelines) == 1
    names = sorted(v["name"] for v in st.versions.values())
    assert names == sorted([f"smollm3-cluster-{first}", f"smollm3-cluster-{second}"])
    (pipeline_id,) = st.pipelines
    assert {v["pipeline_id"] for v in st.versions.values()} == {pipeline_id}
    latest = list(st.runs.values())[-1]
    assert st.versions[latest["pipeline_version_reference"]["pipeline_version_id"]]["name"] == f"smollm3-cluster-{second}"
    # The edit reached the uploaded IR.
    ir_of = {v["name"]: st.uploads[v["pipeline_version_id"]] for v in st.versions.values()}
    assert ir_of[f"smollm3-cluster-{first}"] != ir_of[f"smollm3-cluster-{second}"]


def test_dirty_trees_and_overrides_are_named_by_ir_hash(capsys, repo, server, work):
    sha = git(repo, "rev-parse", "--short", "HEAD")
    built = work / "build" / "smollm3-cluster.yaml"
    names = []
    for beta in ("0.2", "0.3"):
        recipe_path(repo).write_text(RECIPE.read_text().replace("beta: 0.05 ", f"beta: {beta}  "))
        rc, out, err = cli(capsys, "submit", recipe_path(repo), "--host", server.host)
        assert rc == 0, err
        names.append(f"smollm3-cluster-{sha}-dirty-{hashlib.sha256(built.read_bytes()).hexdigest()[:8]}")
        assert names[-1] in out and "uncommitted changes" in out
    assert names[0] != names[1]
    assert sorted(v["name"] for v in server.state.versions.values()) == sorted(names)

    # A clean tree with --set: the commit does not describe the IR either.
    recipe_path(repo).write_text(RECIPE.read_text())
    rc, out, err = cli(capsys, "submit", recipe_path(repo), "--host", server.host,
                       "--set", "sft.lr=1e-5", "--set", "cluster.service_account=posttrain-runner")
    assert rc == 0, err
    upload = server.api_requests("POST", f"{API}/pipelines/upload_version")[-1]
    assert upload.arg("name") == f"smollm3-cluster-{sha}-{hashlib.sha256(built.read_bytes()).hexdigest()[:8]}"
    assert "overrides: sft.lr=1e-5 cluster.service_account=posttrain-runner" in upload.arg("description")
    assert server.api_requests("POST", f"{API}/runs")[-1].json()["service_account"] == "posttrain-runner"


def test_a_recipe_outside_git_is_named_nogit(capsys, tmp_path, work, server):
    recipe = tmp_path / "loose" / "pipelines" / "smollm3.yaml"
    recipe.parent.mkdir(parents=True)
    shutil.copy(RECIPE, recipe)
    rc, out, err = cli(capsys, "submit", recipe, "--host", server.host, "--profile", "cluster")
    assert rc == 0, err
    (version,) = server.state.versions.values()
    digest = hashlib.sha256((work / "build" / "smollm3-cluster.yaml").read_bytes()).hexdigest()
    assert version["name"] == f"smollm3-cluster-nogit-{digest[:8]}"
    assert "not in a git repository" in out


def test_missing_host_is_one_clear_error_and_no_request(capsys, repo, server, work):
    rc, out, err = cli(capsys, "submit", recipe_path(repo))
    assert rc == 2
    assert err.startswith("error: no KFP host") and "KFP_HOST" in err and "--host" in err
    assert server.requests == []
    assert not (work / "build").exists()


def test_kfp_host_from_the_environment(capsys, repo, server, monkeypatch):
    monkeypatch.setenv("KFP_HOST", server.host + "/")
    rc, out, err = cli(capsys, "submit", recipe_path(repo))
    assert rc == 0, err
    assert f"Run: {server.host}/#/runs/details/" in out


def test_bad_token_fails_before_anything_is_compiled_or_created(capsys, repo, server, work, monkeypatch):
    monkeypatch.setenv("KFP_TOKEN", "not-the-token")
    rc, out, err = cli(capsys, "submit", recipe_path(repo), "--host", server.host)
    assert rc == 1
    assert "401" in err and "Unauthenticated" in err and "KFP_TOKEN" in err and "nothing was created on the server" in err
    assert len(err.strip().splitlines()) == 2  # one message, no traceback or retry log
    # One healthz attempt (kfp.Client's own would retry 5 times, 5 s apart), then nothing else.
    assert calls(server) == [("GET", f"{API}/healthz")]
    assert [r.headers.get("authorization") for r in server.requests] == ["Bearer not-the-token"]
    assert not (work / "build").exists()
    assert not server.state.pipelines and not server.state.runs


def test_no_token_against_a_login_page(capsys, repo, work):
    # A Kubeflow gateway sends unauthenticated calls to its login page; urllib3 follows the redirect and gets HTML.
    s = FakeKFP(login_redirect=True, token=TOKEN).start()
    try:
        rc, out, err = cli(capsys, "submit", recipe_path(repo), "--host", s.host)
        assert rc == 1
        assert "not answering as the KFP API" in err and "login page" in err and "KFP_TOKEN" in err
        assert [r.method for r in s.requests if r.method != "GET"] == []
        assert not s.state.pipelines
    finally:
        s.stop()


def test_an_unreachable_host(capsys, repo):
    s = FakeKFP().start()
    host = s.host
    s.stop()  # nothing listens on that port now
    rc, out, err = cli(capsys, "submit", recipe_path(repo), "--host", host)
    assert rc == 1
    assert f"cannot reach KFP at {host}" in err and "nothing was created" in err


def test_a_bad_override_is_refused_before_any_request(capsys, repo, server):
    rc, out, err = cli(capsys, "submit", recipe_path(repo), "--host", server.host, "--set", "sft.lr=-1")
    assert rc == 2
    assert err.startswith("error: overrides: invalid recipe") and "sft.lr" in err
    assert server.requests == []


def test_a_server_error_midway_reports_what_exists_and_a_resubmit_reuses_it(capsys, repo, server):
    server.fail("POST", f"{API}/runs", 500, "database is locked")
    rc, out, err = cli(capsys, "submit", recipe_path(repo), "--host", server.host)
    assert rc == 1
    assert "creating run" in err and "500" in err and "database is locked" in err
    (pipeline,), (version,), (experiment,) = server.state.pipelines.values(), server.state.versions.values(), server.state.experiments.values()
    assert (f"already created on the server: pipeline smollm3 ({pipeline['pipeline_id']}); pipeline version {version['name']} "
            f"({version['pipeline_version_id']}); experiment posttrain ({experiment['experiment_id']})") in err
    assert not server.state.runs

    rc, out, err = cli(capsys, "submit", recipe_path(repo), "--host", server.host)
    assert rc == 0, err
    assert len(server.state.runs) == 1 and len(server.state.versions) == 1


def test_a_pipeline_created_by_someone_else_meanwhile_is_used(capsys, repo, server):
    # Another submit creates the pipeline between this one's lookup and its create: the create gets 409.
    server.before("POST", f"{API}/pipelines", lambda s: s._add_pipeline("smollm3", None, "theirs", ""))
    rc, out, err = cli(capsys, "submit", recipe_path(repo), "--host", server.host)
    assert rc == 0, err
    (pipeline,) = server.state.pipelines.values()
    assert pipeline["description"] == "theirs"
    assert next(iter(server.state.versions.values()))["pipeline_id"] == pipeline["pipeline_id"]
    assert f"smollm3  {pipeline['pipeline_id']}  (existing)" in out


def test_an_existing_version_with_another_ir_is_not_reused(capsys, repo, server):
    assert cli(capsys, "submit", recipe_path(repo), "--host", server.host)[0] == 0
    (version,) = server.state.versions.values()
    version["description"] = "posttrain smollm3, profile cluster, IR sha256:" + "0" * 64  # built elsewhere, differently
    rc, out, err = cli(capsys, "submit", recipe_path(repo), "--host", server.host)
    assert rc == 1
    assert "exists with a different IR" in err and version["name"] in err
    assert len(server.state.runs) == 1


def test_the_pod_service_account_token_is_used_without_kfp_token(capsys, repo, server, monkeypatch, tmp_path):
    monkeypatch.delenv("KFP_TOKEN")
    token_file = tmp_path / "sa-token"
    token_file.write_text(TOKEN + "\n")
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token_file))
    rc, out, err = cli(capsys, "submit", recipe_path(repo), "--host", server.host)
    assert rc == 0, err
    assert {r.headers.get("authorization") for r in server.requests} == {f"Bearer {TOKEN}"}


def test_multi_user_kfp_needs_a_namespace(capsys, repo, work):
    s = FakeKFP(multi_user=True).start()
    try:
        rc, out, err = cli(capsys, "submit", recipe_path(repo), "--host", s.host)
        assert rc == 2 and "multi-user" in err and "--namespace" in err
        assert [r for r in s.requests if r.method != "GET"] == []

        rc, out, err = cli(capsys, "submit", recipe_path(repo), "--host", s.host, "--namespace", "team-a")
        assert rc == 0, err
        (pipeline,), (experiment,) = s.state.pipelines.values(), s.state.experiments.values()
        assert pipeline["namespace"] == experiment["namespace"] == "team-a"
        assert {r.arg("namespace") for r in s.api_requests("GET", f"{API}/experiments")} == {"team-a"}
    finally:
        s.stop()


def test_an_unknown_pipeline_parameter_is_refused_before_upload(capsys, repo, server):
    rc, out, err = cli(capsys, "submit", recipe_path(repo), "--host", server.host, "--param", "no_such_knob=1")
    assert rc == 2 and "no parameter 'no_such_knob'" in err
    assert writes(server) == []


def test_parameters_pass_through_to_the_run(capsys, repo, server, work):
    # Whatever the IR declares (dag.py owns the list): one number and one string, sent back as their defaults.
    ir = work / "probe.yaml"
    compile_pipeline(load_recipe(recipe_path(repo)), str(ir))
    declared = next(yaml.safe_load_all(ir.read_text()))["root"]["inputDefinitions"]["parameters"]
    number = next(k for k, v in declared.items() if v["parameterType"] == "NUMBER_DOUBLE")
    text = next(k for k, v in declared.items() if v["parameterType"] == "STRING")
    rc, out, err = cli(capsys, "submit", recipe_path(repo), "--host", server.host, "--param", f"{number}=0.125", "--param", f"{text}=v1.2")
    assert rc == 0, err
    assert server.api_requests("POST", f"{API}/runs")[0].json()["runtime_config"]["parameters"] == {number: 0.125, text: "v1.2"}
    assert f'"{number}": 0.125' in out
    # Parameters are run settings, not part of the IR: the version is the clean commit's.
    (version,) = server.state.versions.values()
    assert version["name"] == f"smollm3-cluster-{git(repo, 'rev-parse', '--short', 'HEAD')}"


def test_parameters_are_converted_to_their_declared_types(tmp_path):
    ir = tmp_path / "ir.yaml"
    params = {"lr": "NUMBER_DOUBLE", "epochs": "NUMBER_INTEGER", "loss": "STRING", "soup": "BOOLEAN", "mix": "STRUCT"}
    ir.write_text(yaml.safe_dump({"root": {"inputDefinitions": {"parameters": {k: {"parameterType": t} for k, t in params.items()}}}}))
    got = runtime_parameters(ir, ["lr=1e-5", "epochs=2", "loss=1e-5", "soup=True", 'mix={"a": 1}'])
    assert got == {"lr": 1e-5, "epochs": 2, "loss": "1e-5", "soup": True, "mix": {"a": 1}}
    for bad in ("epochs=1.5", "soup=yes", "mix=[1]", "lr"):
        with pytest.raises(SubmitUsageError):
            runtime_parameters(ir, [bad])


# -- schedule / unschedule ---------------------------------------------------------------


def test_schedule_creates_a_recurring_run(capsys, repo, server):
    rc, out, err = cli(capsys, "schedule", recipe_path(repo), "--host", server.host, "--cron", "0 3 * * 1")
    assert rc == 0, err
    (job,), (version,), (experiment,) = server.state.recurring_runs.values(), server.state.versions.values(), server.state.experiments.values()
    body = server.api_requests("POST", f"{API}/recurringruns")[0].json()
    assert body["display_name"] == "smollm3-cluster"
    assert body["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * 1"}}
    assert body["max_concurrency"] == 1 and body["no_catchup"] is True and body["mode"] == "ENABLE"
    assert body["pipeline_version_reference"] == {"pipeline_id": version["pipeline_id"], "pipeline_version_id": version["pipeline_version_id"]}
    assert body["experiment_id"] == experiment["experiment_id"]
    assert body["service_account"] == "posttrain"
    assert "pipeline_spec" not in body
    assert job["max_concurrency"] == "1" and job["status"] == "ENABLED"  # as the server answers (int64 as a JSON string)
    assert not server.state.runs  # scheduling starts no run now
    assert f"Recurring run: {server.host}/#/recurringrun/details/{job['recurring_run_id']}" in out
    assert "'0 0 3 * * 1'" in out


def test_scheduling_again_replaces_the_recurring_run(capsys, repo, server):
    assert cli(capsys, "schedule", recipe_path(repo), "--host", server.host, "--cron", "0 3 * * 1")[0] == 0
    (old,) = server.state.recurring_runs
    rc, out, err = cli(capsys, "schedule", recipe_path(repo), "--host", server.host, "--cron", "30 4 * * *")
    assert rc == 0, err
    (new,) = server.state.recurring_runs.values()
    assert new["trigger"]["cron_schedule"]["cron"] == "0 30 4 * * *" and new["recurring_run_id"] != old
    # Created first, then the old one deleted: a failure in between leaves a schedule, never none.
    assert writes(server)[-2:] == [("POST", f"{API}/recurringruns"), ("DELETE", f"{API}/recurringruns/{old}")]
    assert f"replaced    smollm3-cluster  {old}  (deleted)" in out


@pytest.mark.parametrize("cron", ["0 3 * *", "0 3 * * 1 2 3", "0 3 * * $", ""])
def test_a_bad_cron_is_refused_before_any_request(capsys, repo, server, cron):
    rc, out, err = cli(capsys, "schedule", recipe_path(repo), "--host", server.host, "--cron", cron)
    assert rc == 2 and err.startswith(f"error: cron {cron!r}")
    assert server.requests == []


def test_cron_conversion():
    assert kfp_cron("0 3 * * 1") == "0 0 3 * * 1"
    assert kfp_cron(" 15  2 1 * * ") == "0 15 2 1 * *"
    assert kfp_cron("30 0 3 * * MON") == "30 0 3 * * MON"  # already KFP's 6 fields


def test_unschedule_deletes_the_recurring_run(capsys, repo, server):
    assert cli(capsys, "schedule", recipe_path(repo), "--host", server.host, "--cron", "0 3 * * 1")[0] == 0
    (job_id,) = server.state.recurring_runs
    rc, out, err = cli(capsys, "unschedule", recipe_path(repo), "--host", server.host)
    assert rc == 0, err
    assert not server.state.recurring_runs
    assert writes(server)[-1] == ("DELETE", f"{API}/recurringruns/{job_id}")
    assert f"deleted recurring run smollm3-cluster {job_id} (cron '0 0 3 * * 1')" in out

    before = len(server.requests)
    rc, out, err = cli(capsys, "unschedule", recipe_path(repo), "--host", server.host)
    assert rc == 0 and "nothing deleted" in out
    assert [r.method for r in server.requests[before:]] == ["GET"] * (len(server.requests) - before)


def test_unschedule_finds_every_copy_across_pages_and_leaves_other_schedules(capsys, repo, work, monkeypatch):
    import kfp

    s = FakeKFP(page_cap=1).start()  # one item per page: the listing must follow next_page_token
    try:
        assert cli(capsys, "schedule", recipe_path(repo), "--host", s.host, "--cron", "0 3 * * 1")[0] == 0
        (kept,) = s.state.recurring_runs.values()
        # Two more of the same name (made by hand in the UI, say) and one of another name, through kfp.Client.
        client = kfp.Client(host=s.host)
        (version,), (experiment,) = s.state.versions.values(), s.state.experiments.values()
        for name in ("smollm3-cluster", "other", "smollm3-cluster"):
            client.create_recurring_run(experiment["experiment_id"], name, cron_expression="0 0 1 * * *", pipeline_id=version["pipeline_id"],
                                        version_id=version["pipeline_version_id"])
        rc, out, err = cli(capsys, "unschedule", recipe_path(repo), "--host", s.host)
        assert rc == 0, err
        assert [j["display_name"] for j in s.state.recurring_runs.values()] == ["other"]
        assert out.count("deleted recurring run smollm3-cluster") == 3 and kept["recurring_run_id"] in out
    finally:
        s.stop()


def test_unschedule_without_the_experiment(capsys, repo, server):
    rc, out, err = cli(capsys, "unschedule", recipe_path(repo), "--host", server.host, "--experiment", "nightly", "--name", "x")
    assert rc == 0 and "no experiment 'nightly'" in out
    assert writes(server) == []
