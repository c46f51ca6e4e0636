"""IFEval and a math suite through lm-eval's harness, offline, on local JSONL.

`ifeval_task(path)` and `math_task(path, timeout_s)` are lm-eval task configs
(dicts, loaded by `datasets`' `json` builder: no Hub); `evaluate(task, ...)`
runs one with lm-eval's HF backend (CPU or one GPU, batched) or its vLLM
backend, chat template applied, reasoning mode passed to the template as
`enable_thinking`. `indices` picks docs by index, so a stage can run a task in
shards and redo only the missing ones.

What lm-eval logs as a sample's response is already past the reasoning: its
model wrappers cut everything up to the last `</think>` before returning a
generation, so the think block itself is not available here.
"""

from __future__ import annotations

import logging
import random
from typing import Any, Literal

from posttrain.eval.ifeval import _lm_eval_utils
from posttrain.eval.mathcheck import TIMED_OUT, check
from posttrain.generation import split_reasoning

THINK_END = "</think>"
MATH_PROMPT = "Solve the following math problem step by step. Put your final answer in \\boxed{{}}.\n\n{question}"
GREEDY = {"until": [], "do_sample": False, "temperature": 0.0}


def _ifeval_process_results(doc: dict, results: list[str]) -> dict:
    # The checkers draw unspecified optional arguments from `random`; seeding
    # here (as posttrain.eval.ifeval.score does) makes a sample's score depend
    # on its doc and response only, not on what ran before it.
    random.seed(0)
    return _lm_eval_utils().process_results(doc, results)


def ifeval_task(data_path: str) -> dict:
    """lm-eval's own `ifeval` task, reading IFEval-format rows from `data_path`.
    The caller sets the generation length (`evaluate(max_gen_toks=...)`)."""
    # Importing lm-eval's ifeval checkers downloads punkt_tab unless NLTK finds
    # it: point NLTK at the copy shipped in the repo first.
    utils = _lm_eval_utils()
    return {
        "task": "posttrain_ifeval",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"train": str(data_path)}},
        "output_type": "generate_until",
        "test_split": "train",
        "num_fewshot": 0,
        "doc_to_text": "prompt",
        "doc_to_target": 0,
        "generation_kwargs": dict(GREEDY),
        "process_results": _ifeval_process_results,
        "metric_list": [
            {"metric": "prompt_level_strict_acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "inst_level_strict_acc", "aggregation": utils.agg_inst_level_acc, "higher_is_better": True},
            {"metric": "prompt_level_loose_acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "inst_level_loose_acc", "aggregation": utils.agg_inst_level_acc, "higher_is_better": True},
        ],
        "metadata": {"version": 4.0},
    }


def _math_prompt(doc: dict) -> str:
    return MATH_PROMPT.format(question=doc["question"])


def math_task(data_path: str, timeout_s: float) -> dict:
    """Word problems (`{"id", "question", "answer"}` rows) graded by math-verify
    (`mathcheck.check`) on the answer after the think block. Metrics: `acc`, and
    `timeout` (1.0 where the check ran past `timeout_s` and counted as wrong)."""

    def process_results(doc: dict, results: list[str]) -> dict:
        # With lm-eval's think_end_token the block is already cut off; a
        # response fed in raw (or an unfinished block, which lm-eval leaves in)
        # is split here: an answer only inside the reasoning does not count.
        _, answer = split_reasoning(results[0])
        result = check(answer, doc["answer"], timeout_s)
        return {"acc": float(result.correct), "timeout": float(result.kind == TIMED_OUT)}

    return {
        "task": "posttrain_math",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"train": str(data_path)}},
        "output_type": "generate_until",
        "test_split": "train",
        "num_fewshot": 0,
        "doc_to_text": _math_prompt,
        "doc_to_target": "answer",
        "generation_kwargs": dict(GREEDY),
        "process_results": process_results,
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "timeout", "aggregation": "mean", "higher_is_better": False},
        ],
        "metadata": {"version": 1.0},
    }


class _DropExpected(logging.Filter):
    """lm-eval warns about what is done here on purpose: a loaded model passed in, not a name."""

    EXPECTED = ("`pretrained` model kwarg is not of type `str`", "Passed an already-initialized model through `pretrained`")

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.EXPECTED)


def _quiet_lm_eval() -> None:
    # lm-eval logs through the root logger when it is used as a library: keep
    # its per-run INFO lines out unless the caller set a level for it.
    logger = logging.getLogger("lm_eval")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.WARNING)
    hf_logger = logging.getLogger("lm_eval.models.huggingface")
    if not any(isinstance(f, _DropExpected) for f in hf_logger.filters):
        hf_logger.addFilter(_DropExpected())


