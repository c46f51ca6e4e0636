"""The recipe: one YAML file per pipeline, profiles as overrides inside it.

`load_recipe(path, profile)` deep-merges the profile over the top level and
validates the result. Every error names the field, the bad value and what is
allowed (`RecipeError`), before anything runs or is written.
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlparse

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from posttrain.image_lock import locked_images

# The losses the preference stage accepts (TRL's names where TRL has one): the
# keys of posttrain/preference_losses.py's registry, which holds each loss's
# trainer, reference model, hyperparameter defaults and ranges.
PREFERENCE_LOSSES = ("sigmoid", "ipo", "apo_zero", "apo_down", "sigmoid_norm", "hinge", "robust", "simpo", "orpo", "kto")

PositiveFloat = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]


# The recipe's top level is the cluster profile; other profiles override it.
CLUSTER_PROFILE = "cluster"


class RecipeError(ValueError):
    """A recipe that cannot run; the message is meant for the user as is."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSource(Strict):
    # hf://org/name, s3://bucket/prefix, file:///abs/path, or local:<name> for
    # the models posttrain builds offline (see local_models.py).
    uri: str
    revision: str = "main"

    @field_validator("uri")
    @classmethod
    def _scheme(cls, v: str) -> str:
        if not v.startswith(("hf://", "s3://", "file://", "local:")):
            raise ValueError("must start with hf://, s3://, file:// or local:")
        return v


class DataSource(Strict):
    """A dataset: a local file or folder (`path`: JSON lines, Parquet, or an
    Arrow folder written by save_to_disk) or a Hub dataset (`hub`)."""

    name: str
    path: str | None = None
    hub: str | None = None
    subset: str | None = None
    split: str = "train"
    revision: str = "main"
    max_examples: PositiveInt | None = None
    # Hub only: read the first max_examples rows as a stream instead of
    # downloading and preparing the whole set (a first look at a very large one).
    streaming: bool = False
    # Mixture by tokens: `weight` is this source's share of its group's token
    # budget (weights of a group are normalised over the sources that give
    # one); `tokens` is an absolute budget. A source with neither is taken as
    # it is. prepare_data up- or down-samples, deterministically from the seed.
    weight: PositiveFloat | None = None
    tokens: PositiveInt | None = None

    @model_validator(mode="after")
    def _one_source(self) -> DataSource:
        if (self.path is None) == (self.hub is None):
            raise ValueError("give exactly one of `path` (a local JSONL file) or `hub` (a Hub dataset id)")
        if self.weight is not None and self.tokens is not None:
            raise ValueError("give at most one of `weight` (share of the group's tokens) or `tokens` (absolute token budget)")
        if self.streaming and (self.hub is None or self.max_examples is None):
            raise ValueError("`streaming: true` reads the first `max_examples` rows of a Hub dataset: give `hub` and `max_examples`")
        return self


class DataConfig(Strict):
    # prepare_data fails when more than this share of a dataset's rows is unusable.
    max_invalid_fraction: Annotated[float, Field(ge=0, le=1)] = 0.01
    # Worker processes of prepare_data and tokenize (None: the CPUs the pod may use).
    num_proc: PositiveInt | None = None
    midtrain: list[DataSource] = []
    sft: list[DataSource]
    prompts: list[DataSource]
    # Total tokens shared out by `weight` among a group's weighted sources
    # (None: the tokens those sources have before resampling).
    sft_tokens: PositiveInt | None = None
    midtrain_tokens: PositiveInt | None = None


