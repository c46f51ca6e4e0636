"""Unusable rows are counted by reason; above the threshold the stage fails
naming the source, the counts and example row ids."""

import pytest

from posttrain.stages.prepare_data import DataError, _check, prompt_row_problem, sft_row_problem

GOOD = {"id": "ok", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


@pytest.mark.parametrize(
    "row, reason",
    [
        ({"id": "a"}, "no messages"),
        ({"id": "b", "messages": [{"role": "user", "content": 3}]}, "wrong types"),
        ({"id": "c", "messages": [{"role": "robot", "content": "x"}]}, "unknown role"),
        ({"id": "d", "messages": [{"role": "user", "content": "x"}]}, "does not end with an assistant turn"),
        ({"id": "e", "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": " "}]}, "empty assistant turn"),
    ],
)
def test_sft_row_problems(row, reason):
    assert sft_row_problem(row) == reason
    assert sft_row_problem(GOOD) is None


def test_prompt_rows_need_aligned_instructions():
    assert prompt_row_problem({"prompt": "x", "instruction_id_list": ["a"], "kwargs": []}) is not None
    assert prompt_row_problem({"prompt": "x", "instruction_id_list": ["a"], "kwargs": [{}]}) is None


def test_threshold():
    source = {"name": "mix"}
    rows = [GOOD] * 99 + [{"id": "bad-1"}]
    assert len(_check("sft", source, rows, sft_row_problem, 0.01)) == 99  # 1% is allowed
    rows = [GOOD] * 98 + [{"id": "bad-1"}, {"id": "bad-2"}]
    with pytest.raises(DataError, match=r"data.sft source 'mix': 2 of 100 rows unusable.*no messages: 2 \(e.g. rows \['bad-1', 'bad-2'\]\)"):
        _check("sft", source, rows, sft_row_problem, 0.01)
