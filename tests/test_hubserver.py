"""FakeHub (tests/hubserver.py) driven only through the real huggingface_hub client."""

import hashlib
import os
from pathlib import Path

import pytest
from hubserver import MiB
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    RepoFile,
    RepoFolder,
    constants,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

REPO = "ns/name"
CKPT = "fp/checkpoint-1"


@pytest.fixture
def api(hub):
    return HfApi(endpoint=hub.endpoint, token="test-token")


def _checkpoint() -> dict[str, bytes]:
    return {
        "model.safetensors": os.urandom(2 * MiB),  # >= 1 MiB and *.safetensors: LFS
        "optimizer.pt": b"\x00\x01tiny but binary",  # NUL byte and *.pt: LFS
        "config.json": b'{"hidden_size": 8}\n',  # regular
        "sub/tokenizer_config.json": b'{"model_max_length": 64}\n',  # regular, nested
    }


def _commit_folder(api: HfApi, folder: str, files: dict[str, bytes], revision: str = "sft", **kw):
    ops = [CommitOperationAdd(path_in_repo=f"{folder}/{name}", path_or_fileobj=data) for name, data in files.items()]
    return api.create_commit(REPO, operations=ops, commit_message=f"add {folder}", revision=revision, **kw)


def _setup(api: HfApi) -> None:
    api.create_repo(REPO, exist_ok=True)
    api.create_branch(REPO, branch="sft", exist_ok=True)


def test_repo_and_branch_creation(hub, api):
    url = api.create_repo(REPO, exist_ok=True)
    assert url.repo_id == REPO and url.endpoint == hub.endpoint
    api.create_repo(REPO, exist_ok=True)  # idempotent
    with pytest.raises(HfHubHTTPError) as exc:
        api.create_repo(REPO)
    assert exc.value.response.status_code == 409

    [initial] = hub.commits(REPO, "main")
    assert hub.files(REPO, "main").keys() == {".gitattributes"}
    assert b"*.safetensors filter=lfs" in hub.files(REPO, "main")[".gitattributes"]

    api.create_branch(REPO, branch="sft", exist_ok=True)
    api.create_branch(REPO, branch="sft", exist_ok=True)
    with pytest.raises(HfHubHTTPError) as exc:
        api.create_branch(REPO, branch="sft")
    assert exc.value.response.status_code == 409

    refs = api.list_repo_refs(REPO)
    assert {(b.name, b.ref, b.target_commit) for b in refs.branches} == {
        ("main", "refs/heads/main", initial["id"]),
        ("sft", "refs/heads/sft", initial["id"]),
    }
    assert refs.tags == [] and len(initial["id"]) == 40
    assert api.model_info(REPO, revision="sft").sha == initial["id"]


def test_writes_need_a_token(hub):
    anonymous = HfApi(endpoint=hub.endpoint, token=False)
    with pytest.raises(HfHubHTTPError) as exc:
        anonymous.create_repo(REPO)
    assert exc.value.response.status_code == 401
    assert hub.requests == [("POST", "/api/repos/create")]


