"""Data path at scale: the `prepare_data` and `tokenize` stages, each a real
child process (`python -m posttrain.stages SPEC.json`, as a pod runs it), on
synthetic smoltalk2-shaped SFT data of three sizes 16x apart.

    python bench/data_scale.py [--sizes-mb 16 64 256] [--quick] [--logs DIR]

Default sizes 16, 64 and 256 MB of JSON lines (~16 min on a 2-CPU machine):
the issue's 0.1 / 0.4 / 1.6 GB scaled down, the 16x span kept. `--quick`
(0.5, 2, 8 MB) is a smoke run of the machinery, not figures: its files are
smaller than one batch of rows, so neither flat memory nor workers show.

The data, generated here and deterministic from `--seed`: JSON lines
`{"id", "messages", "reasoning"}`, 1-4 user/assistant exchanges (a system turn
in some), half think and half no_think rows, lognormal lengths (mean row about
12 KB, near smoltalk2's 13; a few rows many times longer, some over max_length),
text of words drawn Zipf-like from a fixed vocabulary (common English words
and a few thousand made-up ones, some non-ASCII), punctuation and digits, and
0.5% of rows broken on purpose (no messages, a number as content, an unknown
role, a last turn that is not the assistant's), which prepare_data drops and
counts (`data.max_invalid_fraction` = 0.05). The smaller files are the first
rows of the largest. The `tiny` profile's recipe with `sft.max_length` 32768,
the generated file as its one SFT source, no mid-training data and the shipped
local prompts.

Measured, per size and `data.num_proc`:

- wall time of each child (time.perf_counter around it), its peak RSS
  (`os.wait4`'s ru_maxrss: the child's own, or its largest worker's, not the
  sum; not this process's) and its CPU time (user + system, the workers'
  included); besides, sampled every 0.2 s from /proc: the child's anonymous
  RSS (RSS less the pages of memory-mapped files, i.e. of the Arrow files
  that datasets reads, which the kernel can drop), its workers' anonymous RSS
  summed (what `num_proc` workers add), and the output line after which each
  peak was reached; the 1-minute load average shows other work on the machine;
- rows and tokens from the stages' result metrics (`data.sft.*`, `tokenize.*`);
- bytes on disk after both stages: the datasets cache (`HF_DATASETS_CACHE`,
  fresh for each size and worker count, so every cold run is cold; both
  stages' `map` cache files land there), prepare_data's artifacts and the
  checkpoint store (`POSTTRAIN_STORE`) holding the tokenized data;
- a rerun of tokenize with the same store and caches (the training stage's
  data preparation on a retry): `tokenize.reused` must be 1.0;
- the bare fast tokenizer, in this process: every usable conversation of the
  same file rendered with the smollm3 chat template (its `enable_thinking`
  from the row's `reasoning` flag), then `tokenizer(texts,
  add_special_tokens=False)` in batches of 512; only the tokenizer call is
  timed. prepare+tokenize renders and encodes each row once (prepare_data's
  scan, which also builds the assistant mask and counts; tokenize only builds
  labels from the stored ids and packs), so its ceiling against the bare
  tokenizer is below 1 by the rendering, the mask and the Arrow writes.

Rows reported: peak RSS at 16x data vs 1x (flat memory), throughput with 2
workers vs 1, prepare+tokenize tokens/s vs the bare tokenizer, and the
tokenize rerun vs the cold tokenize. The script also prints a linear
extrapolation of time, memory and disk to OpenThoughts3-1.2M and to the
smoltalk2 SFT subsets on a 16-CPU pod. No figure is asserted on; a tokenize
rerun that does not reuse the store exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("POSTTRAIN_CACHE", str(ROOT / ".cache"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# As `make` runs the stages and as datasets runs its workers: one thread per tokenizer, so num_proc 1 is one core.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import report  # noqa: E402

from posttrain.dag import stage_configs  # noqa: E402
from posttrain.local_models import prepare  # noqa: E402
from posttrain.models import ModelRef, write_model_ref  # noqa: E402
from posttrain.recipe import apply_overrides, load_recipe  # noqa: E402
from posttrain.store import sha256_file  # noqa: E402

# The 0.1 / 0.4 / 1.6 GB, scaled down to finish in ~16 min on a 2-CPU machine; the span stays 16x.
SIZES_MB = (16.0, 64.0, 256.0)
QUICK_SIZES_MB = (0.5, 2.0, 8.0)
MAX_LENGTH = 32768
MAX_INVALID = 0.05  # well above the ~0.8% expected (broken + over max_length), for the small files
BROKEN_SHARE = 0.005
TOKENIZER_BATCH = 512
SAMPLE_EVERY_S = 0.2
GOAL_RSS, GOAL_SPEEDUP, GOAL_VS_BARE, GOAL_RERUN = 1.15, 1.6, 0.5, 0.1
# The datasets the extrapolation is for: (name, GB of text, rows, where the figures come from).
TARGETS = [
    ("OpenThoughts3-1.2M", 60.0, 1_200_000, "the issue's figures"),
    ("smoltalk2 SFT, 25 subsets", 30.0, 3_200_000, "an assumption: about 30 GB, 3.2M rows"),
]
POD_CPUS = 16

# --------------------------------------------------------------------------- data

COMMON = ("the of and to a in is that it for you was on are with as be this have not at by or from but they can an "
          "we which your all will one there their has more when if about what so out up would into them some time two "
          "like other then these than its only first new also any may after where most over make such each much how "
          "well very because just through even many those both used between here under same number part while few "
          "answer question value result data model step code function list table point example first second next "
          "let us see check since given therefore however thus note case true false error file line order set").split()
SYLLABLE_ONSETS = "b c d f g h j k l m n p r s t v w st tr pl ch sh th br gr cl".split()
SYLLABLE_VOWELS = "a e i o u ea ou io ai".split()
ENDINGS = ["", "", "", "s", "ed", "ing", "er", "ly", "tion", "n", "t"]
NON_ASCII = ["café", "naïve", "façade", "über", "Straße", "señor", "mañana", "Zürich", "déjà", "crème", "Ångström", "東京",
             "データ", "模型", "привет", "данные", "γράφημα", "→", "≈", "°C", "€", "µs", "—", "“quoted”"]
VOCAB_SIZE = 4000


@dataclass
class Vocab:
    words: list[str]
    cum_weights: list[float]


def make_vocab(rng: random.Random) -> Vocab:
    """Common English words first, then made-up words of 1-3 syllables and a
    few non-ASCII ones; word i is drawn with weight 1/(i+1) (Zipf)."""
    made: set[str] = set()
    while len(made) < VOCAB_SIZE - len(COMMON) - len(NON_ASCII):
        syllables = rng.choice((1, 2, 2, 2, 3, 3))
        stem = "".join(rng.choice(SYLLABLE_ONSETS) + rng.choice(SYLLABLE_VOWELS) for _ in range(syllables))
        made.add(stem + rng.choice(ENDINGS))
    tail = sorted(made) + NON_ASCII
    rng.shuffle(tail)
    words = COMMON + tail
    cum, total = [], 0.0
    for i in range(len(words)):
        total += 1.0 / (i + 1)
        cum.append(total)
    return Vocab(words, cum)


def prose(rng: random.Random, vocab: Vocab, n_words: int) -> str:
    """Sentences of 4-24 words with commas, some numbers, paragraphs."""
    picks = rng.choices(vocab.words, cum_weights=vocab.cum_weights, k=n_words)
    out, pos = [], 0
    while pos < n_words:
        k = min(n_words - pos, rng.randint(4, 24))
        sentence = picks[pos : pos + k]
        pos += k
        sentence[0] = sentence[0].capitalize()
        if k > 6 and rng.random() < 0.4:
            sentence[rng.randrange(2, k - 2)] += ","
        if rng.random() < 0.15:
            sentence.insert(rng.randrange(len(sentence)), str(rng.randint(0, 10 ** rng.randint(1, 6))))
        out.append(" ".join(sentence) + rng.choice(".....?!:"))
        out.append("\n\n" if rng.random() < 0.12 else " ")
    return "".join(out).strip()


def conversation(rng: random.Random, vocab: Vocab, n: int) -> dict:
    """One smoltalk2-shaped row: lognormal total length (median ~1350 words,
    mean ~1900, i.e. ~12 KB of JSON; 1 row in 1000 over ~16k words), split into
    1-4 exchanges; assistant turns get most of the words."""
    words = int(rng.lognormvariate(math.log(1350), 0.8)) + 30
    exchanges = rng.choices((1, 2, 3, 4), weights=(5, 3, 2, 1))[0]
    messages = []
    if rng.random() < 0.3:
        messages.append({"role": "system", "content": prose(rng, vocab, rng.randint(8, 60))})
    per_exchange = max(words // exchanges, 20)
    for _ in range(exchanges):
        user = max(4, int(per_exchange * rng.uniform(0.05, 0.35)))
        messages.append({"role": "user", "content": prose(rng, vocab, user)})
        messages.append({"role": "assistant", "content": prose(rng, vocab, max(per_exchange - user, 8))})
    return {"id": f"syn-{n}", "messages": messages, "reasoning": rng.random() < 0.5}


BROKEN_KINDS = ("no messages", "number content", "unknown role", "ends with user")


def broken(rng: random.Random, row: dict) -> dict:
    """The row damaged in one of the ways prepare_data must drop and count."""
    kind = rng.choice(BROKEN_KINDS)
    if kind == "no messages":
        return {"id": row["id"], "messages": [], "reasoning": row["reasoning"]}
    if kind == "number content":
        row["messages"][-1]["content"] = rng.randint(0, 10**6)
    elif kind == "unknown role":
        row["messages"][0]["role"] = "narrator"
    else:
        row["messages"].append({"role": "user", "content": "And then?"})
    return row


def write_jsonl(path: Path, target_bytes: int, seed: int) -> None:
    rng = random.Random(seed)
    vocab = make_vocab(rng)
    written, n = 0, 0
    with path.open("wb") as f:
        while written < target_bytes:
            row = conversation(rng, vocab, n)
            if rng.random() < BROKEN_SHARE:
                row = broken(rng, row)
            line = (json.dumps(row, ensure_ascii=False) + "\n").encode()
            f.write(line)
            written += len(line)
            n += 1


def leading_rows(src: Path, dst: Path, target_bytes: int) -> None:
    """The first lines of `src` up to `target_bytes` (at least one line)."""
    written = 0
    with src.open("rb") as fin, dst.open("wb") as fout:
        for line in fin:
            if written >= target_bytes:
                break
            fout.write(line)
            written += len(line)


def line_count(path: Path) -> int:
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 24), b""))


# --------------------------------------------------------------------------- stages


def configs(data_file: Path, num_proc: int) -> tuple[dict, dict]:
    """prepare_data's and tokenize_sft's configs: the tiny recipe with the
    generated file as its one SFT source."""
    recipe = apply_overrides(load_recipe(ROOT / "pipelines/smollm3.yaml", "tiny"),
                             [f"sft.max_length={MAX_LENGTH}", f"data.max_invalid_fraction={MAX_INVALID}"])
    stages = stage_configs(recipe)
    prep, tok = stages["prepare_data"], stages["tokenize_sft"]
    template = prep["data"]["sft"][0]
    prep["data"]["sft"] = [{**template, "name": "synthetic", "path": str(data_file), "revision": "sha256:" + sha256_file(data_file),
                            "max_examples": None, "weight": None, "tokens": None}]
    prep["data"]["midtrain"] = []
    prep["data"]["num_proc"] = num_proc
    prep["data"]["max_invalid_fraction"] = MAX_INVALID
    return prep, tok


@dataclass
class Child:
    wall_s: float
    rss_mb: float  # ru_maxrss: the largest single process (the child or one of its workers)
    anon_mb: float  # the child's own peak anonymous RSS (RssAnon, sampled): RSS less the mapped file pages
    workers_anon_mb: float  # its worker processes' anonymous RSS summed, sampled (0 without workers)
    cpu_s: float  # user + system, the workers' included
    rss_phase: str  # the child's last output line before its own sampled RSS reached its peak
    anon_phase: str  # the same for its anonymous RSS
    load: float  # the machine's 1-minute load average when the child ended (other work on it shows here)
    metrics: dict


# A progress bar line ("Tokenizing:  45%|...", "Generating train split: 686 examples [...]") names its phase before the colon.
PHASE = re.compile(r"^(.*?):\s+(\d+%\||\d+ examples)")


def memory_mb(pid: int) -> tuple[float, float]:
    """(RSS, anonymous RSS) of a process in MB, from /proc/<pid>/status. RSS
    also counts the pages of memory-mapped files (the Arrow files datasets
    reads), which the kernel can drop; the anonymous part it cannot."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon"):
                fields[key] = int(value.split()[0]) / 1024
    return fields.get("VmRSS", 0.0), fields.get("RssAnon", 0.0)