class LoraConfig(Strict):
    """LoRA through PEFT instead of full fine-tuning; the final model is saved merged."""

    r: PositiveInt = 16
    alpha: PositiveInt = 32
    dropout: Annotated[float, Field(ge=0, lt=1)] = 0.05
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class TrainConfig(Strict):
    """Shared by mid-training and SFT (both TRL SFTTrainer)."""

    lr: PositiveFloat = 2e-5
    epochs: PositiveFloat = 1.0
    max_steps: int = -1
    per_device_batch_size: PositiveInt = 1
    gradient_accumulation_steps: PositiveInt = 1
    max_length: PositiveInt = 2048
    packing: bool = True
    packing_strategy: Literal["bfd", "wrapped"] = "bfd"
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.03
    lr_scheduler: Literal["cosine_with_min_lr", "cosine", "linear", "constant"] = "cosine_with_min_lr"
    min_lr_rate: Annotated[float, Field(ge=0, lt=1)] = 0.1
    max_grad_norm: PositiveFloat = 0.2
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    bf16: bool = True
    # Trades compute for memory; worth it for long sequences on GPUs, not for
    # a small model on a CPU.
    gradient_checkpointing: bool = True
    logging_steps: PositiveInt = 1
    save_steps: PositiveInt = 500
    # Checkpoints kept in the store per stage (older ones are deleted).
    keep_checkpoints: PositiveInt = 2
    lora: LoraConfig | None = None
    # GPU kernels; on a CPU they fall back to sdpa / plain PyTorch with a warning.
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    use_liger_kernel: bool = False
    average_tokens_across_devices: bool = True

    @field_validator("max_steps")
    @classmethod
    def _steps(cls, v: int) -> int:
        if v == 0 or v < -1:
            raise ValueError("must be a positive step count, or -1 to train for `epochs`")
        return v


def known_template(name: str) -> str:
    from posttrain.templates import available_templates

    if name not in available_templates():
        raise ValueError(f"unknown chat template; allowed: {', '.join(available_templates())}")
    return name


class MidtrainConfig(TrainConfig):
    # Mid-training is optional in a recipe; SFT always runs.
    enabled: bool = False
    # Plain continued pretraining: sequences are concatenated and cut.
    packing_strategy: Literal["bfd", "wrapped"] = "wrapped"
    # Conversations in mid-training data are rendered to text with this template.
    chat_template: str = "chatml"

    @field_validator("chat_template")
    @classmethod
    def _template(cls, v: str) -> str:
        return known_template(v)


class SFTConfig(TrainConfig):
    assistant_only_loss: bool = True
    # Rows rendered and checked by the template lint before training (all
    # rows when the dataset is smaller).
    template_lint_rows: PositiveInt = 256


class JudgeConfig(Strict):
    """Pairwise LLM judge: each comparison is asked in both orders (a
    disagreement is a tie); several models form a jury that decides by majority."""

    models: Annotated[list[ModelSource], Field(min_length=1)]
    max_new_tokens: PositiveInt = 512
    # The judge's own reasoning mode, for hybrid models.
    reasoning_mode: Literal["think", "no_think"] = "no_think"
    batch_size: PositiveInt = 16


class GraderConfig(Strict):
    """What scores a response.

    - `verifier`: IFEval's instruction checkers for prompts with
      `instruction_id_list`/`kwargs`, math-verify against the prompt's
      `answer` for math prompts; the score is the share of instructions
      followed (1/0 for math).
    - `reward_model`: a sequence-classification model scores prompt + response.
    - `judge`: an LLM judge (or a jury) compares responses pairwise; the score
      is a response's share of comparisons won (ties count half).
    """

    kind: Literal["verifier", "reward_model", "judge"] = "verifier"
    model: ModelSource | None = None
    judge: JudgeConfig | None = None
    batch_size: PositiveInt = 16
    # math-verify can hang on pathological answers; a response not verified in
    # this time scores 0 and is counted as a grader error.
    math_timeout_s: PositiveFloat = 5.0

    @model_validator(mode="after")
    def _fields_for_kind(self) -> GraderConfig:
        if self.kind == "reward_model" and self.model is None:
            raise ValueError("kind reward_model needs `model` (a sequence-classification model)")
        if self.kind == "judge" and self.judge is None:
            raise ValueError("kind judge needs `judge: {models: [...]}`")
        if self.kind != "reward_model" and self.model is not None:
            raise ValueError(f"`model` is only for kind reward_model (kind is {self.kind}); a judge's models go in `judge.models`")
        if self.kind != "judge" and self.judge is not None:
            raise ValueError(f"`judge` is only for kind judge (kind is {self.kind})")
        return self


class DecontaminationConfig(Strict):
    """Prompts that share word n-grams with any eval set of the recipe are removed
    before generation: a prompt goes when at least `threshold` of its n-grams
    appear in an eval prompt (a prompt shorter than `ngram` words is one n-gram)."""

    enabled: bool = True
    ngram: Annotated[int, Field(ge=3)] = 8
    threshold: Annotated[float, Field(gt=0, le=1)] = 0.5


