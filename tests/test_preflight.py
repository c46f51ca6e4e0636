"""preflight: the models a recipe names besides the base model (strong,
weak, reward model, judges) must resolve before any GPU is requested."""

import pytest
from conftest import RECIPE

from posttrain.dag import stage_configs
from posttrain.recipe import apply_overrides, load_recipe
from posttrain.stages import preflight
from posttrain.stages.context import StageContext


def _run(tmp_path, monkeypatch, overrides):
    monkeypatch.setenv("POSTTRAIN_STORE", f"file://{tmp_path / 'store'}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = stage_configs(apply_overrides(load_recipe(RECIPE, "tiny"), overrides))["preflight"]
    outputs = {"base_model": tmp_path / "base", "scoreboard": tmp_path / "board"}
    ctx = StageContext.create(config, {}, outputs)
    try:
        return config, preflight.run(ctx)
    finally:
        ctx.cleanup()


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
