"""Batched generation with transformers on CPU (or one GPU): left padding,
batches of prompts of similar length, KV cache on."""

from __future__ import annotations

import re

import torch

THINK_BLOCK = re.compile(r"^\s*<think>(.*?)</think>\s*", re.DOTALL)


def reasoning_kwargs(mode: str) -> dict:
    """Template arguments that put the hybrid template in `think` or `no_think` mode."""
    return {"enable_thinking": mode == "think"}


def split_reasoning(text: str) -> tuple[str, str]:
    """(reasoning, answer) of a response; an unfinished think block is all reasoning."""
    m = THINK_BLOCK.match(text)
    if m:
        return m.group(1).strip(), text[m.end() :]
    if text.lstrip().startswith("<think>"):
        return text.lstrip()[len("<think>") :].strip(), ""
    return "", text


def render_prompts(tokenizer, conversations: list[list[dict]], chat_template_kwargs: dict | None = None) -> list[list[int]]:
    """Token ids of each conversation's generation prompt, rendered by the chat
    template (which writes its own special tokens: none are added again)."""
    kwargs = chat_template_kwargs or {}
    texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True, **kwargs) for c in conversations]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


@torch.inference_mode()
def generate(
    model,
    tokenizer,
    conversations: list[list[dict]],
    *,
    max_new_tokens: int,
    batch_size: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    num_return_sequences: int = 1,
    seed: int = 0,
    chat_template_kwargs: dict | None = None,
) -> list[list[str]]:
    """For each conversation, `num_return_sequences` completions (in input order)."""
    tokenizer.padding_side = "left"
    encoded = render_prompts(tokenizer, conversations, chat_template_kwargs)
    # Similar lengths in a batch waste less compute on padding.
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    results: list[list[str]] = [[] for _ in encoded]
    sampling = temperature > 0
    model.eval()
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = tokenizer.pad({"input_ids": [encoded[i] for i in idx]}, return_tensors="pt").to(model.device)
        torch.manual_seed(seed + start)
        out = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=sampling,
            temperature=temperature if sampling else None,
            top_p=top_p if sampling else None,
            top_k=None,
            num_return_sequences=num_return_sequences,
            pad_token_id=tokenizer.pad_token_id,
            use_cache=True,
        )
        texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        for j, i in enumerate(idx):
            results[i] = [t.strip() for t in texts[j * num_return_sequences : (j + 1) * num_return_sequences]]
    return results