def test_commit_list_download_dedup_and_delete(hub, api, tmp_path):
    _setup(api)
    files = _checkpoint()
    info = _commit_folder(api, CKPT, files)
    assert len(info.oid) == 40 and hub.head(REPO, "sft") == info.oid
    assert hub.head(REPO, "main") != info.oid  # only the branch moved
    assert hub.files(REPO, "sft") == {".gitattributes": hub.files(REPO, "main")[".gitattributes"]} | {
        f"{CKPT}/{name}": data for name, data in files.items()
    }
    lfs_oids = sorted(hashlib.sha256(files[n]).hexdigest() for n in ("model.safetensors", "optimizer.pt"))
    assert sorted(hub.lfs_uploads) == lfs_oids
    assert hub.commits(REPO, "sft")[-1]["added"] == sorted(f"{CKPT}/{n}" for n in files)

    # Listing.
    expected_paths = sorted([".gitattributes", *(f"{CKPT}/{n}" for n in files)])
    assert sorted(api.list_repo_files(REPO, revision="sft")) == expected_paths
    top = list(api.list_repo_tree(REPO, path_in_repo=CKPT, revision="sft"))
    assert {(type(e).__name__, e.path) for e in top} == {
        ("RepoFile", f"{CKPT}/model.safetensors"), ("RepoFile", f"{CKPT}/optimizer.pt"),
        ("RepoFile", f"{CKPT}/config.json"), ("RepoFolder", f"{CKPT}/sub"),
    }
    deep = {e.path: e for e in api.list_repo_tree(REPO, path_in_repo="fp", revision="sft", recursive=True)}
    assert isinstance(deep[CKPT], RepoFolder) and isinstance(deep[f"{CKPT}/sub/tokenizer_config.json"], RepoFile)
    weights = deep[f"{CKPT}/model.safetensors"]
    assert weights.size == 2 * MiB and weights.lfs.sha256 == hashlib.sha256(files["model.safetensors"]).hexdigest()
    assert deep[f"{CKPT}/optimizer.pt"].lfs is not None and deep[f"{CKPT}/config.json"].lfs is None
    assert api.file_exists(REPO, f"{CKPT}/config.json", revision="sft")
    assert not api.file_exists(REPO, f"{CKPT}/config.json", revision="main")
    paths = api.get_paths_info(REPO, [CKPT, f"{CKPT}/config.json", "missing"], revision="sft", expand=True)
    assert [(type(p).__name__, p.path) for p in paths] == [("RepoFolder", CKPT), ("RepoFile", f"{CKPT}/config.json")]
    assert paths[1].last_commit.oid == info.oid

    # Download every file, into a local dir and into the cache, and compare bytes.
    for name, data in files.items():
        local = hf_hub_download(REPO, f"{CKPT}/{name}", revision="sft", local_dir=tmp_path / "local", endpoint=hub.endpoint, token="test-token")
        cached = hf_hub_download(REPO, f"{CKPT}/{name}", revision="sft", cache_dir=tmp_path / "cache", endpoint=hub.endpoint, token="test-token")
        assert Path(local).read_bytes() == data and Path(cached).read_bytes() == data
        assert info.oid in cached  # snapshots/<commit>/...

    # Recommitting identical content transfers nothing and makes no commit (the client drops no-op files).
    puts_before = [r for r in hub.requests if r[0] == "PUT"]
    n_commits = len(hub.commits(REPO, "sft"))
    again = _commit_folder(api, CKPT, files)
    assert again.oid == info.oid and len(hub.commits(REPO, "sft")) == n_commits
    assert sorted(hub.lfs_uploads) == lfs_oids and [r for r in hub.requests if r[0] == "PUT"] == puts_before
    # The same content under another path is a new commit, but the LFS objects are not sent again.
    copy = _commit_folder(api, "fp/checkpoint-2", files)
    assert copy.oid != info.oid and sorted(hub.lfs_uploads) == lfs_oids
    assert [r for r in hub.requests if r[0] == "PUT"] == puts_before

    # Delete a folder and a single file in one commit.
    gone = api.create_commit(
        REPO, revision="sft", commit_message="drop checkpoint-1",
        operations=[CommitOperationDelete(path_in_repo=f"{CKPT}/", is_folder=True),
                    CommitOperationDelete(path_in_repo="fp/checkpoint-2/config.json")],
    )
    remaining = api.list_repo_files(REPO, revision="sft")
    assert not [p for p in remaining if p.startswith(f"{CKPT}/")] and "fp/checkpoint-2/config.json" not in remaining
    assert "fp/checkpoint-2/model.safetensors" in remaining
    assert hub.commits(REPO, "sft")[-1]["deleted"] == sorted([*(f"{CKPT}/{n}" for n in files), "fp/checkpoint-2/config.json"])
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, f"{CKPT}/config.json", revision=gone.oid, cache_dir=tmp_path / "cache2", endpoint=hub.endpoint)
    # History is immutable: the old commit still serves the file.
    old = hf_hub_download(REPO, f"{CKPT}/model.safetensors", revision=info.oid, cache_dir=tmp_path / "cache2", endpoint=hub.endpoint)
    assert Path(old).read_bytes() == files["model.safetensors"]


