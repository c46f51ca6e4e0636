"""The Arrow data path gives what the code before it gave, on data/local/.

The golden files in tests/golden/ were written by the code at commit 13a3da0
(the last one that held datasets as Python lists and JSONL, and let TRL
tokenise in the training stage), on the same inputs as below:
- prepare_data_13a3da0.json.gz: prepare_data's rows, dataset.json, stats
  Markdown and metrics for the local and tiny profiles, a weighted mixture
  (up- and down-sampling), and sources with broken rows, blank lines and
  rows over max_length;
- packed_13a3da0.json: digests of the dataset SFTTrainer prepared (tokens,
  assistant-only labels, BFD packs; and mid-training's wrapped packs) from the
  local profile's prepare_data output.
The last test compares tokenize with TRL's own preparation live, batch by
batch through the trainer's dataloader, so a TRL upgrade that changes its
preparation is caught too."""

import gzip
import hashlib
import json

import pytest
from conftest import RECIPE, ROOT

from posttrain.dag import stage_configs
from posttrain.data.artifacts import read_dataset
from posttrain.data.rows import prompt_row, stored_conversation
from posttrain.datasets_io import read_jsonl
from posttrain.models import ModelRef, write_model_ref
from posttrain.recipe import Recipe, apply_overrides, load_recipe
from posttrain.stages import prepare_data, tokenize
from posttrain.stages.context import STORE_ENV, StageContext

GOLDEN = ROOT / "tests" / "golden"
LOCAL = ROOT / "data" / "local"
SFT = read_jsonl(LOCAL / "sft.jsonl")
GROUPS = ("sft", "midtrain", "prompts")


def _with_data(recipe: Recipe, **changes) -> Recipe:
    raw = recipe.model_dump()
    raw["data"].update(changes)
    return Recipe.model_validate(raw)


def _inputs(tmp) -> dict:
    """The files the golden run read, written again byte for byte."""
    (tmp / "think.jsonl").write_text("".join(json.dumps(r) + "\n" for r in SFT if r["reasoning"]))
    (tmp / "no_think.jsonl").write_text("".join(json.dumps(r) + "\n" for r in SFT if not r["reasoning"]))
    good = SFT[:6]
    broken = [good[0], {"id": "b1"}, {"id": "b2", "messages": [{"role": "user", "content": 3}]}, good[1],
              {"id": "b3", "messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]},
              {"messages": [{"role": "user", "content": "x"}]},
              {"key": 17, "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": " "}]},
              {**good[2], "chat_template_kwargs": "[1]"}, {**good[3], "chat_template_kwargs": json.dumps({"enable_thinking": True})},
              {**good[4], "chat_template_kwargs": {"enable_thinking": False, "xml_tools": None}}, good[5]]
    (tmp / "broken.jsonl").write_text("\n".join(json.dumps(r) for r in broken[:4]) + "\n\n  \n" + "\n".join(json.dumps(r) for r in broken[4:]) + "\n")
    prompts = read_jsonl(LOCAL / "prefgen_prompts.jsonl")[:10]
    bad = [{"key": 99}, {"prompt": "x", "instruction_id_list": ["a"], "kwargs": []}, {"prompt": "no key"},
           {"messages": [{"role": "user", "content": "m"}], "answer": 4}]
    (tmp / "pbroken.jsonl").write_text("".join(json.dumps(r) + "\n" for r in prompts[:3] + bad + prompts[3:]))
    return {"THINK": tmp / "think.jsonl", "NOTHINK": tmp / "no_think.jsonl", "BROKEN": tmp / "broken.jsonl", "PBROKEN": tmp / "pbroken.jsonl"}


def _recipes():
    tiny = apply_overrides(load_recipe(RECIPE, "tiny"), ["sft.max_length=4096", "midtrain.max_length=4096"])
    return {
        "local": load_recipe(RECIPE, "local"),
        "tiny": load_recipe(RECIPE, "tiny"),
        "mixture": _with_data(apply_overrides(tiny, ["seed=7"]),
                              sft=[{"name": "think", "path": "THINK", "weight": 3}, {"name": "no-think", "path": "NOTHINK", "tokens": 3000}],
                              midtrain=[{"name": "mid", "path": str(LOCAL / "midtrain.jsonl"), "weight": 2}], midtrain_tokens=30000),
        "dropped": apply_overrides(_with_data(tiny, sft=[{"name": "local-sft", "path": str(LOCAL / "sft.jsonl")}, {"name": "broken", "path": "BROKEN"}],
                                              prompts=[{"name": "p", "path": "PBROKEN"}]),
                                   ["sft.max_length=250", "data.max_invalid_fraction=0.6"]),
    }


