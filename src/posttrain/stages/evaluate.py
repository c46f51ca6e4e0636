"""evaluate: run this checkpoint's eval suites and append its row to the
run's scoreboard.

- ifeval, math and `lm_eval:<task>`: through lm-eval's harness (hf backend,
  or vLLM on a GPU), in each of the recipe's reasoning modes.
- thinkfollow, persona, vibe: multi-turn conversations through our generator
  (the model's own answers fed back).

Every suite works in shards kept in the checkpoint store under a key made of
the model reference, the eval settings and the eval code, not of the task:
a checkpoint already evaluated (the base model of an earlier run, a rerun)
is not evaluated again, and a restarted task redoes only missing shards.
"""

from __future__ import annotations

import hashlib
import json
import logging
from functools import cache, cached_property
from pathlib import Path

from posttrain.datasets_io import read_records, write_records
from posttrain.engines import HFGenerator, VLLMGenerator, choose_engine
from posttrain.eval import ifeval, lmeval, persona, sets, thinkfollow, vibe
from posttrain.generation import reasoning_kwargs
from posttrain.models import ModelRef, read_model_ref
from posttrain.recipe import LM_EVAL_PREFIX, EvalConfig
from posttrain.stages.context import StageContext, StageResult
from posttrain.stages.shards import run_sharded
from posttrain.stages.training import load_tokenizer, materialize_shared

log = logging.getLogger(__name__)
PACKAGE = Path(__file__).resolve().parent.parent


@cache
def eval_code_digest() -> str:
    """What evaluation results depend on besides the model and the settings."""
    h = hashlib.sha256()
    files = [*(PACKAGE / "eval").rglob("*"), PACKAGE / "engines.py", PACKAGE / "generation.py", *(PACKAGE / "templates").glob("*.jinja")]
    for path in sorted(p for p in files if p.is_file() and p.suffix in (".py", ".jsonl", ".jinja", ".txt", ".json")):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def suite_rows(cfg: EvalConfig, suite: str, limit: int | None = None) -> list[dict]:
    return sets.load(sets.entry(suite, cfg.model_dump(mode="json")), limit)


def math_rows(cfg: EvalConfig) -> list[dict]:
    """{id, question, answer}; GSM8K's answers end in "#### <number>"."""
    rows = suite_rows(cfg, "math", cfg.math_limit)
    return [{"id": r.get("id", f"math-{i}"), "question": r["question"], "answer": str(r["answer"]).split("####")[-1].strip()}
            for i, r in enumerate(rows)]


class Checkpoint:
    """The model under evaluation, loaded once on first use and shared by lm-eval and our generator."""

    def __init__(self, ref: ModelRef, chat_template: str, cfg: EvalConfig):
        self.ref, self.chat_template, self.cfg = ref, chat_template, cfg
        self.engine = choose_engine(cfg.engine)

    @cached_property
    def path(self) -> Path:
        return materialize_shared(self.ref)

    @cached_property
    def tokenizer(self):
        return load_tokenizer(self.path, self.chat_template)

    @cached_property
    def generator(self):
        if self.engine == "vllm":
            return VLLMGenerator(self.ref.uri, self.path, self.tokenizer, self.cfg.tensor_parallel_size)
        return HFGenerator.load(self.ref.uri, self.path, self.tokenizer, self.cfg.batch_size)

    @property
    def model(self):
        """The transformers model lm-eval's hf backend evaluates (None under vLLM, which loads its own)."""
        return None if self.engine == "vllm" else self.generator.model

    def lm_eval(self, task, mode: str, indices: list[int] | None) -> tuple[list[dict], dict[str, float]]:
        return lmeval.evaluate(
            task, model=self.model, tokenizer=self.tokenizer, reasoning_mode=mode, max_gen_toks=self.cfg.max_new_tokens,
            batch_size=self.cfg.batch_size, indices=indices, backend=self.engine, model_path=str(self.path),
            tensor_parallel_size=self.cfg.tensor_parallel_size,
        )


def _write_jsonl(rows: list[dict], path: Path) -> str:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return str(path)


def _mean(values: list[float]) -> float:
    return sum(values) / max(len(values), 1)


