"""SFT packing is correct: TRL's BFD packing with padding-free batches (the sft
stage's settings) gives every conversation the same per-token loss as training
on it alone, and keeps the assistant-only loss mask.

What keeps packed conversations apart on a CPU (transformers 5.23, sdpa and
eager): TRL's padding-free collator sends `position_ids` that restart at 0 for
every packed conversation and no `attention_mask`; `masking_utils.
_preprocess_mask_arguments` then calls `find_packed_sequence_indices` (a new
sequence wherever position_ids do not step by +1) and `create_causal_mask`
builds a block-diagonal causal mask (`packed_sequence_compatibility_function`).
That happens only when attention_mask is None AND there is no KV cache: the
negative controls below show that an all-ones attention_mask, position_ids that
do not restart, or `use_cache=True` (the model config's default, which the
Trainer and TRL's forward turn off) let attention cross conversations.

Real TRL components throughout: SFTTrainer's own dataset preparation
(tokenize, assistant masks, labels, BFD packing), its data loader and collator,
and the forward it trains with (`model(**inputs, fused_lm_head=True)`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from posttrain.local_models import prepare
from posttrain.recipe import SFTConfig as SFTRecipe
from posttrain.stages.training import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-4
# What the negative controls must exceed: a difference the test above would catch many times over.
CROSSED = 100 * TOL


def sft_rows(per_pattern: int) -> list[list[dict]]:
    """Conversations from data/local/sft.jsonl, up to `per_pattern` of each role
    sequence (user/assistant, system/user/assistant, multi-turn with and without system)."""
    out, seen = [], {}
    for line in (ROOT / "data/local/sft.jsonl").read_text().splitlines():
        messages = json.loads(line)["messages"]
        pattern = tuple(m["role"] for m in messages)
        if seen.get(pattern, 0) < per_pattern:
            seen[pattern] = seen.get(pattern, 0) + 1
            out.append(messages)
    assert len(seen) >= 4 and any(p[0] == "system" and p.count("assistant") > 1 for p in seen), seen
    return out


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny model's ops are small: one thread is as fast, and does not stall when other work shares the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny() -> Path:
    return prepare("tiny")


@pytest.fixture(scope="module")
def tokenizer(tiny):
    return load_tokenizer(tiny, "chatml")


def sft_trainer(tiny, tokenizer, tmp_path: Path, conversations, attn: str, max_length: int, batch_size: int):
    """An SFTTrainer set up like the sft stage (packing settings from the recipe's SFT defaults), fp32, CPU."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    recipe = SFTRecipe(max_length=max_length, per_device_batch_size=batch_size)
    assert recipe.packing and recipe.packing_strategy == "bfd" and recipe.assistant_only_loss
    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32, attn_implementation=attn)
    args = SFTConfig(
        output_dir=str(tmp_path / "trainer"),
        max_length=recipe.max_length,
        packing=recipe.packing,
        packing_strategy=recipe.packing_strategy,
        assistant_only_loss=recipe.assistant_only_loss,
        per_device_train_batch_size=recipe.per_device_batch_size,
        dataset_text_field="text",
        report_to="none",
        bf16=False,
        seed=0,
        data_seed=0,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
    )
    dataset = Dataset.from_list([{"messages": m} for m in conversations])
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    assert trainer.padding_free and model.config._attn_implementation == attn
    return trainer


@pytest.fixture(scope="module")
def trainer_for(tiny, tokenizer, tmp_path_factory):
    """SFTTrainers shared by the tests of this file (nothing here trains, so the weights stay as loaded)."""
    made = {}

    def get(attn: str, per_pattern: int, max_length: int, batch_size: int = 2):
        key = (attn, per_pattern, max_length, batch_size)
        if key not in made:
            made[key] = sft_trainer(tiny, tokenizer, tmp_path_factory.mktemp("sft"), sft_rows(per_pattern), attn, max_length, batch_size)
        return made[key]

    return get


def segments(batch) -> list[tuple[int, int]]:
    """[start, end) of each packed conversation in a padding-free batch (one row)."""
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist() + [batch["position_ids"].shape[1]]
    return list(zip(starts[:-1], starts[1:]))


