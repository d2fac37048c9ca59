"""Run a command beside a throwaway PostgreSQL: ``python tests/support/throwaway_postgres.py
CMD ...`` (what ``make test`` does, and so CI).

The server lives in a temporary folder (initdb), listens on a free loopback port with trust
authentication, and is stopped and deleted when the command ends, however it ends. The
command finds it in ``ZOO_TEST_POSTGRES_URI`` (an empty database of its own), which the
PostgreSQL tests read. Nothing is started when that variable is already set (a server of
your own), when ``ZOO_TEST_POSTGRES=off``, or when PostgreSQL's ``initdb`` is not installed
(the tests then say they were skipped and why). As root, the server runs as the ``postgres``
user, since PostgreSQL refuses to run as root.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: tests/ holds it
from support.process import free_port

DATABASE = "zoo_test"
USER = "zoo"


def find_bin() -> Path | None:
    """The folder holding initdb and pg_ctl: PATH first, then Debian's versioned folders."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file():
            return folder
    return None


class ThrowawayPostgres:
    """initdb, start, ``uri``; ``stop()`` stops the server and deletes its folder."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="zoo-postgres-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.uri = f"postgresql://{USER}@127.0.0.1:{self.port}/{DATABASE}"
        self._as = []
        if os.geteuid() == 0:  # PostgreSQL will not run as root
            shutil.chown(self.root, "postgres", "postgres")
            self._as = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        done = subprocess.run([*self._as, *args], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {done.stderr[-2000:]}")

    def start(self) -> "ThrowawayPostgres":
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", USER, "--auth=trust",
                  "-E", "UTF8", "--no-instructions")
        options = (f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} "
                   "-c fsync=off -c max_connections=200")
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options,
                  "-l", str(self.root / "server.log"), "-w", "start")
        self._run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
                  "-U", USER, DATABASE)
        return self

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run([*self._as, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m",
                            "immediate", "-w", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    bin_dir = find_bin()
    if (os.environ.get("ZOO_TEST_POSTGRES_URI") or os.environ.get("ZOO_TEST_POSTGRES") == "off"
            or bin_dir is None):
        return subprocess.call(argv)
    server = ThrowawayPostgres(bin_dir)
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        server.start()
        print(f"throwaway PostgreSQL for the tests: {server.uri}", file=sys.stderr)
        started = time.monotonic()
        code = subprocess.call(argv, env={**os.environ, "ZOO_TEST_POSTGRES_URI": server.uri})
        print(f"(PostgreSQL stopped after {time.monotonic() - started:.0f} s)", file=sys.stderr)
        return code
    finally:
        server.stop()
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
