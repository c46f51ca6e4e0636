"""Chat templates shipped as .jinja files (never strings inside YAML).

- `chatml`: plain ChatML, used to render conversations for mid-training.
- `smollm3`: the hybrid reasoning template (/think and /no_think modes) used for
  SFT, generation, evaluation and preference training.

Both wrap every assistant turn in `{% generation %}` so that
`apply_chat_template(..., return_assistant_tokens_mask=True)` gives the loss
mask; `posttrain.template_lint` checks that mask on the data before SFT.
"""

from __future__ import annotations

import json
from pathlib import Path

_DIR = Path(__file__).parent

# chat_template_kwargs whose values are lists of tool descriptions. They are
# passed on as JSON strings: a datasets/Arrow column unifies the dicts of all
# rows into one struct and fills the keys a row lacks with None, which would
# change the rendered JSON; strings go through unchanged and the templates
# render a string tool exactly as they render the dict it came from.
_TOOL_KWARGS = {"tools": "xml_tools", "xml_tools": "xml_tools", "python_tools": "python_tools"}


def available_templates() -> list[str]:
    return sorted(p.stem for p in _DIR.glob("*.jinja"))


def load_template(name: str) -> str:
    return (_DIR / f"{name}.jinja").read_text()


def own_template_kwargs(row: dict) -> dict:
    """A row's own `chat_template_kwargs` (a dict, or a JSON string of one)
    without nulls: Hub datasets store a struct's missing fields as nulls."""
    kw = row.get("chat_template_kwargs")
    if isinstance(kw, str):
        kw = json.loads(kw)
    if not isinstance(kw, dict):
        return {}
    return {k: v for k, v in kw.items() if v is not None}


def row_template_kwargs(row: dict) -> dict:
    """The chat template arguments of one SFT row: `enable_thinking` from the
    row's `reasoning` flag (think / no_think), then the row's own
    `chat_template_kwargs` (a dict, or a JSON string of one), which win over
    the derived value; None values are dropped (they mean "not set")."""
    kwargs: dict = {}
    if row.get("reasoning") is not None:
        kwargs["enable_thinking"] = bool(row["reasoning"])
    for key, value in own_template_kwargs(row).items():
        if key in _TOOL_KWARGS and isinstance(value, list):
            key = _TOOL_KWARGS[key]
            strings = [v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) for v in value]
            kwargs[key] = kwargs.get(key, []) + strings
        else:
            kwargs[key] = value
    return kwargs
