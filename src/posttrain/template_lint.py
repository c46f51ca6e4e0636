"""Template lint: render a sample of SFT rows with the tokenizer's chat template
and fail, naming the rows, when the rendered training text is not what the
data says (the playbook's lesson: a template bug once silently dropped every
system prompt). Written by hand: neither TRL nor transformers has such a check
(TRL only warns when the end-of-turn token is outside the mask).

Checks, per row:

- `system_prompt`: every system prompt and custom instruction of the row (its
  system messages, the `custom_instructions` template kwarg) is in the rendered
  text. "/think" and "/no_think" flags are not part of the instruction (the
  hybrid template removes them), so the text between them is what must appear.
- `turns`: every user (or other non-assistant) message is in the rendered text.
- `loss_mask`: the mask from `return_assistant_tokens_mask` is exactly the
  assistant turns. What belongs to an assistant turn is defined by generation:
  the text the model has to write after the generation prompt
  (`add_generation_prompt=True` on the turns before it), through its
  end-of-turn token, trailing whitespace excluded. With `smollm3` that is
  "<think>\\n...\\n</think>\\n\\n{answer}<|im_end|>" in /think mode and
  "{answer}<|im_end|>" in /no_think mode (the empty think block is part of the
  prompt); with `chatml` "{content}<|im_end|>". Never in it: the system block,
  user turns, the "<|im_start|>assistant\\n" header, the "\\n" after
  "<|im_end|>". A token is expected in the mask when its characters overlap
  that span. Also checked: the rendered prompt is a prefix of the training text
  (the model trains on the context it sees at inference) and the turn's answer
  and reasoning are inside the span.
- `reasoning_mode` (templates with /think and /no_think modes): the mode marker
  in the system block is "/think" for a `reasoning: true` row and "/no_think"
  otherwise; every assistant turn of a /no_think row follows the empty think
  block and carries no reasoning of its own.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from posttrain.templates import row_template_kwargs

THINK, NO_THINK = "/think", "/no_think"
EMPTY_THINK = "<think>\n\n</think>\n"
CHECKS = ("system_prompt", "turns", "loss_mask", "reasoning_mode")
# A flag, not the "/think" inside a "</think>" closing tag.
_FLAGS = re.compile(r"(?<!<)/(?:no_think|think)\b")
_MAX_LISTED = 20
_SENTINEL = "\u2063posttrain-lint-first-turn\u2063"


class TemplateLintError(ValueError):
    """Raised with every problem found; `.problems` holds (row id, check, message)."""

    def __init__(self, message: str, problems: list[tuple[str, str, str]]):
        super().__init__(message)
        self.problems = problems


@dataclass
class _Counts:
    rows: int = 0
    checked: dict = field(default_factory=lambda: dict.fromkeys(CHECKS, 0))
    failed: dict = field(default_factory=lambda: dict.fromkeys(CHECKS, 0))


def _excerpt(text: str, limit: int = 70) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _instruction_pieces(text: str) -> list[str]:
    return [p.strip() for p in _FLAGS.split(text) if p.strip()]


def _has_modes(chat_template) -> bool:
    text = chat_template if isinstance(chat_template, str) else str(chat_template)
    return set(_FLAGS.findall(text)) == {THINK, NO_THINK}


def _render(tokenizer, messages, **kwargs) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)


def _runs(flags: list[bool]) -> list[tuple[int, int]]:
    """[start, end) index ranges where flags is True."""
    runs, start = [], None
    for i, f in enumerate([*flags, False]):
        if f and start is None:
            start = i
        elif not f and start is not None:
            runs.append((start, i))
            start = None
    return runs


def _reasoning_of(message: dict) -> str:
    """The message's own reasoning: the `reasoning_content` field or an inline think block."""
    if isinstance(message.get("reasoning_content"), str) and message["reasoning_content"].strip():
        return message["reasoning_content"].strip()
    m = re.search(r"<think>(.*?)</think>", message.get("content") or "", flags=re.S)
    return m.group(1).strip() if m else ""