class Watch:
    """While a child runs: samples its memory (its own, and its workers'
    summed), and copies its output to a log, timestamping each line."""

    def __init__(self, proc: subprocess.Popen, log: Path):
        self.proc, self.log = proc, log
        self.workers_anon_peak = 0.0
        self.own: list[tuple[float, float, float]] = []  # (time, the child's own RSS MB, its anonymous RSS MB)
        self.lines: list[tuple[float, str]] = []
        self.done = threading.Event()
        self.threads = [threading.Thread(target=self._sample, daemon=True), threading.Thread(target=self._read, daemon=True)]
        for t in self.threads:
            t.start()

    def _sample(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.proc.pid)
            while not self.done.is_set():
                rss, anon = memory_mb(root.pid)
                workers = 0.0
                for p in root.children(recursive=True):
                    try:
                        workers += memory_mb(p.pid)[1]
                    except OSError:  # the worker has exited
                        pass
                self.own.append((time.perf_counter(), rss, anon))
                self.workers_anon_peak = max(self.workers_anon_peak, workers)
                self.done.wait(SAMPLE_EVERY_S)
        except (psutil.NoSuchProcess, OSError):
            pass

    def _read(self) -> None:
        pending = b""
        with self.log.open("wb") as out:
            while chunk := self.proc.stdout.read1(1 << 16):
                out.write(chunk)
                now = time.perf_counter()
                *complete, pending = re.split(rb"[\r\n]", pending + chunk)
                self.lines += [(now, line.decode(errors="replace").strip()) for line in complete if line.strip()]

    def stop(self) -> None:
        self.done.set()
        for t in self.threads:
            t.join()

    def anon_peak(self) -> float:
        return max((anon for _, _, anon in self.own), default=0.0)

    def peak_phase(self, column: int) -> str:
        """The phase in which the child's RSS (column 1) or anonymous RSS
        (column 2) first came within 2% of its peak (it rarely falls: Python
        keeps the memory it frees)."""
        if not self.own:
            return "?"
        peak = max(sample[column] for sample in self.own)
        reached = next(sample[0] for sample in self.own if sample[column] >= 0.98 * peak)
        before = [line for t, line in self.lines if t <= reached]
        if not before:
            return "start-up"
        match = PHASE.match(before[-1])
        return (match.group(1) if match else before[-1])[:70]


