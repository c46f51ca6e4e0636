"""Per-chunk curves from scoreboard rows: series per sweep branch with SFT as
chunk 0, the PNG of small multiples, the HTML page and the Markdown table."""

import base64
import io
import re

import matplotlib.image
import pytest

from posttrain.chunk_curves import chunk_series, curves_html, curves_markdown, plot_png

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
A = "apo_zero-lr5e-06-b0.1"
B = "dpo<b>&lr1e-06"  # a name that needs escaping in HTML


def row(label: str, **metrics: float) -> dict:
    return {"label": label, "metrics": {k.replace("__", "."): v for k, v in metrics.items()}, "model": {"uri": f"file:///{label}"}}


def train(chosen: float, margin: float) -> dict[str, float]:
    """A chunk's training metrics (as `row` keywords)."""
    return {"train__rewards_chosen": chosen, "train__rewards_rejected": chosen - margin, "train__reward_margin": margin,
            "train__reward_accuracy": 0.5 + margin}


@pytest.fixture
def rows() -> list[dict]:
    return [
        row("base", ifeval__prompt_strict__no_think=0.1),
        row("midtrain", ifeval__prompt_strict__no_think=0.2),
        row("sft", ifeval__prompt_strict__no_think=0.3, ifeval__mean_response_tokens__no_think=120.0,
            ifeval__mean_response_tokens__think=400.0),
        # Out of chunk order, and the branches interleaved.
        row(f"{A}/chunk-2", **train(0.4, 0.3), kl__seq_mean=2.5, ifeval__mean_response_tokens__no_think=150.0),
        row(f"{B}/chunk-1", **train(0.1, 0.05)),
        row(f"{A}/chunk-1", **train(0.2, 0.1), kl__seq_mean=1.25, ifeval__mean_response_tokens__no_think=131.0),
        row("soup", ifeval__prompt_strict__no_think=0.5),
    ]


def test_series_per_branch_sorted_by_chunk_with_sft_first(rows):
    series = chunk_series(rows)
    assert list(series) == [A, B]
    assert [c for c, _ in series[A]] == [0, 1, 2] and [c for c, _ in series[B]] == [0, 1]
    sft = series[A][0][1]
    assert sft["ifeval.mean_response_tokens.no_think"] == 120.0 and series[B][0][1] == sft
    assert sft["kl.seq_mean"] == 0.0  # SFT's drift from itself, not measured
    assert series[A][2][1]["kl.seq_mean"] == 2.5 and series[B][1][1]["train.reward_margin"] == 0.05
    assert "kl.seq_mean" not in rows[2]["metrics"]  # the scoreboard rows are left as they were


def test_series_without_a_sweep():
    series = chunk_series([row("sft", x=1.0), row("chunk-2", x=3.0), row("chunk-1", x=2.0), row("base", x=0.0)])
    assert list(series) == [""]
    assert [(c, m["x"]) for c, m in series[""]] == [(0, 1.0), (1, 2.0), (2, 3.0)]
    assert chunk_series([row("sft", x=1.0)]) == {"": [(0, {"kl.seq_mean": 0.0, "x": 1.0})]}
    assert chunk_series([row("base", x=0.0)]) == {}


def test_png_decodes_to_a_sensible_image(rows):
    series = chunk_series(rows)
    for objective in (None, {"sft": 0.3, f"{A}/chunk-1": 0.35, f"{A}/chunk-2": 0.4, f"{B}/chunk-1": 0.2}):
        png = plot_png(series, objective)
        assert png.startswith(PNG_SIGNATURE)
        height, width, _ = matplotlib.image.imread(io.BytesIO(png)).shape
        assert 800 <= width <= 2000 and 400 <= height <= 1200 and width > height


def test_png_of_unmeasured_panels_and_empty_series():
    """Only SFT evaluated, or nothing at all: the panels say not measured, and nothing fails."""
    assert plot_png(chunk_series([row("sft", ifeval__prompt_strict__no_think=0.3)])).startswith(PNG_SIGNATURE)
    assert plot_png({}).startswith(PNG_SIGNATURE)


def test_html_embeds_the_image_and_escapes_names(rows):
    series = chunk_series(rows)
    png = plot_png(series)
    page = curves_html(series, png, "Chunks of <smollm3> & co")
    assert f'src="data:image/png;base64,{base64.b64encode(png).decode()}"' in page
    assert "<h1>Chunks of &lt;smollm3&gt; &amp; co</h1>" in page
    assert "<td>dpo&lt;b&gt;&amp;lr1e-06</td>" in page and B not in page
    assert f"<td>{A}</td>" in page
    # B's chunk 1 has training rewards but no KL or length: those cells are missing.
    b_row = re.search(r"<tr><td>dpo&lt;b&gt;&amp;lr1e-06</td><td>1</td>(.*?)</tr>", page)[1]
    assert re.findall(r"<td>(.*?)</td>", b_row) == ["0.1", "0.05", "0.05", "0.55", "–", "–"]


def test_markdown_table(rows):
    series = chunk_series(rows)
    table = curves_markdown(series).splitlines()
    assert table[0] == ("| branch | chunk | reward chosen | reward rejected | reward margin | preference accuracy "
                        "| KL to SFT (nats/answer) | response tokens |")
    assert table[1].count("|") == table[0].count("|")
    # The length is the first mode measured (no_think before think); 4 significant digits.
    assert table[2] == f"| {A} | 0 | – | – | – | – | 0 | 120 |"
    assert table[3] == f"| {A} | 1 | 0.2 | 0.1 | 0.1 | 0.6 | 1.25 | 131 |"
    assert table[5] == f"| {B} | 0 | – | – | – | – | 0 | 120 |"
    assert len(table) == 2 + 5


def test_tables_carry_the_objective_when_given(rows):
    series = chunk_series(rows)
    objective = {"sft": 0.3, f"{A}/chunk-1": 1 / 3}
    table = curves_markdown(series, objective=objective).splitlines()
    assert table[0].endswith("| objective |")
    assert table[2].endswith("| 0.3 |") and table[3].endswith("| 0.3333 |") and table[4].endswith("| – |")
    assert "<th>objective</th>" in curves_html(series, b"", "t", objective=objective)
