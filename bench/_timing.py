"""Shared by the training benchmarks (imported from the script's own folder)."""

import time

from transformers import TrainerCallback


class StepClock(TrainerCallback):
    """Wall time and this process's CPU time at the end of every optimizer step."""

    def __init__(self):
        self.ends: list[float] = []
        self.cpu_ends: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())
        self.cpu_ends.append(time.process_time())
