"""prepare_data: unusable rows are counted by reason (fails above the
threshold, naming the source, the counts and example row ids); the SFT and
mid-training sources are resampled to their token budgets; the output
Datasets record resolved source revisions; the stats Markdown has the
mixture tables."""

import json
import shutil

import pytest
from conftest import RECIPE, ROOT

from posttrain.dag import stage_configs
from posttrain.data.artifacts import INFO_FILE, read_dataset
from posttrain.data.rows import prompt_row, prompt_row_problem, sft_row_problem, stored_conversation
from posttrain.data.scan import read_columns, scan
from posttrain.data.sources import hub_revision, open_source, read_rows
from posttrain.datasets_io import read_jsonl
from posttrain.models import ModelRef, write_model_ref
from posttrain.recipe import Recipe, apply_overrides, load_recipe
from posttrain.stages import prepare_data
from posttrain.stages.context import STORE_ENV, StageContext
from posttrain.stages.prepare_data import DataError, check_dropped
from posttrain.store import sha256_file as file_sha256
from posttrain.templates import load_template, row_template_kwargs

GOOD = {"id": "ok", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
LOCAL = ROOT / "data" / "local"
SFT = read_jsonl(LOCAL / "sft.jsonl")
MID = read_jsonl(LOCAL / "midtrain.jsonl")


@pytest.mark.parametrize(
    "row, reason",
    [
        ({"id": "a"}, "no messages"),
        ({"id": "b", "messages": [{"role": "user", "content": 3}]}, "wrong types"),
        ({"id": "c", "messages": [{"role": "robot", "content": "x"}]}, "unknown role"),
        ({"id": "d", "messages": [{"role": "user", "content": "x"}]}, "does not end with an assistant turn"),
        ({"id": "e", "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": " "}]}, "empty assistant turn"),
        ({**GOOD, "chat_template_kwargs": "[1]"}, "chat_template_kwargs not a mapping"),
        ({**GOOD, "chat_template_kwargs": 3}, "chat_template_kwargs not a mapping"),
    ],
)
def test_sft_row_problems(row, reason):
    assert sft_row_problem(row) == reason
    assert sft_row_problem(GOOD) is None


def test_prompt_rows_need_aligned_instructions():
    assert prompt_row_problem({"prompt": "x", "instruction_id_list": ["a"], "kwargs": []}) is not None
    assert prompt_row_problem({"prompt": "x", "instruction_id_list": ["a"], "kwargs": [{}]}) is None


def _dropped(tmp_path, rows, tokenizer):
    """The drop counters of a JSON-lines source, through the batched scan."""
    source = {"name": "mix", "path": _write(tmp_path / "mix.jsonl", rows)}
    return read_columns(scan(open_source(source, "sft"), source, "sft", tokenizer=tokenizer)).dropped


def test_threshold(tmp_path, tokenizer):
    source = {"name": "mix"}
    dropped = _dropped(tmp_path, [GOOD] * 99 + [{"id": "bad-1"}], tokenizer)
    check_dropped("sft", source, dropped, 0.01)  # 1% is allowed
    assert dropped.total == 1 and dropped.counts == {"no messages": 1} and dropped.examples == {"no messages": ["bad-1"]}
    dropped = _dropped(tmp_path, [GOOD] * 98 + [{"id": "bad-1"}, {"id": "bad-2"}], tokenizer)
    with pytest.raises(DataError, match=r"data.sft source 'mix': 2 of 100 rows unusable.*no messages: 2 \(e.g. rows \['bad-1', 'bad-2'\]\)"):
        check_dropped("sft", source, dropped, 0.01)


# -- the stage, on the local data with the tiny model's tokenizer ---------------------------


@pytest.fixture(scope="module")
def tiny() -> Recipe:
    # Room for every local row: the length limit has its own tests.
    return apply_overrides(load_recipe(RECIPE, "tiny"), ["sft.max_length=4096", "midtrain.max_length=4096", "data.max_invalid_fraction=0.01"])


@pytest.fixture(scope="module")
def tokenizer(tiny):
    from posttrain.local_models import prepare
    from posttrain.stages.training import load_tokenizer

    return load_tokenizer(prepare("tiny"), tiny.chat_template)


