"""The reward-model grader on the offline `local:tiny-reward` model."""

import json
import math
import shutil

import pytest
import torch
from transformers import AutoTokenizer

from posttrain.graders.reward_model import RewardModelGrader
from posttrain.local_models import LOCAL_MODELS, prepare
from posttrain.templates import load_template


def doc(key: int, prompt: str) -> dict:
    return {"key": key, "prompt": prompt, "messages": [{"role": "user", "content": prompt}]}


DOCS = [doc(1, "What is the capital of France?"), doc(2, "Write a haiku about the sea."), doc(3, "hi")]
RESPONSES = [
    ["Paris.", "The capital of France is Paris, a city on the Seine known for its museums and cafes.", "Lyon"],
    ["Waves fold into foam\nsalt wind carries gull voices\nthe tide keeps its time", "sea"],
    ["Hello! How can I help you today?"],
]


@pytest.fixture(scope="module")
def path():
    return prepare("tiny-reward")


def test_tiny_reward_builds_offline_and_loads(path):
    assert "tiny-reward" in LOCAL_MODELS
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"]
    assert config["num_hidden_layers"] == 2 and len(config["id2label"]) == 1
    assert config["pad_token_id"] is not None
    grader = RewardModelGrader("local:tiny-reward", path, batch_size=4)
    assert grader.id == "reward_model:local:tiny-reward"
    assert grader.model.config.pad_token_id == grader.tokenizer.pad_token_id
    grader.close()
    assert grader.model is None


def test_scores_are_finite_deterministic_and_independent_of_batching(path):
    one = RewardModelGrader("local:tiny-reward", path, batch_size=1)
    eight = RewardModelGrader("local:tiny-reward", path, batch_size=8)
    a = one.grade(DOCS, RESPONSES)
    b = eight.grade(DOCS, RESPONSES)
    again = eight.grade(DOCS, RESPONSES)
    assert [len(g.scores) for g in a] == [3, 2, 1]
    for ga, gb, gc in zip(a, b, again):
        assert ga.issues == [] and gb.issues == []
        assert all(math.isfinite(s) for s in ga.scores)
        assert gb.scores == gc.scores
        assert ga.scores == pytest.approx(gb.scores, abs=1e-4)
    # The model reads the text: different answers get different scores.
    assert len({round(s, 6) for s in a[0].scores}) == 3


def test_a_think_block_does_not_change_the_score(path):
    grader = RewardModelGrader("local:tiny-reward", path, batch_size=4)
    answer = RESPONSES[0][1]
    (graded,) = grader.grade([DOCS[0]], [[answer, f"<think>\nThe user asks about France. Paris.\n</think>\n\n{answer}"]])
    assert graded.scores[0] == pytest.approx(graded.scores[1], abs=1e-6)


def test_a_non_finite_score_leaves_that_prompt_unscored(path, monkeypatch):
    grader = RewardModelGrader("local:tiny-reward", path, batch_size=8)
    poisoned = torch.tensor(grader.encode(DOCS[0], RESPONSES[0][2]))
    forward = grader.model.forward

    def nan_for_one(input_ids=None, attention_mask=None, **kwargs):
        out = forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        for row in range(input_ids.shape[0]):
            ids = input_ids[row, : int(attention_mask[row].sum())]
            if torch.equal(ids.cpu(), poisoned):
                out.logits[row, 0] = float("nan")
        return out

    monkeypatch.setattr(grader.model, "forward", nan_for_one)
    first, second, third = grader.grade(DOCS, RESPONSES)
    assert first.scores is None
    assert [i.kind for i in first.issues] == ["reward model returned a non-finite score"]
    assert "response 2" in first.issues[0].example and "nan" in first.issues[0].example
    assert second.scores is not None and third.scores is not None and second.issues == []


def test_long_conversations_are_truncated(path):
    grader = RewardModelGrader("local:tiny-reward", path, batch_size=2, max_length=16)
    (graded,) = grader.grade([DOCS[0]], [["word " * 50, "Paris."]])
    assert all(math.isfinite(s) for s in graded.scores)
    assert graded.detail["truncated"] == 2  # the system prompt alone is longer than 16 tokens


def test_a_tokenizer_without_a_template_uses_chatml(path, tmp_path):
    plain = tmp_path / "plain-reward"
    shutil.copytree(path, plain)
    tokenizer = AutoTokenizer.from_pretrained(plain)
    tokenizer.chat_template = None
    for f in plain.glob("*"):
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            f.unlink()
    tokenizer.save_pretrained(plain)
    assert not AutoTokenizer.from_pretrained(plain).chat_template
    grader = RewardModelGrader("file://plain", plain, batch_size=2)
    assert grader.tokenizer.chat_template == load_template("chatml")
    (graded,) = grader.grade([DOCS[2]], [["Hello!"]])
    assert graded.issues == [] and math.isfinite(graded.scores[0])
