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
    r = apply_overrides(load_recipe(RECIPE, "tiny"), [f"preference.chunks={chunks}", "select.soup.enabled=false"])
    cfg = stage_configs(r)
    assert [k for k in cfg if k.startswith("prefgen_")] == [f"prefgen_{k}" for k in range(1, chunks + 1)]
    assert [k for k in cfg if k.startswith("preference_train_")] == [f"preference_train_{k}" for k in range(1, chunks + 1)]
    assert eval_labels(r) == ["base", "midtrain", "sft", *[f"chunk-{k}" for k in range(1, chunks + 1)]]
    assert [cfg[f"prefgen_{k}"]["chunk"] for k in range(1, chunks + 1)] == list(range(1, chunks + 1))


def test_stage_configs_hold_only_what_the_stage_reads():
    cfg = stage_configs(load_recipe(RECIPE, "local"))
    assert "preference" not in cfg["sft"] and "sft" not in cfg["preference_train_1"]
    changed = stage_configs(apply_overrides(load_recipe(RECIPE, "local"), ["preference.beta=0.2"]))
    # A changed preference knob leaves upstream task configs (and their cache) alone.
    assert all(changed[t] == cfg[t] for t in ("pin_base", "prepare_data", "midtrain", "sft", "evaluate_sft"))
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
    expected = {"preflight", "pin-base", "prepare-data", "tokenize-sft", "tokenize-midtrain", "midtrain", "sft", "evaluate-base", "evaluate-midtrain", "evaluate-sft", "select-best", "publish"}
    expected |= {f"{s}-{k}" for s in ("prefgen", "preference-train") for k in range(1, 5)}
    expected |= {f"evaluate-chunk-{k}" for k in range(1, 5)} | {"soup", "evaluate-soup"}
    assert names == expected | {"release-gate"}  # the dsl.If around publish

    by_name = {t["taskInfo"]["name"]: (key, t) for key, t in tasks.items()}

    def deps(name):
        return {by_name_key[d] for d in by_name[name][1].get("dependentTasks", [])}

    by_name_key = {key: t["taskInfo"]["name"] for key, t in tasks.items()}
    # preflight runs first, on every run; nothing reads its outputs (see test_preflight_is_never_cached).
    assert deps("pin-base") == {"preflight"}
    assert deps("prepare-data") == {"preflight", "pin-base"}
    # Tokenised once on the CPU pool, from the base model's tokenizer, beside the base model's evaluation.
    assert deps("tokenize-sft") == deps("tokenize-midtrain") == {"prepare-data", "pin-base"}
    assert deps("midtrain") == {"tokenize-midtrain", "pin-base"}
    assert deps("sft") == {"tokenize-sft", "midtrain"}
    # strong_vs_weak without regenerate: every chunk's pairs in one pass, up front.
    assert all(deps(f"prefgen-{k}") == {"sft", "prepare-data"} for k in range(1, 5))
    assert deps("preference-train-1") == {"sft", "prefgen-1"}
    assert deps("preference-train-2") == {"preference-train-1", "prefgen-2", "sft"}  # reference: initial (sft)
    assert deps("evaluate-chunk-4") == {"preference-train-4", "evaluate-chunk-3"}
    assert deps("soup") == {"evaluate-chunk-4"}
    assert deps("evaluate-soup") == {"soup", "evaluate-chunk-4"}
    assert deps("select-best") == {"evaluate-soup"}
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
    cases = [("sft", "train", "train"), ("preference-train-2", "train", "train"), ("prefgen-1", "generate", "generate"),
             ("evaluate-sft", "generate", "generate"), ("select-best", "cpu", "cpu"), ("prepare-data", "cpu", "data"), ("tokenize-sft", "cpu", "data")]
    for task_name, kind, sizing in cases:
        res = recipe.cluster.resources[sizing]
        task, label = _executor(spec, task_name)
        container = executors[label]["container"]
        assert container["image"] == recipe.cluster.images[kind]
        assert container["resources"].get("resourceCpuLimit") == res.cpu and container["resources"].get("resourceMemoryLimit") == res.memory
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


def _compiled(tmp_path, profile: str, overrides: list[str]) -> dict:
    out = tmp_path / "p.yaml"
    compile_pipeline(apply_overrides(load_recipe(RECIPE, profile), overrides), str(out))
    return next(yaml.safe_load_all(out.read_text()))


def _inputs(task: dict) -> dict[str, str]:
    """Artifact input -> the task (or loop channel) it comes from."""
    out = {}
    for name, v in task.get("inputs", {}).get("artifacts", {}).items():
        out[name] = v["taskOutputArtifact"]["producerTask"] if "taskOutputArtifact" in v else v["componentInputArtifact"]
    return out


def _by_display(spec) -> dict[str, dict]:
    return {t["taskInfo"]["name"]: t for t in _all_tasks(spec).values()}


