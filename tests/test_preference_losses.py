"""Preference losses (issue 7): the registry, the recipe's validation of each
loss's hyperparameters, the learning-rate default, unpairing for KTO, and for
every loss a real training step of the preference stage on the tiny model with
the right TRL trainer, config and reference model."""

import json
from pathlib import Path

import pytest
from conftest import RECIPE

from posttrain import preference_losses as pl
from posttrain.dag import stage_configs
from posttrain.data.artifacts import write_dataset
from posttrain.models import ModelRef, read_model_ref, write_model_ref
from posttrain.recipe import PREFERENCE_LOSSES, PreferenceConfig, RecipeError, apply_overrides, load_recipe
from posttrain.stages import preference_train
from posttrain.stages import training as training_mod
from posttrain.stages.context import StageContext

# The losses of issue 7 (hinge and robust are kept from before with DPO's ranges).
REQUIRED = ("sigmoid", "ipo", "apo_zero", "apo_down", "sigmoid_norm", "simpo", "orpo", "kto")
EXPECTED = {  # loss -> (trainer, reference model)
    "sigmoid": ("DPOTrainer", True),
    "ipo": ("DPOTrainer", True),
    "apo_zero": ("DPOTrainer", True),
    "apo_down": ("DPOTrainer", True),
    "sigmoid_norm": ("DPOTrainer", True),
    "simpo": ("CPOTrainer", False),
    "orpo": ("ORPOTrainer", False),
    "kto": ("KTOTrainer", True),
}
PAIRS = [
    ("Name a colour.", "Blue.", "I like turtles and many other things."),
    ("Say hello in French.", "Bonjour.", "Goodbye, see you tomorrow."),
    ("What is 2 + 2?", "4.", "It depends on what you mean by numbers."),
    ("Give a one-word greeting.", "Hi!", "Once upon a time there was a greeting."),
]


def _pair_rows() -> list[dict]:
    return [{"prompt": [{"role": "user", "content": p}], "chosen": [{"role": "assistant", "content": c}],
             "rejected": [{"role": "assistant", "content": r}]} for p, c, r in PAIRS]


@pytest.fixture(scope="module")
def tiny():
    return load_recipe(RECIPE, "tiny")


def _with_loss(recipe, loss: str, *more: str):
    # The cluster profile's beta (0.05, for APO-zero) is unset so the loss's default applies.
    return apply_overrides(recipe, [f"preference.loss={loss}", "preference.beta=null", *more])


# -- registry and recipe validation ------------------------------------------------


def test_registry_holds_exactly_the_recipe_losses_with_defaults_in_range():
    assert tuple(pl.LOSSES) == PREFERENCE_LOSSES
    assert set(REQUIRED) <= set(PREFERENCE_LOSSES)
    for name, spec in pl.LOSSES.items():
        lo, hi = spec.beta_range
        assert lo <= spec.beta_default <= hi, name
        assert spec.paper and spec.family in pl.FAMILY_TRAINERS
        assert (spec.trainer, spec.reference) == EXPECTED.get(name, ("DPOTrainer", True))
    assert pl.SIMPO_GAMMA_DEFAULT / pl.LOSSES["simpo"].beta_default == pytest.approx(0.5)
    assert pl.LOSSES["orpo"].includes_sft and not pl.LOSSES["simpo"].includes_sft


@pytest.mark.parametrize("loss", PREFERENCE_LOSSES)
def test_every_loss_validates_with_its_defaults(tiny, loss):
    cfg = _with_loss(tiny, loss).preference
    assert cfg.loss == loss and cfg.beta is None
    assert pl.resolved_beta(cfg) == pl.LOSSES[loss].beta_default
    args = pl.loss_args(cfg)
    assert args["beta"] == pl.LOSSES[loss].beta_default
    # The dumped config (what the stage gets) validates again.
    assert PreferenceConfig.model_validate(cfg.model_dump(mode="json")) == cfg


