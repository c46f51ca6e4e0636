"""Write images/<kind>/requirements.txt: every Python package of an image, pinned.

    python -m posttrain.images.relock [--kinds train generate cpu] [--pip-arg ARG ...]

Each image installs its requirements.txt with `pip install --no-deps`, so the
file is the whole set (the Dockerfile adds what it installs by name: posttrain
from the source tree, and deepspeed / flash-attn / CPU torch, see there). The
set comes from pip's own resolver (`pip install --dry-run --report`, nothing is
installed), for this machine's platform (Linux x86_64, CPython 3.11: run it
there, as the images are), with requirements.lock as constraints so that the
images run the versions the test suite runs, except the few an image must
release (RELEASED below, each with its reason).

Sdists are resolved without build isolation (deepspeed's setup.py imports
torch for its metadata): run it from the project's venv (`make setup`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LOCK = ROOT / "requirements.lock"
PYPI = "https://pypi.org/simple"
# The CPU build of torch lives on PyTorch's own index only (PyPI's Linux torch is the CUDA build).
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


@dataclass(frozen=True)
class Spec:
    requirements: tuple[str, ...]
    # Installed by name in the Dockerfile (built there, or from another index): kept out of the file.
    exclude: tuple[str, ...] = ()
    # Names whose requirements.lock pin this image cannot keep.
    released: dict[str, str] = field(default_factory=dict)
    torch_cpu: bool = False


SPECS = {
    # posttrain[gpu] (deepspeed, liger-kernel) with PyPI's torch 2.13.0, the CUDA 13.0 build.
    # flash-attn is built in the Dockerfile; its runtime (torch, einops) and build (ninja,
    # psutil, packaging) dependencies are named here so that they are in the file.
    "train": Spec(("posttrain[gpu] @ {root}", "einops", "ninja", "psutil", "packaging"), exclude=("posttrain", "deepspeed")),
    # vLLM 0.30.0 is the newest release that pins torch==2.13.0 (the project's torch) and
    # accepts transformers 5.23.0 (0.31/0.32 cap transformers below 5.18/5.20, 0.33 pins torch 2.14).
    "generate": Spec(("posttrain @ {root}", "vllm==0.30.0"), exclude=("posttrain",),
                     released={"numpy": "vLLM 0.30.0 needs mistral-common, which needs numpy<2.4 on Python 3.11 (the lock has 2.4.x)"}),
    # torch is installed by the Dockerfile from PyTorch's CPU index (no CUDA libraries).
    "cpu": Spec(("posttrain @ {root}", "torch==2.13.0+cpu"), exclude=("posttrain", "torch"), torch_cpu=True),
}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def constraints(released: dict[str, str]) -> str:
    drop = {normalize(n) for n in released}
    lines = []
    for line in LOCK.read_text().splitlines():
        name = re.split(r"[=<>!~ ;\[]", line.strip(), maxsplit=1)[0]
        if line.strip() and not line.startswith("#") and normalize(name) not in drop:
            lines.append(line)
    return "\n".join(lines) + "\n"


def resolve(kind: str, spec: Spec, pip_args: list[str], torch_cpu_source: str) -> list[tuple[str, str]]:
    with tempfile.TemporaryDirectory() as tmp:
        cons = Path(tmp) / "constraints.txt"
        cons.write_text(constraints(spec.released))
        report = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-build-isolation", "--quiet",
               "--report", str(report), "-c", str(cons), *pip_args]
        if spec.torch_cpu:
            cmd += ["--find-links" if Path(torch_cpu_source).is_dir() else "--extra-index-url", torch_cpu_source]
        cmd += [r.format(root=ROOT.as_uri()) for r in spec.requirements]
        print(f"[{kind}] {' '.join(cmd)}", file=sys.stderr)
        subprocess.run(cmd, check=True, env={**os.environ, "DS_BUILD_OPS": "0"})
        installed = json.loads(report.read_text())["install"]
    excluded = {normalize(n) for n in spec.exclude}
    return sorted(((i["metadata"]["name"], i["metadata"]["version"]) for i in installed if normalize(i["metadata"]["name"]) not in excluded),
                  key=lambda nv: normalize(nv[0]))


def render(kind: str, spec: Spec, pins: list[tuple[str, str]]) -> str:
    head = [f"# The {kind} image's Python packages, every one pinned: written by `python -m posttrain.images.relock`, do not edit.",
            f"# Resolved from {', '.join(r.format(root='.') for r in spec.requirements)} with requirements.lock as constraints.",
            f"# Left out (the Dockerfile installs them by name): {', '.join(spec.exclude)}."]
    head += [f"# Not held to requirements.lock: {name}: {why}." for name, why in spec.released.items()]
    return "\n".join(head + [f"{name}=={version}" for name, version in pins]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m posttrain.images.relock", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", nargs="+", choices=sorted(SPECS), default=list(SPECS))
    parser.add_argument("--pip-arg", action="append", default=[],
                        help=f"passed to every pip call, e.g. --pip-arg=--index-url={PYPI} (repeat for several)")
    parser.add_argument("--torch-cpu", default=TORCH_CPU_INDEX, help="index URL, or a folder of wheels, holding torch==2.13.0+cpu")
    args = parser.parse_args(argv)
    for kind in args.kinds:
        spec = SPECS[kind]
        out = HERE / kind / "requirements.txt"
        out.write_text(render(kind, spec, resolve(kind, spec, args.pip_arg, args.torch_cpu)))
        print(f"[{kind}] wrote {out.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
