"""What a stage gets to run: its inputs and outputs as local paths, the
checkpoint store, where to log. Built the same way in a pod, in a test and in
KFP's local runner; nothing here knows about KFP.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from posttrain.store import CheckpointStore, open_store

# Where checkpoints go and where logs go are properties of the deployment,
# not inputs of a stage, so they come from the environment and stay out of
# cache keys. The DAG builder sets them on the cluster; the local runner sets
# them per run folder.
STORE_ENV = "POSTTRAIN_STORE"
LOG_DIR_ENV = "POSTTRAIN_LOG_DIR"


@dataclass
class StageResult:
    metrics: dict[str, float] = field(default_factory=dict)
    # output name -> metadata mirrored onto that KFP artifact
    metadata: dict[str, dict] = field(default_factory=dict)
    params: dict[str, object] = field(default_factory=dict)


@dataclass
class StageContext:
    task: str
    config: dict
    inputs: dict[str, Path]
    outputs: dict[str, Path]
    store_uri: str
    log_dir: Path | None
    workdir: Path

    @classmethod
    def create(cls, config: dict, inputs: dict[str, Path], outputs: dict[str, Path], workdir: Path | None = None) -> StageContext:
        """`workdir`: a scratch folder shared by launched ranks (its owner
        removes it); by default a fresh one that `cleanup` removes."""
        store_uri = os.environ.get(STORE_ENV) or config["store_uri"]
        log_root = os.environ.get(LOG_DIR_ENV)
        task = config["task"]
        return cls(
            task=task,
            config=config,
            inputs=inputs,
            outputs=outputs,
            store_uri=store_uri,
            log_dir=Path(log_root) / task if log_root else None,
            workdir=workdir or Path(tempfile.mkdtemp(prefix=f"posttrain-{task}-")),
        )

    @cached_property
    def store(self) -> CheckpointStore:
        # Opened on first use: preflight must be able to report a store it
        # cannot open (e.g. an hf:// store without its token) among its problems.
        return open_store(self.store_uri)

    @cached_property
    def _inputs_digest(self) -> bytes:
        """Hash of the input references (not contents of weights: a model input
        is identified by its model.json)."""
        h = hashlib.sha256()
        for name in sorted(self.inputs):
            h.update(name.encode())
            for path in sorted(p for p in self.inputs[name].rglob("*") if p.is_file()):
                h.update(path.name.encode())
                h.update(path.read_bytes() if path.stat().st_size < (1 << 26) else str(path.stat().st_size).encode())
        return h.digest()

    def scoped_fingerprint(self, config: dict) -> str:
        """Hash of `config` (the stage's, or the part of it a piece of work
        depends on) and the stage's inputs."""
        h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
        h.update(self._inputs_digest)
        return h.hexdigest()

    @cached_property
    def fingerprint(self) -> str:
        return self.scoped_fingerprint(self.config)

    def cleanup(self) -> None:
        """Remove the scratch folder (local copies of weights and checkpoints)."""
        shutil.rmtree(self.workdir, ignore_errors=True)

    def checkpoint_key(self, name: str = "final", scope: dict | None = None) -> str:
        """`<recipe>/<task>/<fingerprint>/<name>`: a changed stage never sees
        another's checkpoints. With `scope`, the fingerprint covers only that
        part of the config, so work that a changed knob does not affect is kept."""
        fingerprint = self.fingerprint if scope is None else self.scoped_fingerprint(scope)
        return f"{self.config['recipe']}/{self.task}/{fingerprint[:16]}/{name}"
