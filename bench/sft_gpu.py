"""SFT throughput on one GPU: TRL defaults vs packing vs Liger vs FlashAttention-2 varlen, side by side in one run.

    python bench/sft_gpu.py [--steps 30] [--warmup 5] [--json out.json] [--smoke]

Needs a CUDA GPU; without one it prints a line and exits 0 (so `make bench` on CPU skips it).
Imports only torch, transformers, trl and datasets (liger-kernel for the Liger rows), not posttrain.

Model: a randomly initialised LlamaForCausalLM with SmolLM2-360M's shape (hidden 960, intermediate 2560,
32 layers, 15 heads, 5 KV heads, vocab 49152, tied embeddings, rope theta 100000, 8192 positions), bf16
weights and bf16 autocast, AdamW, constant LR, gradient checkpointing off. The same seed gives every
configuration the same initial weights.

Tokenizer: SmolLM2's tokenizer files (`--tokenizer`, default `.gpu/tok` if present, else `.cache/models/tiny`),
with the repo's chat template src/posttrain/templates/chatml.jinja (generation tags, so TRL's
assistant-only loss works).

Data: the conversations of data/local/sft.jsonl are short (~100 tokens). To get GPU-sized sequences with
a realistic spread of lengths, each benchmark conversation concatenates the turns (system turns dropped;
the template adds its default system prompt) of k rows drawn at random, k uniform in 1..40 (seed 0), and
rows are dropped from its end until it fits in 4096 tokens: ~100 to ~4000 tokens, mean ~2000.
Nothing is truncated in any configuration, so every configuration trains the same kind of conversations.

Configurations (same data, same initial weights, about the same real tokens per optimizer step):
  A  TRL defaults: packing=False (each batch padded to its longest conversation), sdpa, no Liger;
     batch size = round(packed tokens per step / mean conversation length).
  B  packed: packing=True, packing_strategy="bfd" (padding-free), max_length 4096, 4 rows a step, sdpa.
     With sdpa transformers builds a block-diagonal mask over the whole flattened step (4 x 4096 tokens),
     so attention is computed densely over 16k x 16k and masked: correct, but most of it is wasted.
  C  B + use_liger_kernel=True (fused RMSNorm, RoPE, SwiGLU and linear + cross-entropy).
  D  C with FlashAttention-2 varlen attention. The flash-attn package is not available on the GPU machine
     (no wheel, no network for the `kernels` hub path), so D uses PyTorch's own FA2 varlen kernel,
     torch.nn.attention.varlen.varlen_attn, registered as a transformers attention function that reads
     TRL's cu_seq_lens / max_length from the padding-free batch. It is checked against sdpa first.

Measured per configuration: real (non-pad) tokens/s over the timed steps (a callback with
torch.cuda.synchronize at each step end; the first `--warmup` steps are not timed), padding fraction of
the processed tokens, torch.cuda.max_memory_allocated (reset before each configuration; model and
trainer freed between), and MFU = 6 * N * tokens/s / peak, with N the non-embedding parameters
(6 * (N + vocab x hidden) also shown, the LM head counted) and peak the bf16 FLOP/s of an 8192^3 matmul
measured in the same process. 6N leaves out attention FLOPs (and the padded tokens of A).

Measured on one H100 80GB HBM3 (torch 2.11.0+cu130, transformers 5.17.0, trl 1.16.0, liger-kernel 0.8.5),
5 + 30 steps, ~16k real tokens a step: A 21.4k tok/s (45% padding, 56.5 GiB, MFU 5.2%); B 16.7k (0.78x A,
40.1 GiB); C 20.5k (0.96x, 33.8 GiB); D 85.7k (4.01x, 17.8 GiB, MFU 20.9%). Packing only pays with varlen attention.
"""

from __future__ import annotations

import argparse
import gc
import inspect
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

import torch
from _collate import CountingCollator
from _report import report

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHAPE = dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15, num_key_value_heads=5,
             vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0, max_position_embeddings=8192, rms_norm_eps=1e-5)
MAX_LENGTH = 4096
VARLEN = "torch_varlen_fa2"


def peak_bf16_flops(n: int = 8192, warmup: int = 3, reps: int = 10) -> float:
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(warmup):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / reps
    del a, b
    torch.cuda.empty_cache()
    return 2 * n**3 / seconds


