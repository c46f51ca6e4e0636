"""KL-to-reference estimate on the tiny model: zero against itself, positive
for a perturbed policy on its own answers, independent of the batch size."""

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from posttrain.eval.kl import kl_to_reference
from posttrain.generation import generate, reasoning_kwargs
from posttrain.local_models import prepare
from posttrain.stages.training import load_tokenizer

CONVERSATIONS = [
    [{"role": "user", "content": "Name a colour."}],
    [{"role": "user", "content": "Write one sentence about the sea."}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 2 + 2?"}],
    [{"role": "user", "content": "List three fruits."}],
    [{"role": "user", "content": "Say hello in French."}],
]
NO_THINK = reasoning_kwargs("no_think")


@pytest.fixture(scope="module")
def tiny():
    path = prepare("tiny")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, load_tokenizer(path, "smollm3")


@pytest.fixture(scope="module")
def perturbed(tiny):
    """A copy of the tiny model with small noise on every weight, and its greedy answers."""
    model, tokenizer = tiny
    policy = copy.deepcopy(model)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # smaller noise leaves its greedy answers all newlines, stripped to empty
    answers = [a[0] for a in generate(policy, tokenizer, CONVERSATIONS, max_new_tokens=16, batch_size=4, chat_template_kwargs=NO_THINK)]
    return policy, answers


def test_identical_models_give_exactly_zero(tiny):
    model, tokenizer = tiny
    twin = AutoModelForCausalLM.from_pretrained(prepare("tiny"), dtype=torch.float32)
    responses = ["Blue.", "The sea is wide and deep.", "4", "Apple, pear, plum.", "Bonjour !"]
    result = kl_to_reference(model, twin, tokenizer, CONVERSATIONS, responses, chat_template_kwargs=NO_THINK, batch_size=2)
    assert result == {"kl.seq_mean": 0.0, "kl.token_mean": 0.0, "kl.responses": 5.0}


def test_perturbed_policy_drifts_on_its_own_greedy_answers(tiny, perturbed):
    model, tokenizer = tiny
    policy, answers = perturbed
    assert any(a.strip() for a in answers)
    result = kl_to_reference(policy, model, tokenizer, CONVERSATIONS, answers, chat_template_kwargs=NO_THINK)
    assert result["kl.seq_mean"] > 0 and result["kl.token_mean"] > 0
    assert result["kl.responses"] == sum(1 for a in answers if a.strip())


def test_batch_size_does_not_change_the_estimate(tiny, perturbed):
    model, tokenizer = tiny
    policy, answers = perturbed
    one = kl_to_reference(policy, model, tokenizer, CONVERSATIONS, answers, chat_template_kwargs=NO_THINK, batch_size=1)
    four = kl_to_reference(policy, model, tokenizer, CONVERSATIONS, answers, chat_template_kwargs=NO_THINK, batch_size=4)
    assert one.keys() == four.keys()
    for name in one:
        assert one[name] == pytest.approx(four[name], abs=1e-4)


def test_empty_answers_are_skipped(tiny, perturbed):
    model, tokenizer = tiny
    policy, _ = perturbed
    assert kl_to_reference(policy, model, tokenizer, CONVERSATIONS[:2], ["", "  "]) == {}
    one = kl_to_reference(policy, model, tokenizer, CONVERSATIONS[:2], ["", "Waves."], chat_template_kwargs=NO_THINK)
    alone = kl_to_reference(policy, model, tokenizer, CONVERSATIONS[1:2], ["Waves."], chat_template_kwargs=NO_THINK)
    assert one == alone and one["kl.responses"] == 1.0


def test_completion_is_the_answer_then_eos_after_the_rendered_prompt(tiny):
    """The scored tokens are exactly the answer's tokens plus eos (token_mean = seq_mean / their count)."""
    model, tokenizer = tiny
    policy = copy.deepcopy(model)
    with torch.no_grad():
        policy.lm_head.weight.mul_(1.5)  # tied embeddings: a different model on every token
    answer = "Blue, like the sky."
    result = kl_to_reference(policy, model, tokenizer, CONVERSATIONS[:1], [answer], chat_template_kwargs=NO_THINK)
    scored = len(tokenizer(answer, add_special_tokens=False)["input_ids"]) + 1
    assert result["kl.token_mean"] == pytest.approx(result["kl.seq_mean"] / scored)


def test_mismatched_lengths_are_refused(tiny):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="2 conversations but 1 responses"):
        kl_to_reference(model, model, tokenizer, CONVERSATIONS[:2], ["x"])
