"""The DAG builder: a validated Recipe becomes a KFP pipeline.

preflight ─▶ pin_base, prepare_data ─▶ tokenize_sft, [tokenize_midtrain] ─▶ [midtrain] ─▶
sft ─▶ chunk chain ─▶ [soup] ─▶ select_best ─▶ If(gate) publish / Else the run ends
"gate not passed"

chunk chain, for k in 1..K: prefgen_k ─▶ preference_train_k ─▶ evaluate
(`prefgen.regenerate`: chunk k samples policy k-1; otherwise every chunk's
pairs come from the SFT model, generated up front and shared by all branches).

The chunk loop is unrolled here, at compile time, so the UI shows every chunk
as its own tasks and caching reuses finished chunks. A `sweep:` grid runs one
chunk chain per combination as the branches of a ParallelFor; their
scoreboards are merged for selection. Each evaluate appends a row to a
scoreboard that flows from task to task, so select_best sees every
checkpoint through one input. Cluster settings come from the recipe and are
applied only when compiling for a cluster; KFP's local runner ignores them.
"""

import hashlib
import inspect
import json
from functools import cache
from pathlib import Path
from typing import NamedTuple

from kfp import dsl, kubernetes
from kfp.dsl import HTML, Markdown

from posttrain import components as components_pkg
from posttrain.components import IMAGE_KIND, RESOURCE_KIND
from posttrain.components.evaluate import evaluate
from posttrain.components.merge_boards import merge_boards
from posttrain.components.midtrain import midtrain
from posttrain.components.pin_base import pin_base
from posttrain.components.preference_train import preference_train
from posttrain.components.prefgen import prefgen
from posttrain.components.preflight import preflight
from posttrain.components.prepare_data import prepare_data
from posttrain.components.publish import publish
from posttrain.components.select_best import select_best
from posttrain.components.sft import sft
from posttrain.components.soup import soup
from posttrain.components.tokenize import tokenize
from posttrain.knobs import Knob, docstring, recipe_knobs, render, with_sentinels
from posttrain.launch import TRAINING_STAGES
from posttrain.recipe import Recipe, Resources
from posttrain.stages.context import STORE_ENV
from posttrain.trainjob import CACHE_ENV, CACHE_MOUNT

# A TrainJob's launcher task outlives the job's own deadline by this much, so
# the job fails on its deadline (and reports why) before KFP kills the follower.
LAUNCHER_MARGIN_S = 600

# No `from __future__ import annotations` here: KFP reads these annotations.
class PipelineOutputs(NamedTuple):
    report: Markdown
    stats: Markdown
    vibe: HTML
    curves: HTML