def _check_row(row: dict, tokenizer, check_mode: bool, counts: _Counts) -> list[tuple[str, str]]:
    """(check, message) for each problem of one row."""
    messages, kwargs = row["messages"], row_template_kwargs(row)
    problems: list[tuple[str, str]] = []
    text = _render(tokenizer, messages, **kwargs)

    # (a) system prompts and custom instructions; user turns.
    instructions = [m["content"] for m in messages if m["role"] == "system" and isinstance(m.get("content"), str)]
    if isinstance(kwargs.get("custom_instructions"), str):
        instructions.append(kwargs["custom_instructions"])
    if instructions:
        counts.checked["system_prompt"] += 1
    for instr in instructions:
        missing = [p for p in _instruction_pieces(instr) if p not in text]
        if missing:
            problems.append(("system_prompt", f"system prompt / custom instruction missing from the rendered text: {_excerpt(missing[0])}"))
    counts.checked["turns"] += 1
    for k, m in enumerate(messages):
        if m["role"] not in ("system", "assistant") and isinstance(m.get("content"), str) and m["content"].strip() not in text:
            problems.append(("turns", f"message {k} ({m['role']}) missing from the rendered text: {_excerpt(m['content'])}"))

    # (b) loss mask: expected character spans from generation prompts.
    counts.checked["loss_mask"] += 1
    spans: list[tuple[int, int]] = []
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:k], add_generation_prompt=True, **kwargs)
        upto = _render(tokenizer, messages[: k + 1], **kwargs)
        if not (text.startswith(prompt) and text.startswith(upto) and len(upto) >= len(prompt)):
            other = prompt if not text.startswith(prompt) else upto
            what = "the generation prompt" if other is prompt else "the turns up to this one"
            at = next((i for i, (a, b) in enumerate(zip(other, text)) if a != b), min(len(other), len(text)))
            problems.append((
                "loss_mask",
                f"assistant turn {k}: {what}, rendered alone, is not a prefix of the training text (the model would train on a "
                f"context it never sees at inference); at char {at} the text has {_excerpt(text[at:at + 40])}, "
                f"the prefix {_excerpt(other[at:at + 40])}",
            ))
            continue
        completion = upto[len(prompt):].rstrip()
        spans.append((len(prompt), len(prompt) + len(completion)))
        no_think_turn = prompt.endswith(EMPTY_THINK)
        own = [(m.get("content") or "").strip(), "" if no_think_turn else _reasoning_of(m)]
        missing = [p for p in own if p and p not in completion]
        if missing:
            problems.append(("loss_mask", f"assistant turn {k}: its text is not in what the model generates for it: {_excerpt(missing[0])}"))
        if check_mode and row.get("reasoning") is False:
            if not no_think_turn:
                problems.append(("reasoning_mode", f"no_think row: assistant turn {k} does not follow the empty think block {EMPTY_THINK!r}"))
            if _reasoning_of(m) or "<think>" in completion:
                problems.append(("reasoning_mode", f"no_think row: assistant turn {k} carries reasoning: {_excerpt(completion)}"))

    enc = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, **kwargs)
    ids, mask = list(enc["input_ids"]), list(enc["assistant_masks"])
    plain = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if list(plain["input_ids"]) != ids:
        problems.append(("loss_mask", "tokenizing the rendered text does not give the ids apply_chat_template returns; cannot map the mask"))
    else:
        expected = [any(a < e and s < b for s, e in spans) for a, b in plain["offset_mapping"]]
        leaked = [bool(bit) and not want for bit, want in zip(mask, expected)]
        dropped = [want and not bit for bit, want in zip(mask, expected)]
        if any(leaked):
            s, e = _runs(leaked)[0]
            problems.append((
                "loss_mask",
                f"{sum(leaked)} non-assistant token(s) inside the loss mask, e.g. {_excerpt(tokenizer.decode(ids[s:e]))}",
            ))
        if any(dropped):
            s, e = _runs(dropped)[0]
            hint = "" if any(mask) else " (the mask is empty: does the template wrap assistant turns in {% generation %}?)"
            problems.append((
                "loss_mask",
                f"{sum(dropped)} assistant token(s) outside the loss mask, e.g. {_excerpt(tokenizer.decode(ids[s:e]))}{hint}",
            ))

    # (c) reasoning mode marker in the system block (the text before the first turn).
    if check_mode and isinstance(row.get("reasoning"), bool):
        counts.checked["reasoning_mode"] += 1
        # The head is what the template renders before the first turn: found by
        # rendering that turn's content as a sentinel (its own text may also occur
        # in the system block).
        first = next((k for k, m in enumerate(messages) if m["role"] != "system"), None)
        head = text
        if first is not None:
            probe = [dict(m, content=_SENTINEL) if k == first else m for k, m in enumerate(messages)]
            probed = _render(tokenizer, probe, **kwargs)
            head = probed[: probed.find(_SENTINEL)] if _SENTINEL in probed else text
        markers = set(_FLAGS.findall(head))
        found = markers.pop() if len(markers) == 1 else None
        want = THINK if row["reasoning"] else NO_THINK
        if found != want:
            problems.append((
                "reasoning_mode",
                f"row is {'think' if row['reasoning'] else 'no_think'} (reasoning={row['reasoning']}) but the rendered system block "
                f"{f'says {found}' if found else 'has no single mode marker'}",
            ))
    return problems


