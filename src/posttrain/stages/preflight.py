"""preflight: fail in seconds, not hours. The first task of every run checks,
before any GPU is requested, what the run needs, and fails with ONE
PreflightError listing every problem found (one per line, each saying what
to do), not just the first.

Every run: the recipe validates with the run's parameter values, the
checkpoint store is writable, every data source and model resolves at its
revision, and the base model loads. On a cluster (config["cluster"], from
dag.preflight_cluster_config) also: every Secret's env vars are set, the Hub
token is accepted and may write the repo an hf:// store writes, the images
exist (posttrain.oci_registry), each GPU kind fits on some node and the
TrainJob runtime exists (posttrain.cluster_checks). Network checks run in
parallel under one deadline; checks whose prerequisite failed are skipped
and say so. What could not be verified (no RBAC to list nodes, a private
registry) is a warning: logged, counted in the metrics, and the run goes on.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections import defaultdict
from functools import partial
from pathlib import Path
from urllib.parse import urlparse

from posttrain import cluster_checks as cc
from posttrain.cluster_checks import Finding, problem, skipped
from posttrain.models import ModelRef, materialize
from posttrain.oci_registry import check_image, distinct_images
from posttrain.stages.context import StageContext, StageResult

log = logging.getLogger(__name__)

# One deadline for each wave of parallel checks; a check makes a few calls of CALL_TIMEOUT_S at most.
DEADLINE_S = 40.0


class PreflightError(RuntimeError):
    pass


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE") == "1"


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:4])
    return f"data source {shown}" if len(names) == 1 else f"data sources {shown}" + (f" (+{len(names) - 4} more)" if len(names) > 4 else "")


# -- the recipe ------------------------------------------------------------------------------


def _check_recipe(cfg: dict) -> list[Finding]:
    """The recipe with the run's parameter values (typed into the UI) is still valid."""
    from pydantic import ValidationError

    from posttrain.recipe import Recipe

    if "recipe_values" not in cfg:
        return []
    try:
        Recipe.model_validate(cfg["recipe_values"])
    except ValidationError as e:
        return [problem("recipe", f"recipe field {'.'.join(map(str, err['loc']))}: {err['msg']} (got {cc.one_line(repr(err.get('input')), 80)})"
                                  " — fix the run's parameter or the recipe") for err in e.errors()]
    return []


# -- the checkpoint store ---------------------------------------------------------------------


def _impatient(store):
    """A copy of the store that gives up in seconds: its retries with backoff
    are made for hour-long uploads, not for a probe."""
    fast = copy.copy(store)
    if hasattr(fast, "attempts"):
        fast.attempts = 2
    if urlparse(store.uri).scheme == "s3":
        import boto3
        from botocore.config import Config

        # A fresh session: it reads the credentials the pod has now (boto3's default session keeps the first it found).
        config = Config(connect_timeout=3, read_timeout=cc.CALL_TIMEOUT_S, retries={"max_attempts": 2})
        fast.client = boto3.session.Session().client("s3", config=config)
    return fast


def _s3_reason(bucket: str, e: Exception) -> str:
    """Why an S3 probe failed: credentials missing, rejected or denied, no bucket, no endpoint."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    if isinstance(e, NoCredentialsError):
        return (f"bucket {bucket}: no credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY unset and no other AWS credential "
                "source) — set secret posttrain-s3 (helm values secrets.s3) or workload identity")
    if isinstance(e, EndpointConnectionError):
        return f"bucket {bucket}: endpoint unreachable: {cc.one_line(e)} — check AWS_ENDPOINT_URL and the pod's network access"
    code = e.response.get("Error", {}).get("Code", "") if isinstance(e, ClientError) else ""
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken"):
        return f"bucket {bucket}: credentials rejected ({code}) — fix the access key and secret key (secret posttrain-s3)"
    if code in ("AccessDenied", "AllAccessDisabled", "403"):
        return f"bucket {bucket}: access denied ({code}) to these credentials — grant them read, write, list and delete on {bucket}"
    if code == "NoSuchBucket":
        return f"bucket {bucket} does not exist — create it or fix cluster.store_uri"
    return f"bucket {bucket}: {cc.one_line(e)}"


def _check_store(ctx: StageContext) -> list[Finding]:
    """Put and get back a small checkpoint, through the store's own code."""
    store = _impatient(ctx.store)
    probe = Path(ctx.workdir) / "probe"
    probe.mkdir(parents=True, exist_ok=True)
    (probe / "ok").write_text("ok")
    key = f"{ctx.config['recipe']}/preflight/probe"
    try:
        store.put(probe, key)
        store.get(key, Path(ctx.workdir) / "probe-read")
    except Exception as e:  # noqa: BLE001 - any failure means the store is unusable
        why = _s3_reason(urlparse(store.uri).netloc, e) if urlparse(store.uri).scheme == "s3" else cc.one_line(e)
        return [problem("store", f"checkpoint store {store.uri}: not writable: {why}")]
    return []


