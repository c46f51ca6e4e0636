"""The vibe report: the same probe conversations answered by every evaluated
checkpoint, side by side on one HTML page, for a person to read how the model
changed from stage to stage (the playbook's vibe test; a data bug that once
dropped every system prompt was found this way)."""

from __future__ import annotations

import html

from posttrain.engines import Generator


def run(generator: Generator, probes: list[dict], *, max_new_tokens: int, chat_template_kwargs: dict | None = None) -> list[dict]:
    """Each probe's conversation with the checkpoint's greedy answer."""
    answers = generator.generate([p["messages"] for p in probes], max_new_tokens=max_new_tokens, chat_template_kwargs=chat_template_kwargs)
    return [{"id": p["id"], "messages": p["messages"], "answer": a[0]} for p, a in zip(probes, answers)]


def page(board: list[dict], title: str) -> str:
    """One row per probe, one column per checkpoint (scoreboard rows that carry `vibe`)."""
    rows = [r for r in board if r.get("vibe")]
    if not rows:
        return f"<!doctype html><html><body><h1>{html.escape(title)}</h1><p>No vibe probes were run.</p></body></html>\n"
    probes = rows[0]["vibe"]
    head = "".join(f"<th>{html.escape(r['label'])}</th>" for r in rows)
    body = []
    for i, probe in enumerate(probes):
        convo = "".join(f"<div><b>{html.escape(m['role'])}</b>: {html.escape(m['content'])}</div>" for m in probe["messages"])
        cells = "".join(f"<td><pre>{html.escape(r['vibe'][i]['answer'])}</pre></td>" for r in rows)
        body.append(f"<tr><td class=\"probe\"><b>{html.escape(probe['id'])}</b>{convo}</td>{cells}</tr>")
    style = ("body{font-family:sans-serif;margin:1em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.4em;"
             "vertical-align:top;max-width:28em}pre{white-space:pre-wrap;margin:0}.probe{background:#f4f4f4}")
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title><style>{style}</style></head>"
            f"<body><h1>{html.escape(title)}</h1><table><tr><th>probe</th>{head}</tr>{''.join(body)}</table></body></html>\n")