def test_cluster_recipe_is_unchanged():
    r = load_recipe(RECIPE)
    assert (r.preference.loss, r.preference.beta, r.preference.lr) == ("apo_zero", 0.05, 1e-6)
    assert pl.loss_args(r.preference) == {"loss_type": ["apo_zero"], "beta": 0.05}


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["preference.loss=sigmoid", "preference.beta=5.0"], "preference.beta = 5.0: out of range for loss sigmoid (DPO); allowed 0.01–0.5"),
        (["preference.loss=ipo", "preference.beta=2"], "preference.beta = 2: out of range for loss ipo (IPO; beta is its τ); allowed 0.01–1"),
        (["preference.loss=apo_zero", "preference.beta=0.001"], "preference.beta = 0.001: out of range for loss apo_zero (APO-zero); allowed 0.01–0.5"),
        (["preference.loss=apo_down", "preference.beta=0.9"], "preference.beta = 0.9: out of range for loss apo_down (APO-down); allowed 0.01–0.5"),
        (["preference.loss=sigmoid_norm", "preference.beta=0.1"],
         "preference.beta = 0.1: out of range for loss sigmoid_norm (length-normalised DPO); allowed 1–10"),
        # The inherited APO-zero beta is out of SimPO's range: the message says what to do.
        (["preference.loss=simpo"], "preference.beta = 0.05: out of range for loss simpo (SimPO); allowed 1–10 (unset: 2)"),
        (["preference.loss=simpo", "preference.beta=null", "preference.simpo_gamma=2.5"],
         "preference.simpo_gamma = 2.5: out of range for loss simpo (SimPO) with beta 2; allowed 0–2"),
        (["preference.loss=simpo", "preference.beta=2.5", "preference.simpo_gamma=-1"], "preference.simpo_gamma = -1: Input should be greater than or equal to 0"),
        (["preference.loss=orpo", "preference.beta=2"], "preference.beta = 2: out of range for loss orpo (ORPO; beta is its λ); allowed 0.1–1"),
        (["preference.loss=kto", "preference.beta=1.5"], "preference.beta = 1.5: out of range for loss kto (KTO); allowed 0.01–1"),
        (["preference.loss=kto", "preference.beta=null", "preference.kto_desirable_weight=2"],
         "preference.kto_desirable_weight = 2: out of range for loss kto (KTO) with kto_undesirable_weight 1"),
        (["preference.loss=kto", "preference.beta=null", "preference.kto_undesirable_weight=1.5", "preference.kto_desirable_weight=1"],
         "preference.kto_desirable_weight = 1: out of range for loss kto (KTO) with kto_undesirable_weight 1.5"),
        (["preference.loss=kto", "preference.beta=null", "preference.per_device_batch_size=1"],
         "preference: loss kto needs per_device_batch_size of at least 2 (it is 1)"),
        (["preference.simpo_gamma=1.0"], "preference.simpo_gamma = 1.0: simpo_gamma is only for loss simpo (SimPO); loss is apo_zero"),
        (["preference.kto_desirable_weight=1.0"], "preference.kto_desirable_weight = 1.0: kto_desirable_weight is only for loss kto (KTO); loss is apo_zero"),
        (["preference.lr=0"], "preference.lr = 0: Input should be greater than 0"),
    ],
)
def test_out_of_range_hyperparameters_give_one_error_naming_field_and_range(tiny, overrides, expected):
    with pytest.raises(RecipeError) as err:
        apply_overrides(tiny, overrides)
    lines = str(err.value).splitlines()
    assert lines[0] == "overrides: invalid recipe" and len(lines) == 2, lines
    assert lines[1].strip().startswith(expected), lines[1]


def test_in_range_values_are_kept(tiny):
    cfg = _with_loss(tiny, "simpo", "preference.beta=2.5", "preference.simpo_gamma=1.4").preference
    assert pl.loss_args(cfg) == {"loss_type": "simpo", "beta": 2.5, "simpo_gamma": 1.4, "cpo_alpha": 0.0}
    cfg = _with_loss(tiny, "kto", "preference.kto_desirable_weight=1.3").preference
    assert pl.loss_args(cfg) == {"loss_type": "kto", "beta": 0.1, "desirable_weight": 1.3, "undesirable_weight": 1.0}
    assert pl.loss_args(_with_loss(tiny, "orpo", "preference.beta=0.2").preference) == {"beta": 0.2}
    assert pl.loss_args(_with_loss(tiny, "ipo", "preference.beta=0.01").preference) == {"loss_type": ["ipo"], "beta": 0.01}


def test_an_unknown_loss_is_reported_once(tiny):
    with pytest.raises(RecipeError) as err:
        apply_overrides(tiny, ["preference.loss=dpo++", "preference.beta=50"])
    lines = str(err.value).splitlines()[1:]
    assert lines == ["  preference.loss = 'dpo++': unknown loss type; allowed: " + ", ".join(PREFERENCE_LOSSES)]


# -- learning rate -----------------------------------------------------------------


