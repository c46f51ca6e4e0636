"""Checkpoints that lose nothing: upload every Trainer save in the background,
keep the newest N in the store, save and upload at once on SIGTERM, and
resume from the newest complete checkpoint of the same stage fingerprint.

Under `accelerate launch` (posttrain/launch.py) every rank runs this callback:
all ranks save (each writes its own shards and RNG state into the shared
checkpoint folder), rank 0 alone uploads, deletes and fetches; a SIGTERM seen
by any rank stops all of them at the same step."""

from __future__ import annotations

import logging
import queue
import re
import shutil
import signal
import threading
from pathlib import Path

from accelerate import PartialState
from accelerate.utils import broadcast_object_list, gather_object
from transformers import TrainerCallback

from posttrain.launch import is_main_process
from posttrain.stages.context import StageContext

log = logging.getLogger(__name__)
STEP = re.compile(r"checkpoint-(\d+)$")


class Preempted(SystemExit):
    """Raised after a SIGTERM checkpoint is safely in the store: exit non-zero
    so the KFP retry policy restarts the task, which then resumes."""

    def __init__(self):
        super().__init__(143)


def _step(key: str) -> int:
    m = STEP.search(key)
    return int(m.group(1)) if m else -1


class CheckpointUploader(TrainerCallback):
    """Uploads each saved checkpoint from a background thread. The queue is
    bounded: training waits on the network only when it is full."""

    def __init__(self, ctx: StageContext, keep: int, queue_size: int = 2):
        self.ctx, self.keep = ctx, keep
        self.prefix = ctx.checkpoint_key("").rstrip("/")
        self.queue: queue.Queue[Path | None] = queue.Queue(maxsize=queue_size)
        self.error: BaseException | None = None
        self.preempted = threading.Event()
        self.main = is_main_process()
        self.worker = threading.Thread(target=self._work, name="checkpoint-uploader", daemon=True)
        if self.main:
            self.worker.start()
        signal.signal(signal.SIGTERM, lambda *_: self.preempted.set())

    def _work(self) -> None:
        while (local := self.queue.get()) is not None:
            try:
                key = f"{self.prefix}/{local.name}"
                self.ctx.store.put(local, key)
                log.info("checkpoint uploaded: %s", self.ctx.store.key_uri(key))
                for old in sorted(self.ctx.store.list(self.prefix), key=_step)[: -self.keep]:
                    if _step(old) >= 0:
                        self.ctx.store.delete(old)
                # Local copies of uploaded checkpoints are no longer needed.
                for sibling in local.parent.glob("checkpoint-*"):
                    if _step(sibling.name) < _step(local.name):
                        shutil.rmtree(sibling, ignore_errors=True)
            except BaseException as e:  # noqa: BLE001 - surfaced by finish()
                self.error = e
                log.error("checkpoint upload failed: %s", e)

    def _preempted_anywhere(self) -> bool:
        """Whether any rank got SIGTERM: the ranks must agree on the step at
        which they save and stop, or their collectives would no longer match."""
        if any(gather_object([self.preempted.is_set()])):
            self.preempted.set()
        return self.preempted.is_set()

    def on_step_end(self, args, state, control, **kwargs):
        if self._preempted_anywhere():
            log.warning("SIGTERM: saving a checkpoint at step %d and stopping", state.global_step)
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_save(self, args, state, control, **kwargs):
        # Every rank has written its part of the checkpoint once all are here.
        PartialState().wait_for_everyone()
        if self.main:
            self.queue.put(Path(args.output_dir) / f"checkpoint-{state.global_step}")
        return control

    def finish(self) -> None:
        """Wait for every queued upload; raise if one failed or we were preempted."""
        if self.main:
            self.queue.put(None)
            self.worker.join()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if self.error:
            raise RuntimeError(f"checkpoint upload failed: {self.error}") from self.error
        if self.preempted.is_set():
            raise Preempted()


def resume_point(ctx: StageContext) -> Path | None:
    """The newest complete checkpoint of this very stage configuration, fetched
    locally, or None (and the log says why). Launched ranks share the scratch
    folder: rank 0 fetches, the others get its answer."""
    return broadcast_object_list([_fetch_resume_point(ctx) if is_main_process() else None])[0]


def _fetch_resume_point(ctx: StageContext) -> Path | None:
    prefix = ctx.checkpoint_key("").rstrip("/")
    checkpoints = sorted((k for k in ctx.store.list(prefix) if _step(k) >= 0), key=_step)
    if not checkpoints:
        log.info(
            "starting fresh: no complete checkpoint under %s (fingerprint %s; checkpoints of any other "
            "configuration or input are never resumed)", ctx.store.key_uri(prefix), ctx.fingerprint[:16],
        )
        return None
    newest = checkpoints[-1]
    log.info("resuming from %s", ctx.store.key_uri(newest))
    return ctx.store.get(newest, ctx.workdir / "resume")