@pytest.fixture
def run_stage(tmp_path, monkeypatch):
    monkeypatch.setenv(STORE_ENV, f"file://{tmp_path / 'store'}")
    write_model_ref(tmp_path / "base", ModelRef(uri="local:tiny"))
    runs = iter(range(100))

    def run(recipe: Recipe) -> dict:
        out = tmp_path / f"out{next(runs)}"
        outputs = {g: out / g for g in ("sft", "midtrain", "prompts")} | {"stats": out / "stats.md"}
        out.mkdir()
        ctx = StageContext.create(stage_configs(recipe)["prepare_data"], {"base_model": tmp_path / "base"}, outputs)
        result = prepare_data.run(ctx)
        readable = {"sft": stored_conversation, "midtrain": lambda r: r, "prompts": prompt_row}
        return {
            **{g: [readable[g](r) for r in read_dataset(outputs[g])] for g in ("sft", "midtrain", "prompts")},
            **{f"{g}.info": json.loads((outputs[g] / INFO_FILE).read_text()) for g in ("sft", "midtrain", "prompts")},
            "stats": outputs["stats"].read_text(),
            "result": result,
        }

    return run


def with_data(recipe: Recipe, **changes) -> Recipe:
    raw = recipe.model_dump()
    raw["data"].update(changes)
    return Recipe.model_validate(raw)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _tokens(tokenizer, row) -> int:
    """Tokens of one row as the sft stage renders it, one row at a time (not
    the stage's batched path)."""
    return len(tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=True, **row_template_kwargs(row))["input_ids"])


THINK = [r for r in SFT if r["reasoning"]]
NO_THINK = [r for r in SFT if not r["reasoning"]]


@pytest.fixture
def think_split(tmp_path):
    return _write(tmp_path / "think.jsonl", THINK), _write(tmp_path / "no_think.jsonl", NO_THINK)


def test_weights_3_to_1_give_token_shares(run_stage, tiny, think_split, tokenizer):
    think, no_think = think_split
    recipe = with_data(tiny, sft=[{"name": "think", "path": think, "weight": 3}, {"name": "no-think", "path": no_think, "weight": 1}])
    out = run_stage(recipe)
    tokens = {"think": 0, "no-think": 0}
    for row in out["sft"]:
        tokens[row["source"]] += _tokens(tokenizer, row)
    assert tokens["think"] / sum(tokens.values()) == pytest.approx(0.75, abs=0.01)
    # Without data.sft_tokens the weights share the tokens the sources had.
    before = {"think": sum(_tokens(tokenizer, r) for r in THINK), "no-think": sum(_tokens(tokenizer, r) for r in NO_THINK)}
    assert sum(tokens.values()) == pytest.approx(sum(before.values()), rel=0.01)
    info = {s["name"]: s for s in out["sft.info"]["sources"]}
    for name in tokens:
        assert info[name]["tokens_after"] == tokens[name] and info[name]["tokens_before"] == before[name]
        assert info[name]["rows_after"] == sum(r["source"] == name for r in out["sft"])
    assert info["think"]["target_tokens"] == round(sum(before.values()) * 0.75)
    # think has less than 75% of the tokens: it is up-sampled, its repeats with distinct ids.
    assert info["think"]["rows_after"] > info["think"]["rows_before"] == len(THINK)
    ids = [r["id"] for r in out["sft"]]
    assert len(set(ids)) == len(ids) and any(i.endswith("#2") for i in ids)
    assert {i.split("#")[0] for i in ids if "#" in i} <= {r["id"] for r in THINK}
    assert info["no-think"]["rows_after"] < info["no-think"]["rows_before"] == len(NO_THINK)


def test_absolute_budget_and_group_total(run_stage, tiny, think_split, tokenizer):
    think, no_think = think_split
    recipe = with_data(
        tiny,
        sft=[{"name": "think", "path": think, "tokens": 40_000}, {"name": "no-think", "path": no_think, "weight": 1}],
        midtrain=[{"name": "mid", "path": str(LOCAL / "midtrain.jsonl"), "weight": 2}],
        sft_tokens=3_000,
        midtrain_tokens=30_000,
    )
    out = run_stage(recipe)
    by_source = {}
    for row in out["sft"]:
        by_source.setdefault(row["source"], []).append(_tokens(tokenizer, row))
    longest = max(_tokens(tokenizer, r) for r in SFT)
    assert abs(sum(by_source["think"]) - 40_000) <= longest
    # The only weighted SFT source gets all of data.sft_tokens.
    assert abs(sum(by_source["no-think"]) - 3_000) <= longest
    mid_tokens = [len(tokenizer(r["text"], add_special_tokens=False)["input_ids"]) for r in out["midtrain"]]
    assert abs(sum(mid_tokens) - 30_000) <= max(mid_tokens)
    assert out["midtrain.info"]["sources"][0]["target_tokens"] == 30_000
    assert len({r["id"] for r in out["midtrain"]}) == len(out["midtrain"]) > len(MID)


