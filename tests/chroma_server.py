"""A real Chroma server for tests: Chroma's own `chroma run` (the CLI the chromadb package installs)
on a free 127.0.0.1 port, persisting to a temporary folder."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.servers import free_port


class RunningChroma:
    """`chroma run --path <path> --host 127.0.0.1 --port <free port>` as a context manager; waits until
    the server answers its heartbeat, and stops it (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, path: Path, startup_timeout: float = 60.0) -> None:
        self.path = Path(path)
        self.host = "127.0.0.1"
        self.port = free_port()
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen | None = None
        self.log = self.path.with_name(self.path.name + ".log")

    @property
    def url(self) -> str:
        """Where the server answers."""
        return f"http://{self.host}:{self.port}"

    def overrides(self, sidecar: Path) -> list[str]:
        """Command-line overrides that point index.py or synthesize.py at this server."""
        return ["store=chroma_server", f"store.host={self.host}", f"store.port={self.port}", f"store.sidecar={sidecar}"]

    def __enter__(self) -> RunningChroma:
        chroma = Path(sys.executable).with_name("chroma")
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [str(chroma), "run", "--path", str(self.path), "--host", self.host, "--port", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.path,
            )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"chroma run exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/api/v2/heartbeat", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.__exit__()
        raise RuntimeError(f"chroma run did not answer on {self.url} within {self.startup_timeout} s")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