# -- data sources and models ------------------------------------------------------------------


def _check_local_sources(sources: list[dict]) -> list[Finding]:
    from posttrain.data.sources import SourceError, local_kind

    found = []
    for s in sources:
        if not s.get("path"):
            continue
        path = Path(s["path"])
        if not path.exists():
            found.append(problem("data", f"data source {s['name']}: {s['path']} not found — fix its path or add the file"))
            continue
        try:
            local_kind(path)
        except SourceError as e:
            found.append(problem("data", f"data source {s['name']}: {e}"))
    return found


def _dataset_resolves(hub: str, revision: str, names: list[str]) -> list[Finding]:
    from huggingface_hub import HfApi

    try:
        HfApi().dataset_info(hub, revision=revision)
    except Exception as e:  # noqa: BLE001
        return [problem("data", f"{_names(names)}: Hub dataset {hub}@{revision}: {cc.hub_reason(e)} — check the dataset id and revision "
                                "(and that HF_TOKEN may read it if it is gated or private)")]
    return []


def _hub_datasets(sources: list[dict]) -> dict[tuple[str, str], list[str]]:
    """{(dataset, revision): source names}: a dataset many sources share is looked up once."""
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for s in sources:
        if s.get("hub"):
            groups[(s["hub"], s["revision"])].append(s["name"])
    return groups


def _hub_repo(uri: str) -> str | None:
    """`org/name` of an hf:// model repo (not a checkpoint key inside a store)."""
    parsed = urlparse(uri)
    hub_repo = parsed.scheme == "hf" and len([p for p in parsed.path.split("/") if p]) == 1
    return parsed.netloc + parsed.path if hub_repo else None


def _model_problem(label: str, uri: str, revision: str, e: Exception | str) -> Finding:
    return problem("models", f"{label} {uri}@{revision}: cannot be resolved: {cc.one_line(e)} — check its uri and revision")


def _check_model_offline(label: str, uri: str, revision: str) -> list[Finding]:
    """A file:// model has a config.json; a Hub model is in the local cache when HF_HUB_OFFLINE=1."""
    from huggingface_hub import try_to_load_from_cache

    repo = _hub_repo(uri)
    if urlparse(uri).scheme == "file" and not (Path(urlparse(uri).path) / "config.json").is_file():
        return [_model_problem(label, uri, revision, f"{urlparse(uri).path}/config.json not found")]
    if repo and not isinstance(try_to_load_from_cache(repo, "config.json", revision=revision), str):
        return [_model_problem(label, uri, revision, "not in the local Hub cache, and HF_HUB_OFFLINE=1")]
    return []


def _hub_model_resolves(label: str, uri: str, revision: str) -> list[Finding]:
    """The repo exists at that revision and (for the base model, which is not
    downloaded here) holds a config.json."""
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(_hub_repo(uri), revision=revision)
    except Exception as e:  # noqa: BLE001
        return [_model_problem(label, uri, revision, cc.hub_reason(e))]
    if label == "base_model" and "config.json" not in {s.rfilename for s in info.siblings or []}:
        return [problem("base_model", f"base_model {uri}@{revision}: no config.json in the repo — point base_model at a transformers model")]
    return []


def _local_models_build(models: list[tuple[str, str, str]]) -> list[Finding]:
    """posttrain's offline models (local:...), built one after the other (they share a cache)."""
    out = []
    for label, uri, revision in models:
        try:
            materialize(ModelRef(uri=uri))
        except Exception as e:  # noqa: BLE001
            out.append(_model_problem(label, uri, revision, e))
    return out