def test_not_found_errors(hub, api, tmp_path):
    _setup(api)
    _commit_folder(api, CKPT, {"config.json": b"{}"})
    kw = {"cache_dir": tmp_path / "cache", "endpoint": hub.endpoint}
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("ns/missing", "config.json", **kw)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, f"{CKPT}/config.json", revision="no-such-branch", **kw)
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(REPO, f"{CKPT}/nope.json", revision="sft", **kw)
    with pytest.raises(RepositoryNotFoundError):
        api.list_repo_files("ns/missing")
    with pytest.raises(RevisionNotFoundError):
        api.list_repo_files(REPO, revision="no-such-branch")
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree(REPO, path_in_repo="no/such/folder", revision="sft"))
    with pytest.raises(RevisionNotFoundError):
        api.create_commit(REPO, operations=[CommitOperationAdd("a.txt", b"a")], commit_message="x", revision="no-such-branch")
    assert not api.file_exists(REPO, "nope.json") and not api.file_exists("ns/missing", "x")


def test_commits_are_atomic_and_parent_commit_is_checked(hub, api):
    _setup(api)
    first = _commit_folder(api, CKPT, {"config.json": b"{}"})
    before = hub.files(REPO, "sft")

    # One bad operation (deleting a missing file) rejects the whole commit.
    with pytest.raises(EntryNotFoundError):
        api.create_commit(REPO, revision="sft", commit_message="half", operations=[
            CommitOperationAdd("fp/new.txt", b"new"), CommitOperationDelete("fp/not-there.txt")])
    assert hub.files(REPO, "sft") == before and hub.head(REPO, "sft") == first.oid

    second = _commit_folder(api, CKPT, {"config.json": b'{"v": 2}'}, parent_commit=first.oid[:7])  # a prefix is accepted
    with pytest.raises(HfHubHTTPError) as exc:
        _commit_folder(api, CKPT, {"config.json": b'{"v": 3}'}, parent_commit=first.oid)
    assert exc.value.response.status_code == 412 and "A commit has happened since" in str(exc.value)
    assert hub.head(REPO, "sft") == second.oid and hub.files(REPO, "sft")[f"{CKPT}/config.json"] == b'{"v": 2}'
    assert [c["message"] for c in hub.commits(REPO, "sft")] == ["initial commit", f"add {CKPT}", f"add {CKPT}"]


def test_503_bursts(hub, api, tmp_path, sleeps):
    _setup(api)
    # Listing goes through the client's http_backoff: retried, with 1 s then 2 s waits.
    hub.fail_next = 2
    assert api.list_repo_files(REPO, revision="sft") == [".gitattributes"]
    assert sleeps == [1, 2] and hub.fail_next == 0

    # create_commit: preupload, LFS batch and PUT are retried...
    hub.fail_next = 1
    files = {"model.safetensors": os.urandom(MiB)}
    info = _commit_folder(api, CKPT, files)
    assert hub.files(REPO, "sft")[f"{CKPT}/model.safetensors"] == files["model.safetensors"] and sleeps == [1, 2, 1]
    # ...but the final POST /commit is not: the 503 reaches the caller and nothing changes.
    hub.fail_next, hub.fail_filter = 1, lambda method, path: "/commit/" in path
    with pytest.raises(HfHubHTTPError) as exc:
        _commit_folder(api, CKPT, {"config.json": b"{}"})
    assert exc.value.response.status_code == 503 and hub.head(REPO, "sft") == info.oid
    hub.fail_filter = None

    # Plain calls (create_branch, list_repo_refs, model_info) are not retried either.
    hub.fail_next = 1
    with pytest.raises(HfHubHTTPError):
        api.create_branch(REPO, branch="dpo")
    assert [b.name for b in api.list_repo_refs(REPO).branches] == ["main", "sft"]

    # hf_hub_download retries its HEAD itself when nothing is cached.
    sleeps.clear()
    hub.fail_next = 2
    path = hf_hub_download(REPO, f"{CKPT}/model.safetensors", revision="sft", cache_dir=tmp_path / "c", endpoint=hub.endpoint)
    assert Path(path).read_bytes() == files["model.safetensors"] and sleeps == [1]


