"""Start a local ``mlflow server`` / ``mlflow ui`` process and wait until it answers.

Used by the tests that talk to a real tracking server over HTTP and by the script that
takes the README's screenshots of the MLflow UI.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

from support.process import free_port


@contextlib.contextmanager
def mlflow_process(command: str, *args: str, timeout_s: float = 120.0) -> Iterator[str]:
    """Run ``mlflow <command> <args> --host 127.0.0.1 --port <free>``; yield its URL.

    The process is stopped (terminate, then kill) when the block ends; if it dies or does
    not answer ``/health`` in ``timeout_s``, its stderr tail is in the error. MLflow's job
    runner is off: on a database store it starts about ten huey consumers that take the two
    cores here for half a minute (a one-epoch run beside them took 19 s instead of 0.4), and
    the zoo runs no server jobs.
    """
    port = free_port()
    mlflow_cli = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen(
        [str(mlflow_cli), command, *args, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                    break
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow {command} exited: {proc.stderr.read()[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"mlflow {command} did not answer {url}/health in {timeout_s} s")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)
        if proc.poll() is None:
            proc.kill()
        if proc.stderr:
            proc.stderr.close()
