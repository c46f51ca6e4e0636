"""The chat template's generation tags give the assistant-only loss mask."""

from posttrain.local_models import prepare
from posttrain.stages.training import load_tokenizer


def test_mask_covers_exactly_the_assistant_turns():
    tok = load_tokenizer(prepare("tiny"), "chatml")
    messages = [
        {"role": "system", "content": "Always answer in lowercase."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "blue"},
        {"role": "user", "content": "Another?"},
        {"role": "assistant", "content": "green"},
    ]
    out = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    masked = tok.decode([i for i, m in zip(ids, mask) if m])
    unmasked = tok.decode([i for i, m in zip(ids, mask) if not m])
    assert masked == "blue<|im_end|>green<|im_end|>"
    assert "Always answer in lowercase." in unmasked and "Name a colour." in unmasked
    assert "blue" not in unmasked and "green" not in unmasked


def test_system_prompt_is_kept_and_default_added_only_when_missing():
    tok = load_tokenizer(prepare("tiny"), "chatml")
    with_system = tok.apply_chat_template([{"role": "system", "content": "Be a pirate."}, {"role": "user", "content": "hi"}], tokenize=False)
    assert "Be a pirate." in with_system and "helpful AI assistant" not in with_system
    without = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert without.startswith("<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n")
    assert without.endswith("<|im_start|>assistant\n")