@pytest.mark.parametrize("reference", ["initial", "previous"])
def test_reference_policy_wiring(tmp_path, reference):
    spec = _compiled(tmp_path, "local", [f"preference.reference={reference}", "preference.chunks=3"])
    tasks = _by_display(spec)
    names = {key: t["taskInfo"]["name"] for key, t in _all_tasks(spec).items()}
    for k in (2, 3):
        ins = {n: names.get(src, src) for n, src in _inputs(tasks[f"preference-train-{k}"]).items()}
        assert ins["policy"] == f"preference-train-{k - 1}"
        assert ins["reference"] == ("sft" if reference == "initial" else f"preference-train-{k - 1}")
    first = {n: names.get(src, src) for n, src in _inputs(tasks["preference-train-1"]).items()}
    assert first["policy"] == first["reference"] == "sft"


@pytest.mark.parametrize("regenerate", [True, False])
def test_regenerate_samples_the_previous_policy(tmp_path, regenerate):
    spec = _compiled(tmp_path, "local", [f"prefgen.regenerate={str(regenerate).lower()}", "preference.chunks=3"])
    tasks = _by_display(spec)
    names = {key: t["taskInfo"]["name"] for key, t in _all_tasks(spec).items()}
    policy_of = {k: names[_inputs(tasks[f"prefgen-{k}"])["policy"]] for k in (1, 2, 3)}
    if regenerate:
        assert policy_of == {1: "sft", 2: "preference-train-1", 3: "preference-train-2"}
    else:
        assert policy_of == {1: "sft", 2: "sft", 3: "sft"}


def test_regenerate_needs_on_policy():
    from posttrain.recipe import RecipeError

    with pytest.raises(RecipeError, match="regenerate: true` is for method on_policy"):
        apply_overrides(load_recipe(RECIPE), ["prefgen.regenerate=true"])


def test_sweep_compiles_to_a_parallel_for_of_chunk_chains(tmp_path):
    import json

    spec = _compiled(tmp_path, "local", ["sweep.lr=[1.0e-6, 2.0e-6]", "sweep.beta=[0.05, 0.1]", "sweep.parallelism=2"])
    root = _tasks(spec)
    loop = next(t for t in root.values() if "parameterIterator" in t)
    items = [json.loads(i) for i in json.loads(loop["parameterIterator"]["items"]["raw"])]
    assert [i["preference"] for i in items] == [{"lr": lr, "beta": b} for lr in (1e-6, 2e-6) for b in (0.05, 0.1)]
    assert len({i["name"] for i in items}) == 4
    assert loop["iteratorPolicy"]["parallelismLimit"] == 2
    body = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
    # Each branch: its own chain of train + evaluate per chunk; chunk 2's pairs
    # are sampled from the branch's chunk-1 policy (local: regenerate); chunk 1's
    # pairs come from the SFT model, once, outside the loop.
    in_branch = sorted(t["taskInfo"]["name"] for t in body.values())
    assert in_branch == ["evaluate-chunk-1", "evaluate-chunk-2", "preference-train-1", "preference-train-2", "prefgen-2"]
    assert "prefgen-1" in {t["taskInfo"]["name"] for t in root.values()}
    for t in body.values():
        assert t["inputs"]["parameters"]["variant"]["componentInputParameter"].startswith("pipelinechannel--loop-item")
    merge = next(t for t in root.values() if t["taskInfo"]["name"] == "merge-boards")
    assert merge["dependentTasks"] == [next(k for k, t in root.items() if "parameterIterator" in t)]
    select = next(t for t in root.values() if t["taskInfo"]["name"] == "select-best")
    assert _inputs(select)["scoreboard"] == next(k for k, t in root.items() if t["taskInfo"]["name"] == "merge-boards")


def test_sweep_combinations_are_validated():
    from posttrain.recipe import RecipeError

    with pytest.raises(RecipeError, match=r"sweep: combination \{'loss': 'simpo'.*beta"):
        apply_overrides(load_recipe(RECIPE, "local"), ["sweep.loss=[apo_zero, simpo]", "sweep.beta=[0.05]"])
    with pytest.raises(RecipeError, match="sweep.loss.*unknown loss|unknown loss"):
        apply_overrides(load_recipe(RECIPE, "local"), ["sweep.loss=[dpo_typo]"])


def test_branch_overrides_reach_only_the_sections_a_task_reads():
    import json

    from posttrain.components._runtime import with_variant

    item = json.dumps({"name": "lr2e-06", "preference": {"lr": 2e-6}})
    train = with_variant({"preference": {"lr": 1e-6, "beta": 0.1}, "chunk": 2}, item)
    assert train == {"preference": {"lr": 2e-6, "beta": 0.1}, "chunk": 2, "variant": "lr2e-06"}
    assert with_variant({"eval": {}, "label": "chunk-1"}, item) == {"eval": {}, "label": "chunk-1", "variant": "lr2e-06"}
    assert with_variant({"x": 1}, "") == {"x": 1}
