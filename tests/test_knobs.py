"""UI knobs: the pipeline's parameters (names, types, defaults, descriptions),
where their placeholders go, and their substitution by KFP's local runner."""

import json

import pytest
import yaml
from conftest import RECIPE
from kfp import dsl, local

from posttrain.dag import compile_pipeline
from posttrain.knobs import recipe_knobs, render, with_sentinels
from posttrain.recipe import apply_overrides, load_recipe

PARAM_TYPES = {float: "NUMBER_DOUBLE", str: "STRING"}


@pytest.fixture(scope="module")
def cluster_ir(tmp_path_factory):
    recipe = load_recipe(RECIPE, None)
    path = tmp_path_factory.mktemp("ir") / "smollm3.yaml"
    compile_pipeline(recipe, str(path))
    return recipe, next(yaml.safe_load_all(path.read_text()))


def _config(spec, task_name):
    tasks = spec["root"]["dag"]["tasks"]
    task = next(t for t in tasks.values() if t["taskInfo"]["name"] == task_name)
    return task["inputs"]["parameters"]["config"]["runtimeValue"]["constant"]


def test_pipeline_parameters_are_the_knobs_with_recipe_defaults(cluster_ir):
    recipe, spec = cluster_ir
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert set(params) == {
        "base_model_revision", "midtrain_lr", "midtrain_epochs", "sft_lr", "sft_epochs", "preference_loss", "preference_beta",
        "preference_lr", "preference_epochs", "data_smoltalk2_revision", "data_ifeval_like_data_revision",
    }
    for knob in recipe_knobs(recipe):
        assert params[knob.name]["parameterType"] == PARAM_TYPES[knob.type]
        assert params[knob.name]["defaultValue"] == knob.default
        assert params[knob.name]["description"]  # shown in the UI
    assert params["sft_lr"]["defaultValue"] == recipe.sft.lr
    assert params["preference_lr"]["defaultValue"] == recipe.preference.lr


def test_unset_preference_lr_and_beta_default_to_their_resolved_values():
    recipe = apply_overrides(load_recipe(RECIPE, None), ["preference.lr=null", "preference.beta=null", "preference.loss=ipo"])
    defaults = {k.name: k.default for k in recipe_knobs(recipe)}
    assert defaults["preference_lr"] == pytest.approx(recipe.sft.lr / 10)  # the playbook's rule
    assert defaults["preference_beta"] == 0.1  # IPO's tau default


def test_a_knob_reaches_only_the_tasks_that_read_it(cluster_ir):
    _, spec = cluster_ir

    def uses(task, knob):
        return f"pipelinechannel--{knob}'" in _config(spec, task)

    assert uses("sft", "sft_lr") and uses("sft", "sft_epochs")
    assert not uses("sft", "preference_beta") and not uses("midtrain", "sft_lr")
    assert uses("preference-train-1", "preference_beta") and uses("preference-train-4", "preference_loss")
    assert uses("prepare-data", "data_smoltalk2_revision") and not uses("prepare-data", "sft_lr")
    assert uses("pin-base", "base_model_revision") and not uses("pin-base", "data_smoltalk2_revision")
    assert not any(uses("evaluate-sft", k.name) for k in recipe_knobs(cluster_ir[0]))
    # preflight holds the whole recipe, every knob in it, to validate the run's values.
    assert all(uses("preflight", k.name) for k in recipe_knobs(cluster_ir[0]))
    # A number is a bare JSON value, a string sits inside quotes.
    sft = _config(spec, "sft")
    assert "\"lr\": {{$.inputs.parameters['pipelinechannel--sft_lr']}}" in sft
    assert "\"revision\": \"{{$.inputs.parameters['pipelinechannel--base_model_revision']}}\"" in _config(spec, "pin-base")


def test_midtrain_knobs_only_when_midtrain_runs():
    names = {k.name for k in recipe_knobs(apply_overrides(load_recipe(RECIPE, None), ["midtrain.enabled=false"]))}
    assert "midtrain_lr" not in names and "sft_lr" in names


def test_sources_of_one_repo_pinned_apart_get_a_knob_each():
    recipe = load_recipe(RECIPE, None)
    sft = recipe.model_dump(mode="json")["data"]["sft"]
    sft[0]["revision"] = "v1.0"
    recipe = apply_overrides(recipe, [f"data.sft={json.dumps(sft)}"])
    names = {k.name for k in recipe_knobs(recipe)}
    assert "data_smoltalk2_revision" not in names
    assert {"data_longalign_think_revision", "data_openthoughts3_revision"} <= names


@dsl.component(base_image="python:3.11")
def _echo(config: str) -> str:
    import json

    return json.dumps(json.loads(config), sort_keys=True)


def test_kfp_local_substitutes_the_runs_values(tmp_path):
    """The mechanism end to end: a config rendered with the knobs' placeholders,
    run through kfp.local with non-default values, reads back as valid JSON."""
    recipe = load_recipe(RECIPE, "tiny")
    knobs = [k for k in recipe_knobs(recipe) if k.name in ("sft_lr", "base_model_revision")]
    config = json.dumps({"train": with_sentinels(recipe.model_dump(mode="json"), knobs)["sft"],
                         "base": with_sentinels(recipe.model_dump(mode="json"), knobs)["base_model"]})

    @dsl.pipeline(name="knobs")
    def pipeline(sft_lr: float = 1.0, base_model_revision: str = "main") -> str:
        return _echo(config=render(config, knobs, {"sft_lr": sft_lr, "base_model_revision": base_model_revision})).output

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path))
    out = json.loads(pipeline(sft_lr=3e-05, base_model_revision="v2").output)
    assert out["train"]["lr"] == 3e-05 and out["base"]["revision"] == "v2"
    assert out["train"]["max_steps"] == recipe.sft.max_steps