def run_stage(spec: dict, folder: Path, name: str, env: dict) -> Child:
    """One stage as a fresh process; its own rusage from os.wait4."""
    spec_path, log = folder / f"{name}.spec.json", folder / f"{name}.log"
    spec["result"] = str(folder / f"{name}.result.json")
    spec_path.write_text(json.dumps(spec))
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "posttrain.stages", str(spec_path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    watch = Watch(proc, log)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    watch.stop()
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-6000:]
        sys.exit(f"{name} failed (exit {proc.returncode}); last lines of its log:\n{tail}")
    metrics = json.loads(Path(spec["result"]).read_text())["metrics"]
    return Child(wall, usage.ru_maxrss / 1024, watch.anon_peak(), watch.workers_anon_peak, usage.ru_utime + usage.ru_stime,
                 watch.peak_phase(1), watch.peak_phase(2), os.getloadavg()[0], metrics)


@dataclass
class Run:
    mb: float
    lines: int
    num_proc: int
    prepare: Child
    tokenize: Child
    disk: dict[str, int]  # bytes after both stages: datasets cache, prepare_data's artifacts, the store
    rerun: Child | None = None

    @property
    def wall_s(self) -> float:
        return self.prepare.wall_s + self.tokenize.wall_s

    @property
    def disk_bytes(self) -> int:
        return sum(self.disk.values())

    @property
    def rss_mb(self) -> float:
        return max(self.prepare.rss_mb, self.tokenize.rss_mb)

    @property
    def anon_mb(self) -> float:
        return max(self.prepare.anon_mb, self.tokenize.anon_mb)

    @property
    def workers_anon_mb(self) -> float:
        return max(self.prepare.workers_anon_mb, self.tokenize.workers_anon_mb)

    @property
    def rows(self) -> float:
        return self.prepare.metrics["data.sft.rows"]

    @property
    def tokens(self) -> float:
        return self.prepare.metrics["data.sft.tokens"]


