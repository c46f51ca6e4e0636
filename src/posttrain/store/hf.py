"""`hf://<namespace>`: checkpoints on the Hugging Face Hub through huggingface_hub.

A key `<recipe>/<stage>/<rest>` maps to the repo `<namespace>/<recipe>` (one
repo per recipe run), the branch `<stage>` (one branch per stage) and the
folder `<rest>` on it; each checkpoint is one commit carrying its files and its
manifest, so it appears whole or not at all. Large files go through the Hub's
LFS/Xet upload, which skips content the Hub already has, so a retried commit
resends only what is missing; downloads resume their `.incomplete` files.
`release` puts a final model at the root of its stage's branch (loadable with
`from_pretrained(repo, revision=stage)`) and, if asked, on `main`.
The token (HF_TOKEN) and endpoint (HF_ENDPOINT) come from the environment.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from urllib.parse import urlparse

from posttrain.store import MANIFEST, CheckpointStore, IncompleteCheckpoint, build_manifest, matches, verify, with_retries

log = logging.getLogger(__name__)


def _permanent(e: Exception) -> bool:
    """Errors no retry can fix: a bad token, no permission, a malformed request."""
    from huggingface_hub.errors import HfHubHTTPError

    status = getattr(getattr(e, "response", None), "status_code", None)
    return isinstance(e, HfHubHTTPError) and status in {400, 401, 403, 404, 409, 412, 422}


class HubStore(CheckpointStore):
    def __init__(self, uri: str, attempts: int = 8):
        from huggingface_hub import HfApi, constants, get_token

        parsed = urlparse(uri)
        self.uri = uri.rstrip("/")
        self.base = [p for p in (parsed.netloc, *parsed.path.split("/")) if p]
        if not self.base:
            raise ValueError(f"checkpoint store {uri!r}: name a Hub namespace, e.g. hf://my-org")
        if constants.HF_HUB_OFFLINE:
            raise ValueError(f"checkpoint store {uri!r}: HF_HUB_OFFLINE is set; an hf:// store needs the Hub (unset it, or use file:// or s3://)")
        if not get_token():
            raise ValueError(f"checkpoint store {uri!r}: no Hub token; set HF_TOKEN (a Kubernetes Secret on the cluster)")
        self.api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None)
        self.attempts = attempts
        self._ready: set[tuple[str, str]] = set()

    def _where(self, key: str) -> tuple[str, str, str]:
        """(repo_id, branch, folder) of a key."""
        parts = self.base + [p for p in key.split("/") if p]
        if len(parts) < 3:
            raise ValueError(f"{self.key_uri(key)}: an hf:// key needs <namespace>/<repo>/<branch>[/<folder>]")
        return f"{parts[0]}/{parts[1]}", parts[2], "/".join(parts[3:])

    def _retry(self, action, what: str):
        return with_retries(action, what, self.attempts, permanent=_permanent)

    def _ensure_branch(self, repo: str, branch: str) -> None:
        if (repo, branch) in self._ready:
            return
        self._retry(lambda: self.api.create_repo(repo, private=True, exist_ok=True), f"create repo {repo}")
        if branch != "main":
            self._retry(lambda: self.api.create_branch(repo, branch=branch, exist_ok=True), f"create branch {repo}@{branch}")
        self._ready.add((repo, branch))

    def _commit(self, repo: str, branch: str, operations: list, message: str):
        from huggingface_hub import CommitOperationAdd

        def commit():
            # create_commit mutates its operations: give every attempt fresh ones.
            ops = [CommitOperationAdd(o.path_in_repo, o.path_or_fileobj) if isinstance(o, CommitOperationAdd) else o for o in operations]
            return self.api.create_commit(repo, ops, commit_message=message, revision=branch)

        return self._retry(commit, f"commit {message!r} to {repo}@{branch}")

    def put(self, local_dir: Path, key: str) -> str:
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        repo, branch, folder = self._where(key)
        self._ensure_branch(repo, branch)
        manifest = build_manifest(local_dir)
        prefix = f"{folder}/" if folder else ""
        ops = [CommitOperationAdd(f"{prefix}{e['path']}", str(local_dir / e["path"])) for e in manifest["files"]]
        ops.append(CommitOperationAdd(f"{prefix}{MANIFEST}", json.dumps(manifest, indent=1).encode()))
        stale = set(self._files(repo, branch, folder)) - {o.path_in_repo for o in ops}
        ops += [CommitOperationDelete(path) for path in sorted(stale)]
        self._commit(repo, branch, ops, f"{folder or branch}: checkpoint ({len(manifest['files'])} files)")
        return self.key_uri(key)

    def release(self, local_dir: Path, key: str, to_main: bool = False) -> str | None:
        """The model's files at the root of the stage's branch (and of `main`),
        replacing the previous release's root files; checkpoint folders stay."""
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        repo, branch, folder = self._where(key)
        files = [e["path"] for e in build_manifest(local_dir)["files"]]
        for target in [branch, "main"] if to_main else [branch]:
            self._ensure_branch(repo, target)
            stale = {p for p in self._files(repo, target, "") if "/" not in p and p != ".gitattributes"} - set(files)
            ops = [CommitOperationAdd(p, str(local_dir / p)) for p in files] + [CommitOperationDelete(p) for p in sorted(stale)]
            self._commit(repo, target, ops, f"release {branch}/{folder}")
            log.info("released %s to %s@%s", self.key_uri(key), repo, target)
        return f"hf://{repo}@{'main' if to_main else branch}"

    def _files(self, repo: str, branch: str, folder: str) -> list[str]:
        """Paths of every file under `folder` on the branch ([] if there is no such repo, branch or folder)."""
        from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
        from huggingface_hub.hf_api import RepoFile

        def tree():
            try:
                entries = self.api.list_repo_tree(repo, path_in_repo=folder or None, revision=branch, recursive=True)
                return [e.path for e in entries if isinstance(e, RepoFile)]
            except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError):
                return []

        return self._retry(tree, f"list {repo}@{branch}/{folder}")

    def manifest(self, key: str) -> dict | None:
        from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

        repo, branch, folder = self._where(key)

        def read():
            try:
                path = self.api.hf_hub_download(repo, f"{folder}/{MANIFEST}" if folder else MANIFEST, revision=branch)
            except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError):
                return None
            return json.loads(Path(path).read_text())

        return self._retry(read, f"read {key}/{MANIFEST}")

    def get(self, key: str, cache_dir: Path) -> Path:
        manifest = self.manifest(key)
        if manifest is None:
            raise IncompleteCheckpoint(f"{self.key_uri(key)}: no complete checkpoint (manifest missing)")
        repo, branch, folder = self._where(key)
        root = Path(cache_dir) / "hf" / repo / branch
        for entry in manifest["files"]:
            remote = f"{folder}/{entry['path']}" if folder else entry["path"]
            if not matches(root / remote, entry):
                self._retry(lambda r=remote: self.api.hf_hub_download(repo, r, revision=branch, local_dir=root), f"download {repo}@{branch}/{remote}")
        dest = root / folder
        verify(dest, manifest)
        (dest / MANIFEST).write_text(json.dumps(manifest, indent=1))
        return dest

    def list(self, prefix: str) -> list[str]:
        repo, branch, folder = self._where(prefix)
        depth = folder.count("/") + 2 if folder else 1
        names = {p.split("/")[depth - 1] for p in self._files(repo, branch, folder) if p.endswith(f"/{MANIFEST}") and p.count("/") == depth}
        return sorted(f"{prefix.rstrip('/')}/{n}" for n in names)

    def delete(self, key: str) -> None:
        from huggingface_hub import CommitOperationDelete

        repo, branch, folder = self._where(key)
        if not folder:
            raise ValueError(f"{self.key_uri(key)}: refusing to delete a whole branch")
        if self._files(repo, branch, folder):
            # One commit: the manifest goes with the files, so the checkpoint is never half there.
            self._commit(repo, branch, [CommitOperationDelete(f"{folder}/", is_folder=True)], f"{folder}: delete")