def _models(cfg: dict) -> list[tuple[str, str, str]]:
    """(label, uri, revision) of every model to resolve, once each; the base
    model's `local:` build is left to the load check that follows."""
    base = cfg["base_model"]
    seen, out = set(), []
    for label, m in [("base_model", base), *[("model", m) for m in cfg.get("models", [])]]:
        key = (m["uri"], m["revision"])
        if key not in seen and not (label == "base_model" and m["uri"].startswith("local:")):
            seen.add(key)
            out.append((label, m["uri"], m["revision"]))
    return out


def _data_and_model_tasks(cfg: dict, hub_usable: bool) -> tuple[dict[str, list[Finding]], dict]:
    """(findings of the checks done on the spot, tasks that go over the network)."""
    found: dict[str, list[Finding]] = {}
    tasks: dict = {}
    if any(s.get("path") for s in cfg["sources"]):
        found["data files"] = _check_local_sources(cfg["sources"])
    models, offline = _models(cfg), _offline()
    if local := [m for m in models if m[1].startswith("local:")]:
        tasks["local models"] = partial(_local_models_build, local)
    # Without the network a Hub model is looked for in the local cache instead.
    remote = [m for m in models if _hub_repo(m[1]) and not offline]
    if on_disk := [m for m in models if not m[1].startswith("local:") and m not in remote]:
        found["models on disk"] = [f for m in on_disk for f in _check_model_offline(*m)]
    datasets = _hub_datasets(cfg["sources"]) if not offline else {}
    if (remote or datasets) and not hub_usable:
        found["Hub models and datasets"] = [skipped("models", "Hub models and datasets: not looked up, the Hub token does not work (see above)")]
        return found, tasks
    for label, uri, revision in remote:
        tasks[f"{label} {uri}@{revision}"] = partial(_hub_model_resolves, label, uri, revision)
    for (hub, revision), names in datasets.items():
        tasks[f"dataset {hub}@{revision}"] = partial(_dataset_resolves, hub, revision, names)
    return found, tasks


# -- the base model -----------------------------------------------------------------------------


def _loads_here(base: dict) -> bool:
    """Whether preflight loads the base model. A Hub repo is only resolved
    (with the network): downloading its weights on a CPU pod on every run would
    take minutes; the first stage that needs them downloads them."""
    return not (_hub_repo(base["uri"]) and not _offline())


def _check_base_model_loads(base: dict) -> list[Finding]:
    """Last, and only when everything else passed: a store checkpoint is fetched and verified."""
    ref = ModelRef(uri=base["uri"], revision=base["revision"])
    try:
        path = materialize(ref)
    except Exception as e:  # noqa: BLE001
        return [problem("base_model", f"base_model {ref.uri}@{ref.revision}: cannot be loaded: {cc.one_line(e)} — check its uri and revision")]
    if not (path / "config.json").is_file():
        return [problem("base_model", f"base_model {ref.uri}: {path} has no config.json — point base_model at a transformers model folder")]
    return []


# -- the cluster --------------------------------------------------------------------------------


def _store_needs(store_uri: str, missing: set[str]) -> str | None:
    """The unset env var the store cannot work without, if any."""
    scheme = urlparse(store_uri).scheme
    needed = [e for e in sorted(missing) if (scheme == "s3" and e.startswith("AWS_")) or (scheme == "hf" and e == cc.HF_TOKEN_ENV)]
    return needed[0] if needed else None


def _check_hub(cluster: dict, recipe: str, missing: set[str]) -> dict[str, list[Finding]]:
    """The Hub token, checked first: models, datasets and an hf:// store depend on it."""
    if _offline():
        return {"hub token": [skipped("hub", "Hub token: not checked, HF_HUB_OFFLINE=1")]}
    if cc.HF_TOKEN_ENV in missing:
        return {"hub token": [skipped("hub", f"Hub token: permissions not checked, {cc.HF_TOKEN_ENV} is not set (see above)")]}
    target = cc.hub_write_target(cluster["store_uri"], recipe)
    return cc.run_parallel({"hub token": partial(cc.check_hub_token, cluster["secrets"], target)}, DEADLINE_S)


def _cluster_tasks(cluster: dict) -> dict:
    tasks: dict = {f"image {ref}": partial(check_image, kinds, ref) for ref, kinds in distinct_images(cluster["images"]).items()}
    if cluster["gpus"] or cluster.get("trainjob_runtime"):
        # Looked up at call time, so that tests can put scripted API objects in its place.
        tasks["kubernetes"] = partial(cc.check_kubernetes, cluster["gpus"], cluster.get("trainjob_runtime"), cc.kube_apis)
    return tasks