class PrefgenConfig(Strict):
    """Preference pairs for one chunk.

    - `on_policy`: the policy answers each prompt `samples_per_prompt` times;
      the grader scores every answer; chosen = best, rejected = worst; ties
      and pairs under `min_margin` are dropped and counted.
    - `strong_vs_weak`: `strong` and `weak` answer the same prompts; chosen =
      strong, rejected = weak. With a grader, pairs it ranks the other way
      round are dropped (`filter_disagreements`).
    """

    method: Literal["on_policy", "strong_vs_weak"] = "on_policy"
    strong: ModelSource | None = None
    weak: ModelSource | None = None
    grader: GraderConfig | None = GraderConfig()
    filter_disagreements: bool = True
    samples_per_prompt: Annotated[int, Field(ge=2)] = 4
    temperature: PositiveFloat = 0.8
    top_p: Annotated[float, Field(gt=0, le=1)] = 0.95
    max_new_tokens: PositiveInt = 256
    min_margin: Annotated[float, Field(ge=0)] = 0.0
    batch_size: PositiveInt = 16
    # Generation through the chat template: /think (SmolLM3's think-mode
    # pairs) or /no_think.
    reasoning_mode: Literal["think", "no_think"] = "no_think"
    max_prompts_per_chunk: PositiveInt | None = None
    # Prompts per shard: finished shards survive a restart.
    shard_size: PositiveInt = 512
    # `auto`: vLLM's offline engine where a GPU and vllm are present, else
    # batched transformers generation.
    engine: Literal["auto", "vllm", "hf"] = "auto"
    tensor_parallel_size: PositiveInt = 1
    decontamination: DecontaminationConfig = DecontaminationConfig()
    # Length bias is a known failure of DPO. `balance` drops the
    # lowest-margin pairs of whichever side is larger until as many pairs
    # have the longer answer chosen as rejected.
    length_control: Literal["none", "balance"] = "none"
    # Bad prompt rows, grader failures and judge answers without a verdict
    # are counted and reported; the stage fails when more than this share of
    # the chunk's prompts had one.
    max_error_fraction: Annotated[float, Field(ge=0, le=1)] = 0.05
    # Pairs shown on the HTML sample page.
    sample_pairs: Annotated[int, Field(ge=0)] = 20
    # on_policy only. true: chunk k's pairs are sampled from policy k-1 just
    # before chunk k trains (iterative on-policy DPO); false: every chunk's
    # pairs come from one generation pass with the SFT model.
    regenerate: bool = False

    @model_validator(mode="after")
    def _method_fields(self) -> PrefgenConfig:
        if self.method == "strong_vs_weak":
            if self.strong is None or self.weak is None:
                raise ValueError("method strong_vs_weak needs both `strong` and `weak` models")
        else:
            if self.strong is not None or self.weak is not None:
                raise ValueError("`strong`/`weak` are only for method strong_vs_weak; on_policy samples the policy")
            if self.grader is None:
                raise ValueError("method on_policy needs a `grader` to rank the samples")
        if self.regenerate and self.method != "on_policy":
            raise ValueError("`regenerate: true` is for method on_policy (strong_vs_weak answers do not depend on the policy)")
        return self