def _prepare(tmp, name, recipe, files, num_proc=None):
    cfg = stage_configs(recipe)["prepare_data"]
    cfg["data"]["num_proc"] = num_proc
    for group in GROUPS:
        for s in cfg["data"][group]:
            s["path"] = str(files.get(s["path"], s["path"]))
    write_model_ref(tmp / f"base-{name}", ModelRef(uri=recipe.base_model.uri))
    out = tmp / f"out-{name}"
    outputs = {g: out / g for g in GROUPS} | {"stats": out / "stats.md"}
    out.mkdir()
    ctx = StageContext.create(cfg, {"base_model": tmp / f"base-{name}"}, outputs)
    try:
        return prepare_data.run(ctx), outputs
    finally:
        ctx.cleanup()


def _readable(group: str, row: dict) -> dict:
    if group == "sft":
        return stored_conversation(row)
    if group == "prompts":
        return prompt_row(row)
    return {k: v for k, v in row.items() if k != "input_ids"}  # the ids are compared, packed, by the next tests


def _old_form(group: str, row: dict) -> dict:
    """A golden row as the comparison reads it: prompt keys and answers are strings now."""
    if group == "prompts":
        row = {**row, "key": str(row["key"]), **({"answer": str(row["answer"])} if "answer" in row else {})}
    return row


@pytest.mark.parametrize("name", ["local", "tiny", "mixture", "dropped"])
@pytest.mark.parametrize("num_proc", [1, 2])
def test_prepare_data_gives_the_rows_counts_and_tables_of_the_list_code(tmp_path, monkeypatch, name, num_proc):
    monkeypatch.setenv(STORE_ENV, f"file://{tmp_path / 'store'}")
    monkeypatch.setattr("posttrain.data.scan.BATCH_ROWS", 16)  # several batches and both workers even on the small files
    golden = json.loads(gzip.decompress((GOLDEN / "prepare_data_13a3da0.json.gz").read_bytes()))[name]
    result, outputs = _prepare(tmp_path, name, _recipes()[name], _inputs(tmp_path), num_proc)
    assert outputs["stats"].read_text() == golden["stats"]
    assert result.metrics == golden["metrics"]
    for group in GROUPS:
        rows = [_readable(group, r) for r in read_dataset(outputs[group])]
        assert rows == [_old_form(group, r) for r in golden[group]["rows"]], group
        info = json.loads((outputs[group] / "dataset.json").read_text())
        for source in info["sources"]:
            source.pop("path")
        assert {k: info[k] for k in golden[group]["info"]} == golden[group]["info"]


def _digest(ds) -> dict:
    cols = {c: [list(x) for x in ds[c]] for c in ds.column_names}
    return {"rows": len(ds), "columns": sorted(cols), **{c: hashlib.sha256(json.dumps(v).encode()).hexdigest() for c, v in cols.items()},
            "tokens": sum(len(x) for x in cols["input_ids"]), "loss_tokens": sum(sum(t != -100 for t in x) for x in cols["labels"])}


def _tokenize(tmp, recipe, group: str, data_dir, base="local:tiny"):
    from datasets import load_from_disk

    from posttrain.store import fetch

    write_model_ref(tmp / "tok-base", ModelRef(uri=base))
    out = tmp / f"tokenized-{group}"
    ctx = StageContext.create(stage_configs(recipe)[f"tokenize_{group}"], {"data": data_dir, "base_model": tmp / "tok-base"}, {"tokenized": out})
    try:
        result = tokenize.run(ctx)
    finally:
        ctx.cleanup()
    ref = json.loads((out / "tokenized.json").read_text())
    return load_from_disk(str(fetch(ref["uri"], tmp / "fetched"))), result