def du(*paths: Path) -> int:
    return sum(f.stat().st_size for p in paths if p.exists() for f in p.rglob("*") if f.is_file() and not f.is_symlink())


def measure(data_file: Path, base: Path, work: Path, num_proc: int, rerun: bool) -> Run:
    """prepare_data then tokenize, cold (fresh datasets cache and store);
    with `rerun`, tokenize once more on the same store and caches."""
    work.mkdir(parents=True)
    tmp = work / "tmp"
    tmp.mkdir()
    env = {**os.environ, "HF_DATASETS_CACHE": str(work / "hf-datasets"), "POSTTRAIN_STORE": f"file://{work / 'store'}",
           "TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1"}
    env.pop("POSTTRAIN_LOG_DIR", None)
    prep_cfg, tok_cfg = configs(data_file, num_proc)
    out = work / "prepared"
    prep = run_stage({"stage": "prepare_data", "config": prep_cfg, "inputs": {"base_model": str(base)},
                      "outputs": {"sft": str(out / "sft"), "midtrain": str(out / "midtrain"), "prompts": str(out / "prompts"),
                                  "stats": str(out / "stats.md")}}, work, "prepare_data", env)
    tok_spec = {"stage": "tokenize", "config": tok_cfg, "inputs": {"data": str(out / "sft"), "base_model": str(base)},
                "outputs": {"tokenized": str(work / "tokenized")}}
    tok = run_stage(dict(tok_spec), work, "tokenize", env)
    run = Run(data_file.stat().st_size / 1e6, line_count(data_file), num_proc, prep, tok,
              {"datasets cache": du(work / "hf-datasets"), "artifacts": du(out), "store": du(work / "store")})
    if rerun:
        run.rerun = run_stage({**tok_spec, "outputs": {"tokenized": str(work / "tokenized-rerun")}}, work, "tokenize-rerun", env)
    return run


