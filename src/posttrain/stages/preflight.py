"""preflight: fail in seconds, not hours. Checks that the base model resolves,
the checkpoint store is writable and every data source is reachable; pins
the base model reference and starts the run's scoreboard."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from posttrain.datasets_io import write_dataset
from posttrain.models import ModelRef, materialize, write_model_ref
from posttrain.stages.context import StageContext, StageResult


class PreflightError(RuntimeError):
    pass


def _check_store(ctx: StageContext) -> None:
    probe = ctx.workdir / "probe"
    probe.mkdir()
    (probe / "ok").write_text("ok")
    key = f"{ctx.config['recipe']}/preflight/probe"
    try:
        ctx.store.put(probe, key)
        ctx.store.get(key, probe)
    except Exception as e:  # noqa: BLE001 - any failure means the store is unusable
        raise PreflightError(f"checkpoint store {ctx.store.uri}: not writable: {e}") from e


def _check_sources(sources: list[dict]) -> None:
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    for s in sources:
        if s.get("path") and not Path(s["path"]).is_file():
            raise PreflightError(f"data source {s['name']}: {s['path']} not found")
        if s.get("hub") and not offline:
            from huggingface_hub import HfApi

            try:
                HfApi().dataset_info(s["hub"], revision=s["revision"])
            except Exception as e:  # noqa: BLE001
                raise PreflightError(f"data source {s['name']}: Hub dataset {s['hub']}@{s['revision']}: {e}") from e


def _check_models(models: list[dict]) -> None:
    """Strong, weak, judge and reward models resolve, without downloading
    their weights here (a CPU pod, before any GPU is requested)."""
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    for m in models:
        uri, revision = m["uri"], m["revision"]
        parsed = urlparse(uri)
        hub_repo = parsed.scheme == "hf" and len([p for p in parsed.path.split("/") if p]) == 1
        try:
            if uri.startswith("local:"):
                materialize(ModelRef(uri=uri))
            elif parsed.scheme == "file" and not (Path(parsed.path) / "config.json").is_file():
                raise FileNotFoundError(f"{parsed.path}/config.json not found")
            elif hub_repo and offline:
                from huggingface_hub import try_to_load_from_cache

                if not isinstance(try_to_load_from_cache(parsed.netloc + parsed.path, "config.json", revision=revision), str):
                    raise FileNotFoundError("not in the local Hub cache, and HF_HUB_OFFLINE=1")
            elif hub_repo:
                from huggingface_hub import HfApi

                HfApi().model_info(parsed.netloc + parsed.path, revision=revision)
        except Exception as e:  # noqa: BLE001 - any failure means the model cannot be used
            raise PreflightError(f"model {uri}@{revision}: cannot be resolved: {e}") from e


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.config
    _check_store(ctx)
    _check_sources(cfg["sources"])
    _check_models(cfg.get("models", []))
    ref = ModelRef(uri=cfg["base_model"]["uri"], revision=cfg["base_model"]["revision"])
    try:
        path = materialize(ref)
    except Exception as e:  # noqa: BLE001
        raise PreflightError(f"base_model {ref.uri}@{ref.revision}: cannot be loaded: {e}") from e
    if not (path / "config.json").is_file():
        raise PreflightError(f"base_model {ref.uri}: {path} has no config.json")
    write_model_ref(ctx.outputs["base_model"], ref)
    write_dataset(ctx.outputs["scoreboard"], [], {"labels": []})
    return StageResult(metadata={"base_model": {"uri": ref.uri, "revision": ref.revision}})