# -- the run ------------------------------------------------------------------------------------


def _failed(results: dict[str, list[Finding]], *checks: str) -> bool:
    return any(f.level == cc.PROBLEM and f.check in checks for found in results.values() for f in found)


def check_all(ctx: StageContext) -> dict[str, list[Finding]]:
    """{check: findings} of every check for this run, in report order."""
    cfg, cluster = ctx.config, ctx.config.get("cluster")
    results = {"recipe": _check_recipe(cfg)}
    missing: set[str] = set()
    if cluster:
        missing = cc.missing_envs(cluster["secrets"])
        results["secrets"] = cc.check_secrets(cluster["secrets"])
        results.update(_check_hub(cluster, cfg['recipe'], missing))
    found, tasks = _data_and_model_tasks(cfg, hub_usable=not _failed(results, "hub"))
    results.update(found)
    store_hub = urlparse(ctx.store.uri).scheme == "hf"
    if (env := _store_needs(ctx.store.uri, missing)) or (store_hub and _failed(results, "hub", "hub_write")):
        why = f"{env} is not set" if env else "the Hub token cannot write it"
        results["checkpoint store"] = [skipped("store", f"checkpoint store {ctx.store.uri}: not probed, {why} (see above)")]
    else:
        tasks["checkpoint store"] = partial(_check_store, ctx)
    if cluster:
        tasks.update(_cluster_tasks(cluster))
    results.update(cc.run_parallel(tasks, DEADLINE_S))
    if not _loads_here(cfg["base_model"]):
        return results
    if any(f.level == cc.PROBLEM for found in results.values() for f in found):
        results["base model loads"] = [skipped("base_model", "base model: not loaded, fix the problems above first")]
    else:
        results["base model loads"] = _check_base_model_loads(cfg["base_model"])
    return results


def _masked(results: dict[str, list[Finding]], cluster: dict | None) -> dict[str, list[Finding]]:
    secrets = cc.secret_values(cluster["secrets"] if cluster else [])
    return {name: [Finding(f.check, f.level, cc.mask(f.text, secrets)) for f in found] for name, found in results.items()}


def _report(findings: list[Finding], seconds: float) -> str:
    problems = [f.text for f in findings if f.level == cc.PROBLEM]
    lines = [f"preflight found {len(problems)} problem{'s' * (len(problems) != 1)} in {seconds:.1f} s; nothing else was started:"]
    lines += [f"- {t}" for t in problems]
    if skips := [f.text for f in findings if f.level == cc.SKIPPED]:
        lines += ["not checked:"] + [f"- {t}" for t in skips]
    if warnings := [f.text for f in findings if f.level == cc.WARNING]:
        lines += ["warnings:"] + [f"- {t}" for t in warnings]
    return "\n".join(lines)


def _outcome(found: list[Finding]) -> str:
    levels = {f.level for f in found}
    return next((level for level in (cc.PROBLEM, cc.SKIPPED, cc.WARNING) if level in levels), "ok")


def run(ctx: StageContext) -> StageResult:
    started = time.monotonic()
    results = _masked(check_all(ctx), ctx.config.get("cluster"))
    seconds = time.monotonic() - started
    findings = [f for found in results.values() for f in found]
    for f in findings:
        (log.warning if f.level == cc.WARNING else log.info)("preflight %s: %s", f.level, f.text)
    if any(f.level == cc.PROBLEM for f in findings):
        raise PreflightError(_report(findings, seconds))
    count = {level: sum(f.level == level for f in findings) for level in (cc.PROBLEM, cc.WARNING, cc.SKIPPED)}
    log.info("preflight passed %d checks in %.1f s (%d warnings)", len(results), seconds, count[cc.WARNING])
    return StageResult(
        metrics={"preflight.problems": 0, "preflight.warnings": count[cc.WARNING], "preflight.skipped": count[cc.SKIPPED],
                 "preflight.checks": len(results), "preflight.seconds": round(seconds, 3)},
        params={"preflight": {"checks": {name: _outcome(found) for name, found in results.items()},
                              "warnings": [f.text for f in findings if f.level == cc.WARNING]}},
    )