def bare_tokenizer(data_file: Path) -> dict:
    """The fast tokenizer alone on every usable conversation of the file,
    rendered with the smollm3 template; only the tokenizer call is timed."""
    from transformers import AutoTokenizer

    from posttrain.data.rows import sft_row_problem
    from posttrain.templates import load_template

    tokenizer = AutoTokenizer.from_pretrained(prepare("tiny"))
    template = load_template("smollm3")
    tokens = rows = 0
    wall = cpu = 0.0

    def flush(texts: list[str]) -> None:
        nonlocal tokens, wall, cpu
        start, start_cpu = time.perf_counter(), time.process_time()
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        wall += time.perf_counter() - start
        cpu += time.process_time() - start_cpu
        tokens += sum(len(x) for x in ids)

    batch: list[str] = []
    with data_file.open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if sft_row_problem(row):
                continue
            batch.append(tokenizer.apply_chat_template(row["messages"], tokenize=False, chat_template=template,
                                                       enable_thinking=row["reasoning"]))
            rows += 1
            if len(batch) == TOKENIZER_BATCH:
                flush(batch)
                batch = []
    if batch:
        flush(batch)
    return {"rows": rows, "tokens": tokens, "wall_s": wall, "cpu_s": cpu}


# --------------------------------------------------------------------------- output