@cache
def code_digest() -> str:
    """Hash of posttrain's own source: part of every task config, so KFP's
    cache (keyed on arguments, not on library code) never serves results of
    code that has since changed."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    code = [*root.rglob("*.py"), *root.rglob("*.jinja"), *root.rglob("configs/*.json"), *Path(components_pkg.__file__).parent.glob("*.py")]
    for path in sorted(code):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _common(recipe: Recipe, task: str) -> dict:
    return {
        "code": code_digest(),
        "recipe": recipe.name,
        "profile": recipe.profile,
        "task": task,
        "seed": recipe.seed,
        "chat_template": recipe.chat_template,
        "report_to": recipe.report_to,
        "store_uri": recipe.cluster.store_uri,
    }


def _row_limit(cfg) -> int | None:
    return None if cfg.packing and cfg.packing_strategy == "wrapped" else cfg.max_length


def _tokenize_fields(train: dict, *extra: str) -> dict:
    return {k: train[k] for k in ("max_length", "packing", "packing_strategy", *extra)}


def eval_sources(recipe: Recipe) -> list[dict]:
    """Every eval set the recipe uses (any checkpoint's suites): training
    prompts are decontaminated against them, and preflight checks them."""
    from posttrain.eval import sets

    labels = ["base", "midtrain", "sft", "chunk-1"]
    suites = {s for label in labels for s in recipe.eval.suites_for(label) if s in sets.SOURCES}
    config = recipe.eval.model_dump(mode="json")
    return [sets.entry(s, config) for s in sets.SOURCES if s in suites]


def extra_models(recipe: Recipe) -> list[dict]:
    """Models the recipe names besides the base model: preflight checks they resolve."""
    p = recipe.prefgen
    models = [m for m in (p.strong, p.weak) if m is not None]
    if p.grader and p.grader.model:
        models.append(p.grader.model)
    if p.grader and p.grader.judge:
        models += p.grader.judge.models
    return [m.model_dump(mode="json") for m in models]


def stage_configs(recipe: Recipe, knobs: list[Knob] | None = None) -> dict[str, dict]:
    """Each task's config: only the recipe fields it uses, so a changed knob
    invalidates the cache of the tasks that read it and what depends on them.
    With `knobs`, their fields hold sentinels that `build_pipeline` turns into
    pipeline-parameter placeholders (posttrain.knobs)."""
    r = recipe.model_dump(mode="json")
    if knobs:
        r = with_sentinels(r, knobs)
    k_total = recipe.preference.chunks
    cfg = {
        "preflight": {
            **_common(recipe, "preflight"),
            "base_model": r["base_model"],
            "sources": [s for g in ("midtrain", "sft", "prompts") for s in r["data"][g]] + eval_sources(recipe),
            "models": extra_models(recipe),
            # The whole recipe, knobs included: preflight re-validates it with the
            # run's parameter values, so a bad value typed into the UI fails first.
            "recipe_values": r,
        },
        "pin_base": {**_common(recipe, "pin_base"), "base_model": r["base_model"]},
        "prepare_data": {
            **_common(recipe, "prepare_data"),
            "data": r["data"],
            # Rows longer than the training max_length are dropped (and counted),
            # except under wrapped packing, which splits a long document across
            # sequences; mid-training conversations are rendered with their own template.
            "sft": {"max_length": _row_limit(recipe.sft)},
            "midtrain": {"max_length": _row_limit(recipe.midtrain), "chat_template": r["midtrain"]["chat_template"]},
        },
        "midtrain": {**_common(recipe, "midtrain"), "train": r["midtrain"]},
        # Only what decides the token ids and packs: a changed learning rate reuses them.
        "tokenize_sft": {**_common(recipe, "tokenize_sft"), "kind": "sft",
                         "train": _tokenize_fields(r["sft"], "assistant_only_loss", "template_lint_rows")},
        "tokenize_midtrain": {**_common(recipe, "tokenize_midtrain"), "kind": "midtrain",
                              "train": _tokenize_fields(r["midtrain"])},
        "sft": {**_common(recipe, "sft"), "train": r["sft"]},
        "select_best": {**_common(recipe, "select_best"), "select": r["select"]},
        "merge_boards": _common(recipe, "merge_boards"),
        # Not the gate: changing gate_margin must not rebuild the soup.
        "soup": {**_common(recipe, "soup"), "select": {k: r["select"][k] for k in ("objective", "soup")}},
        "publish": {**_common(recipe, "publish"), "publish": r["publish"]},
    }
    for label in eval_labels(recipe):
        cfg[f"evaluate_{label}"] = {**_common(recipe, f"evaluate_{label}"), "label": label, "eval": r["eval"]}
    for k in range(1, k_total + 1):
        chunk = {"chunk": k, "chunks": k_total}
        cfg[f"prefgen_{k}"] = {**_common(recipe, f"prefgen_{k}"), **chunk, "prefgen": r["prefgen"], "eval_sets": eval_sources(recipe)}
        # sft_lr: the default preference lr is a tenth of it (the playbook rule).
        cfg[f"preference_train_{k}"] = {**_common(recipe, f"preference_train_{k}"), **chunk, "preference": r["preference"],
                                        "sft_lr": r["sft"]["lr"]}
    return cfg


def eval_labels(recipe: Recipe) -> list[str]:
    """Evaluate tasks, in pipeline order (a sweep branch prefixes its chunks' labels with its name)."""
    chunks = [f"chunk-{k}" for k in range(1, recipe.preference.chunks + 1)]
    soup_row = ["soup"] if recipe.select.soup.enabled else []
    return ["base", *(["midtrain"] if recipe.midtrain.enabled else []), "sft", *chunks, *soup_row]


def training_stage(task: str) -> str | None:
    """The training stage a task runs (preference_train_3 -> preference_train), if any."""
    stage = task.rstrip("0123456789").rstrip("_")
    return stage if stage in TRAINING_STAGES else None


def launcher_config(recipe: Recipe, stage: str | None) -> dict | None:
    """For a training stage on more than one node: what its KFP task needs to
    launch and follow a Kubeflow Trainer TrainJob (posttrain.trainjob)."""
    c = recipe.cluster
    nodes = c.nodes.get(stage, 1) if stage else 1
    if nodes <= 1:
        return None
    return {
        "nodes": nodes,
        "runtime": c.trainjob_runtime,
        "image": c.images["train"],
        "resources": c.resources["train"].model_dump(mode="json"),
        "secrets": [s.model_dump(mode="json") for s in c.secrets],
        "store_uri": c.store_uri,
        "cache_pvc": c.cache_pvc,
        "service_account": c.service_account,
    }


def preflight_cluster_config(recipe: Recipe) -> dict:
    """What preflight checks on a cluster before any GPU is requested."""
    c = recipe.cluster
    return {
        "images": dict(c.images),
        "gpus": [
            {"kind": kind, "accelerator": r.accelerator, "count": r.gpus, "node_selector": r.node_selector,
             "tolerations": [t.model_dump(mode="json") for t in r.tolerations]}
            for kind, r in c.resources.items() if r.gpus
        ],
        "secrets": [s.model_dump(mode="json") for s in c.secrets],
        "store_uri": c.store_uri,
        "trainjob_runtime": c.trainjob_runtime if any(n > 1 for n in c.nodes.values()) else None,
    }


def _apply_cluster(task: dsl.PipelineTask, recipe: Recipe, kind: str, *, launches_trainjob: bool, name: str, sizing: str) -> None:
    # A task that launches a multi-node TrainJob only follows it: it runs the
    # train image on a CPU pod; the GPUs are requested by the TrainJob's nodes.
    resources = recipe.cluster.resources
    res: Resources = resources["cpu" if launches_trainjob else kind] if sizing != "data" else resources.get("data", resources["cpu"])
    # Its deadline and retries are the training stage's: it lives as long as the TrainJob.
    limits: Resources = resources[kind] if sizing != "data" else res
    task.set_container_image(recipe.cluster.images[kind])
    if res.gpus:
        task.set_accelerator_type(res.accelerator).set_accelerator_limit(res.gpus)
    if res.cpu:
        task.set_cpu_limit(res.cpu)
    if res.memory:
        task.set_memory_limit(res.memory)
    for key, value in res.node_selector.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for t in res.tolerations:
        kubernetes.add_toleration(task, key=t.key, operator=t.operator, value=t.value, effect=t.effect)
    if res.shm_size:
        kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=res.shm_size)
    for secret in recipe.cluster.secrets:
        # preflight reports a missing Secret; any other pod would never start.
        kubernetes.use_secret_as_env(task, secret_name=secret.name, secret_key_to_env=secret.env, optional=name == "preflight")
    task.set_env_variable(STORE_ENV, recipe.cluster.store_uri)
    if recipe.cluster.cache_pvc:
        kubernetes.mount_pvc(task, pvc_name=recipe.cluster.cache_pvc, mount_path=CACHE_MOUNT)
        task.set_env_variable(CACHE_ENV, f"{CACHE_MOUNT}/posttrain")
        task.set_env_variable("HF_HOME", f"{CACHE_MOUNT}/huggingface")
    task.set_retry(num_retries=limits.retries, backoff_duration=limits.backoff, backoff_factor=limits.backoff_factor,
                   backoff_max_duration=limits.backoff_max)
    kubernetes.set_timeout(task, limits.timeout_s + (LAUNCHER_MARGIN_S if launches_trainjob else 0))


def build_pipeline(recipe: Recipe, *, cluster: bool):
    """A KFP pipeline function for the recipe. `cluster=False` leaves out the
    Kubernetes settings (KFP's local runner ignores them anyway)."""
    knobs = recipe_knobs(recipe)
    stage_cfgs = stage_configs(recipe, knobs)
    if cluster:
        stage_cfgs["preflight"]["cluster"] = preflight_cluster_config(recipe)
        for name, cfg in stage_cfgs.items():
            if launcher := launcher_config(recipe, training_stage(name)):
                cfg["launcher"] = launcher
    configs = {name: json.dumps(c, sort_keys=True) for name, c in stage_cfgs.items()}
    # The pipeline's parameters: KFP reads names, types and defaults from the
    # function's signature and descriptions from its docstring.
    signature = inspect.Signature(
        [inspect.Parameter(k.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=k.default, annotation=k.type) for k in knobs],
        return_annotation=PipelineOutputs,
    )
    rendered: dict[str, str] = {}

    def task(component, name: str, **inputs) -> dsl.PipelineTask:
        t = component(config=rendered[name], **inputs)
        t.set_display_name(name.replace("_", "-"))
        if cluster:
            component_name = component.component_spec.name
            _apply_cluster(t, recipe, IMAGE_KIND[component_name], name=name, launches_trainjob="launcher" in stage_cfgs.get(name, {}),
                           sizing=RESOURCE_KIND.get(component_name, IMAGE_KIND[component_name]))
        return t

    def chunk_chain(board, sft_model, prompts, shared_pairs: dict, variant: str = ""):
        """Chunks 1..K from the SFT model; returns the scoreboard with their rows."""
        policy = sft_model
        for k in range(1, recipe.preference.chunks + 1):
            pairs = shared_pairs.get(k)
            if pairs is None:  # regenerate: sampled from policy k-1
                pairs = task(prefgen, f"prefgen_{k}", policy=policy, prompts=prompts, variant=variant).outputs["pairs"]
            reference = sft_model if recipe.preference.reference == "initial" else policy
            policy = task(preference_train, f"preference_train_{k}", policy=policy, reference=reference, pairs=pairs,
                          variant=variant).outputs["model"]
            board = task(evaluate, f"evaluate_chunk-{k}", model=policy, board=board, variant=variant).outputs["scoreboard"]
        return board

    def pipeline(*args, **kwargs) -> PipelineOutputs:
        params = signature.bind(*args, **kwargs)
        params.apply_defaults()
        rendered.update({name: render(c, knobs, params.arguments) for name, c in configs.items()})
        # Checks run on every run (never cached); nothing downstream reads
        # preflight's outputs, only waits for it, so its reruns cost no cache hits.
        checks = task(preflight, "preflight").set_caching_options(enable_caching=False)
        pin = task(pin_base, "pin_base").after(checks)
        data = task(prepare_data, "prepare_data", base_model=pin.outputs["base_model"]).after(checks)
        policy = pin.outputs["base_model"]
        board = task(evaluate, "evaluate_base", model=policy, board=pin.outputs["scoreboard"]).outputs["scoreboard"]
        # Tokenised and packed once, on the CPU pool, from the base model's tokenizer
        # (the training stages check that their policy's is the same).
        sft_data = task(tokenize, "tokenize_sft", data=data.outputs["sft"], base_model=pin.outputs["base_model"]).outputs["tokenized"]
        if recipe.midtrain.enabled:
            mid_data = task(tokenize, "tokenize_midtrain", data=data.outputs["midtrain"], base_model=pin.outputs["base_model"])
            policy = task(midtrain, "midtrain", tokenized=mid_data.outputs["tokenized"], policy=policy).outputs["model"]
            board = task(evaluate, "evaluate_midtrain", model=policy, board=board).outputs["scoreboard"]
        sft_model = task(sft, "sft", tokenized=sft_data, policy=policy).outputs["model"]
        board = task(evaluate, "evaluate_sft", model=sft_model, board=board).outputs["scoreboard"]
        prompts = data.outputs["prompts"]
        # Pairs that do not depend on the chunk's policy are generated once, up
        # front, for every branch: all chunks without `regenerate`, and chunk 1
        # (whose policy is the SFT model) in any case.
        upfront = range(1, recipe.preference.chunks + 1) if not recipe.prefgen.regenerate else [1]
        shared = {k: task(prefgen, f"prefgen_{k}", policy=sft_model, prompts=prompts).outputs["pairs"] for k in upfront}
        variants = recipe.sweep.variants()
        if variants:
            items = [json.dumps(v, sort_keys=True) for v in variants]
            with dsl.ParallelFor(items=items, parallelism=recipe.sweep.parallelism, name="sweep") as variant:
                branch = chunk_chain(board, sft_model, prompts, shared, variant)
            board = task(merge_boards, "merge_boards", boards=dsl.Collected(branch)).outputs["scoreboard"]
        else:
            board = chunk_chain(board, sft_model, prompts, shared)
        if recipe.select.soup.enabled:
            averaged = task(soup, "soup", scoreboard=board).outputs["model"]
            board = task(evaluate, "evaluate_soup", model=averaged, board=board).outputs["scoreboard"]
        best = task(select_best, "select_best", scoreboard=board)
        if recipe.publish.enabled:
            with dsl.If(best.outputs["Output"] == True, name="release-gate"):  # noqa: E712 - KFP condition syntax
                task(publish, "publish", model=best.outputs["model"], results=best.outputs["results"])
        return PipelineOutputs(report=best.outputs["report"], stats=data.outputs["stats"], vibe=best.outputs["vibe"],
                               curves=best.outputs["curves"])

    pipeline.__signature__ = signature
    pipeline.__doc__ = docstring(knobs)
    return dsl.pipeline(name=recipe.name, description=recipe.description or f"posttrain recipe {recipe.name} ({recipe.profile})")(pipeline)


def compile_pipeline(recipe: Recipe, out_path: str) -> None:
    from kfp import compiler

    compiler.Compiler().compile(build_pipeline(recipe, cluster=True), package_path=out_path)
