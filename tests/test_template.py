"""Chat templates: `chatml` (mid-training) and the hybrid reasoning template
`smollm3` (SFT, generation, eval, preference). Their generation tags give the
assistant-only loss mask; per-row template kwargs reach them through TRL."""

import json
import re

import pytest
from datasets import Dataset

from posttrain.local_models import prepare
from posttrain.stages.training import load_tokenizer
from posttrain.templates import available_templates, row_template_kwargs

THINK_SYSTEM_DEFAULT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face. Think each question through"
NO_THINK_SYSTEM_DEFAULT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face.\n\n<|im_end|>"
EMPTY_THINK = "<think>\n\n</think>\n"


@pytest.fixture(scope="module")
def chatml():
    return load_tokenizer(prepare("tiny"), "chatml")


@pytest.fixture(scope="module")
def smol():
    return load_tokenizer(prepare("tiny"), "smollm3")


def render(tok, messages, **kwargs):
    return tok.apply_chat_template(messages, tokenize=False, **kwargs)


def masked_and_unmasked(tok, messages, **kwargs):
    out = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, **kwargs)
    ids, mask = out["input_ids"], out["assistant_masks"]
    runs, current, unmasked = [], [], []
    for i, m in zip(ids, mask):
        if m:
            current.append(i)
        else:
            unmasked.append(i)
            if current:
                runs.append(tok.decode(current))
                current = []
    if current:
        runs.append(tok.decode(current))
    return runs, tok.decode(unmasked)


TWO_TURNS = [
    {"role": "system", "content": "Always answer in lowercase."},
    {"role": "user", "content": "Name a colour."},
    {"role": "assistant", "content": "blue"},
    {"role": "user", "content": "Another?"},
    {"role": "assistant", "content": "green"},
]
REASONING_TURNS = [
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "<think>\nAdd them: 5.\n</think>\n\nIt is 5."},
    {"role": "user", "content": "And times 4?"},
    {"role": "assistant", "content": "<think>\n5 × 4 = 20.\n</think>\n\nIt is 20."},
]


def test_templates_are_shipped():
    assert {"chatml", "smollm3"} <= set(available_templates())


# ---------------------------------------------------------------- chatml


def test_chatml_mask_covers_exactly_the_assistant_turns(chatml):
    runs, unmasked = masked_and_unmasked(chatml, TWO_TURNS)
    assert runs == ["blue<|im_end|>", "green<|im_end|>"]
    assert "Always answer in lowercase." in unmasked and "Name a colour." in unmasked
    assert "blue" not in unmasked and "green" not in unmasked


def test_chatml_system_prompt_is_kept_and_default_added_only_when_missing(chatml):
    with_system = render(chatml, [{"role": "system", "content": "Be a pirate."}, {"role": "user", "content": "hi"}])
    assert "Be a pirate." in with_system and "helpful AI assistant" not in with_system
    without = render(chatml, [{"role": "user", "content": "hi"}], add_generation_prompt=True)
    assert without.startswith("<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n")
    assert without.endswith("<|im_start|>assistant\n")


def test_chatml_renders_reasoning_content_like_inline_traces(chatml):
    inline = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>\nstep\n</think>\n\nanswer"}]
    field = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "answer", "reasoning_content": "step"}]
    assert render(chatml, field) == render(chatml, inline)


# ---------------------------------------------------------------- smollm3: system block


def test_system_block_has_metadata_and_default_instructions(smol):
    text = render(smol, [{"role": "user", "content": "hi"}])
    assert text.startswith(
        "<|im_start|>system\n## Metadata\n\nKnowledge Cutoff Date: June 2025\nToday Date: 01 July 2025\n"
        "Reasoning Mode: /think\n\n## Custom Instructions\n\n" + THINK_SYSTEM_DEFAULT
    )
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n")
    # the date is a template variable with a fixed default: renders are deterministic
    assert "Today Date: 05 March 2026\n" in render(smol, [{"role": "user", "content": "hi"}], today_date="05 March 2026")
    no_think = render(smol, [{"role": "user", "content": "hi"}], enable_thinking=False)
    assert "Reasoning Mode: /no_think\n" in no_think and NO_THINK_SYSTEM_DEFAULT in no_think