def lint(rows: list[dict], tokenizer, sample: int | None = 256, seed: int = 0, check_mode: bool | None = None) -> dict:
    """Render `sample` rows chosen with `seed` (all rows when None or at least
    len(rows)) with `tokenizer.chat_template` and the rows' template kwargs
    (`posttrain.templates.row_template_kwargs`, as the SFT stage passes them)
    and check them (see the module doc). `check_mode=None` checks reasoning
    modes only for templates that have them (mention both /think and /no_think).

    Returns a summary for the logs; raises TemplateLintError naming every
    failing row id, the check and the problem."""
    if check_mode is None:
        check_mode = _has_modes(tokenizer.chat_template)
    indices = list(range(len(rows)))
    if sample is not None and sample < len(rows):
        indices = sorted(random.Random(seed).sample(indices, sample))
    counts = _Counts()
    problems: list[tuple[str, str, str]] = []
    for i in indices:
        row = rows[i]
        rid = str(row.get("id", f"#{i}"))
        counts.rows += 1
        try:
            found = _check_row(row, tokenizer, check_mode, counts)
        except Exception as e:  # a row the template cannot render at all
            found = [("render", f"rendering failed: {type(e).__name__}: {e}")]
        for check in {c for c, _ in found}:
            counts.failed[check] = counts.failed.get(check, 0) + 1
        problems += [(rid, check, msg) for check, msg in found]
    if problems:
        bad_rows = sorted({rid for rid, _, _ in problems})
        per_check = ", ".join(f"{c}: {n}" for c, n in counts.failed.items() if n)
        lines = [f"  {rid} [{check}] {msg}" for rid, check, msg in problems[:_MAX_LISTED]]
        if len(problems) > _MAX_LISTED:
            lines.append(f"  ... and {len(problems) - _MAX_LISTED} more")
        raise TemplateLintError(
            f"chat template lint failed: {len(bad_rows)} of {counts.rows} rendered rows have problems "
            f"(rows failing per check: {per_check}); rows {', '.join(bad_rows[:10])}{' ...' if len(bad_rows) > 10 else ''}\n"
            + "\n".join(lines),
            problems,
        )
    return {
        "rows_checked": counts.rows,
        "rows_total": len(rows),
        "reasoning_mode_checked": check_mode,
        **{f"{c}.checked": counts.checked[c] for c in CHECKS},
    }
