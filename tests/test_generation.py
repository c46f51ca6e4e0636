"""Generation in a reasoning mode, and scoring the answer without its reasoning."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from posttrain.generation import generate, reasoning_kwargs, split_reasoning
from posttrain.local_models import prepare
from posttrain.stages.training import load_tokenizer


@pytest.mark.parametrize(
    ("text", "reasoning", "answer"),
    [
        ("<think>\nadd 2 and 2\n</think>\n\nFour.", "add 2 and 2", "Four."),
        ("<think>\n\n</think>\nFour.", "", "Four."),
        ("Four.", "", "Four."),
        ("<think>\nstill thinking when tokens ran out", "still thinking when tokens ran out", ""),
    ],
)
def test_split_reasoning(text, reasoning, answer):
    assert split_reasoning(text) == (reasoning, answer)


@pytest.mark.parametrize("mode", ["think", "no_think"])
def test_generation_prompt_follows_the_reasoning_mode(mode, monkeypatch):
    path = prepare("tiny")
    tokenizer = load_tokenizer(path, "smollm3")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    seen = []
    real = tokenizer.apply_chat_template

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        seen.append(out)
        return out

    monkeypatch.setattr(tokenizer, "apply_chat_template", spy)
    (answers,) = generate(model, tokenizer, [[{"role": "user", "content": "Hi"}]], max_new_tokens=2, batch_size=1,
                          chat_template_kwargs=reasoning_kwargs(mode))
    assert len(answers) == 1
    prompt = seen[0]
    assert f"Reasoning Mode: /{mode}" in prompt
    assert prompt.endswith("<think>\n\n</think>\n") == (mode == "no_think")