def _make_lm(backend, *, model, tokenizer, thinking: bool, batch_size: int, model_path, tensor_parallel_size: int, seed: int):
    if backend == "hf":
        from lm_eval.models.huggingface import HFLM

        return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, enable_thinking=thinking, think_end_token=THINK_END)
    if backend == "vllm":
        from lm_eval.models.vllm_causallms import VLLM

        if model_path is None:
            raise ValueError("backend='vllm' loads the model itself: model_path is required")
        lm = VLLM(
            pretrained=str(model_path),
            tensor_parallel_size=tensor_parallel_size,
            batch_size="auto",  # vLLM schedules its own batches
            seed=seed,
            enable_thinking=thinking,
            think_end_token=THINK_END,
        )
        if tokenizer is not None and tokenizer.chat_template:
            # vLLM's tokenizer comes from model_path, whose saved template may
            # not be the one the recipe picked; lm-eval renders with `hf_chat_template`.
            lm.tokenizer.chat_template = lm.hf_chat_template = tokenizer.chat_template
        return lm
    raise ValueError(f"backend must be 'hf' or 'vllm', not {backend!r}")


def evaluate(
    task: dict | str,
    *,
    model,
    tokenizer,
    reasoning_mode: Literal["think", "no_think"],
    max_gen_toks: int,
    batch_size: int,
    indices: list[int] | None = None,
    backend: Literal["hf", "vllm"] = "hf",
    model_path: str | None = None,
    tensor_parallel_size: int = 1,
    seed: int = 0,
) -> tuple[list[dict], dict[str, float]]:
    """Run `task` (from `ifeval_task`/`math_task`) with lm-eval.

    `reasoning_mode` "think" or "no_think" reaches the chat template as
    `enable_thinking`. `indices`: the doc indices to run (None: all).
    backend "hf": `model` and `tokenizer` are used as loaded (batches of
    `batch_size`); "vllm": vLLM loads `model_path` itself (`model` is unused,
    batching is vLLM's) and renders with `tokenizer`'s chat template.
    Returns (samples, metrics): one row per doc, in doc order, with `doc_id`,
    `id` (the doc's id, or IFEval's key), `prompt` (the rendered chat prompt),
    `response` (lm-eval's logged response, after any think block), `filtered`
    (what was scored) and `metrics` (that doc's values); and the aggregate
    metrics as floats, without stderrs. With `indices`, aggregates cover those
    docs only.
    """
    if reasoning_mode not in ("think", "no_think"):
        raise ValueError(f"reasoning_mode must be 'think' or 'no_think', not {reasoning_mode!r}")
    if indices is not None and not indices:
        return [], {}  # lm-eval reads an empty selection as "every doc"
    import lm_eval
    from lm_eval.tasks import TaskManager

    _quiet_lm_eval()
    named = isinstance(task, str)  # one of lm-eval's own tasks (aime25, ...): its data must be in the Hub cache
    name = task if named else task["task"]
    if not named:
        task = {**task, "generation_kwargs": {**task.get("generation_kwargs", {}), "max_gen_toks": int(max_gen_toks)}}
    lm = _make_lm(
        backend,
        model=model,
        tokenizer=tokenizer,
        thinking=reasoning_mode == "think",
        batch_size=batch_size,
        model_path=model_path,
        tensor_parallel_size=tensor_parallel_size,
        seed=seed,
    )
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=[task],
        # lm-eval labels the i-th selected doc with indices[i] but selects docs
        # in dataset order: the selection must be sorted (and unique).
        samples={name: sorted(set(indices))} if indices is not None else None,
        apply_chat_template=True,
        log_samples=True,
        bootstrap_iters=0,  # stderrs are dropped anyway
        # Our own task dicts need no index of lm-eval's thousands of task files.
        task_manager=TaskManager(include_defaults=named),
        gen_kwargs={"max_gen_toks": int(max_gen_toks)} if named else None,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    rows = [_sample_row(s) for s in sorted(out["samples"][name], key=lambda s: s["doc_id"])]
    metrics = {
        key.split(",")[0]: float(value)
        for key, value in out["results"][name].items()
        if "," in key and "_stderr" not in key and value is not None
    }
    return rows, metrics


def _sample_row(sample: dict[str, Any]) -> dict:
    doc = sample["doc"]
    return {
        "doc_id": sample["doc_id"],
        "id": doc.get("id", doc.get("key")),
        "prompt": sample["arguments"][0][0],
        "response": sample["resps"][0][0],
        "filtered": sample["filtered_resps"][0],
        "metrics": {m: sample[m] for m in sample["metrics"]},
    }
