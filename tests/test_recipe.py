"""The recipe schema, its profiles, and the errors users see for bad input."""

import subprocess
import sys

import pytest
import yaml
from conftest import RECIPE

from posttrain.recipe import CLUSTER_PROFILE, PREFERENCE_LOSSES, RecipeError, apply_overrides, load_recipe


def test_cluster_profile_carries_the_published_smollm3_recipe():
    r = load_recipe(RECIPE)
    assert r.profile == CLUSTER_PROFILE
    assert r.base_model.uri == "hf://HuggingFaceTB/SmolLM3-3B-Base"
    assert r.midtrain.enabled and r.midtrain.lr == 2e-5 and r.midtrain.max_length == 32768
    assert r.sft.lr == 2e-5 and r.sft.packing and r.sft.packing_strategy == "bfd" and r.sft.assistant_only_loss
    assert r.sft.max_length == 65536 and 4 <= r.sft.epochs <= 5
    assert len(r.data.sft) == 25
    assert r.preference.loss == "apo_zero" and r.preference.beta == 0.05 and r.preference.lr == 1e-6
    assert r.preference.epochs == 1 and r.preference.padding_free and r.preference.warmup_ratio == 0.1
    assert r.sft.max_grad_norm == 0.2 and r.sft.min_lr_rate == 0.1 and r.sft.bf16
    # Preference lr about 10x below the SFT lr (playbook rule).
    assert r.sft.lr / r.preference.lr >= 10


@pytest.mark.parametrize("profile", ["local", "tiny"])
def test_local_profiles_are_offline(profile):
    r = load_recipe(RECIPE, profile)
    assert r.base_model.uri.startswith("local:")
    for group in (r.data.sft, r.data.midtrain, r.data.prompts):
        assert all(s.path and s.hub is None for s in group)
    assert r.eval.ifeval_data.path.endswith("shared/data/ifeval/input_data.jsonl")
    # Local files are pinned by content so caches see edits.
    assert r.data.sft[0].revision.startswith("sha256:")


def _broken(recipe_text: str, edit) -> str:
    raw = yaml.safe_load(recipe_text)
    edit(raw)
    return yaml.safe_dump(raw)


@pytest.mark.parametrize(
    "profile, edit, field, value, allowed",
    [
        (CLUSTER_PROFILE, lambda r: r["sft"].update(learnign_rate=1e-5), "sft.learnign_rate", "1e-05", "unknown key"),
        (CLUSTER_PROFILE, lambda r: r["sft"].update(lr="fast"), "sft.lr", "'fast'", "valid number"),
        (CLUSTER_PROFILE, lambda r: r["sft"].update(lr=-1e-5), "sft.lr", "-1e-05", "greater than 0"),
        (CLUSTER_PROFILE, lambda r: r["sft"].update(enabled=False), "sft.enabled", "False", "unknown key"),
        (CLUSTER_PROFILE, lambda r: r["preference"].update(lr=0), "preference.lr", "0", "greater than 0"),
        (CLUSTER_PROFILE, lambda r: r["preference"].update(loss="dpo++"), "preference.loss", "'dpo++'", "allowed: " + ", ".join(PREFERENCE_LOSSES)),
        (CLUSTER_PROFILE, lambda r: r["preference"].update(chunks=0), "preference.chunks", "0", "at least 1"),
        (CLUSTER_PROFILE, lambda r: r.update(chat_template="llama"), "chat_template", "'llama'", "allowed: chatml"),
        ("local", lambda r: r["profiles"]["local"]["data"]["sft"][0].update(path="data/local/missing.jsonl"), "data.sft.0.path", "'data/local/missing.jsonl'", "file not found"),
        ("local", lambda r: r["profiles"]["local"]["preference"].update(loss="dpo++"), "preference.loss", "'dpo++'", "allowed: sigmoid"),
    ],
)
def test_bad_recipe_names_field_value_and_what_is_allowed(recipe_text, write_recipe, profile, edit, field, value, allowed):
    path = write_recipe(_broken(recipe_text, edit))
    with pytest.raises(RecipeError) as err:
        load_recipe(path, profile)
    msg = str(err.value)
    assert f"{field} = {value}" in msg
    assert allowed in msg


