"""How far a policy has moved from its reference: the log-probability ratio of
the policy's own answers under the two models, summed per answer.

For answers sampled from the policy (y ~ π) the mean of
Σ_t [log π(y_t) − log π_ref(y_t)] is a Monte-Carlo estimate of KL(π‖π_ref) in
nats per answer. The evaluate stage has greedy answers (IFEval's), which are
not samples from π: on them the number measures drift from the reference
rather than an unbiased KL, and can in principle be negative.
"""

from __future__ import annotations

import torch

MAX_COMPLETION_TOKENS = 1024


def _encode(tokenizer, conversation: list[dict], response: str, chat_template_kwargs: dict) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids). The two strings are tokenized apart and
    joined as ids, so no token straddles the prompt/answer boundary."""
    prompt = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False, **chat_template_kwargs)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt_ids, completion_ids[:MAX_COMPLETION_TOKENS]


def _batch(encoded: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input ids, attention mask, completion mask), right-padded."""
    width = max(len(p) + len(c) for p, c in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(encoded), width), dtype=torch.long)
    completion = torch.zeros((len(encoded), width), dtype=torch.bool)
    for row, (prompt_ids, completion_ids) in enumerate(encoded):
        n, m = len(prompt_ids), len(completion_ids)
        ids[row, : n + m] = torch.tensor(prompt_ids + completion_ids)
        attention[row, : n + m] = 1
        completion[row, n : n + m] = True
    return ids, attention, completion


def _completion_log_probs(model, ids: torch.Tensor, attention: torch.Tensor, completion: torch.Tensor) -> torch.Tensor:
    """Log-probability of each completion token under `model`, shape (batch,
    width - 1), zero outside the completion."""
    device = model.device
    logits = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits[:, :-1]
    predicted = completion[:, 1:].to(device)  # position t's logits predict token t + 1
    # Only the completion positions go through log-softmax: the full (batch, width, vocab) would not fit for long prompts.
    picked = logits[predicted].float()
    targets = ids[:, 1:].to(device)[predicted]
    token_log_probs = picked.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(picked, dim=-1)
    out = torch.zeros(predicted.shape, dtype=torch.float32, device=device)
    out[predicted] = token_log_probs
    return out.cpu()


@torch.inference_mode()
def kl_to_reference(
    model,
    reference,
    tokenizer,
    conversations: list[list[dict]],
    responses: list[str],
    *,
    chat_template_kwargs: dict | None = None,
    batch_size: int = 8,
) -> dict[str, float]:
    """`kl.seq_mean` (nats per answer), `kl.token_mean` (nats per answer token)
    and `kl.responses` of the answers `responses` to `conversations`, the
    answer followed by eos being the completion scored under `model` and
    `reference` (same tokenizer). Empty answers are skipped; {} when none is left."""
    if len(conversations) != len(responses):
        raise ValueError(f"kl_to_reference: {len(conversations)} conversations but {len(responses)} responses")
    kwargs = chat_template_kwargs or {}
    encoded = [_encode(tokenizer, c, r, kwargs) for c, r in zip(conversations, responses) if r.strip()]
    if not encoded:
        return {}
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # Similar lengths in a batch waste less compute on padding; the order does not change the means.
    encoded.sort(key=lambda e: len(e[0]) + len(e[1]))
    model.eval()
    reference.eval()
    per_answer: list[float] = []
    tokens = 0
    for start in range(0, len(encoded), batch_size):
        ids, attention, completion = _batch(encoded[start : start + batch_size], pad_id)
        ratio = _completion_log_probs(model, ids, attention, completion) - _completion_log_probs(reference, ids, attention, completion)
        per_answer += ratio.sum(dim=1).tolist()
        tokens += int(completion[:, 1:].sum())  # the tokens scored: position 0 has no prediction
    return {
        "kl.seq_mean": sum(per_answer) / len(per_answer),
        "kl.token_mean": sum(per_answer) / tokens,
        "kl.responses": float(len(per_answer)),
    }