def test_system_message_is_the_custom_instructions_and_replaces_the_default(smol):
    persona = "You are Pixel, a robot. Your name is Pixel, not SmolLM."
    text = render(smol, [{"role": "system", "content": persona}, {"role": "user", "content": "Who are you?"}])
    assert f"## Custom Instructions\n\n{persona}\n\n<|im_end|>\n" in text
    assert "trained by Hugging Face" not in text
    assert text.count("<|im_start|>system") == 1  # the system message is not rendered a second time
    # the custom_instructions kwarg (smoltalk2's chat_template_kwargs) works the same way
    assert render(smol, [{"role": "user", "content": "Who are you?"}], custom_instructions=persona) == text


@pytest.mark.parametrize(
    ("system", "enable_thinking", "mode", "instructions"),
    [
        ("Be brief. /no_think", True, "/no_think", "Be brief."),
        ("/think Be brief.", False, "/think", "Be brief."),
        ("Be brief. /no_think Use JSON.", None, "/no_think", "Be brief.  Use JSON."),
        ("Be brief.", False, "/no_think", "Be brief."),
        ("Be brief.", None, "/think", "Be brief."),
    ],
)
def test_flag_in_system_prompt_wins_and_is_stripped(smol, system, enable_thinking, mode, instructions):
    kwargs = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    text = render(smol, [{"role": "system", "content": system}, {"role": "user", "content": "hi"}], add_generation_prompt=True, **kwargs)
    assert f"Reasoning Mode: {mode}\n" in text
    assert f"## Custom Instructions\n\n{instructions}\n\n<|im_end|>" in text
    assert len(re.findall(r"(?<!<)/(?:no_)?think", text)) == 1  # only the marker: the flag left the instructions
    assert text.endswith("<|im_start|>assistant\n" + (EMPTY_THINK if mode == "/no_think" else ""))


def test_closing_think_tag_in_instructions_is_not_a_flag(smol):
    system = "Put your reasoning between <think> and </think>, then answer."
    text = render(smol, [{"role": "system", "content": system}, {"role": "user", "content": "hi"}], enable_thinking=False)
    assert "Reasoning Mode: /no_think\n" in text and f"## Custom Instructions\n\n{system}\n\n" in text


def test_flag_only_system_prompt_gets_the_default_instructions(smol):
    text = render(smol, [{"role": "system", "content": "/no_think"}, {"role": "user", "content": "hi"}])
    assert "Reasoning Mode: /no_think\n" in text and NO_THINK_SYSTEM_DEFAULT in text


def test_tools_are_rendered_in_the_system_block(smol):
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}
    text = render(smol, [{"role": "user", "content": "weather?"}], tools=[tool])
    assert "### Tools\n" in text and "<tools>\n" + json.dumps(tool, ensure_ascii=False) + "\n</tools>" in text
    assert text.index("<tools>") < text.index("<|im_start|>user")
    # the same tool passed as a JSON string (how row_template_kwargs passes tool kwargs) renders identically
    assert render(smol, [{"role": "user", "content": "weather?"}], xml_tools=[json.dumps(tool, ensure_ascii=False)]) == text
    assert "### Tools" not in render(smol, [{"role": "user", "content": "weather?"}])


# ---------------------------------------------------------------- smollm3: turns and modes


def test_think_mode_keeps_reasoning_in_every_turn(smol):
    text = render(smol, REASONING_TURNS, enable_thinking=True)
    assert "<|im_start|>assistant\n<think>\nAdd them: 5.\n</think>\n\nIt is 5.<|im_end|>\n" in text
    assert "<|im_start|>assistant\n<think>\n5 × 4 = 20.\n</think>\n\nIt is 20.<|im_end|>\n" in text
    assert EMPTY_THINK not in text


