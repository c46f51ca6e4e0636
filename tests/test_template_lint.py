"""The template lint passes on the shipped data with the shipped templates and
fails, naming the rows, on broken templates and on rows whose reasoning mode
disagrees with what is rendered."""

import json
import re

import pytest
from conftest import RECIPE, ROOT

from posttrain.local_models import prepare
from posttrain.stages.training import load_tokenizer
from posttrain.template_lint import TemplateLintError, lint
from posttrain.templates import load_template

SFT_ROWS = [json.loads(line) for line in (ROOT / "data/local/sft.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tok():
    """A tokenizer whose template each test sets (smollm3 by default)."""
    return load_tokenizer(prepare("tiny"), "smollm3")


@pytest.fixture(autouse=True)
def _reset_template(tok):
    tok.chat_template = load_template("smollm3")


def hybrid(*, system=True, generation=True, mask_whole_chat=False, eot_in_mask=True, prompt_think_block=True) -> str:
    """A small hybrid (/think, /no_think) template; every keyword set to its
    non-default value writes one deliberate bug into it."""
    sys_text = "{{- messages[0]['content'] + '\\n' if messages[0]['role'] == 'system' else '' -}}" if system else ""
    gen, endgen = ("{%- generation -%}", "{%- endgeneration -%}") if generation and not mask_whole_chat else ("", "")
    whole, endwhole = ("{%- generation -%}", "{%- endgeneration -%}") if mask_whole_chat else ("", "")
    eot_in, eot_out = ("'<|im_end|>'", "'\\n'") if eot_in_mask else ("''", "'<|im_end|>\\n'")
    prompt_block = "{%- if mode == '/no_think' -%}{{- '<think>\\n\\n</think>\\n' -}}{%- endif -%}" if prompt_think_block else ""
    return (
        "{%- set mode = '/no_think' if enable_thinking is defined and enable_thinking == false else '/think' -%}"
        "{{- '<|im_start|>system\\nReasoning Mode: ' + mode + '\\n' -}}" + sys_text + "{{- '<|im_end|>\\n' -}}"
        + whole + "{%- for message in messages if message['role'] != 'system' -%}"
        "{%- if message['role'] == 'assistant' -%}"
        "{{- '<|im_start|>assistant\\n' -}}{%- if mode == '/no_think' -%}{{- '<think>\\n\\n</think>\\n' -}}{%- endif -%}"
        + gen + "{{- message['content'] + " + eot_in + " -}}" + endgen + "{{- " + eot_out + " -}}"
        "{%- else -%}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}{%- endif -%}"
        "{%- endfor -%}" + endwhole
        + "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}" + prompt_block + "{%- endif -%}"
    )


def failing_rows(err: TemplateLintError, check: str) -> set[str]:
    return {rid for rid, c, _ in err.problems if c == check}


def system_rows(rows):
    return {r["id"] for r in rows if any(m["role"] == "system" and re.sub(r"/(no_)?think", "", m["content"]).strip() for m in r["messages"])}


# ---------------------------------------------------------------- passes


@pytest.mark.parametrize("template", ["smollm3", "chatml"])
def test_lint_passes_on_every_row_of_the_local_sft_data(tok, template):
    tok.chat_template = load_template(template)
    summary = lint(SFT_ROWS, tok, sample=None, seed=0)
    assert summary["rows_checked"] == summary["rows_total"] == len(SFT_ROWS)
    assert summary["loss_mask.checked"] == len(SFT_ROWS)
    assert summary["system_prompt.checked"] == sum(any(m["role"] == "system" for m in r["messages"]) for r in SFT_ROWS) > 0
    # chatml has no reasoning modes: that check is skipped for it
    assert summary["reasoning_mode_checked"] is (template == "smollm3")
    assert summary["reasoning_mode.checked"] == (len(SFT_ROWS) if template == "smollm3" else 0)


def test_local_data_exercises_the_hybrid_template():
    assert any(r["reasoning"] and sum(m["role"] == "assistant" for m in r["messages"]) >= 3 for r in SFT_ROWS)
    assert any(not r["reasoning"] and sum(m["role"] == "assistant" for m in r["messages"]) >= 3 for r in SFT_ROWS)
    systems = [m["content"] for r in SFT_ROWS for m in r["messages"] if m["role"] == "system"]
    assert any("/no_think" in s and s.strip() != "/no_think" for s in systems) and any(s.strip() == "/think" for s in systems)


def test_a_correct_small_template_passes_too(tok):
    """The checks do not depend on smollm3's exact text."""
    tok.chat_template = hybrid()
    assert lint(SFT_ROWS, tok, sample=None)["rows_checked"] == len(SFT_ROWS)


def test_sample_is_seeded_and_all_rows_when_larger(tok):
    assert lint(SFT_ROWS, tok, sample=7, seed=1)["rows_checked"] == 7
    assert lint(SFT_ROWS, tok, sample=10_000, seed=1)["rows_checked"] == len(SFT_ROWS)
    tok.chat_template = hybrid(system=False)
    # the same seed picks the same rows, so the same failing ids
    first = failing_rows(pytest.raises(TemplateLintError, lint, SFT_ROWS, tok, sample=40, seed=3).value, "system_prompt")
    again = failing_rows(pytest.raises(TemplateLintError, lint, SFT_ROWS, tok, sample=40, seed=3).value, "system_prompt")
    assert first == again and first < system_rows(SFT_ROWS)


# ---------------------------------------------------------------- broken templates


def test_template_that_drops_system_prompts_fails_naming_every_such_row(tok):
    tok.chat_template = hybrid(system=False)
    with pytest.raises(TemplateLintError) as e:
        lint(SFT_ROWS, tok, sample=None)
    assert failing_rows(e.value, "system_prompt") == system_rows(SFT_ROWS)
    assert {rid for rid, _, _ in e.value.problems} == system_rows(SFT_ROWS)
    assert "sft-0003 [system_prompt] system prompt / custom instruction missing" in str(e.value)
    assert "Always respond in JSON" in str(e.value)


def test_custom_instructions_kwarg_dropped_by_the_template_fails(tok):
    row = {"id": "kw-1", "reasoning": True, "chat_template_kwargs": {"custom_instructions": "Answer like a pirate."},
           "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "<think>\nx\n</think>\n\nahoy"}]}
    assert lint([row], tok, sample=None)["system_prompt.checked"] == 1  # smollm3 renders the kwarg
    tok.chat_template = hybrid()  # ignores custom_instructions
    with pytest.raises(TemplateLintError, match=r"kw-1 \[system_prompt\].*Answer like a pirate"):
        lint([row], tok, sample=None)


def test_template_without_generation_tags_fails(tok):
    tok.chat_template = hybrid(generation=False)
    with pytest.raises(TemplateLintError) as e:
        lint(SFT_ROWS[:5], tok, sample=None)
    assert failing_rows(e.value, "loss_mask") == {r["id"] for r in SFT_ROWS[:5]}
    assert "assistant token(s) outside the loss mask" in str(e.value) and "{% generation %}" in str(e.value)


def test_mask_leaking_into_the_user_turn_fails(tok):
    tok.chat_template = hybrid(mask_whole_chat=True)
    with pytest.raises(TemplateLintError) as e:
        lint(SFT_ROWS[:5], tok, sample=None)
    assert failing_rows(e.value, "loss_mask") == {r["id"] for r in SFT_ROWS[:5]}
    assert "non-assistant token(s) inside the loss mask, e.g. '<|im_start|>user\\n" in str(e.value)


def test_end_of_turn_token_outside_the_mask_fails(tok):
    tok.chat_template = hybrid(eot_in_mask=False)
    with pytest.raises(TemplateLintError, match=r"sft-0001 \[loss_mask\] 1 assistant token\(s\) outside the loss mask, e.g. '<\|im_end\|>'"):
        lint(SFT_ROWS[:3], tok, sample=None)


def test_no_think_generation_prompt_without_the_empty_think_block_fails(tok):
    """The model would have to generate the empty think block itself, and the
    training turns do not follow the prompt it gets at inference."""
    tok.chat_template = hybrid(prompt_think_block=False)
    no_think = [r for r in SFT_ROWS if not r["reasoning"]][:3]
    think = [r for r in SFT_ROWS if r["reasoning"]][:3]
    assert lint(think, tok, sample=None)["rows_checked"] == 3
    with pytest.raises(TemplateLintError) as e:
        lint(think + no_think, tok, sample=None)
    assert {rid for rid, _, _ in e.value.problems} == {r["id"] for r in no_think}
    assert failing_rows(e.value, "loss_mask") == failing_rows(e.value, "reasoning_mode") == {r["id"] for r in no_think}
    assert "assistant token(s) outside the loss mask, e.g. '<think>\\n\\n</think>\\n'" in str(e.value)
    assert "does not follow the empty think block" in str(e.value)


def test_generation_prompt_that_is_not_a_prefix_of_the_training_text_fails(tok):
    good = hybrid()
    tok.chat_template = good.replace("{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}",
                                     "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant:\\n' -}}")
    assert tok.chat_template != good
    with pytest.raises(TemplateLintError) as e:
        lint(SFT_ROWS[:4], tok, sample=None)
    assert failing_rows(e.value, "loss_mask") == {r["id"] for r in SFT_ROWS[:4]}
    assert "the generation prompt, rendered alone, is not a prefix of the training text" in str(e.value)


# ---------------------------------------------------------------- rows whose mode disagrees


def _row(rid, reasoning, system=None, answer="It is 4.", **extra):
    msgs = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": answer}]
    return {"id": rid, "reasoning": reasoning, "messages": msgs, **extra}


THOUGHT = "<think>\n2 + 2 = 4.\n</think>\n\nIt is 4."


def test_rows_whose_mode_disagrees_fail_and_are_named(tok):
    with_field = [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4", "reasoning_content": "2 + 2 = 4."}]
    good = [_row("ok-think", True, answer=THOUGHT), _row("ok-no-think", False), _row("ok-flag", False, system="Be brief. /no_think"),
            {"id": "ok-field", "reasoning": True, "messages": with_field}]
    assert lint(good, tok, sample=None)["reasoning_mode.checked"] == 4
    bad = [
        _row("think-but-flag-says-no", True, system="Be brief. /no_think", answer=THOUGHT),
        _row("no-think-with-reasoning", False, answer=THOUGHT),
        _row("no-think-but-flag-says-think", False, system="/think Be brief."),
        _row("kwargs-disagree", True, answer=THOUGHT, chat_template_kwargs={"enable_thinking": False}),
        {"id": "no-think-with-field", "reasoning": False, "messages": with_field},
    ]
    with pytest.raises(TemplateLintError) as e:
        lint(good + bad, tok, sample=None)
    assert failing_rows(e.value, "reasoning_mode") == {r["id"] for r in bad}
    assert {rid for rid, _, _ in e.value.problems} == {r["id"] for r in bad}
    msg = str(e.value)
    assert "think-but-flag-says-no [reasoning_mode] row is think (reasoning=True) but the rendered system block says /no_think" in msg
    assert "no-think-with-reasoning [reasoning_mode] no_think row: assistant turn 1 carries reasoning" in msg
    assert "5 of 9 rendered rows have problems" in msg


def test_template_without_a_mode_marker_fails_the_mode_check(tok):
    tok.chat_template = hybrid().replace("'<|im_start|>system\\nReasoning Mode: ' + mode + '\\n'", "'<|im_start|>system\\n'")
    assert "Reasoning Mode" not in tok.chat_template
    with pytest.raises(TemplateLintError, match=r"sft-0001 \[reasoning_mode\] .* has no single mode marker"):
        lint(SFT_ROWS[:3], tok, sample=None, check_mode=True)


# ---------------------------------------------------------------- the tokenize stage


def _tokenize_context(tmp_path, monkeypatch, rows):
    from conftest import write_prepared

    from posttrain.dag import stage_configs
    from posttrain.models import ModelRef, write_model_ref
    from posttrain.recipe import load_recipe
    from posttrain.stages.context import StageContext

    monkeypatch.setenv("POSTTRAIN_STORE", f"file://{tmp_path / 'store'}")
    monkeypatch.delenv("POSTTRAIN_LOG_DIR", raising=False)
    config = stage_configs(load_recipe(RECIPE, "tiny"))["tokenize_sft"]
    assert config["chat_template"] == "smollm3"
    write_model_ref(tmp_path / "base", ModelRef(uri="local:tiny"))
    write_prepared(tmp_path / "data", rows)
    return StageContext.create(config, {"base_model": tmp_path / "base", "data": tmp_path / "data"}, {"tokenized": tmp_path / "out"})


def test_tokenize_lints_and_renders_each_rows_mode(tmp_path, monkeypatch):
    """The stage that renders the rows lints them first, and renders each
    row in its own reasoning mode (the mode marker of the smollm3 template)."""
    from datasets import load_from_disk

    from posttrain.stages import tokenize
    from posttrain.store import fetch

    rows = SFT_ROWS[:6]
    ctx = _tokenize_context(tmp_path, monkeypatch, rows)
    tokenize.run(ctx)
    ref = json.loads((tmp_path / "out" / "tokenized.json").read_text())
    packed = load_from_disk(str(fetch(ref["uri"], tmp_path / "cache")))
    tok = ctx_tokenizer()
    text = "".join(tok.decode(ids) for ids in packed["input_ids"])
    for row in rows:
        assert row["messages"][-1]["content"][:40] in text
    think = sum(bool(r["reasoning"]) for r in rows)
    assert 0 < think < len(rows)
    assert text.count("Reasoning Mode: /think") == think and text.count("Reasoning Mode: /no_think") == len(rows) - think


def ctx_tokenizer():
    from posttrain.local_models import prepare
    from posttrain.stages.training import load_tokenizer

    return load_tokenizer(prepare("tiny"), "smollm3")


def test_tokenize_fails_with_the_lint_error_before_tokenizing(tmp_path, monkeypatch):
    from posttrain.stages import tokenize

    monkeypatch.setattr(tokenize, "label_and_pack", lambda *a, **k: pytest.fail("packed despite a lint error"))
    rows = [*SFT_ROWS[:4], _row("sft-bad-mode", True, system="Answer briefly. /no_think", answer=THOUGHT)]
    with pytest.raises(TemplateLintError, match=r"sft-bad-mode \[reasoning_mode\]"):
        tokenize.run(_tokenize_context(tmp_path, monkeypatch, rows))