def test_lr_defaults_to_a_tenth_of_the_sft_lr(tiny):
    cfg = apply_overrides(tiny, ["preference.lr=null", "sft.lr=3e-5"])
    assert cfg.preference.lr is None
    assert pl.resolved_lr(cfg.preference, cfg.sft.lr) == pytest.approx(3e-6)
    # An explicit value wins.
    assert pl.resolved_lr(apply_overrides(tiny, ["preference.lr=7e-7"]).preference, 3e-5) == 7e-7
    # Without the SFT lr (a stage config from before the DAG passes `sft_lr`) the error says what to set.
    with pytest.raises(ValueError, match=r"preference.lr is not set .*\(sft.lr / 10\).*`sft_lr`"):
        pl.resolved_lr(cfg.preference, None)


# -- KTO data ----------------------------------------------------------------------


def test_paired_to_kto_unpairs_each_pair_into_a_desirable_and_an_undesirable_row():
    pairs = _pair_rows() + [{"prompt": [{"role": "user", "content": "Odd one out?"}], "chosen": [{"role": "assistant", "content": "Yes."}],
                             "rejected": [{"role": "assistant", "content": "Purple monkey dishwasher."}]}]
    rows = pl.paired_to_kto(pairs)
    assert len(rows) == 2 * len(pairs) and all(set(r) == {"prompt", "completion", "label"} for r in rows)
    for pair in pairs:
        mine = [r for r in rows if r["prompt"] == pair["prompt"]]
        assert sorted((r["label"], r["completion"][0]["content"]) for r in mine) == [
            (False, pair["rejected"][0]["content"]), (True, pair["chosen"][0]["content"])]
    # Neighbours never share a prompt (KTO's KL estimate rotates completions within a batch), and labels mix.
    assert all(a["prompt"] != b["prompt"] for a, b in zip(rows, rows[1:]))
    assert all({rows[i]["label"], rows[i + 1]["label"]} == {True, False} for i in range(0, len(pairs) - 1))

    n_d = sum(r["label"] for r in rows)
    n_u = len(rows) - n_d
    assert n_d == n_u == len(pairs)
    cfg = PreferenceConfig(loss="kto", per_device_batch_size=2)
    d, u = pl.kto_weights(cfg, n_d, n_u)
    assert (d, u) == (1.0, 1.0)
    assert 1 <= pl.kto_ratio(d, u, n_d, n_u) <= 4 / 3


def test_kto_weights_follow_the_ratio_rule():
    lo, hi = pl.KTO_RATIO
    default = PreferenceConfig(loss="kto", per_device_batch_size=2)
    # Unset: the rule's lower end for any counts.
    for n_d, n_u in [(10, 10), (5, 20), (20, 5)]:
        d, u = pl.kto_weights(default, n_d, n_u)
        assert u == 1.0 and pl.kto_ratio(d, u, n_d, n_u) == pytest.approx(lo)
    set_both = PreferenceConfig(loss="kto", per_device_batch_size=2, kto_desirable_weight=1.25, kto_undesirable_weight=1.0)
    ratio = pl.kto_ratio(*pl.kto_weights(set_both, 8, 8), 8, 8)
    assert ratio == pytest.approx(1.25) and ratio <= hi
    # Counts that break the rule for the recipe's weights: a clear error.
    with pytest.raises(ValueError, match=r"must lie in \[1, 4/3\]"):
        pl.kto_weights(set_both, 4, 8)
    with pytest.raises(ValueError, match="desirable and undesirable rows"):
        pl.kto_weights(default, 0, 8)


# -- the stage, one training step per loss ------------------------------------------


@pytest.fixture
def run_stage(tmp_path, monkeypatch):
    """Run preference_train chunk 1 of the tiny profile on PAIRS; returns (result, trainer, model dir)."""
    monkeypatch.setenv("POSTTRAIN_STORE", f"file://{tmp_path / 'store'}")
    monkeypatch.delenv("POSTTRAIN_LOG_DIR", raising=False)
    write_model_ref(tmp_path / "policy", ModelRef(uri="local:tiny"))
    write_dataset(tmp_path / "pairs", _pair_rows(), {})
    seen: dict = {}
    real = training_mod.save_trained

    def spy(trainer, *args, **kwargs):
        seen["trainer"] = trainer
        return real(trainer, *args, **kwargs)

    monkeypatch.setattr(preference_train, "save_trained", spy)

    def run(config: dict):
        out = tmp_path / "out" / "model"
        ctx = StageContext.create(config, {"policy": tmp_path / "policy", "pairs": tmp_path / "pairs"}, {"model": out})
        try:
            result = preference_train.run(ctx)
        finally:
            ctx.cleanup()
        return result, seen["trainer"], Path(read_model_ref(out).uri.removeprefix("file://"))

    return run


def _trl_fields(args) -> dict:
    return {k: getattr(args, k) for k in ("loss_type", "beta", "simpo_gamma", "cpo_alpha", "desirable_weight", "undesirable_weight") if hasattr(args, k)}