def test_reasoning_content_field_renders_like_inline_reasoning(smol):
    as_field = [
        {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": "It is 5.", "reasoning_content": "Add them: 5."},
        {"role": "user", "content": "And times 4?"},
        {"role": "assistant", "content": "\nIt is 20.", "reasoning_content": "\n5 × 4 = 20.\n"},
    ]
    assert render(smol, as_field, enable_thinking=True) == render(smol, REASONING_TURNS, enable_thinking=True)


def test_no_think_mode_puts_an_empty_think_block_in_every_assistant_turn(smol):
    text = render(smol, TWO_TURNS, enable_thinking=False)
    assert "<|im_start|>assistant\n<think>\n\n</think>\nblue<|im_end|>\n" in text
    assert "<|im_start|>assistant\n<think>\n\n</think>\ngreen<|im_end|>\n" in text
    assert text.count(EMPTY_THINK) == 2
    # a reasoning_content field is not rendered in no_think mode
    field = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "reasoning_content": "secret"}]
    assert "secret" not in render(smol, field, enable_thinking=False)


@pytest.mark.parametrize("enable_thinking", [True, False])
def test_generation_prompt_is_a_prefix_of_the_training_text(smol, enable_thinking):
    prompt = render(smol, TWO_TURNS[:2], add_generation_prompt=True, enable_thinking=enable_thinking)
    full = render(smol, TWO_TURNS[:3], enable_thinking=enable_thinking)
    assert full.startswith(prompt)
    assert prompt.endswith("<|im_start|>assistant\n" + ("" if enable_thinking else EMPTY_THINK))
    assert full[len(prompt):] == "blue<|im_end|>\n"


# ---------------------------------------------------------------- loss mask


@pytest.mark.parametrize(
    ("template", "kwargs", "expected"),
    [
        ("chatml", {}, ["<think>\nAdd them: 5.\n</think>\n\nIt is 5.<|im_end|>", "<think>\n5 × 4 = 20.\n</think>\n\nIt is 20.<|im_end|>"]),
        ("smollm3", {"enable_thinking": True}, ["<think>\nAdd them: 5.\n</think>\n\nIt is 5.<|im_end|>", "<think>\n5 × 4 = 20.\n</think>\n\nIt is 20.<|im_end|>"]),
    ],
)
def test_mask_is_reasoning_and_answer_and_end_of_turn(template, kwargs, expected):
    tok = load_tokenizer(prepare("tiny"), template)
    runs, unmasked = masked_and_unmasked(tok, REASONING_TURNS, **kwargs)
    assert runs == expected
    assert "What is 2 + 3?" in unmasked and "And times 4?" in unmasked
    assert unmasked.count("<|im_start|>assistant\n") == 2  # the headers stay out of the mask


def test_no_think_mask_leaves_out_the_empty_think_block(smol):
    runs, unmasked = masked_and_unmasked(smol, TWO_TURNS, enable_thinking=False)
    assert runs == ["blue<|im_end|>", "green<|im_end|>"]
    assert unmasked.count("<|im_start|>assistant\n" + EMPTY_THINK) == 2
    assert "Always answer in lowercase." in unmasked and "Reasoning Mode: /no_think" in unmasked


def test_mask_of_reasoning_content_field(smol):
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "answer", "reasoning_content": "step"}]
    runs, _ = masked_and_unmasked(smol, messages, enable_thinking=True)
    assert runs == ["<think>\nstep\n</think>\n\nanswer<|im_end|>"]


# ---------------------------------------------------------------- per-row kwargs


