"""The DAG: chunk unrolling, loss mapping, and every Kubernetes setting in the
compiled IR. KFP's API server cannot run here, so the IR (the documented
contract it accepts) is what is checked."""

import dataclasses

import pytest
import yaml
from conftest import RECIPE

from posttrain.dag import compile_pipeline, eval_labels, stage_configs
from posttrain.recipe import PREFERENCE_LOSSES, apply_overrides, load_recipe


@pytest.fixture(scope="module")
def ir(tmp_path_factory):
    out = tmp_path_factory.mktemp("ir") / "smollm3.yaml"
    compile_pipeline(load_recipe(RECIPE), str(out))
    docs = list(yaml.safe_load_all(out.read_text()))
    return docs[0], (docs[1] if len(docs) > 1 else {})


@pytest.mark.parametrize("chunks", [1, 3, 5])
def test_chunks_are_unrolled(chunks):
    r = apply_overrides(load_recipe(RECIPE, "tiny"), [f"preference.chunks={chunks}"])
    cfg = stage_configs(r)
    assert [k for k in cfg if k.startswith("prefgen_")] == [f"prefgen_{k}" for k in range(1, chunks + 1)]
    assert [k for k in cfg if k.startswith("preference_train_")] == [f"preference_train_{k}" for k in range(1, chunks + 1)]
    assert eval_labels(r) == ["base", "midtrain", "sft", *[f"chunk-{k}" for k in range(1, chunks + 1)]]
    assert [cfg[f"prefgen_{k}"]["chunk"] for k in range(1, chunks + 1)] == list(range(1, chunks + 1))


def test_stage_configs_hold_only_what_the_stage_reads():
    cfg = stage_configs(load_recipe(RECIPE, "local"))
    assert "preference" not in cfg["sft"] and "sft" not in cfg["preference_train_1"]
    changed = stage_configs(apply_overrides(load_recipe(RECIPE, "local"), ["preference.beta=0.1"]))
    # A changed preference knob leaves upstream task configs (and their cache) alone.
    assert all(changed[t] == cfg[t] for t in ("preflight", "prepare_data", "midtrain", "sft", "evaluate_sft"))
    assert changed["preference_train_1"] != cfg["preference_train_1"]


@pytest.mark.parametrize("loss", PREFERENCE_LOSSES)
def test_every_recipe_loss_is_a_trl_loss(loss, tmp_path):
    from posttrain.preference_losses import LOSSES, loss_args, loss_spec, trl_classes

    r = apply_overrides(load_recipe(RECIPE, "tiny"), [f"preference.loss={loss}", "preference.beta=null"])
    config_cls, _ = trl_classes(loss_spec(loss).family)
    trl_args = loss_args(r.preference)
    args = config_cls(output_dir=str(tmp_path), bf16=False, **trl_args)
    assert args.beta == LOSSES[loss].beta_default
    assert {f.name for f in dataclasses.fields(config_cls)} >= set(trl_args)


def _tasks(spec):
    return spec["root"]["dag"]["tasks"]


def _all_tasks(spec):
    """Tasks of the root DAG and of nested DAGs (the release gate's condition)."""
    out = dict(_tasks(spec))
    for comp in spec["components"].values():
        out.update(comp.get("dag", {}).get("tasks", {}))
    return out


def test_task_graph(ir):
    spec, _ = ir
    tasks = _all_tasks(spec)
    names = {t["taskInfo"]["name"] for t in tasks.values()}
    expected = {"preflight", "prepare-data", "midtrain", "sft", "evaluate-base", "evaluate-midtrain", "evaluate-sft", "select-best", "publish"}
    expected |= {f"{s}-{k}" for s in ("prefgen", "preference-train") for k in range(1, 5)}
    expected |= {f"evaluate-chunk-{k}" for k in range(1, 5)}
    assert names == expected | {"release-gate"}  # the dsl.If around publish

    by_name = {t["taskInfo"]["name"]: (key, t) for key, t in tasks.items()}

    def deps(name):
        return {by_name_key[d] for d in by_name[name][1].get("dependentTasks", [])}

    by_name_key = {key: t["taskInfo"]["name"] for key, t in tasks.items()}
    assert deps("prepare-data") == {"preflight"}
    assert deps("midtrain") == {"prepare-data", "preflight"}
    assert deps("sft") == {"prepare-data", "midtrain"}
    assert deps("prefgen-1") == {"sft", "prepare-data"}
    assert deps("preference-train-1") == {"sft", "prefgen-1"}
    assert deps("prefgen-2") == {"preference-train-1", "prepare-data"}
    assert deps("evaluate-chunk-4") == {"preference-train-4", "evaluate-chunk-3"}
    assert deps("select-best") == {"evaluate-chunk-4"}
    # publish runs only when the gate passes
    gate = [t for t in _tasks(spec).values() if t["taskInfo"]["name"] == "release-gate"][0]
    assert "select-best" in [by_name_key[d] for d in gate["dependentTasks"]]
    assert "pipelinechannel--select-best-Output" in gate["triggerPolicy"]["condition"]


def _executor(spec, task_name):
    tasks = _all_tasks(spec)
    task = next(t for t in tasks.values() if t["taskInfo"]["name"] == task_name)
    comp = spec["components"][task["componentRef"]["name"]]
    return task, comp["executorLabel"]


def test_kubernetes_settings_per_stage_kind(ir):
    spec, platform = ir
    recipe = load_recipe(RECIPE)
    executors = spec["deploymentSpec"]["executors"]
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for task_name, kind in [("sft", "train"), ("preference-train-2", "train"), ("prefgen-1", "generate"), ("evaluate-sft", "generate"), ("prepare-data", "cpu")]:
        res = recipe.cluster.resources[kind]
        task, label = _executor(spec, task_name)
        container = executors[label]["container"]
        assert container["image"] == recipe.cluster.images[kind]
        assert {"name": "POSTTRAIN_STORE", "value": recipe.cluster.store_uri} in container.get("env", [])
        if res.gpus:
            assert container["resources"]["accelerator"]["resourceCount"] == str(res.gpus)
            assert container["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
        assert task["retryPolicy"]["maxRetryCount"] == res.retries
        assert task["retryPolicy"]["backoffDuration"] == res.backoff
        cfg = k8s[label]
        assert cfg.get("activeDeadlineSeconds") in (res.timeout_s, str(res.timeout_s))
        assert cfg.get("nodeSelector", {}).get("labels", {}) == res.node_selector
        assert [t["key"] for t in cfg.get("tolerations", [])] == [t.key for t in res.tolerations]
        if res.shm_size:
            assert {"volumeName": "dshm", "mountPath": "/dev/shm", "medium": "Memory", "sizeLimit": res.shm_size}.items() <= cfg["emptyDirMounts"][0].items()
        secrets = {s["secretName"]: {m["secretKey"]: m["envVar"] for m in s["keyToEnv"]} for s in cfg["secretAsEnv"]}
        assert secrets == {"posttrain-hf-token": {"token": "HF_TOKEN"}, "posttrain-s3": {"access_key_id": "AWS_ACCESS_KEY_ID", "secret_access_key": "AWS_SECRET_ACCESS_KEY"}}


def test_secrets_from_the_environment_never_reach_the_ir(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", "hf_do_not_leak_0123456789")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-do-not-leak-0123456789")
    out = tmp_path / "ir.yaml"
    compile_pipeline(load_recipe(RECIPE), str(out))
    text = out.read_text()
    assert "do_not_leak" not in text and "do-not-leak" not in text
    assert "posttrain-hf-token" in text  # referenced by Secret name only