def test_unknown_profile(recipe_text, write_recipe):
    with pytest.raises(RecipeError, match=r"profile = 'laptop': no such profile; allowed: cluster, local, tiny"):
        load_recipe(write_recipe(recipe_text), "laptop")


def test_overrides_are_validated():
    r = apply_overrides(load_recipe(RECIPE, "local"), ["sft.lr=1e-5", "preference.chunks=3"])
    assert r.sft.lr == 1e-5 and r.preference.chunks == 3
    with pytest.raises(RecipeError, match="preference.loss = 'nope'"):
        apply_overrides(r, ["preference.loss=nope"])
    with pytest.raises(RecipeError, match="not a recipe field"):
        apply_overrides(r, ["sft.nope=1"])


@pytest.mark.parametrize("command", ["validate", "compile", "run"])
def test_cli_bad_recipe_exits_2_and_writes_nothing(recipe_text, write_recipe, tmp_path, command):
    path = write_recipe(_broken(recipe_text, lambda r: r["profiles"]["local"]["preference"].update(chunks=0)))
    out = tmp_path / "out"
    extra = {"compile": ["-o", str(out / "x.yaml")], "run": ["--runs-dir", str(out)], "validate": []}[command]
    proc = subprocess.run(
        [sys.executable, "-m", "posttrain.cli", command, str(path), "--profile", "local", *extra],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert "preference.chunks = 0" in proc.stderr and "at least 1" in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        (["prefgen.method=strong_vs_weak", "prefgen.strong=null"], "prefgen", "method strong_vs_weak needs both `strong` and `weak` models"),
        (["prefgen.strong={uri: 'local:tiny'}"], "prefgen", "`strong`/`weak` are only for method strong_vs_weak"),
        (["prefgen.grader=null"], "prefgen", "method on_policy needs a `grader`"),
        (["prefgen.grader={kind: reward_model}"], "prefgen.grader", "kind reward_model needs `model`"),
        (["prefgen.grader={kind: judge}"], "prefgen.grader", "kind judge needs `judge: {models: [...]}`"),
        (["prefgen.grader={kind: judge, judge: {models: []}}"], "prefgen.grader.judge.models", "at least 1 item"),
        (["prefgen.grader={kind: llm}"], "prefgen.grader.kind", "'verifier', 'reward_model' or 'judge'"),
        (["prefgen.decontamination.threshold=0"], "prefgen.decontamination.threshold", "greater than 0"),
        (["prefgen.length_control=trim"], "prefgen.length_control", "'none' or 'balance'"),
        (["prefgen.max_error_fraction=1.5"], "prefgen.max_error_fraction", "less than or equal to 1"),
    ],
)
def test_bad_prefgen_settings_name_the_field(overrides, field, message):
    with pytest.raises(RecipeError) as err:
        apply_overrides(load_recipe(RECIPE, "local"), overrides)
    msg = str(err.value)
    assert (f"  {field} = " in msg or f"  {field}: " in msg) and message in msg, msg


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["eval.suites=[ifeval, vibes]"], "unknown eval suite 'vibes'; allowed: ifeval, thinkfollow, math, persona, vibe, or lm_eval:<task name>"),
        (["eval.stage_suites={final: [ifeval]}"], "unknown checkpoint 'final'; allowed: base, midtrain, sft, chunk"),
        (["eval.reasoning_modes=[]"], "at least 1 item"),
        (["select.objective=[ifeval.prompt_loose]"], "select.objective: 'ifeval.prompt_loose' is not reported for sft"),
        (["eval.reasoning_modes=[think]"], "select.objective: 'ifeval.prompt_strict.no_think' is not reported for sft"),
        (["select.objective=[]"], "select.objective = []: List should have at least 1 item"),
        (["select.soup={enabled: true, top_k: 3}"], "select.soup.top_k = 3: more than the 2 preference checkpoints the run trains"),
    ],
)
def test_bad_eval_settings_name_the_field(overrides, message):
    with pytest.raises(RecipeError) as err:
        apply_overrides(load_recipe(RECIPE, "local"), overrides)
    assert message in str(err.value), str(err.value)
