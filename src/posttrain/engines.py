"""Generators: one interface over the two engines prefgen and the judge use.

- `hf`: batched transformers generation (posttrain.generation): left padding,
  batches sorted by prompt length, KV cache on. CPU, or one GPU.
- `vllm`: vLLM's offline engine, tensor parallel over the pod's GPUs.

Prompts are rendered by our tokenizer's chat template in both engines and
passed to vLLM as token ids, so a reasoning mode means the same thing on
either engine.
"""

from __future__ import annotations

import gc
import importlib.util
import logging
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)


class Generator(Protocol):
    id: str

    def generate(
        self,
        conversations: list[list[dict]],
        *,
        max_new_tokens: int,
        n: int = 1,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        chat_template_kwargs: dict | None = None,
    ) -> list[list[str]]:
        """For each conversation, `n` completions (input order kept)."""
        ...

    def close(self) -> None:
        """Free the model (and its GPU memory)."""
        ...


def vllm_usable() -> bool:
    import torch

    return torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None


def choose_engine(requested: str) -> str:
    if requested == "auto":
        return "vllm" if vllm_usable() else "hf"
    if requested == "vllm" and not vllm_usable():
        raise RuntimeError("engine vllm requested, but this machine has no CUDA device or no vllm package (the generate image has both); "
                           "use engine: hf or auto")
    return requested


class HFGenerator:
    """A loaded transformers model (evaluation shares it with lm-eval's hf backend)."""

    def __init__(self, model_id: str, model, tokenizer, batch_size: int):
        self.id = model_id
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    @classmethod
    def load(cls, model_id: str, path: Path, tokenizer, batch_size: int) -> HFGenerator:
        import torch
        from transformers import AutoModelForCausalLM

        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        if torch.cuda.is_available():
            model.to("cuda")
        return cls(model_id, model, tokenizer, batch_size)

    def generate(self, conversations, *, max_new_tokens, n=1, temperature=0.0, top_p=1.0, seed=0, chat_template_kwargs=None):
        from posttrain.generation import generate

        return generate(
            self.model, self.tokenizer, conversations, max_new_tokens=max_new_tokens, batch_size=self.batch_size,
            temperature=temperature, top_p=top_p, num_return_sequences=n, seed=seed, chat_template_kwargs=chat_template_kwargs,
        )

    def close(self) -> None:
        del self.model
        gc.collect()


class VLLMGenerator:
    def __init__(self, model_id: str, path: Path, tokenizer, tensor_parallel_size: int, seed: int = 0):
        from vllm import LLM

        self.id = model_id
        self.tokenizer = tokenizer
        self.llm = LLM(model=str(path), tokenizer=str(path), tensor_parallel_size=tensor_parallel_size, seed=seed, dtype="auto")

    def generate(self, conversations, *, max_new_tokens, n=1, temperature=0.0, top_p=1.0, seed=0, chat_template_kwargs=None):
        from vllm import SamplingParams

        from posttrain.generation import render_prompts

        params = SamplingParams(n=n, temperature=temperature, top_p=top_p if temperature > 0 else 1.0, max_tokens=max_new_tokens, seed=seed)
        prompts = [{"prompt_token_ids": ids} for ids in render_prompts(self.tokenizer, conversations, chat_template_kwargs)]
        outputs = self.llm.generate(prompts, params)
        return [[o.text.strip() for o in out.outputs] for out in outputs]

    def close(self) -> None:
        # vLLM frees its GPU memory when the engine is garbage-collected.
        del self.llm
        gc.collect()
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def open_generator(model_id: str, path: Path, *, chat_template: str | None, engine: str = "auto",
                   batch_size: int = 16, tensor_parallel_size: int = 1, seed: int = 0) -> Generator:
    """A generator for the model at `path`. `chat_template`: one of posttrain's
    templates (the policy), or None for the model's own (a strong, weak or
    judge model from the Hub)."""
    from posttrain.stages.training import load_tokenizer

    tokenizer = load_own_tokenizer(path) if chat_template is None else load_tokenizer(path, chat_template)
    kind = choose_engine(engine)
    log.info("generator %s: engine %s", model_id, kind)
    if kind == "vllm":
        return VLLMGenerator(model_id, path, tokenizer, tensor_parallel_size, seed)
    return HFGenerator.load(model_id, path, tokenizer, batch_size)


def load_own_tokenizer(path: Path):
    """The model's tokenizer with its own chat template (a pad token added when it has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.chat_template is None:
        raise ValueError(f"{path}: the model's tokenizer has no chat template; give the model a chat template or use a chat model")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