def test_same_seed_same_output_other_seed_other_rows(run_stage, tiny, think_split):
    think, no_think = think_split
    recipe = with_data(tiny, sft=[{"name": "think", "path": think, "weight": 1}, {"name": "no-think", "path": no_think, "tokens": 3_000}])
    first, again = run_stage(recipe), run_stage(recipe)
    assert first["sft"] == again["sft"]
    other = run_stage(apply_overrides(recipe, ["seed=7"]))
    picked = lambda out: sorted(r["id"] for r in out["sft"] if r["source"] == "no-think")  # noqa: E731
    assert picked(other) != picked(first)


def test_over_max_length_rows_are_counted_and_fail_above_threshold(run_stage, tiny, tokenizer):
    sft = with_data(tiny, sft=[{"name": "local-sft", "path": str(LOCAL / "sft.jsonl")}])
    lengths = {r["id"]: _tokens(tokenizer, r) for r in SFT}
    limit = sorted(lengths.values())[-5]
    over = [i for i, n in lengths.items() if n > limit]
    assert 1 <= len(over) <= 4 and len(over) / len(SFT) > 0.01
    with pytest.raises(DataError) as err:
        run_stage(apply_overrides(sft, [f"sft.max_length={limit}"]))
    msg = str(err.value)
    assert f"data.sft source 'local-sft': {len(over)} of {len(SFT)} rows unusable, above data.max_invalid_fraction=0.01" in msg
    assert f"over max length: {len(over)} (e.g. rows {over}; longest {max(lengths.values())} tokens > sft.max_length={limit}" in msg

    out = run_stage(apply_overrides(sft, [f"sft.max_length={limit}", "data.max_invalid_fraction=0.05"]))
    assert {r["id"] for r in out["sft"]} == set(lengths) - set(over)
    assert out["sft.info"]["sources"][0]["rows_dropped"] == {"over max length": len(over)}
    assert f"| sft | local-sft | over max length | {len(over)} | {100 * len(over) / len(SFT):.2f} | {', '.join(over)} |" in out["stats"]


def test_midtrain_over_max_length(run_stage, tiny, tokenizer):
    recipe = with_data(tiny, midtrain=[{"name": "local-reasoning", "path": str(LOCAL / "midtrain.jsonl")}])
    lengths = {r["id"]: len(tokenizer(r["text"], add_special_tokens=False)["input_ids"]) for r in MID}
    limit = sorted(lengths.values())[-3]
    over = [i for i, n in lengths.items() if n > limit]
    # Wrapped packing (the mid-training default) splits long documents: none is too long.
    assert len(run_stage(apply_overrides(recipe, [f"midtrain.max_length={limit}"]))["midtrain"]) == len(MID)
    with pytest.raises(DataError) as err:
        run_stage(apply_overrides(recipe, [f"midtrain.max_length={limit}", "midtrain.packing_strategy=bfd"]))
    assert f"data.midtrain source 'local-reasoning': {len(over)} of {len(MID)} rows unusable" in str(err.value)
    assert f"over max length: {len(over)} (e.g. rows {over}; longest {max(lengths.values())} tokens > midtrain.max_length={limit}" in str(err.value)