def test_tokenize_gives_the_packed_rows_trl_gave(tmp_path, monkeypatch):
    """Token for token, mask for mask, pack for pack: the local profile's SFT
    (BFD, assistant-only loss) and mid-training (wrapped) data."""
    monkeypatch.setenv(STORE_ENV, f"file://{tmp_path / 'store'}")
    golden = json.loads((GOLDEN / "packed_13a3da0.json").read_text())
    recipe = load_recipe(RECIPE, "local")
    _, outputs = _prepare(tmp_path, "local", recipe, {})
    for group in ("sft", "midtrain"):
        packed, result = _tokenize(tmp_path, recipe, group, outputs[group])
        assert _digest(packed) == golden[group], group
        assert result.metrics["tokenize.reused"] == 0.0 and result.metrics["tokenize.tokens"] == golden[group]["tokens"]
    # The same key again: nothing is tokenised, the stored rows are used.
    again, result = _tokenize(tmp_path, recipe, "sft", outputs["sft"])
    assert result.metrics["tokenize.reused"] == 1.0 and _digest(again) == golden["sft"]


def test_trainer_batches_equal_trls_own_preparation(tmp_path, monkeypatch):
    """SFTTrainer on the raw conversations (TRL tokenises and packs) and on the
    tokenize stage's rows (preparation skipped): the same batches."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from posttrain.local_models import prepare
    from posttrain.stages.training import load_tokenizer
    from posttrain.templates import row_template_kwargs

    monkeypatch.setenv(STORE_ENV, f"file://{tmp_path / 'store'}")
    recipe = load_recipe(RECIPE, "tiny")
    rows = SFT[:48]
    from conftest import write_prepared

    write_prepared(tmp_path / "prepared", rows)
    packed, _ = _tokenize(tmp_path, recipe, "sft", tmp_path / "prepared")
    model_dir = prepare("tiny")
    tok = load_tokenizer(model_dir, recipe.chat_template)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    common = dict(max_length=recipe.sft.max_length, packing=True, packing_strategy="bfd", per_device_train_batch_size=2, report_to="none",
                  bf16=False, seed=3, data_seed=3)
    raw = Dataset.from_list([{"messages": r["messages"], "chat_template_kwargs": row_template_kwargs(r)} for r in rows])
    theirs = SFTTrainer(model=model, args=SFTConfig(output_dir=str(tmp_path / "a"), assistant_only_loss=True, **common),
                        train_dataset=raw, processing_class=tok)
    ours = SFTTrainer(model=model, args=SFTConfig(output_dir=str(tmp_path / "b"), dataset_kwargs={"skip_prepare_dataset": True}, **common),
                      train_dataset=packed, processing_class=tok)
    assert _digest(theirs.train_dataset) == _digest(ours.train_dataset)
    batches = zip(theirs.get_train_dataloader(), ours.get_train_dataloader(), strict=True)
    for n, (a, b) in enumerate(batches):
        assert a.keys() == b.keys()
        for key in a:
            same = torch.equal(a[key], b[key]) if isinstance(a[key], torch.Tensor) else a[key] == b[key]
            assert same, (n, key)
    assert n >= 3


def test_labels_are_the_masked_ids_and_a_row_without_assistant_tokens_is_named():
    import pyarrow as pa

    from posttrain.data.tokenize import TokenizeError, _labels

    batch = pa.table({"id": ["a", "b", "c"], "input_ids": pa.array([[5, 6, 7], [], [8, 9]], pa.list_(pa.int32())),
                      "assistant_masks": pa.array([[0, 1, 1], [], [1, 0]], pa.list_(pa.int8()))})
    assert _labels(batch.slice(2), assistant_only_loss=True)["labels"].to_pylist() == [[8, -100]]
    assert _labels(batch, assistant_only_loss=False)["labels"].to_pylist() == [[5, 6, 7], [], [8, 9]]
    with pytest.raises(TokenizeError, match=r"row b: assistant_only_loss is set but the chat template marks no assistant token"):
        _labels(batch, assistant_only_loss=True)
    unmasked = batch.set_column(2, "assistant_masks", pa.array([None, None, None], pa.list_(pa.int8())))
    with pytest.raises(TokenizeError, match="row a: .*no \\{% generation %\\} block"):
        _labels(unmasked, assistant_only_loss=True)


def test_tokenize_refuses_ids_encoded_with_another_template(tmp_path, monkeypatch):
    from conftest import write_prepared

    from posttrain.data.tokenize import TokenizeError

    monkeypatch.setenv(STORE_ENV, f"file://{tmp_path / 'store'}")
    write_prepared(tmp_path / "prepared", SFT[:4], chat_template="chatml")
    with pytest.raises(TokenizeError, match="encoded with another tokenizer or chat template .* chat_template='smollm3'"):
        _tokenize(tmp_path, load_recipe(RECIPE, "tiny"), "sft", tmp_path / "prepared")
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").rglob("*.arrow"))
