import os
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "pipelines" / "smollm3.yaml"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("POSTTRAIN_CACHE", str(ROOT / ".cache"))
# As the Makefile sets it: no Rust tokenizer threads in forked map workers.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def recipe_text() -> str:
    return RECIPE.read_text()


@pytest.fixture
def write_recipe(tmp_path):
    """Write a recipe into a scratch repo layout (pipelines/ beside data/)."""

    def write(text: str) -> Path:
        (tmp_path / "pipelines").mkdir(exist_ok=True)
        data = tmp_path / "data"
        if not data.exists():
            data.symlink_to(ROOT / "data")
        shared = tmp_path.parent / "shared"
        if not shared.exists():
            shared.symlink_to(ROOT.parent / "shared")
        path = tmp_path / "pipelines" / "recipe.yaml"
        path.write_text(text)
        return path

    return write


def make_checkpoint(parent: Path, name: str = "src", payload: bytes = b"weights") -> Path:
    """A small checkpoint folder (a weights file and a nested config) for store tests."""
    d = parent / name
    (d / "sub").mkdir(parents=True)
    (d / "model.safetensors").write_bytes(payload)
    (d / "sub" / "config.json").write_text('{"a": 1}')
    return d


# -- a fake Hugging Face Hub on loopback (tests/hubserver.py) ----------------------


# huggingface_hub is imported inside the fixtures: it reads HF_HUB_OFFLINE once,
# at import, and that must happen after the environment above is set.


def _loopback_only_client():
    """The client's default httpx2 client, refusing any request that would leave 127.0.0.1."""
    from huggingface_hub.utils import _http

    client = _http.default_client_factory()

    def guard(request) -> None:
        if request.url.host != "127.0.0.1":
            raise AssertionError(f"request escaped the fake Hub: {request.method} {request.url}")

    client.event_hooks["request"].append(guard)
    return client


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    """The client's backoff sleeps (1 s, 2 s, ...), recorded instead of waited."""
    from huggingface_hub import file_download
    from huggingface_hub.utils import _http

    recorded: list[float] = []
    fake_time = SimpleNamespace(sleep=recorded.append)  # both modules use `time` for nothing but sleep()
    monkeypatch.setattr(_http, "time", fake_time)
    monkeypatch.setattr(file_download, "time", fake_time)
    return recorded


@pytest.fixture
def hub(monkeypatch, tmp_path, sleeps):
    """A FakeHub on 127.0.0.1 with the client pointed at it and kept off the network."""
    import huggingface_hub
    from hubserver import FakeHub
    from huggingface_hub import constants
    from huggingface_hub.utils import _http

    server = FakeHub()
    server.start()
    # tests/conftest.py sets HF_HUB_OFFLINE=1, read into `constants` at import; the client checks `constants` per call.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    # hf_xet is installed, so the client would pick the Xet upload protocol by itself; the fake Hub speaks Git LFS only.
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    # Telemetry on means building headers fetches {ENDPOINT}/api/agent-harnesses (and caches it under HF_HOME).
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    # Anything that forgets `endpoint=` lands on the fake Hub too (the URL template was built from ENDPOINT at import).
    monkeypatch.setattr(constants, "ENDPOINT", server.endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    for name, value in {"HF_ENDPOINT": server.endpoint, "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    huggingface_hub.set_client_factory(_loopback_only_client)
    try:
        yield server
    finally:
        huggingface_hub.set_client_factory(_http.default_client_factory)
        server.stop()
    assert not [r for r in server.requests if "xet" in r[1]], "the client went down the Xet path"


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory):
    """A real S3 server (SeaweedFS, tests/s3server.py) on 127.0.0.1 with a bucket
    `ckpt`, one per test module, stopped when the module is done."""
    from s3server import SeaweedS3

    s3 = SeaweedS3(tmp_path_factory.mktemp("seaweed"))
    s3.start()
    s3.client().create_bucket(Bucket="ckpt")
    yield s3
    s3.stop()


# -- prepared and tokenized data for the training stages ----------------------------


def write_prepared(dest: Path, rows: list[dict], kind: str = "sft", source: str = "test", chat_template: str = "smollm3") -> Path:
    """A prepare_data artifact (Arrow shards) of raw JSONL-style rows, encoded
    as prepare_data encodes them, with the tiny model's tokenizer and `chat_template`."""
    from posttrain.data.artifacts import write_dataset
    from posttrain.data.rows import MIDTRAIN_FEATURES, SFT_FEATURES, reasoning_mode, sft_out, stored_conversation
    from posttrain.data.tokenize import encode_conversations, encode_texts, tokenizer_digest
    from posttrain.local_models import prepare
    from posttrain.stages.training import load_tokenizer
    from posttrain.templates import row_template_kwargs

    tokenizer = load_tokenizer(prepare("tiny"), chat_template)
    if kind == "sft":
        stored = [sft_out(r, r.get("id", f"{source}-{i}"), source, reasoning_mode(r)) for i, r in enumerate(rows)]
        convs = [stored_conversation(r) for r in stored]
        ids, masks = encode_conversations(tokenizer, [c["messages"] for c in convs], [row_template_kwargs(c) for c in convs])
        stored = [{**r, "input_ids": i, "assistant_masks": m} for r, i, m in zip(stored, ids, masks, strict=True)]
        features = SFT_FEATURES
    else:
        stored = [{"id": str(r.get("id", i)), "source": source, "text": r["text"]} for i, r in enumerate(rows)]
        ids = encode_texts(tokenizer, [r["text"] for r in stored])
        stored = [{**r, "input_ids": i} for r, i in zip(stored, ids, strict=True)]
        features = MIDTRAIN_FEATURES
    write_dataset(dest, stored, {"sources": [{"name": source}], "tokenizer": tokenizer_digest(tokenizer)}, features=features)
    return dest


def write_tokenized(dest: Path, rows: list[dict], recipe, kind: str = "sft", store: Path | None = None) -> Path:
    """The `tokenized` input of a training stage: `rows` prepared, then the
    tokenize stage run on them with the recipe's settings (into `store`,
    default dest/store). Returns the artifact folder."""
    from posttrain.dag import stage_configs
    from posttrain.models import ModelRef, write_model_ref
    from posttrain.stages import tokenize
    from posttrain.stages.context import STORE_ENV, StageContext

    dest.mkdir(parents=True, exist_ok=True)
    write_prepared(dest / "prepared", rows, kind, chat_template=recipe.chat_template)
    write_model_ref(dest / "base", ModelRef(uri=recipe.base_model.uri))
    old = os.environ.get(STORE_ENV)
    os.environ[STORE_ENV] = f"file://{store or dest / 'store'}"
    try:
        ctx = StageContext.create(stage_configs(recipe)[f"tokenize_{kind}"], {"data": dest / "prepared", "base_model": dest / "base"},
                                  {"tokenized": dest / "tokenized"})
        try:
            tokenize.run(ctx)
        finally:
            ctx.cleanup()
    finally:
        if old is None:
            os.environ.pop(STORE_ENV)
        else:
            os.environ[STORE_ENV] = old
    return dest / "tokenized"


def write_prompts(dest: Path, rows: list[dict], source: str = "test") -> Path:
    """A prompts artifact of raw prompt rows, as prepare_data writes it."""
    from posttrain.data.artifacts import write_dataset
    from posttrain.data.rows import PROMPT_FEATURES, prompt_out

    write_dataset(dest, [prompt_out(r, i, r.get("source", source)) for i, r in enumerate(rows)], {"sources": [{"name": source}]},
                  features=PROMPT_FEATURES)
    return dest