def test_conversation_fields_kept(run_stage, tiny, tmp_path, tokenizer):
    rows = [
        {"id": "k1", "messages": SFT[0]["messages"], "chat_template_kwargs": {"enable_thinking": True, "xml_tools": None}},
        {"id": "k2", "messages": SFT[1]["messages"], "chat_template_kwargs": json.dumps({"enable_thinking": False})},
        {"id": "k3", "messages": SFT[2]["messages"], "reasoning": True},
        {"id": "k4", "messages": SFT[3]["messages"]},
        # The row's own template arguments win over its flag, in the mode as in the rendering.
        {"id": "k5", "messages": SFT[4]["messages"], "reasoning": True, "chat_template_kwargs": {"enable_thinking": False}},
    ]
    conv = [{"id": "m1", "messages": SFT[3]["messages"]}]
    recipe = with_data(tiny, sft=[{"name": "kw", "path": _write(tmp_path / "kw.jsonl", rows)}], midtrain=[{"name": "conv", "path": _write(tmp_path / "conv.jsonl", conv)}])
    out = run_stage(recipe)
    assert [(r["id"], r["reasoning"], r.get("chat_template_kwargs")) for r in out["sft"]] == [
        ("k1", True, {"enable_thinking": True}), ("k2", False, {"enable_thinking": False}), ("k3", True, None), ("k4", False, None),
        ("k5", False, {"enable_thinking": False}),
    ]
    assert [r["messages"] for r in out["sft"]] == [r["messages"] for r in rows]
    # The token counts are those of the rows as the sft stage renders them.
    assert out["sft.info"]["sources"][0]["tokens_after"] == sum(_tokens(tokenizer, r) for r in out["sft"])
    # Mid-training conversations are rendered to text with midtrain.chat_template.
    assert out["midtrain"][0]["text"] == tokenizer.apply_chat_template(SFT[3]["messages"], tokenize=False, chat_template=load_template(tiny.midtrain.chat_template))


def _table(stats: str, title: str) -> list[list[str]]:
    section = stats.split(f"## {title}\n\n", 1)[1]
    lines = section.split("\n\n", 1)[0].strip().splitlines()
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines]


def test_stats_tables_describe_what_training_sees(run_stage, tiny, think_split, tokenizer):
    think, no_think = think_split
    recipe = with_data(tiny, sft=[{"name": "think", "path": think, "weight": 3}, {"name": "no-think", "path": no_think, "weight": 1}])
    out = run_stage(recipe)
    table = _table(out["stats"], "SFT data mixture")
    assert table[0] == [
        "dataset", "reasoning mode", "# examples", "% examples", "# tokens (M)", "% tokens",
        "mean tokens per example", "mean tokens in context", "mean tokens in response", "mean turns",
    ]
    body, total = table[2:-1], table[-1]
    assert [r[:2] for r in body] == [["think", "think"], ["no-think", "no_think"]]
    # After resampling: the rows and tokens written to the SFT dataset.
    for name, _, examples, _, tokens_m, share, mean, context, response, turns in body:
        rows = [r for r in out["sft"] if r["source"] == name]
        assert int(examples) == len(rows)
        tokens = sum(_tokens(tokenizer, r) for r in rows)
        assert float(tokens_m) == pytest.approx(tokens / 1e6, abs=5e-5)
        assert float(mean) == pytest.approx(tokens / len(rows), abs=0.05)
        assert float(context) + float(response) == pytest.approx(float(mean), abs=0.1)
        assert float(turns) == pytest.approx(sum(m["role"] == "assistant" for r in rows for m in r["messages"]) / len(rows), abs=0.005)
        assert float(share) == pytest.approx(75.0 if name == "think" else 25.0, abs=1.0)
    assert total[0] == "**Total**"
    assert int(total[2]) == sum(int(r[2]) for r in body) == len(out["sft"])
    assert float(total[4]) == pytest.approx(sum(float(r[4]) for r in body), abs=1e-4)
    assert float(total[3]) == float(total[5]) == 100.0
    all_tokens = sum(_tokens(tokenizer, r) for r in out["sft"])
    assert float(total[6]) == pytest.approx(all_tokens / len(out["sft"]), abs=0.05)
    # Mid-training has its own table; nothing was dropped.
    mid = _table(out["stats"], "Mid-training data mixture")
    assert mid[-1][0] == "**Total**" and int(mid[-1][2]) == len(out["midtrain"]) == 8
    assert "## Dropped rows\n\nNo rows dropped." in out["stats"]
    assert out["result"].metrics["data.sft.rows"] == len(out["sft"])


def test_no_midtrain_table_without_midtrain_data(run_stage, tiny):
    out = run_stage(with_data(tiny, midtrain=[]))
    assert "## SFT data mixture" in out["stats"] and "Mid-training" not in out["stats"]