def test_upload_killed_midway(hub, api, sleeps):
    _setup(api)
    data = os.urandom(2 * MiB)
    oid = hashlib.sha256(data).hexdigest()
    # Killed on every attempt: the client gives up, nothing is stored, the branch does not move.
    hub.fail_uploads_after(256 * 1024, times=6)
    head = hub.head(REPO, "sft")
    with pytest.raises(RuntimeError, match="Error while uploading"):
        _commit_folder(api, CKPT, {"model.safetensors": data})
    assert hub.lfs_aborted == [oid] * 6 and hub.lfs_uploads == [] and hub.head(REPO, "sft") == head
    # Killed once: http_backoff resumes by re-sending the whole object.
    hub.fail_uploads_after(256 * 1024)
    _commit_folder(api, CKPT, {"model.safetensors": data})
    assert hub.lfs_uploads == [oid] and hub.files(REPO, "sft")[f"{CKPT}/model.safetensors"] == data
    assert sleeps == [1, 2, 4, 8, 8, 1]  # 5 retries (6 attempts) with capped exponential backoff, then 1


def test_download_resumes_with_range(hub, api, tmp_path, sleeps):
    """A GET cut mid-body is resumed with `Range: bytes=<n>-`, n being what the client had written.

    The client reads the body in DOWNLOAD_CHUNK_SIZE (10 MiB) pieces and loses a partial piece, so a cut
    below 10 MiB restarts from 0 (no Range); past it, it resumes from the last whole piece.
    """
    _setup(api)
    chunk = constants.DOWNLOAD_CHUNK_SIZE
    data = os.urandom(chunk + MiB)
    _commit_folder(api, CKPT, {"model.safetensors": data})
    hub.fail_downloads_after(MiB // 2)
    hub.fail_downloads_after(chunk + MiB // 2)
    path = hf_hub_download(REPO, f"{CKPT}/model.safetensors", revision="sft", local_dir=tmp_path / "out", endpoint=hub.endpoint)
    assert Path(path).read_bytes() == data
    gets = [(e["range"], e["status"]) for e in hub.settled() if e["method"] == "GET" and "/resolve/" in e["path"]]
    assert gets == [(None, "dropped"), (None, "dropped"), (f"bytes={chunk}-", 206)]
    assert sleeps == [1, 1]


def test_tree_pagination_and_snapshot_download(hub, api, tmp_path):
    hub.tree_page_size = 2
    _setup(api)
    files = _checkpoint()
    _commit_folder(api, CKPT, files)
    expected = {".gitattributes", *(f"{CKPT}/{n}" for n in files)}
    assert set(api.list_repo_files(REPO, revision="sft")) == expected
    assert len([r for r in hub.requests if "/tree/" in r[1]]) > 1  # followed the Link header

    folder = snapshot_download(REPO, revision="sft", cache_dir=tmp_path / "snap", endpoint=hub.endpoint)
    got = {p.relative_to(folder).as_posix(): p.read_bytes() for p in Path(folder).rglob("*") if p.is_file()}
    assert got == hub.files(REPO, "sft")


def test_xet_is_never_offered(hub, api, monkeypatch):
    """With hf_xet installed and Xet not disabled, the client picks Xet by itself: the fake Hub refuses it loudly."""
    _setup(api)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", False)
    with pytest.raises(Exception, match="xet-write-token"):
        _commit_folder(api, CKPT, {"model.safetensors": os.urandom(MiB)})
    assert ("GET", "/api/models/ns/name/xet-write-token/sft") in hub.requests
    hub.requests.clear()  # the fixture asserts the other tests never went that way