def nll_from_logits(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood of each next token (row 0): position t scores token t+1."""
    return -torch.log_softmax(logits[0, :-1].float(), -1).gather(-1, input_ids[0, 1:, None])[:, 0]


def all_token_labels(batch) -> torch.Tensor:
    """Labels on every token except the first of each packed conversation (which has no prediction of its own)."""
    labels = batch["input_ids"].clone()
    labels[batch["position_ids"] == 0] = -100
    return labels


def alone(trainer, input_ids: torch.Tensor, labels: torch.Tensor) -> dict:
    """One conversation as the unpacked path collates it: TRL's collator without padding-free (attention_mask, no position_ids)."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    collate = DataCollatorForLanguageModeling(pad_token_id=trainer.processing_class.pad_token_id)
    return collate([{"input_ids": input_ids.tolist(), "labels": labels.tolist()}])


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_per_token_loss_equals_each_conversation_alone(trainer_for, attn):
    trainer = trainer_for(attn, per_pattern=3, max_length=256)
    model = trainer.model.eval()
    batches = list(trainer.get_train_dataloader())
    assert all("attention_mask" not in b for b in batches), "padding-free batches carry no attention mask"
    assert max(len(segments(b)) for b in batches) >= 4, "rows should hold several packed conversations"
    worst, checked = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            # The loss SFTTrainer trains on (assistant tokens only), computed as it computes it.
            trained_loss = trainer.compute_loss(model, dict(batch)).item()
            # The forward SFTTrainer.compute_loss runs, scored on the training labels and on every token.
            packed = model(**{**batch, "use_cache": False}, fused_lm_head=True).log_probs[0]
            packed_all = model(**{**batch, "labels": all_token_labels(batch), "use_cache": False}, fused_lm_head=True).log_probs[0]
            sum_alone, n_alone = 0.0, 0
            for a, b in segments(batch):
                ids, labels = batch["input_ids"][:, a:b], batch["labels"][:, a:b]
                single = alone(trainer, ids[0], labels[0])
                own = model(**single, use_cache=False, fused_lm_head=True).log_probs[0]
                own_all = model(**alone(trainer, ids[0], ids[0]), use_cache=False, fused_lm_head=True).log_probs[0]
                assert own.shape[0] == b - a - 1
                worst = max(worst, (packed[a : b - 1] - own).abs().max().item(), (packed_all[a : b - 1] - own_all).abs().max().item())
                sum_alone += -own.sum().item()
                n_alone += int((labels[0, 1:] != -100).sum())
                checked += b - a - 1
            assert trained_loss == pytest.approx(sum_alone / n_alone, abs=TOL)
    assert checked > 500
    assert worst < TOL, f"packed conversations see each other with {attn}: per-token loss differs by {worst:.2e}"


@pytest.mark.parametrize(
    "control",
    [
        # position_ids running on across the pack: no boundary to detect, one long causal sequence.
        "positions_do_not_restart",
        # An all-ones 2D attention_mask (what the padded collator sends): packed-sequence detection is skipped.
        "attention_mask_given",
        # A KV cache (use_cache=True, the model config's default outside the Trainer): detection is skipped too.
        "use_cache",
    ],
)
def test_negative_controls_show_cross_attention(trainer_for, control):
    """The comparison above can fail: packed inputs that let attention cross conversations differ by far more than TOL."""
    trainer = trainer_for("sdpa", per_pattern=3, max_length=256)
    model = trainer.model.eval()
    batch = max(trainer.get_train_dataloader(), key=lambda b: len(segments(b)))
    ids, pos = batch["input_ids"], batch["position_ids"]
    inputs = {"input_ids": ids, "position_ids": pos, "use_cache": False}
    if control == "positions_do_not_restart":
        inputs["position_ids"] = torch.arange(ids.shape[1])[None]
    elif control == "attention_mask_given":
        inputs["attention_mask"] = torch.ones_like(ids)
    else:
        inputs["use_cache"] = True
    with torch.no_grad():
        right = nll_from_logits(model(input_ids=ids, position_ids=pos, use_cache=False).logits, ids)
        wrong = nll_from_logits(model(**inputs).logits, ids)
        diffs = []
        for a, b in segments(batch):
            own = nll_from_logits(model(input_ids=ids[:, a:b], use_cache=False).logits, ids[:, a:b])
            assert (right[a : b - 1] - own).abs().max().item() < TOL
            diffs.append((wrong[a : b - 1] - own).abs().max().item())
    assert diffs[0] < TOL, "the first conversation has nothing before it to attend to"
    assert min(diffs[1:]) > CROSSED, f"{control}: every later conversation should be hit, got {diffs}"


def test_assistant_only_mask_survives_bfd_packing(trainer_for, tokenizer):
    conversations = sft_rows(6)
    trainer = trainer_for("sdpa", per_pattern=6, max_length=512)
    # The unpacked reference: each conversation's assistant mask from the chat template's generation tags.
    reference = {}
    for messages in conversations:
        out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        reference[tuple(out["input_ids"])] = (messages, out["assistant_masks"])
    rows = trainer.train_dataset
    assert sum(len(r) for r in rows["seq_lengths"]) == len(conversations), "BFD kept every conversation, none cut"
    assert max(len(r) for r in rows["seq_lengths"]) >= 3, "rows should hold several packed conversations"

    found = []
    for batch in trainer.get_train_dataloader():
        for a, b in segments(batch):
            ids = tuple(batch["input_ids"][0, a:b].tolist())
            labels = batch["labels"][0, a:b].tolist()
            assert ids in reference, "a packed segment is not one whole conversation"
            messages, mask = reference[ids]
            found.append(ids)
            # Labels are the token exactly where the template marks an assistant token, -100 everywhere else.
            assert labels == [t if m else -100 for t, m in zip(ids, mask)], tokenizer.decode(list(ids))
            # Independently of the mask: the labelled runs decode to exactly the assistant turns, in order,
            # so no system or user token (nor the role headers) is trained on.
            runs, run = [], []
            for token, label in zip(ids, labels):
                if label != -100:
                    run.append(token)
                elif run:
                    runs.append(run)
                    run = []
            runs += [run] if run else []
            assert [tokenizer.decode(r) for r in runs] == [m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant"]
    assert sorted(found) == sorted(reference), "every conversation appears exactly once across the packed batches"