@pytest.mark.parametrize("profile", ["local", "tiny"])
def test_recipe_profiles_prepare(run_stage, profile):
    """The profiles' data passes the checks with their own max_length and template."""
    out = run_stage(load_recipe(RECIPE, profile))
    (sft,) = out["sft.info"]["sources"]
    assert sft["target_tokens"] is None and sft["rows_after"] == sft["rows_before"] == len(out["sft"]) > 0
    if profile == "local":
        assert sft["rows_dropped"] == {} and len(out["sft"]) == len(SFT)


# -- resolved source revisions ------------------------------------------------------------


def test_local_file_revision_is_its_sha256(run_stage, tiny):
    out = run_stage(tiny)
    for group, name in (("sft", "sft.jsonl"), ("midtrain", "midtrain.jsonl"), ("prompts", "prefgen_prompts.jsonl")):
        (source,) = out[f"{group}.info"]["sources"]
        assert source["resolved_revision"] == "sha256:" + file_sha256(LOCAL / name)
        assert source["revision_resolved"] is True
    (sft,) = out["sft.info"]["sources"]
    assert sft["rows_loaded"] == 16 and sft["rows_before"] == sft["rows_after"] == len(out["sft"]) and sft["target_tokens"] is None
    assert sft["tokens_before"] == sft["tokens_after"] > 0
    assert out["result"].metadata["sft"]["sources"] == out["sft.info"]["sources"]


SHA = "0123456789abcdef0123456789abcdef01234567"


def _cache_hub_dataset(tmp_path, monkeypatch, sha: str):
    """A Hub dataset as `datasets` leaves it in its cache after a download
    (`<org>___<name>/<config>/<version>/<commit sha>/`), for offline loading."""
    import datasets
    from datasets.packaged_modules.json.json import Json

    src = _write(tmp_path / "rows.jsonl", SFT[:5])
    builder = Json(cache_dir=str(tmp_path / "build"), dataset_name="smoltalk2", config_name="SFT", hash=sha, data_files={"mysplit": src})
    builder.download_and_prepare()
    dest = tmp_path / "datasets" / "HuggingFaceTB___smoltalk2" / "SFT" / "0.0.0" / sha
    shutil.copytree(builder.cache_dir, dest)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")


def test_hub_revision_is_the_commit_datasets_loaded(tmp_path, monkeypatch):
    _cache_hub_dataset(tmp_path, monkeypatch, SHA)
    source = {"name": "hub", "hub": "HuggingFaceTB/smoltalk2", "subset": "SFT", "split": "mysplit", "revision": "main"}
    opened = open_source(source, "sft")
    assert opened.dataset["id"] == [r["id"] for r in SFT[:5]]
    assert opened.revision == {"resolved_revision": SHA, "revision_resolved": True, "revision_from": "datasets cache folder of the loaded rows"}
    assert [r["id"] for r in read_rows(source)] == [r["id"] for r in SFT[:5]]
    # Offline, datasets reads the newest cached copy whatever was asked: that is what is recorded, with a note.
    revision = open_source({**source, "revision": "f" * 40}, "sft").revision
    assert revision["resolved_revision"] == SHA and "datasets loaded " + SHA in revision["revision_note"]


def test_hub_revision_fallbacks(tmp_path):
    in_memory = type("DS", (), {"cache_files": []})()
    refs = tmp_path / "datasets--org--name" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text(SHA)
    assert hub_revision(in_memory, "org/name", "main", tmp_path)["resolved_revision"] == SHA
    assert hub_revision(in_memory, "org/name", "b" * 40, tmp_path / "none")["resolved_revision"] == "b" * 40
    unresolved = hub_revision(in_memory, "org/name", "v1.0", tmp_path / "none")
    assert unresolved["resolved_revision"] == "v1.0" and unresolved["revision_resolved"] is False and "v1.0" in unresolved["revision_note"]


def test_budget_for_a_source_without_rows_fails(run_stage, tiny, tmp_path):
    empty = _write(tmp_path / "empty.jsonl", [])
    recipe = with_data(tiny, sft=[{"name": "local-sft", "path": str(LOCAL / "sft.jsonl")}, {"name": "empty", "path": empty, "weight": 1}])
    with pytest.raises(DataError, match="data.sft source 'empty': has a token weight or budget but no usable rows"):
        run_stage(recipe)