class PreferenceConfig(Strict):
    """Preference training, one chunk after another. `loss` picks the loss and
    with it the TRL trainer (posttrain/preference_losses.py has the table):
    DPO-family losses (sigmoid, ipo, apo_zero, apo_down, sigmoid_norm, hinge,
    robust) and KTO train against a frozen reference policy; SimPO and ORPO are
    reference-free. Unset hyperparameters take the loss's defaults from its
    paper; a set one must lie in the loss's range, and a loss-specific field
    may only be set for its loss."""

    chunks: int = 1
    # The frozen reference of the reference-based losses: `initial` = the SFT
    # model for every chunk (the usual iterative DPO practice); `previous` =
    # the policy chunk k starts from (policy k-1).
    reference: Literal["initial", "previous"] = "initial"
    # Reference log-probs computed once per chunk before training (TRL's
    # precompute_ref_log_probs) and kept in the checkpoint store, keyed by the
    # reference model and the data: a rerun or restart does not recompute them,
    # and no reference copy stays in memory while training.
    precompute_ref_log_probs: bool = True
    # Validators below read `loss` and `beta` of earlier fields: keep this order.
    loss: str = "apo_zero"
    # The loss's main coefficient: β (DPO, APO, LN-DPO, SimPO, KTO), τ (IPO), λ (ORPO).
    # None: the loss's default.
    beta: PositiveFloat | None = None
    # SimPO's target reward margin γ (loss simpo only; None: 1.0, γ/β = 0.5 at the default β).
    simpo_gamma: Annotated[float, Field(ge=0)] | None = None
    # KTO's loss weights λ_U and λ_D (loss kto only). None: λ_U = 1 and λ_D at the
    # lower end of the paper's rule λ_D·n_D / (λ_U·n_U) in [1, 4/3].
    kto_undesirable_weight: PositiveFloat | None = None
    kto_desirable_weight: PositiveFloat | None = None
    # None: sft.lr / 10 (the SmolLM3 playbook's finding), resolved by the stage.
    lr: PositiveFloat | None = None
    epochs: PositiveFloat = 1.0
    max_steps: int = -1
    per_device_batch_size: PositiveInt = 1
    gradient_accumulation_steps: PositiveInt = 1
    max_length: PositiveInt = 2048
    warmup_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.1
    lr_scheduler: Literal["cosine_with_min_lr", "cosine", "linear", "constant"] = "cosine_with_min_lr"
    min_lr_rate: Annotated[float, Field(ge=0, lt=1)] = 0.1
    max_grad_norm: PositiveFloat = 0.2
    # DPO-family losses only (TRL's other preference trainers have no padding-free mode; ignored there).
    padding_free: bool = False
    bf16: bool = True
    gradient_checkpointing: bool = True
    logging_steps: PositiveInt = 1
    save_steps: PositiveInt = 200
    keep_checkpoints: PositiveInt = 2
    # With LoRA the reference policy is the same model with the adapter
    # disabled: no second copy is loaded.
    lora: LoraConfig | None = None
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    use_liger_kernel: bool = False
    average_tokens_across_devices: bool = True

    @field_validator("chunks")
    @classmethod
    def _chunks(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be at least 1 (the number of preference chunks trained one after another)")
        return v

    @field_validator("loss")
    @classmethod
    def _loss(cls, v: str) -> str:
        if v not in PREFERENCE_LOSSES:
            raise ValueError(f"unknown loss type; allowed: {', '.join(PREFERENCE_LOSSES)}")
        return v

    # The per-loss checks (posttrain/preference_losses.py) run only when `loss`
    # (and for gamma `beta`) validated: an unknown loss is reported once, on `loss`.
    @field_validator("beta")
    @classmethod
    def _beta(cls, v: float | None, info) -> float | None:
        from posttrain import preference_losses

        if v is not None and "loss" in info.data:
            preference_losses.check_beta(info.data["loss"], v)
        return v

    @field_validator("simpo_gamma")
    @classmethod
    def _simpo_gamma(cls, v: float | None, info) -> float | None:
        from posttrain import preference_losses

        if v is not None and "loss" in info.data:
            preference_losses.check_only_for("simpo_gamma", info.data["loss"], "simpo")
            if "beta" in info.data:
                preference_losses.check_simpo_gamma(v, info.data["beta"])
        return v

    @field_validator("kto_undesirable_weight")
    @classmethod
    def _kto_undesirable(cls, v: float | None, info) -> float | None:
        from posttrain import preference_losses

        if v is not None and "loss" in info.data:
            preference_losses.check_only_for("kto_undesirable_weight", info.data["loss"], "kto")
        return v

    @field_validator("kto_desirable_weight")
    @classmethod
    def _kto_desirable(cls, v: float | None, info) -> float | None:
        from posttrain import preference_losses

        if v is not None and "loss" in info.data:
            preference_losses.check_only_for("kto_desirable_weight", info.data["loss"], "kto")
            if "kto_undesirable_weight" in info.data:
                preference_losses.check_kto_desirable_weight(v, info.data["kto_undesirable_weight"])
        return v

    @field_validator("max_steps")
    @classmethod
    def _steps(cls, v: int) -> int:
        return TrainConfig._steps(v)

    @model_validator(mode="after")
    def _device_batch_for_loss(self) -> PreferenceConfig:
        from posttrain import preference_losses

        preference_losses.check_device_batch(self.loss, self.per_device_batch_size)
        return self


# Built-in eval suites; "lm_eval:<task>" names any lm-eval task (e.g.
# lm_eval:aime25 on the cluster, where its data is in the pods' Hub cache).
EVAL_SUITES = ("ifeval", "thinkfollow", "math", "persona", "vibe")
# Labels of evaluated checkpoints; "chunk" stands for every preference chunk.
EVAL_STAGES = ("base", "midtrain", "sft", "chunk")
LM_EVAL_PREFIX = "lm_eval:"


def suite_metrics(suite: str, modes: list[str]) -> list[str]:
    """The flat metric names a suite reports (lm-eval tasks: not known before they run)."""
    per_mode = {"ifeval": ["prompt_strict", "inst_strict", "prompt_loose", "inst_loose", "mean_response_tokens"], "math": ["acc", "timeouts"]}
    if suite in per_mode:
        return [f"{suite}.{m}.{mode}" for m in per_mode[suite] for mode in modes]
    return {"thinkfollow": ["thinkfollow.turn_acc", "thinkfollow.conv_acc", "thinkfollow.think_acc", "thinkfollow.no_think_acc"],
            "persona": ["persona.turn_acc", "persona.conv_acc"]}.get(suite, [])


def _check_suites(suites: list[str]) -> list[str]:
    for name in suites:
        if name not in EVAL_SUITES and not (name.startswith(LM_EVAL_PREFIX) and len(name) > len(LM_EVAL_PREFIX)):
            raise ValueError(f"unknown eval suite {name!r}; allowed: {', '.join(EVAL_SUITES)}, or lm_eval:<task name>")
    return suites


class EvalConfig(Strict):
    """Suites run on every evaluated checkpoint (`stage_suites` overrides them
    per checkpoint: base, midtrain, sft, chunk). IFEval and math run in each
    of `reasoning_modes`; their metrics end in `.think` / `.no_think`."""

    suites: list[str] = list(EVAL_SUITES)
    stage_suites: dict[str, list[str]] = {}
    reasoning_modes: Annotated[list[Literal["think", "no_think"]], Field(min_length=1)] = ["no_think"]
    ifeval_data: DataSource = DataSource(name="ifeval", hub="google/IFEval", split="train")
    # A fixed subset of the IFEval prompts: the first `ifeval_limit` keys in file
    # order (None = all 541).
    ifeval_limit: PositiveInt | None = None
    # None: the sets shipped with posttrain (src/posttrain/eval/data/).
    math_data: DataSource | None = None
    math_limit: PositiveInt | None = None
    math_timeout_s: PositiveFloat = 5.0
    thinkfollow_data: DataSource | None = None
    thinkfollow_conversations: PositiveInt = 16
    thinkfollow_turns: Annotated[int, Field(ge=2)] = 3
    persona_data: DataSource | None = None
    persona_limit: PositiveInt | None = None
    vibe_data: DataSource | None = None
    max_new_tokens: PositiveInt = 1024
    batch_size: PositiveInt = 16
    # Prompts (or conversations) per shard: finished shards survive a restart.
    shard_size: PositiveInt = 256
    # `auto`: vLLM where a GPU and vllm are present, else transformers (lm-eval's hf backend).
    engine: Literal["auto", "vllm", "hf"] = "auto"
    tensor_parallel_size: PositiveInt = 1

    @field_validator("suites")
    @classmethod
    def _suites(cls, v: list[str]) -> list[str]:
        return _check_suites(v)

    @field_validator("stage_suites")
    @classmethod
    def _stage_suites(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        for stage, suites in v.items():
            if stage not in EVAL_STAGES:
                raise ValueError(f"unknown checkpoint {stage!r}; allowed: {', '.join(EVAL_STAGES)}")
            _check_suites(suites)
        return v

    def suites_for(self, label: str) -> list[str]:
        """The suites run on the checkpoint `label` (base, midtrain, sft, chunk-<k>, <variant>/chunk-<k>, soup)."""
        stage = label.rsplit("/", 1)[-1]  # a sweep branch's chunk: <variant>/chunk-<k>
        return self.stage_suites.get("chunk" if stage.startswith("chunk-") or stage == "soup" else stage, self.suites)

    def metrics_for(self, label: str) -> list[str]:
        return [m for s in self.suites_for(label) for m in suite_metrics(s, self.reasoning_modes)]


class SoupConfig(Strict):
    # A weight average of the `top_k` best preference checkpoints (by the
    # objective), evaluated as one more candidate.
    enabled: bool = False
    top_k: Annotated[int, Field(ge=2)] = 2


class SelectConfig(Strict):
    # The objective: the mean of these eval metrics. Ties go to the lower KL
    # to the SFT model, then to shorter answers.
    objective: Annotated[list[str], Field(min_length=1)] = ["ifeval.prompt_strict.no_think"]
    # Release gate: `publish` runs only if the selected checkpoint's objective
    # is at least this much above the SFT checkpoint's (absolute; 0.0 lets an
    # equal one through, a negative value tolerates a regression).
    gate_margin: Annotated[float, Field(ge=-1, le=1)] = 0.0
    soup: SoupConfig = SoupConfig()


class SweepConfig(Strict):
    """A grid over preference hyperparameters: every combination trains its
    own chunk chain, as one branch of a ParallelFor. Empty lists are not swept.
    The playbook sweeps lr from 1/5 to 1/20 of the SFT rate and beta in 0.01-0.5."""

    lr: list[PositiveFloat] = []
    beta: list[PositiveFloat] = []
    loss: list[str] = []
    # Branches trained at the same time (0: all).
    parallelism: Annotated[int, Field(ge=0)] = 0

    def variants(self) -> list[dict]:
        """One {"name", "preference": overrides} per combination; [] without a sweep."""
        axes = [(k, getattr(self, k)) for k in ("loss", "lr", "beta") if getattr(self, k)]
        if not axes:
            return []
        out = []
        for combo in itertools.product(*(values for _, values in axes)):
            overrides = {k: v for (k, _), v in zip(axes, combo)}
            name = "-".join(str(v) if k == "loss" else f"{k}{v:g}" for k, v in overrides.items())
            out.append({"name": name, "preference": overrides})
        return out


class PublishConfig(Strict):
    enabled: bool = True
    # With an hf:// store the released model always lands at the root of the
    # repo's `published` branch; this also puts it on `main`.
    hub_main: bool = False


class Toleration(Strict):
    key: str
    operator: Literal["Equal", "Exists"] = "Exists"
    value: str | None = None
    effect: Literal["NoExecute", "NoSchedule", "PreferNoSchedule"] | None = None


class Resources(Strict):
    """Kubernetes settings for one kind of stage (train / generate / cpu)."""

    gpus: Annotated[int, Field(ge=0)] = 0
    accelerator: str = "nvidia.com/gpu"
    cpu: str | None = None
    memory: str | None = None
    node_selector: dict[str, str] = {}
    tolerations: list[Toleration] = []
    shm_size: str | None = None
    timeout_s: PositiveInt = 86400
    retries: Annotated[int, Field(ge=0)] = 3
    backoff: str = "60s"
    backoff_factor: PositiveFloat = 2.0
    backoff_max: str = "3600s"


class SecretRef(Strict):
    name: str
    # secret key -> environment variable
    env: dict[str, str]


ImageKind = Literal["train", "generate", "cpu"]
# Resources are set per image kind, plus `data` for the data tasks (prepare_data,
# tokenize: the cpu image, sized for num_proc workers; `cpu` when not given).
ResourceKind = Literal["train", "generate", "cpu", "data"]
TrainingStage = Literal["midtrain", "sft", "preference_train"]


class ClusterConfig(Strict):
    # Default: images/lock.json, written by `make images` (the one place image
    # references come from); a recipe may name its own.
    images: dict[ImageKind, str] = Field(default_factory=locked_images)
    resources: dict[ResourceKind, Resources] = {
        "train": Resources(),
        "generate": Resources(),
        "cpu": Resources(),
    }
    secrets: list[SecretRef] = []
    store_uri: str = "file:///mnt/posttrain/checkpoints"
    # Nodes per training stage (default 1). Above 1 the stage's KFP task
    # launches a Kubeflow Trainer TrainJob with `trainjob_runtime` and follows it;
    # each node gets `resources.train`.
    nodes: dict[TrainingStage, PositiveInt] = {}
    trainjob_runtime: str = "torch-distributed"
    # The Helm chart's ServiceAccount (runs are created with it) and cache PVC
    # (mounted at CACHE_MOUNT on every task; None: no shared cache).
    service_account: str = "posttrain"
    cache_pvc: str | None = None

    @model_validator(mode="after")
    def _multinode_needs_shared_cache(self) -> ClusterConfig:
        # Every node writes its ZeRO-3 shards into one checkpoint folder on the cache volume.
        multinode = sorted(stage for stage, n in self.nodes.items() if n > 1)
        if multinode and not self.cache_pvc:
            raise ValueError(f"cluster.nodes: {', '.join(multinode)} on several nodes needs cluster.cache_pvc "
                             "(a ReadWriteMany PVC all nodes mount, e.g. the chart's posttrain-cache)")
        if multinode and urlparse(self.store_uri).scheme == "file" and not self.store_uri.startswith("file:///mnt/posttrain/cache/"):
            raise ValueError("cluster.store_uri: a file:// store on several nodes must lie on the cache volume "
                             "(file:///mnt/posttrain/cache/...), or use s3:// or hf://")
        return self

    @field_validator("store_uri")
    @classmethod
    def _store(cls, v: str) -> str:
        parsed = urlparse(v)
        if parsed.scheme not in ("file", "s3", "hf"):
            raise ValueError("unknown checkpoint store; allowed: file:///abs/path, s3://bucket[/prefix], hf://namespace")
        if parsed.scheme == "file" and not parsed.path.startswith("/"):
            raise ValueError("a file:// store needs an absolute path, e.g. file:///mnt/posttrain/checkpoints")
        if parsed.scheme in ("s3", "hf") and not parsed.netloc:
            raise ValueError(f"a {parsed.scheme}:// store needs a {'bucket' if parsed.scheme == 's3' else 'namespace'}")
        if parsed.scheme == "hf" and parsed.path.strip("/"):
            raise ValueError("an hf:// store is a namespace only (hf://my-org); posttrain makes one repo per recipe in it")
        return v


class Recipe(Strict):
    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]*$")]
    description: str = ""
    profile: str = "cluster"
    seed: int = 42
    base_model: ModelSource
    chat_template: str = "chatml"
    report_to: list[Literal["tensorboard", "none"]] = ["tensorboard"]
    data: DataConfig
    midtrain: MidtrainConfig = MidtrainConfig()
    sft: SFTConfig = SFTConfig()
    prefgen: PrefgenConfig = PrefgenConfig()
    preference: PreferenceConfig = PreferenceConfig()
    eval: EvalConfig = EvalConfig()
    select: SelectConfig = SelectConfig()
    sweep: SweepConfig = SweepConfig()
    publish: PublishConfig = PublishConfig()
    cluster: ClusterConfig = ClusterConfig()

    @field_validator("chat_template")
    @classmethod
    def _template(cls, v: str) -> str:
        return known_template(v)

    @model_validator(mode="after")
    def _objective_is_measured(self) -> Recipe:
        # Release candidates are sft and every chunk: each must report the objective's metrics.
        for label in ("sft", "chunk-1"):
            known = self.eval.metrics_for(label)
            if any(s.startswith(LM_EVAL_PREFIX) for s in self.eval.suites_for(label)):
                continue  # lm-eval tasks' metric names are known only once they run
            for metric in self.select.objective:
                if metric not in known:
                    raise ValueError(f"select.objective: {metric!r} is not reported for {label.split('-')[0]} by eval.suites "
                                     f"and eval.reasoning_modes; allowed: {', '.join(known)}")
        return self

    @model_validator(mode="after")
    def _sweep_is_valid(self) -> Recipe:
        # Every combination must be a valid preference config (e.g. beta in the loss's range).
        base = self.preference.model_dump()
        for variant in self.sweep.variants():
            try:
                PreferenceConfig.model_validate({**base, **variant["preference"]})
            except ValidationError as e:
                problem = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg'].removeprefix('Value error, ')}" for x in e.errors())
                raise ValueError(f"sweep: combination {variant['preference']} is not a valid preference config: {problem}") from None
        trained = max(1, len(self.sweep.variants())) * self.preference.chunks
        if self.select.soup.enabled and self.select.soup.top_k > trained:
            raise ValueError(f"select.soup.top_k = {self.select.soup.top_k}: more than the {trained} preference checkpoints the run trains")
        return self


def _is_source(value: dict) -> bool:
    return any(k in value for k in ("path", "hub", "uri"))


def _deep_merge(base: dict, override: dict) -> dict:
    """Profile over base. A mapping that names a source (`path`, `hub` or
    `uri`) replaces the base's whole source instead of merging into it."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and not _is_source(value):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _format_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid recipe"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            msg = "unknown key; check the spelling against the recipe format in README.md"
        else:
            msg = e["msg"].removeprefix("Value error, ")
        if isinstance(e.get("input"), dict) and e["type"] == "value_error":
            # A rule across fields of a section: the message names them; the section's value would be noise.
            lines.append(f"  {field}: {msg}" if e["loc"] else f"  {msg}")
        else:
            lines.append(f"  {field} = {e.get('input')!r}: {msg}")
    return "\n".join(lines)



def _pin_local_file(entry: dict, field: str, base_dir: Path, source: str) -> None:
    """Resolve a local dataset path against the repo and pin it by content hash."""
    if entry["path"] is None:
        return
    from posttrain.data.sources import SourceError, content_sha256, local_kind

    path = (base_dir / entry["path"]).resolve()
    if not path.exists():
        raise RecipeError(
            f"{source}: invalid recipe\n  {field}.path = {entry['path']!r}: "
            f"file not found (looked for {path}); give a JSON-lines or Parquet file, or an Arrow folder, relative to the repository root"
        )
    try:
        local_kind(path)
    except SourceError as e:
        raise RecipeError(f"{source}: invalid recipe\n  {field}.path = {entry['path']!r}: {e}") from None
    entry["path"] = str(path)
    # A local source's revision is its content hash, so caches see edits.
    entry["revision"] = "sha256:" + content_sha256(path)


def _check_local_files(recipe: Recipe, base_dir: Path, source_name: str) -> Recipe:
    data = recipe.data.model_dump()
    for group, entries in data.items():
        if isinstance(entries, list):
            for i, entry in enumerate(entries):
                _pin_local_file(entry, f"data.{group}.{i}", base_dir, source_name)
    pinned = {}
    for field in ("ifeval_data", "math_data", "thinkfollow_data", "persona_data", "vibe_data"):
        source = getattr(recipe.eval, field)
        if source is not None:
            entry = source.model_dump()
            _pin_local_file(entry, f"eval.{field}", base_dir, source_name)
            pinned[field] = DataSource.model_validate(entry)
    return recipe.model_copy(update={"data": DataConfig.model_validate(data), "eval": recipe.eval.model_copy(update=pinned)})


def load_recipe(path: str | Path, profile: str | None = None) -> Recipe:
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise RecipeError(f"{source}: recipe file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise RecipeError(f"{source}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{source}: a recipe is a YAML mapping at the top level")
    profiles = raw.pop("profiles", {}) or {}
    profile = profile or CLUSTER_PROFILE
    if profile != CLUSTER_PROFILE:
        if profile not in profiles:
            allowed = ", ".join([CLUSTER_PROFILE, *profiles])
            raise RecipeError(f"{source}: invalid recipe\n  profile = {profile!r}: no such profile; allowed: {allowed}")
        raw = _deep_merge(raw, profiles[profile])
    raw["profile"] = profile
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as e:
        raise RecipeError(_format_error(e, f"{source} (profile {profile})")) from None
    # Paths are relative to the repository root, which holds pipelines/.
    return _check_local_files(recipe, path.resolve().parent.parent, source)


def apply_overrides(recipe: Recipe, assignments: list[str]) -> Recipe:
    """Apply `a.b.c=value` overrides (values parsed as YAML) and re-validate."""
    raw = recipe.model_dump()
    for item in assignments:
        if "=" not in item:
            raise RecipeError(f"override {item!r}: expected field.path=value")
        dotted, value = item.split("=", 1)
        node = raw
        keys = dotted.split(".")
        for key in keys[:-1]:
            if not isinstance(node.get(key), dict):
                raise RecipeError(f"override {item!r}: {dotted} is not a recipe field")
            node = node[key]
        if keys[-1] not in node:
            raise RecipeError(f"override {item!r}: {dotted} is not a recipe field")
        node[keys[-1]] = yaml.safe_load(value)
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        raise RecipeError(_format_error(e, "overrides")) from None