def runs_table(runs: list[Run]) -> str:
    lines = ["| MB | num_proc | rows in | rows kept | tokens | prepare s | tokenize s | prepare CPU s | tokenize CPU s | "
             "prepare peak RSS MB | tokenize peak RSS MB | prepare anon MB | tokenize anon MB | workers' anon MB, summed | "
             "rows/s | tokens/s | MB/s | disk MB: datasets cache + artifacts + store | load avg |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        p, t = r.prepare, r.tokenize
        lines.append(f"| {r.mb:.1f} | {r.num_proc} | {r.lines:,} | {r.rows:,.0f} | {r.tokens:,.0f} | {p.wall_s:.1f} | {t.wall_s:.1f} | "
                     f"{p.cpu_s:.1f} | {t.cpu_s:.1f} | {p.rss_mb:.0f} | {t.rss_mb:.0f} | {p.anon_mb:.0f} | {t.anon_mb:.0f} | "
                     f"{r.workers_anon_mb:.0f} | {r.rows / r.wall_s:,.0f} | {r.tokens / r.wall_s:,.0f} | {r.mb / r.wall_s:.2f} | "
                     f"{' + '.join(f'{b / 1e6:,.0f}' for b in r.disk.values())} = {r.disk_bytes / 1e6:,.0f} | "
                     f"{p.load:.1f}, {t.load:.1f} |")
    lines += ["", "Peak RSS: os.wait4's ru_maxrss (the child or its largest worker); anon: the child's own anonymous RSS "
              "(RssAnon, sampled every 0.2 s), i.e. without the pages of the memory-mapped Arrow files, which the kernel can "
              "drop; workers': the anonymous RSS of the child's worker processes (num_proc > 1) summed, sampled. Load avg: the 1-minute load average at the "
              "end of each child (other work on the machine).", "",
              "Where each child's memory reached its peak (its last output line before the sampled figure first came within 2% "
              "of its peak):", "", "| MB | num_proc | prepare_data RSS | prepare_data anon | tokenize RSS | tokenize anon |",
              "|---:|---:|---|---|---|---|"]
    lines += [f"| {r.mb:.1f} | {r.num_proc} | {r.prepare.rss_phase} | {r.prepare.anon_phase} | {r.tokenize.rss_phase} | "
              f"{r.tokenize.anon_phase} |" for r in runs]
    return "\n".join(lines)


def extrapolation(one: Run, two: Run) -> str:
    """Time, memory and disk for the target datasets on a POD_CPUS pod, linear
    in the measured per-MB figures of the largest size."""
    speedup = one.wall_s / two.wall_s
    efficiency = speedup / 2
    mb_per_s = one.mb / one.wall_s * POD_CPUS * efficiency
    disk_per_byte = one.disk_bytes / (one.mb * 1e6)
    # With num_proc N the stage's own process waits while N forked workers run the batches: its own peak anonymous
    # RSS plus N workers, a worker's from the num_proc 2 run (the workers' summed peak / 2); the larger child decides.
    per_worker_mb, own_mb = max(((c.workers_anon_mb / 2, c.anon_mb) for c in (two.prepare, two.tokenize)),
                                key=lambda w: w[1] + POD_CPUS * w[0])
    memory_gb = (own_mb + POD_CPUS * per_worker_mb) / 1024
    cpu_s_per_mb = cpu(one) / one.mb
    lines = [
        f"Linear extrapolation from the figures measured at {one.mb:.0f} MB (not a measurement): prepare+tokenize at "
        f"{one.mb / one.wall_s:.2f} MB/s with num_proc 1, assumed to scale linearly with CPUs at an efficiency of "
        f"(measured 2-worker speed-up {speedup:.2f}) / 2 = {efficiency:.2f}: {mb_per_s:.1f} MB/s on {POD_CPUS} CPUs with "
        f"num_proc {POD_CPUS}, the same for any data size (time linear in the MB of text, per-row costs folded in). "
        f"Memory: anonymous RSS (the page cache of the memory-mapped Arrow files comes on top and can be dropped): with "
        f"num_proc N the stage's process waits while N forked workers run the batches, so the stage's own "
        f"{own_mb:,.0f} MB + N x {per_worker_mb:,.0f} MB, half the 2 workers' summed anonymous RSS measured with "
        f"num_proc 2 (a forked worker also counts the pages it still shares with its parent, and the two peaks need not "
        f"coincide, so an upper bound), "
        f"taken as flat in the data size (the peak RSS row says how flat it measured). "
        f"Disk: {disk_per_byte:.2f} bytes per input byte (datasets cache + prepare_data artifacts + store, measured), linear. "
        f"The last time column is a bound that other work on this machine does not move: the CPU seconds measured per MB "
        f"({cpu_s_per_mb:.2f}, both children, num_proc 1) spread perfectly over {POD_CPUS} CPUs.",
        "",
        f"| dataset | text GB | rows | where the size comes from | time on a {POD_CPUS}-CPU pod | peak memory "
        "| disk for Arrow caches + store | time if CPU-bound and perfectly parallel |",
        "|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for name, gb, rows, source in TARGETS:
        hours, bound = gb * 1000 / mb_per_s / 3600, gb * 1000 * cpu_s_per_mb / POD_CPUS / 3600
        lines.append(f"| {name} | {gb:.0f} | {rows:,} | {source} | {hours:.1f} h | {memory_gb:.1f} GB | {gb * disk_per_byte:,.0f} GB "
                     f"| {bound:.1f} h |")
    return "\n".join(lines)


def cpu(run: Run) -> float:
    return run.prepare.cpu_s + run.tokenize.cpu_s


def report_rows(runs: dict[tuple[float, int], Run], sizes: list[float], bare: dict, setup: str) -> None:
    small, middle, large = (runs[(s, 1)] for s in sizes)
    two = runs[(sizes[-1], 2)]
    rss, anon = large.rss_mb / small.rss_mb, large.anon_mb / small.anon_mb
    print(f"\npeak RSS (max of the two children, num_proc 1): {small.rss_mb:.0f} MB at {small.mb:.1f} MB of data, "
          f"{middle.rss_mb:.0f} MB at {middle.mb:.1f} MB, {large.rss_mb:.0f} MB at {large.mb:.1f} MB; 16x / 1x = {rss:.2f}")
    print(f"peak anonymous RSS (the same without mapped file pages): {small.anon_mb:.0f} MB, {middle.anon_mb:.0f} MB, "
          f"{large.anon_mb:.0f} MB; 16x / 1x = {anon:.2f}")

    # Both figures, each its own row: RSS (what the pod's memory limit sees, mapped Arrow pages included) and the
    # anonymous part (what the stage itself holds; the kernel can drop the mapped pages under pressure).
    memory = [("peak RSS", "os.wait4 ru_maxrss", "rss_mb", "rss_phase", f"anonymous RSS alone: {anon:.2f}"),
              ("peak anonymous RSS", "RssAnon, sampled", "anon_mb", "anon_phase", f"RSS with mapped pages: {rss:.2f}")]
    for label, how, value, phase, other in memory:
        grew = "; ".join(f"{stage} {getattr(getattr(small, stage), value):.0f} -> {getattr(getattr(large, stage), value):.0f} MB "
                         f"(peak after '{getattr(getattr(large, stage), phase)}')" for stage in ("prepare", "tokenize"))
        report(f"data: {label} at 16x data / at 1x", f"{label} ({how}) of prepare_data / tokenize, the larger child, at "
               f"{large.mb:.0f} MB of JSONL (A) vs at {small.mb:.1f} MB (B), num_proc 1 ({other})",
               getattr(large, value), getattr(small, value), unit="MB", goal=("<=", GOAL_RSS), setup=setup,
               limits=f"{grew}. RSS includes the pages of the memory-mapped Arrow files a pass has read, which grow with the "
                      "data; the anonymous RSS is what the stage itself holds")

    speedup = large.wall_s / two.wall_s
    print(f"throughput at {large.mb:.0f} MB: {large.tokens / large.wall_s:,.0f} tokens/s with num_proc 1, "
          f"{two.tokens / two.wall_s:,.0f} with num_proc 2 (x{speedup:.2f}); CPU seconds {cpu(large):.0f} vs {cpu(two):.0f}")
    serial = two.tokenize.metrics.get("tokenize.rows", 0)
    report("data: prepare+tokenize throughput, num_proc 2 / 1", f"tokens/s of prepare_data + tokenize (summed wall time) at "
           f"{large.mb:.0f} MB with num_proc 2 (A) vs 1 (B)", two.tokens / two.wall_s, large.tokens / large.wall_s, unit="tokens/s",
           goal=(">=", GOAL_SPEEDUP), setup=setup,
           limits=f"{os.cpu_count()} CPUs: 2.0 is the ceiling, less what stays in one process: process start and imports "
                  f"(~{small.wall_s:.0f} s for both stages at the smallest size), the JSON-lines load, tokenize's template lint and "
                  f"packing (TRL's pack_dataset, one process, into {serial:,.0f} packed rows), writing the Arrow shards and the "
                  f"store copy; and other work on the machine: 1-minute load average {two.prepare.load:.1f} / "
                  f"{two.tokenize.load:.1f} at the end of the num_proc 2 children (CPU s / wall s: num_proc 1 "
                  f"{cpu(large) / large.wall_s:.2f}, num_proc 2 {cpu(two) / two.wall_s:.2f})")

    step = large.tokens / large.wall_s
    bare_rate = bare["tokens"] / bare["wall_s"]
    print(f"bare fast tokenizer on the same {bare['rows']:,} conversations: {bare['tokens']:,} tokens in {bare['wall_s']:.1f} s "
          f"({bare_rate:,.0f} tokens/s, CPU/wall {bare['cpu_s'] / bare['wall_s']:.2f}); prepare+tokenize counted {large.tokens:,.0f} "
          f"tokens: {step:,.0f} tokens/s, ratio {step / bare_rate:.2f}")
    report("data: step tokens/s / bare fast tokenizer tokens/s", f"tokens/s of prepare_data + tokenize at {large.mb:.0f} MB, "
           "num_proc 1, both processes' wall time (A) vs the bare fast tokenizer's batch call on the same conversations "
           "rendered with the chat template, in one process (B)", step, bare_rate, unit="tokens/s", goal=(">=", GOAL_VS_BARE),
           setup=setup, limits="prepare+tokenize tokenises every row twice (prepare_data counts, tokenize packs), renders the "
                               "Jinja chat template both times and computes the assistant mask from offsets; the bare tokenizer "
                               "does none of that: about 0.5 is the ceiling")

    rerun = large.rerun
    reused = rerun.metrics.get("tokenize.reused")
    print(f"tokenize rerun at {large.mb:.0f} MB (same store and caches): {rerun.wall_s:.1f} s vs {large.tokenize.wall_s:.1f} s cold, "
          f"ratio {rerun.wall_s / large.tokenize.wall_s:.3f}, tokenize.reused = {reused}")
    report("data: training-stage data preparation on a rerun", f"wall time of tokenize rerun with the same store and caches (A) vs "
           f"the cold tokenize (B), {large.mb:.0f} MB, num_proc 1", rerun.wall_s, large.tokenize.wall_s, unit="s",
           goal=("<=", GOAL_RERUN), setup=setup,
           limits="the rerun still starts Python, imports the stage, loads the tokenizer and hashes its vocabulary for the "
                  "content key; that fixed cost is seconds, so the ratio falls as the data grows")
    if reused != 1.0:
        sys.exit(f"FAILED: the tokenize rerun did not reuse the store (tokenize.reused = {reused})")


def data_files(tmp: Path, sizes: list[float], seed: int) -> dict[float, Path]:
    """The largest file generated, the others its leading rows."""
    start = time.perf_counter()
    largest = tmp / f"sft-{sizes[-1]:g}MB.jsonl"
    write_jsonl(largest, int(sizes[-1] * 1e6), seed)
    files = {sizes[-1]: largest}
    for size in sizes[:-1]:
        files[size] = tmp / f"sft-{size:g}MB.jsonl"
        leading_rows(largest, files[size], int(size * 1e6))
    print(f"generated {sizes[-1]:g} MB of JSONL ({line_count(largest):,} rows) in {time.perf_counter() - start:.0f} s",
          file=sys.stderr, flush=True)
    return files


def keep_logs(work: Path, logs: Path) -> None:
    keep = logs / work.name
    keep.mkdir(parents=True, exist_ok=True)
    for f in work.glob("*.*"):
        if f.is_file():
            shutil.copy(f, keep / f.name)


def measure_all(tmp: Path, files: dict[float, Path], logs: Path | None) -> dict[tuple[float, int], Run]:
    """Every size with num_proc 1, the largest also with 2; the rerun after
    the largest num_proc 1 run. Each run's folders are removed after it."""
    base = tmp / "base"
    write_model_ref(base, ModelRef(uri="local:tiny"))
    sizes = sorted(files)
    runs = {}
    for size, num_proc in [(s, 1) for s in sizes] + [(sizes[-1], 2)]:
        work = tmp / f"run-{size:g}MB-np{num_proc}"
        runs[(size, num_proc)] = run = measure(files[size], base, work, num_proc, rerun=(size == sizes[-1] and num_proc == 1))
        print(f"{size:g} MB num_proc {num_proc}: prepare {run.prepare.wall_s:.1f} s / {run.prepare.rss_mb:.0f} MB, tokenize "
              f"{run.tokenize.wall_s:.1f} s / {run.tokenize.rss_mb:.0f} MB", file=sys.stderr, flush=True)
        if logs:
            keep_logs(work, logs)
        shutil.rmtree(work)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", type=float, nargs=3, default=None, help=f"three JSONL sizes in MB (default {SIZES_MB})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help=f"sizes {QUICK_SIZES_MB} MB: a smoke run, not figures")
    parser.add_argument("--logs", type=Path, default=None, help="keep each child's spec, log and result JSON in this folder")
    args = parser.parse_args()
    sizes = sorted(args.sizes_mb or (QUICK_SIZES_MB if args.quick else SIZES_MB))
    start = time.perf_counter()
    prepare("tiny")
    with tempfile.TemporaryDirectory(prefix="bench-data-scale-", dir="/tmp") as tmp:
        files = data_files(Path(tmp), sizes, args.seed)
        runs = measure_all(Path(tmp), files, args.logs)
        bare = bare_tokenizer(files[sizes[-1]])
    total = time.perf_counter() - start
    small, large = runs[(sizes[0], 1)], runs[(sizes[-1], 1)]
    setup = (f"synthetic smoltalk2-shaped SFT JSONL of {', '.join(f'{s:g}' for s in sizes)} MB ({sizes[-1] / sizes[0]:g}x span; the "
             f"issue's 0.1/0.4/1.6 GB scaled down to fit a {os.cpu_count()}-CPU machine; mean row {large.mb * 1e3 / large.lines:.1f} KB, "
             f"0.5% broken rows), `tiny` recipe with sft.max_length {MAX_LENGTH}, the stages as child processes "
             "(`python -m posttrain.stages`), cold datasets cache and store per run"
             + (" — quick mode: the files have fewer rows than 2 batches, so num_proc 2 runs one process" if args.quick else ""))
    print(f"\ndata path at scale: {setup}")
    print(f"(rows in - rows kept: {small.lines - small.rows:,.0f} at the smallest size, {large.lines - large.rows:,.0f} at the largest: "
          "the broken and the over-max-length rows)\n")
    print(runs_table(list(runs.values())))
    report_rows(runs, sizes, bare, setup)
    print()
    print(extrapolation(large, runs[(sizes[-1], 2)]))
    print(f"\ntotal wall time {total / 60:.1f} min")


if __name__ == "__main__":
    main()
