"""A ``bentoml serve`` subprocess on a free port, for the tests and the benchmark."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
BENTOML = str(Path(sys.executable).parent / "bentoml")
ISOLATED = Path(__file__).resolve().parent / "isolated"  # its sitecustomize.py


def isolated_env(hide: tuple[str, ...] = ("training",), checkout: bool = True) -> dict[str, str]:
    """Environment variables under which a process (and its children) cannot import the
    ``hide`` packages, nor, with ``checkout=False``, the project from this checkout (run it
    from another folder): as in a container that holds only a Bento. See
    ``support/isolated/sitecustomize.py``."""
    env = {"PYTHONPATH": str(ISOLATED), "ZOO_TEST_HIDE": ",".join(hide)}
    if not checkout:
        env.update(ZOO_TEST_NO_CHECKOUT="1", ZOO_TEST_CHECKOUT=str(REPO))
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``bentoml serve TARGET`` with ``env``; ``url`` once ``/readyz`` answers 200.
    ``host=None`` leaves the address to the service (``ZOO_HOST``, default 127.0.0.1)."""

    def __init__(self, target: str, env: dict[str, str], cwd: Path = REPO,
                 log: Path | None = None, timeout: float = 120,
                 host: str | None = "127.0.0.1") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log or Path(env.get("ZOO_CACHE_DIR", "/tmp")) / f"server-{self.port}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._handle = self.log.open("w")
        # A BentoML home of its own: BentoML keeps the Prometheus files of every server under
        # it and clears them when a server starts, so servers sharing one lose their metrics.
        self._home = tempfile.mkdtemp(prefix="zoo-bentoml-home-")
        self.process = subprocess.Popen(
            [BENTOML, "serve", target, *(["--host", host] if host else []),
             "--port", str(self.port)],
            cwd=cwd, env={**os.environ, "BENTOML_HOME": self._home, **env},
            stdout=self._handle, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n"
                                   f"{self.output()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"server not ready in {timeout} s:\n{self.output()[-3000:]}")

    def output(self) -> str:
        self._handle.flush()
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait()
        self._handle.close()
        shutil.rmtree(self._home, ignore_errors=True)

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