def varlen_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention function over PyTorch's FA2 varlen kernel (padding-free batches only).

    query/key/value: (1, heads, tokens, head_dim). Sequence boundaries come from TRL's collator
    (cu_seq_lens_q, max_length_q) or, failing that, from position_ids (a new sequence where it is 0).
    """
    from torch.nn.attention.varlen import varlen_attn

    batch, heads, tokens, dim = query.shape
    assert batch == 1, "varlen attention expects a padding-free (flattened) batch"
    cu, max_len = kwargs.get("cu_seq_lens_q"), kwargs.get("max_length_q")
    if cu is None:
        pos = kwargs["position_ids"][0]
        starts = (pos == 0).nonzero().flatten()
        cu = torch.cat([starts, torch.tensor([tokens], device=pos.device)])
        max_len = int(cu.diff().max())
    cu = cu.to(device=query.device, dtype=torch.int32)
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (tokens, heads, dim)
    params = inspect.signature(varlen_attn).parameters
    extra = {}
    if "window_size" in params:
        extra["window_size"] = (-1, 0)
    else:
        extra["is_causal"] = True
    if k.shape[1] != heads:
        if "enable_gqa" in params:
            extra["enable_gqa"] = True
        else:
            k, v = (t.repeat_interleave(heads // t.shape[1], dim=1) for t in (k, v))
    out = varlen_attn(q.contiguous(), k.contiguous(), v.contiguous(), cu, cu, int(max_len), int(max_len), scale=scaling, **extra)
    return out.unsqueeze(0), None  # (1, tokens, heads, dim)


def check_varlen() -> float:
    """Max abs difference (forward and q-gradient) between the varlen function and per-segment causal sdpa."""
    torch.manual_seed(0)
    lens = [700, 1300, 96]
    q = torch.randn(1, 15, sum(lens), 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(1, 5, sum(lens), 64, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(1, 5, sum(lens), 64, device="cuda", dtype=torch.bfloat16)
    pos = torch.cat([torch.arange(n) for n in lens]).cuda()[None]
    out, _ = varlen_attention_forward(None, q, k, v, None, scaling=0.125, position_ids=pos)
    out.float().square().sum().backward()
    g1, q.grad = q.grad.clone(), None
    refs, start = [], 0
    for n in lens:
        sl = slice(start, start + n)
        refs.append(torch.nn.functional.scaled_dot_product_attention(q[:, :, sl], k[:, :, sl], v[:, :, sl], is_causal=True, scale=0.125,
                                                                     enable_gqa=True))
        start += n
    ref = torch.cat(refs, dim=2).transpose(1, 2)
    ref.float().square().sum().backward()
    return max(float((out - ref).detach().abs().max()), float((g1 - q.grad).abs().max() / q.grad.abs().max()))


def build_conversations(tokenizer, n: int, seed: int = 0) -> tuple[list[list[dict]], list[int]]:
    rows = [json.loads(line) for line in (ROOT / "data/local/sft.jsonl").read_text().splitlines() if line.strip()]
    rng = random.Random(seed)
    convs, lengths = [], []
    for _ in range(n):
        picked = [rng.choice(rows) for _ in range(rng.randint(1, 40))]
        while True:
            messages = [{"role": m["role"], "content": m["content"]} for r in picked for m in r["messages"] if m["role"] != "system"]
            length = len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])
            if length <= MAX_LENGTH or len(picked) == 1:
                break
            picked.pop()
        convs.append(messages)
        lengths.append(length)
    return convs, lengths


class StepClock:
    def __init__(self):
        self.ends: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        torch.cuda.synchronize()
        self.ends.append(time.perf_counter())


def run_config(name: str, tokenizer, dataset, packed: bool, liger: bool, attn: str, batch_size: int, args, tmp: Path) -> dict:
    from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    class Clock(StepClock, TrainerCallback):
        pass

    config = LlamaConfig(**SHAPE, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM._from_config(config, attn_implementation=attn, dtype=torch.bfloat16).cuda()
    total = sum(p.numel() for p in model.parameters())
    head = model.get_input_embeddings().weight.numel()
    cfg = SFTConfig(
        output_dir=str(tmp / name), max_steps=args.warmup + args.steps, learning_rate=1e-4, lr_scheduler_type="constant",
        per_device_train_batch_size=batch_size, gradient_accumulation_steps=1, bf16=torch.cuda.is_available(), gradient_checkpointing=False,
        assistant_only_loss=True, packing=packed, packing_strategy="bfd", max_length=MAX_LENGTH, use_liger_kernel=liger,
        report_to="none", save_strategy="no", logging_steps=10_000, disable_tqdm=True, seed=0, data_seed=0,
        dataloader_num_workers=0,
    )
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=dataset, processing_class=tokenizer)
    counter = CountingCollator(trainer.data_collator)
    trainer.data_collator = counter
    clock = Clock()
    trainer.add_callback(clock)
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    trainer.train()
    torch.cuda.synchronize()
    peak_mem = torch.cuda.max_memory_allocated()
    steps = len(clock.ends)
    assert steps == args.warmup + args.steps and len(counter.batches) >= steps, (steps, len(counter.batches))
    timed = counter.batches[args.warmup:steps]
    real, processed = sum(r for r, _ in timed), sum(t for _, t in timed)
    seconds = clock.ends[steps - 1] - clock.ends[args.warmup - 1]
    result = {"config": name, "packed": packed, "liger": liger, "attn": attn, "batch_size": batch_size, "steps_timed": len(timed),
              "real_tokens_per_step": real / len(timed), "padding": 1 - real / processed, "tokens_per_s": real / seconds,
              "seconds": seconds, "peak_mem_gib": peak_mem / 2**30, "params_total": total, "params_non_embedding": total - head,
              "lm_head": head, "train_loss": next((h["train_loss"] for h in reversed(trainer.state.log_history) if "train_loss" in h), None)}
    del trainer, model, counter
    gc.collect()
    torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed optimizer steps per configuration")
    parser.add_argument("--warmup", type=int, default=5, help="untimed optimizer steps first")
    parser.add_argument("--rows-per-step", type=int, default=4, help="packed rows of 4096 tokens per step")
    parser.add_argument("--conversations", type=int, default=0, help="benchmark conversations (0: enough for the steps)")
    parser.add_argument("--tokenizer", type=Path, default=None)
    parser.add_argument("--configs", default="A,B,C,D")
    parser.add_argument("--json", type=Path, default=None, help="write the results here (default $OUT/sft_gpu.json when OUT is set)")
    parser.add_argument("--smoke", action="store_true", help="1 warm-up + 1 timed step each, few conversations")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench/sft_gpu.py: needs a CUDA GPU, none found; skipped.")
        return
    if args.smoke:
        args.steps, args.warmup = 1, 1

    import tempfile

    import datasets
    import transformers
    import trl
    from datasets import Dataset
    from transformers import AttentionInterface, AutoTokenizer

    AttentionInterface.register(VARLEN, varlen_attention_forward)
    tok_dir = args.tokenizer or next(p for p in (ROOT / ".gpu/tok", ROOT / ".cache/models/tiny") if (p / "tokenizer.json").exists())
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    tokenizer.chat_template = (ROOT / "src/posttrain/templates/chatml.jinja").read_text()

    n_conv = args.conversations or int((args.warmup + args.steps + 4) * args.rows_per_step * MAX_LENGTH / 2000 * 1.15)
    convs, lengths = build_conversations(tokenizer, n_conv)
    mean_len = sum(lengths) / len(lengths)
    padded_bs = max(1, round(args.rows_per_step * MAX_LENGTH * 0.97 / mean_len))
    dataset = Dataset.from_list([{"messages": m} for m in convs])
    print(f"{len(convs)} conversations, {min(lengths)}-{max(lengths)} tokens (mean {mean_len:.0f}); A batch {padded_bs}", flush=True)

    peak = peak_bf16_flops()
    print(f"peak bf16 matmul 8192^3: {peak / 1e12:.0f} TFLOP/s", flush=True)
    varlen_err, varlen_note = None, ""
    try:
        varlen_err = check_varlen()
        print(f"varlen FA2 vs sdpa: max abs/rel diff {varlen_err:.4f}", flush=True)
    except Exception as exc:  # noqa: BLE001 - reported, D is skipped
        varlen_note = f"{type(exc).__name__}: {exc}"
        print(f"varlen FA2 unavailable: {varlen_note}", flush=True)
    liger_ok = True
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        liger_ok = False

    specs = {"A": ("TRL defaults (padded, sdpa)", False, False, "sdpa", padded_bs),
             "B": ("packed BFD (sdpa)", True, False, "sdpa", args.rows_per_step),
             "C": ("packed + Liger (sdpa)", True, True, "sdpa", args.rows_per_step),
             "D": ("packed + Liger + FA2 varlen", True, True, VARLEN, args.rows_per_step)}
    results, skipped = [], {}
    with tempfile.TemporaryDirectory(prefix="bench-sft-gpu-") as tmp:
        for key in args.configs.split(","):
            label, packed, liger, attn, bs = specs[key]
            if liger and not liger_ok:
                skipped[key] = "liger-kernel not installed"
            elif attn == VARLEN and (varlen_err is None or varlen_err > 0.05):
                skipped[key] = f"varlen FA2 check failed: {varlen_note or varlen_err}"
            if key in skipped:
                print(f"{key} skipped: {skipped[key]}", flush=True)
                continue
            try:
                res = run_config(key, tokenizer, dataset, packed, liger, attn, bs, args, Path(tmp))
            except Exception as exc:  # noqa: BLE001 - one configuration failing must not lose the others
                skipped[key] = f"{type(exc).__name__}: {str(exc)[:300]}"
                print(f"{key} failed: {skipped[key]}", flush=True)
                gc.collect()
                torch.cuda.empty_cache()
                continue
            res["label"] = label
            res["mfu"] = 6 * res["params_non_embedding"] * res["tokens_per_s"] / peak
            res["mfu_with_head"] = 6 * res["params_total"] * res["tokens_per_s"] / peak
            results.append(res)
            print(f"{key} {label}: {res['tokens_per_s']:.0f} tok/s, padding {res['padding']:.1%}, {res['peak_mem_gib']:.1f} GiB, "
                  f"MFU {res['mfu']:.1%}, mean train loss {res['train_loss']}", flush=True)

    props = torch.cuda.get_device_properties(0)
    versions = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                "transformers": transformers.__version__, "trl": trl.__version__, "datasets": datasets.__version__}
    if liger_ok:
        from importlib.metadata import version

        versions["liger_kernel"] = version("liger-kernel")
    base = next((r for r in results if r["config"] == "A"), None)
    n = results[0]["params_non_embedding"] if results else 0
    n_all = results[0]["params_total"] if results else 0
    print(f"\nSFT, SmolLM2-360M shape (random init, bf16), N = {n:,} non-embedding parameters ({n_all:,} with the tied LM head); "
          f"{args.warmup} warm-up + {args.steps} timed steps per config; conversations {min(lengths)}-{max(lengths)} tokens "
          f"(mean {mean_len:.0f})")
    print(f"device: {props.name}, {props.total_memory / 2**30:.0f} GiB; peak bf16 matmul {peak / 1e12:.0f} TFLOP/s; "
          + ", ".join(f"{k} {v}" for k, v in versions.items()) + "\n")
    print("| config | batch | real tokens/step | tokens/s | vs A | padding | peak mem GiB | MFU (6N) | MFU (6N + head) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        ratio = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}" if base else "-"
        print(f"| {r['config']} {r['label']} | {r['batch_size']} | {r['real_tokens_per_step']:.0f} | {r['tokens_per_s']:,.0f} | {ratio} | "
              f"{r['padding']:.1%} | {r['peak_mem_gib']:.1f} | {r['mfu']:.1%} | {r['mfu_with_head']:.1%} |")
    for key, why in skipped.items():
        print(f"| {key} {specs[key][0]} | not run: {why} | | | | | | | |")
    for r in results:
        if base and r is not base:
            report(f"GPU SFT, {r['label']} vs TRL defaults ({props.name})", f"real tokens/s: {r['label']} (A) vs TRL defaults, padded + sdpa (B)",
                   r["tokens_per_s"], base["tokens_per_s"], unit="tok/s",
                   setup=f"SmolLM2-360M shape, random init, bf16, {args.warmup} warm-up + {args.steps} timed steps")
        report(f"GPU SFT MFU, {r['label']} ({props.name})", "6·N·real tokens/s (A) vs peak bf16 matmul FLOP/s measured in the same process (B)",
               r["mfu"] * peak / 1e12, peak / 1e12, unit="TFLOP/s")
    out = {"device": props.name, "peak_bf16_flops": peak, "versions": versions, "conversations": len(convs),
           "length_min": min(lengths), "length_max": max(lengths), "length_mean": mean_len, "warmup": args.warmup, "steps": args.steps,
           "varlen_check_max_diff": varlen_err, "results": results, "skipped": skipped}
    path = args.json or (Path(os.environ["OUT"]) / "sft_gpu.json" if os.environ.get("OUT") else None)
    if path:
        path.write_text(json.dumps(out, indent=2))
        print(f"\nwrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