@pytest.mark.parametrize("loss", REQUIRED)
def test_stage_trains_each_loss_with_its_trainer(tiny, loss, run_stage):
    # Defaults throughout, the lr included (sft.lr / 10); one step of two rows.
    recipe = _with_loss(tiny, loss, "preference.lr=null", "preference.max_steps=1", "preference.gradient_accumulation_steps=1")
    config = dict(stage_configs(recipe)["preference_train_1"])
    config.setdefault("sft_lr", recipe.sft.lr)  # until the DAG passes it
    result, trainer, final = run_stage(config)

    trainer_name, reference = EXPECTED[loss]
    assert type(trainer).__name__ == trainer_name
    # A reference is a model beside the policy, or (precompute_ref_log_probs, the default) its log-probs in the data.
    assert (getattr(trainer, "ref_model", None) is not None or getattr(trainer, "precompute_ref_logps", False)) == reference
    spec = pl.LOSSES[loss]
    expected = {"beta": spec.beta_default}
    if spec.family == "dpo":
        expected["loss_type"] = [loss]
    elif spec.family == "cpo":
        expected.update(loss_type="simpo", simpo_gamma=pl.SIMPO_GAMMA_DEFAULT, cpo_alpha=0.0)
    elif spec.family == "kto":
        expected.update(loss_type="kto", desirable_weight=1.0, undesirable_weight=1.0)
        assert len(trainer.train_dataset) == 2 * len(PAIRS) and sum(trainer.train_dataset["label"]) == len(PAIRS)
        assert result.metrics["train.desirable"] == result.metrics["train.undesirable"] == len(PAIRS)
    assert {k: v for k, v in _trl_fields(trainer.args).items() if k in expected} == expected
    assert trainer.args.learning_rate == pytest.approx(recipe.sft.lr / 10)

    # A real step, and a model artifact.
    assert result.metrics["train.steps"] == 1.0 and "train.loss_last" in result.metrics
    assert result.metrics["train.max_weight_change"] > 0
    assert (final / "model.safetensors").is_file() and not (final / "training_args.bin").exists()
    card = json.loads((final / "posttrain.json").read_text())
    assert (card["loss"], card["trainer"], card["reference_model"], card["beta"]) == (loss, trainer_name, reference, spec.beta_default)
    assert card["lr"] == pytest.approx(recipe.sft.lr / 10)


def test_stage_without_lr_or_sft_lr_fails_clearly(tiny, run_stage):
    recipe = apply_overrides(tiny, ["preference.lr=null", "preference.max_steps=1"])
    config = dict(stage_configs(recipe)["preference_train_1"])
    config.pop("sft_lr", None)
    with pytest.raises(ValueError, match="set preference.lr in the recipe"):
        run_stage(config)


# -- reasoning mode of the pairs -----------------------------------------------------


def _rendered_prompts(trainer) -> list[str]:
    """The prompt of each training row as the trainer rendered it with the chat template."""
    data = trainer.train_dataset
    if "prompt_ids" in data.column_names:  # DPOTrainer, KTOTrainer
        return [trainer.processing_class.decode(ids) for ids in data["prompt_ids"]]
    return data["prompt"]  # CPOTrainer, ORPOTrainer: the rendered text


@pytest.mark.parametrize("loss", ["apo_zero", "kto", "simpo", "orpo"])
def test_each_pair_is_rendered_in_its_reasoning_mode(tiny, loss, run_stage, tmp_path):
    # The same prompt three times: think, no_think, and no mode (the template's default, think).
    prompt, chosen, rejected = PAIRS[0]
    rows = [{"prompt": [{"role": "user", "content": prompt}], "chosen": [{"role": "assistant", "content": chosen}],
             "rejected": [{"role": "assistant", "content": rejected}], "reasoning_mode": mode} for mode in ("think", "no_think", None)]
    recipe = _with_loss(tiny, loss, "preference.max_steps=1", "preference.gradient_accumulation_steps=1")
    config = dict(stage_configs(recipe)["preference_train_1"])
    assert config["chat_template"] == "smollm3"
    write_dataset(tmp_path / "pairs", rows, {})  # in place of the fixture's pairs
    _, trainer, _ = run_stage(config)

    rendered = _rendered_prompts(trainer)
    # KTO unpairs: row j comes from pair j mod 3.
    think, no_think, default = (rendered[i] for i in range(3))
    assert think != no_think
    assert "Reasoning Mode: /think" in think and "Reasoning Mode: /no_think" in no_think
    assert default == think
    if loss == "kto":
        assert rendered[3:] == rendered[:3]