def test_row_template_kwargs():
    assert row_template_kwargs({"reasoning": True}) == {"enable_thinking": True}
    assert row_template_kwargs({"reasoning": False, "chat_template_kwargs": None}) == {"enable_thinking": False}
    # explicit row kwargs win over the derived mode (the lint then reports the disagreement); None means unset
    row = {"reasoning": True, "chat_template_kwargs": {"enable_thinking": False, "custom_instructions": None, "today_date": "02 May 2025"}}
    assert row_template_kwargs(row) == {"enable_thinking": False, "today_date": "02 May 2025"}
    assert row_template_kwargs({"chat_template_kwargs": '{"enable_thinking": false}'}) == {"enable_thinking": False}
    tool = {"name": "f", "parameters": {"x": 1}}
    assert row_template_kwargs({"chat_template_kwargs": {"tools": [tool], "xml_tools": ["<raw/>"]}}) == {
        "xml_tools": [json.dumps(tool), "<raw/>"]
    }


def test_arrow_filled_nulls_render_like_absent_keys(smol):
    """A datasets column unifies rows: keys another row has come back as None.
    The rendered text must not change."""
    rows = [
        {"reasoning": False, "messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
        {"reasoning": True, "chat_template_kwargs": {"custom_instructions": "Be kind.", "xml_tools": [{"name": "f", "parameters": {"a": 1}}]},
         "messages": [{"role": "user", "content": "c"}, {"role": "assistant", "content": "d", "reasoning_content": "e"}]},
        {"reasoning": True, "chat_template_kwargs": {"xml_tools": [{"name": "g", "parameters": {"b": "x"}}]},
         "messages": [{"role": "user", "content": "f"}, {"role": "assistant", "content": "g"}]},
    ]
    ds = Dataset.from_list([{"messages": r["messages"], "chat_template_kwargs": row_template_kwargs(r)} for r in rows])
    assert ds[0]["chat_template_kwargs"]["custom_instructions"] is None and ds[0]["messages"][1]["reasoning_content"] is None
    for row, example in zip(rows, ds):
        assert render(smol, example["messages"], **example["chat_template_kwargs"]) == render(smol, row["messages"], **row_template_kwargs(row))


def test_sft_trainer_renders_each_row_with_its_own_kwargs(smol):
    """TRL 1.16's SFTTrainer passes a `chat_template_kwargs` column to
    apply_chat_template for each example (as the sft stage builds it)."""
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    rows = [
        {"reasoning": False, "messages": [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "hi"}]},
        {"reasoning": True, "chat_template_kwargs": {"custom_instructions": "Talk like a surfer."},
         "messages": [{"role": "user", "content": "Say yo."}, {"role": "assistant", "content": "yo", "reasoning_content": "a greeting"}]},
    ]
    ds = Dataset.from_list([{"messages": r["messages"], "chat_template_kwargs": row_template_kwargs(r)} for r in rows])
    model = AutoModelForCausalLM.from_pretrained(prepare("tiny"))
    args = SFTConfig(output_dir="unused", max_length=512, packing=False, assistant_only_loss=True, report_to=[], use_cpu=True)
    prepared = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=smol).train_dataset
    first, second = (smol.decode(ex["input_ids"]) for ex in prepared)
    labels = [smol.decode([i for i in ex["labels"] if i != -100]) for ex in prepared]
    assert "Reasoning Mode: /no_think" in first and "<|im_start|>assistant\n" + EMPTY_THINK + "hi<|im_end|>" in first
    assert "Reasoning Mode: /think" in second and "Talk like a surfer." in second
    assert labels == ["hi<|im_end|>", "<think>\na greeting\n</think>\n\nyo<|im_end|>"]


def test_generation_with_the_hybrid_template(smol):
    """evaluate and prefgen render prompts with add_generation_prompt=True."""
    from transformers import AutoModelForCausalLM

    from posttrain.generation import generate

    model = AutoModelForCausalLM.from_pretrained(prepare("tiny"))
    conversations = [[{"role": "user", "content": "Name a colour."}], [{"role": "system", "content": "/no_think"}, {"role": "user", "content": "Hi"}]]
    out = generate(model, smol, conversations, max_new_tokens=4, batch_size=2)
    assert [len(o) for o in out] == [1, 1] and all(isinstance(o[0], str) for o in out)
    prompt = render(smol, conversations[1], add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n" + EMPTY_THINK)
