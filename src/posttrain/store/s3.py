"""`s3://bucket/prefix` through boto3. The endpoint (AWS_ENDPOINT_URL), region
and credentials come from the environment, so AWS, MinIO and SeaweedFS all
work. Every call is retried with backoff. Large files go up as multipart
uploads that survive a restart: a new attempt, in this process or the next,
finds the unfinished upload, keeps the parts whose checksums match and sends
only the rest. Downloads resume from the bytes already on disk."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from urllib.parse import urlparse

from posttrain.store import MANIFEST, CheckpointStore, IncompleteCheckpoint, build_manifest, matches, verify, with_retries

log = logging.getLogger(__name__)
MiB = 1 << 20


def _permanent(e: Exception) -> bool:
    """Errors no retry can fix: bad credentials, a missing bucket."""
    code = getattr(e, "response", {}).get("Error", {}).get("Code", "")
    return code in {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket"}


class S3Store(CheckpointStore):
    def __init__(self, uri: str, attempts: int = 8, part_size: int = 64 * MiB, workers: int = 4):
        import boto3
        from botocore.config import Config

        parsed = urlparse(uri)
        self.uri = uri.rstrip("/")
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.attempts = attempts
        self.part_size = int(os.environ.get("POSTTRAIN_S3_PART_SIZE", part_size))
        self.workers = workers
        config = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=60, max_pool_connections=workers + 2)
        self.client = boto3.client("s3", config=config)

    def _key(self, key: str, name: str = "") -> str:
        return "/".join(p for p in (self.prefix, key.strip("/"), name) if p)

    def _retry(self, action, what: str):
        return with_retries(action, what, self.attempts, permanent=_permanent)

    # -- upload ---------------------------------------------------------------

    def put(self, local_dir: Path, key: str) -> str:
        manifest = build_manifest(local_dir)
        # A re-upload under the same key is incomplete until its new manifest lands.
        self._retry(lambda: self.client.delete_object(Bucket=self.bucket, Key=self._key(key, MANIFEST)), f"unpublish {key}")
        for entry in manifest["files"]:
            self._upload(local_dir / entry["path"], self._key(key, entry["path"]))
        body = json.dumps(manifest, indent=1).encode()
        self._retry(lambda: self.client.put_object(Bucket=self.bucket, Key=self._key(key, MANIFEST), Body=body), f"upload {key}/{MANIFEST}")
        return self.key_uri(key)

    def _upload(self, src: Path, dest: str) -> None:
        size = src.stat().st_size
        if size <= self.part_size:
            self._retry(lambda: self.client.put_object(Bucket=self.bucket, Key=dest, Body=src.read_bytes()), f"upload {dest}")
            return
        upload_id, done = self._retry(lambda: self._open_multipart(dest), f"start multipart upload of {dest}")
        ranges = [(n, start, min(self.part_size, size - start)) for n, start in enumerate(range(0, size, self.part_size), 1)]
        kept = {n: done[n] for n, start, length in ranges if n in done and done[n][1] == length and done[n][0] == _md5(src, start, length)}
        if done:
            log.info("resuming the multipart upload of %s: %d of %d parts already stored", dest, len(kept), len(ranges))
        todo = [r for r in ranges if r[0] not in kept]

        def send(part):
            n, start, length = part
            body = _read(src, start, length)
            put = partial(self.client.upload_part, Bucket=self.bucket, Key=dest, UploadId=upload_id, PartNumber=n, Body=body)
            return n, self._retry(put, f"upload part {n}/{len(ranges)} of {dest}")["ETag"]

        with ThreadPoolExecutor(self.workers) as pool:
            etags = {n: etag for n, (_, _, etag) in kept.items()}
            etags.update(dict(pool.map(send, todo)))
        parts = [{"PartNumber": n, "ETag": etags[n]} for n, _, _ in ranges]
        complete = partial(self.client.complete_multipart_upload, Bucket=self.bucket, Key=dest, UploadId=upload_id, MultipartUpload={"Parts": parts})
        self._retry(complete, f"complete multipart upload of {dest}")

    def _open_multipart(self, dest: str) -> tuple[str, dict[int, tuple[str, int, str]]]:
        """The newest unfinished upload of `dest` with its parts {n: (md5, size, etag)},
        or a new upload. Older unfinished uploads of the same key are aborted."""
        uploads = [u for u in self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=dest).get("Uploads", []) if u["Key"] == dest]
        uploads.sort(key=lambda u: u["Initiated"])
        for stale in uploads[:-1]:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=dest, UploadId=stale["UploadId"])
        if not uploads:
            return self.client.create_multipart_upload(Bucket=self.bucket, Key=dest)["UploadId"], {}
        upload_id, parts, marker = uploads[-1]["UploadId"], {}, 0
        while True:
            page = self.client.list_parts(Bucket=self.bucket, Key=dest, UploadId=upload_id, PartNumberMarker=marker)
            for p in page.get("Parts", []):
                parts[p["PartNumber"]] = (p["ETag"].strip('"'), p["Size"], p["ETag"])
            if not page.get("IsTruncated"):
                return upload_id, parts
            marker = page["NextPartNumberMarker"]

    # -- read -----------------------------------------------------------------

    def manifest(self, key: str) -> dict | None:
        def read():
            try:
                return json.loads(self.client.get_object(Bucket=self.bucket, Key=self._key(key, MANIFEST))["Body"].read())
            except self.client.exceptions.NoSuchKey:
                return None

        return self._retry(read, f"read {key}/{MANIFEST}")

    def get(self, key: str, cache_dir: Path) -> Path:
        manifest = self.manifest(key)
        if manifest is None:
            raise IncompleteCheckpoint(f"{self.key_uri(key)}: no complete checkpoint (manifest missing)")
        dest = Path(cache_dir) / self.bucket / self._key(key)
        for entry in manifest["files"]:
            path = dest / entry["path"]
            if not matches(path, entry):  # a file fetched before is not fetched again
                self._download(self._key(key, entry["path"]), path, entry)
        verify(dest, manifest)
        (dest / MANIFEST).write_text(json.dumps(manifest, indent=1))
        return dest

    def _download(self, src: str, path: Path, entry: dict, fresh: bool = False) -> None:
        """Stream `src` into `<path>.<sha>.partial`, resuming from its size on
        every retry; rename once complete."""
        path.parent.mkdir(parents=True, exist_ok=True)
        partial_path = path.with_name(f"{path.name}.{entry['sha256'][:16]}.partial")

        def fetch_rest():
            have = partial_path.stat().st_size if partial_path.exists() else 0
            if have < entry["size"]:
                body = self.client.get_object(Bucket=self.bucket, Key=src, Range=f"bytes={have}-")["Body"]
                with open(partial_path, "ab") as f:
                    for block in body.iter_chunks(8 * MiB):
                        f.write(block)

        self._retry(fetch_rest, f"download {src}")
        os.replace(partial_path, path)
        if not matches(path, entry) and not fresh:
            log.warning("%s: resumed download does not match the manifest; downloading it again whole", src)
            path.unlink()
            self._download(src, path, entry, fresh=True)

    def list(self, prefix: str) -> list[str]:
        def children() -> list[str]:
            names, token = [], None
            while True:
                kwargs = {"Bucket": self.bucket, "Prefix": self._key(prefix) + "/", "Delimiter": "/"}
                if token:
                    kwargs["ContinuationToken"] = token
                page = self.client.list_objects_v2(**kwargs)
                names += [p["Prefix"].rstrip("/").rsplit("/", 1)[-1] for p in page.get("CommonPrefixes", [])]
                if not page.get("IsTruncated"):
                    return names
                token = page["NextContinuationToken"]

        keys = [f"{prefix.rstrip('/')}/{name}" for name in self._retry(children, f"list {prefix}")]
        return sorted(k for k in keys if self.manifest(k) is not None)

    def delete(self, key: str) -> None:
        def remove():
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key, MANIFEST))
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(key) + "/"):
                for obj in page.get("Contents", []):
                    self.client.delete_object(Bucket=self.bucket, Key=obj["Key"])
            # Unfinished uploads under the key hold storage too.
            for upload in self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=self._key(key) + "/").get("Uploads", []):
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"])

        self._retry(remove, f"delete {key}")


def _read(path: Path, start: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(length)


def _md5(path: Path, start: int, length: int) -> str:
    return hashlib.md5(_read(path, start, length), usedforsecurity=False).hexdigest()
