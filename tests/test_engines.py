"""Generators (posttrain.engines): the transformers engine on the tiny model,
the engine choice, and the vLLM engine against a stand-in for vLLM's offline
API (vLLM needs a CUDA device, so it cannot run here)."""

import importlib.machinery
import importlib.util
import sys
import types
import weakref
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoTokenizer

from posttrain.engines import HFGenerator, VLLMGenerator, choose_engine, open_generator
from posttrain.local_models import prepare
from posttrain.stages.training import load_tokenizer
from posttrain.templates import load_template


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


LONG = " ".join(f"Item {i}: a sentence about the weather in town number {i}." for i in range(40))
# Very different prompt lengths, in an order that sorting by length changes.
CONVERSATIONS = [
    user(LONG),
    user("Hi"),
    user("Tell me a short story about a cat who learns to sail a boat across a lake."),
    [{"role": "user", "content": LONG}, {"role": "assistant", "content": "Noted."}, {"role": "user", "content": LONG[:300]}],
    user("Why?"),
]


@pytest.fixture(scope="module")
def tiny():
    return prepare("tiny")


def liven(model) -> None:
    """The tiny model as initialised (weights of std 0.02, tied embeddings)
    repeats the prompt's last token, the generation prompt's newline, so every
    greedy answer would be empty whatever the prompt. Larger random weights in
    its layers make answers depend on the whole prompt."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.model.layers.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.1, generator=generator)


@pytest.fixture(scope="module")
def hf(tiny):
    gen = open_generator("local:tiny", tiny, chat_template="smollm3", engine="hf", batch_size=4)
    liven(gen.model)
    yield gen
    gen.close()


# -- transformers engine --------------------------------------------------------


def test_open_generator_gives_the_hf_engine_with_our_template(hf, tiny):
    assert isinstance(hf, HFGenerator)
    assert hf.id == "local:tiny" and hf.batch_size == 4
    assert hf.tokenizer.chat_template == load_template("smollm3")


def test_batched_results_come_back_in_input_order(hf):
    lengths = [len(hf.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
               for c in CONVERSATIONS]
    assert sorted(lengths) != lengths and max(lengths) > 3 * min(lengths)
    one_at_a_time = [hf.generate([c], max_new_tokens=8)[0] for c in CONVERSATIONS]
    # Distinct, non-empty answers, so that a swapped pair could not go unnoticed.
    assert all(a[0] for a in one_at_a_time)
    assert len({tuple(a) for a in one_at_a_time}) == len(CONVERSATIONS)
    batched = hf.generate(CONVERSATIONS, max_new_tokens=8)  # two batches of up to 4, each sorted by length
    assert batched == one_at_a_time


def test_n_samples_per_conversation(hf):
    out = hf.generate(CONVERSATIONS, max_new_tokens=4, n=3, temperature=1.0, seed=1)
    assert len(out) == len(CONVERSATIONS)
    assert all(len(samples) == 3 and all(isinstance(s, str) for s in samples) for samples in out)


def test_seed_fixes_the_samples(hf):
    def sample(seed: int) -> list[list[str]]:
        return hf.generate(CONVERSATIONS, max_new_tokens=6, n=2, temperature=1.0, seed=seed)

    first = sample(3)
    assert sample(3) == first
    assert sample(4) != first


def test_no_chat_template_uses_the_models_own(tiny, monkeypatch):
    own = AutoTokenizer.from_pretrained(tiny).chat_template
    assert own and own != load_template("smollm3")
    gen = open_generator("judge", tiny, chat_template=None, engine="hf", batch_size=2)
    try:
        assert gen.tokenizer.chat_template == own
        rendered = []
        real = gen.tokenizer.apply_chat_template

        def spy(*args, **kwargs):
            out = real(*args, **kwargs)
            rendered.append(out)
            return out

        monkeypatch.setattr(gen.tokenizer, "apply_chat_template", spy)
        (answers,) = gen.generate([user("Hi")], max_new_tokens=2)
        assert len(answers) == 1
        # SmolLM2's own system prompt, not our template's metadata block.
        assert rendered == ["<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
                            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"]
    finally:
        gen.close()


# -- engine choice --------------------------------------------------------------


def fake_machine(monkeypatch, *, cuda: bool, vllm: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name == "vllm":
            return importlib.machinery.ModuleSpec("vllm", None) if vllm else None
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


@pytest.mark.parametrize("vllm", [False, True])
def test_auto_is_hf_without_cuda(monkeypatch, vllm):
    fake_machine(monkeypatch, cuda=False, vllm=vllm)
    assert choose_engine("auto") == "hf"


def test_auto_is_vllm_with_cuda_and_vllm(monkeypatch):
    fake_machine(monkeypatch, cuda=True, vllm=True)
    assert choose_engine("auto") == "vllm"


@pytest.mark.parametrize(("cuda", "vllm"), [(False, True), (True, False), (False, False)])
def test_vllm_requested_where_it_cannot_run(monkeypatch, cuda, vllm):
    fake_machine(monkeypatch, cuda=cuda, vllm=vllm)
    with pytest.raises(RuntimeError, match=r"engine vllm requested.*no CUDA device or no vllm package.*use engine: hf or auto"):
        choose_engine("vllm")


@pytest.mark.parametrize(("cuda", "vllm"), [(False, False), (True, True)])
def test_hf_is_hf(monkeypatch, cuda, vllm):
    fake_machine(monkeypatch, cuda=cuda, vllm=vllm)
    assert choose_engine("hf") == "hf"


# -- vLLM engine, against a stand-in for its offline API ----------------------------


class FakeLLM:
    """vllm.LLM: records its arguments; generate() answers like vLLM, one
    RequestOutput per prompt, in order, with SamplingParams.n CompletionOutputs."""

    instances: list["FakeLLM"] = []

    def __init__(self, model, **kwargs):
        self.model, self.kwargs, self.calls = model, kwargs, []
        FakeLLM.instances.append(weakref.ref(self))

    def generate(self, prompts, sampling_params=None, **kwargs):
        self.calls.append((prompts, sampling_params, kwargs))
        return [
            SimpleNamespace(prompt_token_ids=p["prompt_token_ids"],
                            outputs=[SimpleNamespace(index=k, text=f"  reply {i}.{k}\n", token_ids=[7, 8]) for k in range(sampling_params.kwargs["n"])])
            for i, p in enumerate(prompts)
        ]


class FakeSamplingParams:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    module.LLM, module.SamplingParams = FakeLLM, FakeSamplingParams
    monkeypatch.setitem(sys.modules, "vllm", module)
    FakeLLM.instances = []
    return module


@pytest.fixture
def vllm_gen(fake_vllm, tiny, monkeypatch):
    with monkeypatch.context() as m:
        m.setattr(torch.cuda, "is_available", lambda: True)  # the fake module is importable, so vllm is usable
        gen = open_generator("local:tiny", tiny, chat_template="smollm3", engine="vllm", tensor_parallel_size=2, seed=7)
    return gen


def test_llm_gets_model_parallelism_and_seed(vllm_gen, tiny):
    assert isinstance(vllm_gen, VLLMGenerator)
    llm = vllm_gen.llm
    assert llm.model == str(tiny)
    assert llm.kwargs["tensor_parallel_size"] == 2
    assert llm.kwargs["seed"] == 7
    assert llm.kwargs.get("tokenizer", str(tiny)) == str(tiny)


def test_prompts_are_our_template_as_token_ids(vllm_gen, tiny):
    kwargs = {"enable_thinking": False}
    vllm_gen.generate(CONVERSATIONS, max_new_tokens=5, chat_template_kwargs=kwargs)
    ((prompts, _, _),) = vllm_gen.llm.calls
    tokenizer = load_tokenizer(tiny, "smollm3")
    bos = tokenizer.bos_token_id
    assert len(prompts) == len(CONVERSATIONS)
    for conversation, prompt in zip(CONVERSATIONS, prompts, strict=True):
        assert set(prompt) == {"prompt_token_ids"}
        text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True, **kwargs)
        assert "Reasoning Mode: /no_think" in text
        ids = prompt["prompt_token_ids"]
        assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
        assert ids[0] == bos and ids[1] != bos  # the template's own <|im_start|>, no second one added


def test_sampling_params(vllm_gen):
    vllm_gen.generate(CONVERSATIONS[:2], max_new_tokens=12, n=3, temperature=0.8, top_p=0.9, seed=5)
    (_, params, _), = vllm_gen.llm.calls
    assert isinstance(params, FakeSamplingParams)
    assert params.kwargs == {"n": 3, "temperature": 0.8, "top_p": 0.9, "max_tokens": 12, "seed": 5}


def test_greedy_sends_top_p_one(vllm_gen):
    vllm_gen.generate(CONVERSATIONS[:2], max_new_tokens=4, temperature=0.0, top_p=0.5)
    (_, params, _), = vllm_gen.llm.calls
    assert params.kwargs["temperature"] == 0.0 and params.kwargs["top_p"] == 1.0


def test_results_per_conversation_in_order(vllm_gen):
    out = vllm_gen.generate(CONVERSATIONS, max_new_tokens=4, n=2, temperature=1.0)
    assert out == [[f"reply {i}.{k}" for k in range(2)] for i in range(len(CONVERSATIONS))]


def test_close_drops_the_engine(vllm_gen):
    (ref,) = FakeLLM.instances
    assert ref() is vllm_gen.llm
    vllm_gen.close()
    assert not hasattr(vllm_gen, "llm")
    assert ref() is None