def run_suite(ctx: StageContext, cfg: EvalConfig, ckpt: Checkpoint, suite: str, cache_prefix: str) -> tuple[list[dict], dict[str, float]]:
    """(per-sample rows tagged with suite and mode, flat metrics)."""

    def sharded(name: str, items: list, work) -> list[dict]:
        return run_sharded(ctx, name, items, cfg.shard_size, work, prefix=f"{cache_prefix}/{name}")

    samples, metrics = [], {}
    # Persona and vibe conversations run in the first of the recipe's modes;
    # ThinkFollow sets no mode at all: the per-turn flags must decide.
    chat_kwargs = reasoning_kwargs(cfg.reasoning_modes[0])
    if suite in ("ifeval", "math"):
        if suite == "ifeval":
            docs = suite_rows(cfg, "ifeval", cfg.ifeval_limit)
            task = lmeval.ifeval_task(_write_jsonl(docs, ctx.workdir / "ifeval.jsonl"))
        else:
            docs = math_rows(cfg)
            task = lmeval.math_task(_write_jsonl(docs, ctx.workdir / "math.jsonl"), cfg.math_timeout_s)
        for mode in cfg.reasoning_modes:
            rows = sharded(f"{suite}-{mode}", list(range(len(docs))), lambda idx, mode=mode: ckpt.lm_eval(task, mode, idx)[0])
            rows = [{**r, "suite": suite, "mode": mode} for r in rows]
            samples += rows
            if suite == "ifeval":
                # Aggregated from the per-sample results: shards cannot average lm-eval's aggregates.
                scores = [ifeval.score(docs[r["doc_id"]], r["filtered"]) for r in rows]
                metrics.update({f"ifeval.{k}.{mode}": v for k, v in ifeval.aggregate(scores).items()})
                # The answer's length (lm-eval has cut the think block): length drift shows here.
                metrics[f"ifeval.mean_response_tokens.{mode}"] = _mean([len(ckpt.tokenizer(r["response"])["input_ids"]) for r in rows])
            else:
                metrics[f"math.acc.{mode}"] = _mean([r["metrics"]["acc"] for r in rows])
                metrics[f"math.timeouts.{mode}"] = float(sum(r["metrics"].get("timeout", 0.0) for r in rows))
    elif suite.startswith(LM_EVAL_PREFIX):
        # A named lm-eval task: one pass, its own aggregation.
        name = suite.removeprefix(LM_EVAL_PREFIX)
        for mode in cfg.reasoning_modes:
            rows, task_metrics = ckpt.lm_eval(name, mode, None)
            samples += [{**r, "suite": suite, "mode": mode} for r in rows]
            metrics.update({f"{name}.{k}.{mode}": v for k, v in task_metrics.items()})
    elif suite == "thinkfollow":
        questions = [r["question"] for r in suite_rows(cfg, "thinkfollow")]
        convs = thinkfollow.build_conversations(questions, conversations=cfg.thinkfollow_conversations, turns=cfg.thinkfollow_turns,
                                                seed=ctx.config["seed"])
        rows = sharded("thinkfollow", convs, lambda shard: thinkfollow.run(ckpt.generator, shard, max_new_tokens=cfg.max_new_tokens))
        samples += [{**r, "suite": suite} for r in rows]
        metrics.update(thinkfollow.aggregate(rows))
    elif suite == "persona":
        personas = suite_rows(cfg, "persona", cfg.persona_limit)
        for i, row in enumerate(personas):
            persona.validate(row, f"eval.persona_data row {i + 1}")
        rows = sharded("persona", personas, lambda shard: persona.run(ckpt.generator, shard, max_new_tokens=cfg.max_new_tokens,
                                                                      chat_template_kwargs=chat_kwargs))
        samples += [{**r, "suite": suite} for r in rows]
        metrics.update(persona.aggregate(rows))
    elif suite == "vibe":
        probes = suite_rows(cfg, "vibe")
        rows = sharded("vibe", probes, lambda shard: vibe.run(ckpt.generator, shard, max_new_tokens=cfg.max_new_tokens,
                                                              chat_template_kwargs=chat_kwargs))
        samples += [{**r, "suite": suite} for r in rows]
    return samples, metrics


def kl_to_sft(cfg: EvalConfig, ckpt: Checkpoint, board: list[dict], samples: list[dict]) -> dict[str, float]:
    """KL to the SFT model (found on the scoreboard), estimated on this
    checkpoint's own IFEval answers in the first reasoning mode: {} when
    either is missing."""
    from posttrain.eval.kl import kl_to_reference

    sft = next((r for r in board if r["label"] == "sft"), None)
    mode = cfg.reasoning_modes[0]
    answers = [s for s in samples if s["suite"] == "ifeval" and s.get("mode") == mode]
    if sft is None or not answers:
        return {}
    docs = suite_rows(cfg, "ifeval", cfg.ifeval_limit)
    # Under vLLM the checkpoint has no transformers model yet: load one the way the hf engine does.
    model = ckpt.model if ckpt.model is not None else HFGenerator.load(ckpt.ref.uri, ckpt.path, ckpt.tokenizer, cfg.batch_size).model
    sft_ref = ModelRef(**sft["model"])
    reference = HFGenerator.load(sft_ref.uri, materialize_shared(sft_ref), ckpt.tokenizer, cfg.batch_size)
    try:
        return kl_to_reference(model, reference.model, ckpt.tokenizer, [[{"role": "user", "content": docs[s["doc_id"]]["prompt"]}] for s in answers],
                               [s["response"] for s in answers], chat_template_kwargs=reasoning_kwargs(mode), batch_size=cfg.batch_size)
    finally:
        reference.close()


def training_facts(ckpt: Checkpoint) -> dict[str, float]:
    """The training metrics in the checkpoint's model card (preference
    rewards, margins, accuracy), for the per-chunk curves."""
    card = ckpt.path / "posttrain.json"
    if not card.is_file():
        return {}
    return {k: float(v) for k, v in json.loads(card.read_text()).get("metrics", {}).items() if k.startswith("train.")}


def run(ctx: StageContext) -> StageResult:
    cfg = EvalConfig.model_validate(ctx.config["eval"])
    # A sweep branch's checkpoint: <variant>/chunk-<k>.
    label = "/".join(filter(None, [ctx.config.get("variant"), ctx.config["label"]]))
    ref = read_model_ref(ctx.inputs["model"])
    settings = {k: v for k, v in ctx.config["eval"].items() if k not in ("suites", "stage_suites", "shard_size")}
    key = json.dumps({"model": json.loads(ref.to_json()), "eval": settings, "template": ctx.config["chat_template"],
                      "seed": ctx.config["seed"], "code": eval_code_digest()}, sort_keys=True)
    cache_prefix = f"{ctx.config['recipe']}/eval-cache/{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    ckpt = Checkpoint(ref, ctx.config["chat_template"], cfg)
    samples, metrics = [], {}
    for suite in cfg.suites_for(label):
        rows, suite_metrics = run_suite(ctx, cfg, ckpt, suite, cache_prefix)
        samples += rows
        metrics.update(suite_metrics)
    board = read_records(ctx.inputs["board"])
    if label not in ("base", "midtrain", "sft"):
        metrics.update(kl_to_sft(cfg, ckpt, board, samples))
    # A rate with nothing to count (no /think turn drawn) is left out, not reported as NaN.
    metrics = {k: v for k, v in metrics.items() if v == v}
    write_records(ctx.outputs["samples"], samples, {"label": label, "model": ref.uri, "suites": cfg.suites_for(label)})
    row = {"label": label, "model": json.loads(ref.to_json()), "metrics": metrics, "train": training_facts(ckpt),
           "vibe": [s for s in samples if s["suite"] == "vibe"]}
    board = board + [row]
    write_records(ctx.outputs["scoreboard"], board, {"labels": [r["label"] for r in board]})
    return StageResult(metrics=metrics, metadata={"samples": {"label": label, "rows": len(samples)}})


def results_table(board: list[dict], selected: str | None = None) -> str:
    """Markdown: one row per metric, one column per evaluated checkpoint (and the selected one)."""
    columns = list(board)
    if selected is not None:
        chosen = next(r for r in board if r["label"] == selected)
        columns.append({**chosen, "label": f"selected ({selected})"})
    names = sorted({k for r in board for k in r["metrics"]})
    head = "| metric | " + " | ".join(c["label"] for c in columns) + " |\n|---|" + "---:|" * len(columns) + "\n"
    return head + "".join(f"| {n} | " + " | ".join(_cell(c["metrics"], n) for c in columns) + " |\n" for n in names)


def _cell(metrics: dict, name: str) -> str:
    return f"{metrics[name]:.3f}" if name in metrics else "–"
