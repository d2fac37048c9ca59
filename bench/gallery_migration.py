"""Carrying a gallery to a new version: speed against the model's own, and what serving
meanwhile feels.

    python bench/gallery_migration.py [--entries 100000] [--seconds 15] [--clients 4]
        [--batch-size 64] [--nice 0,10] [--threads 0] [--out FILE]

A resnet18 (32 px) is trained for one epoch on digits, registered and exported into a
temporary store (``bench/serve_throughput.py``'s ``prepare``), and the same run is registered
twice more as versions 2 and 3 with the export's tags copied: a new version of the same
architecture and size, so the same speed (its weights are the same, and the gate passes).

1. **Fill.** ``--entries`` kept entries, ``--per-identity`` per person: digits images scaled
   to ``--side`` px, each shifted by up to 2 px and given noise (so no two are the same),
   kept as ``keep_image`` keeps an upload's decoded image, embedded by version 1 and enrolled
   through ``GalleryStore.enroll`` in this process (one transaction per person, as
   ``python -m serving.enroll`` does; not over HTTP).
2. **Throughput.** Version 2's ``ServedModel.run_batched`` on the first 2,048 entries as the
   migration decodes them (unsealed, ``kept_input``), at the same batch size and threads:
   images/s, measured before and after the migration and averaged. Then
   ``python -m serving.migrate --to models:/zoo-digits/2`` in a subprocess: entries/s as the
   command reports them (its batches: not its start-up nor its gate; at the default
   ``ZOO_MIGRATION_NICE``, on a machine otherwise idle), against the raw rate (target
   >= 0.8), and where its wall time goes (from its progress bar's timestamps).
3. **Latency.** Version 1 served by ``bentoml serve`` (default settings) with the filled
   gallery; ``--clients`` clients post one digit to ``/identify`` each, for ``--seconds`` in
   steady state, then while ``python -m serving.migrate --to models:/zoo-digits/3`` carries
   (from its first carried batch; run at each ``--nice`` as ``ZOO_MIGRATION_NICE``, then
   stopped: it resumes where it stands), then steady again. p99 during a migration against
   the mean of the steady p99s (target <= 2). The migration and the server share this
   machine's cores.
4. **Memory and disk.** The migration's peak RSS (``wait4``), also sampled while it carries,
   and the gallery's database (``gallery.db`` and its WAL) per kept entry, after the fill and
   after the migration, and a sealed kept image's mean size.

Prints one Markdown table (``--out`` writes it to a file too); a set-up that fails stops
with one line saying why (exit 1).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # support.*

from bench.serve_throughput import digit_pngs, load, multipart, prepare  # noqa: E402

FAMILY = "zoo-digits"
RAW_SAMPLE = 2048  # entries decoded for the raw rate (32 batches of 64)
CARRIED = re.compile(r"(\d+) kept entries embedded now, (\d+) of (\d+) done, in ([\d.]+) s")
BAR = re.compile(r"carrying:.*?(\d+)(?:/\d+|entry)? \[")
GATING = re.compile(r"^gating: both versions")  # serving.migrate's GATING_LINE


class SetupError(Exception):
    """A step the bench needs failed: stop with one line."""


# --- the store ------------------------------------------------------------------------------

def register_copies(env: dict[str, str], count: int) -> str:
    """Version 1's run registered ``count`` more times with its tags (the export's included,
    not the gate's); returns the run id."""
    import mlflow

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])  # the source resolves in this store
    client = mlflow.MlflowClient()
    first = client.get_model_version(FAMILY, "1")
    tags = {k: v for k, v in (first.tags or {}).items() if not k.startswith("zoo.gate")}
    for _ in range(count):
        client.create_model_version(FAMILY, first.source, first.run_id, tags=tags)
    return first.run_id


def served(uri: str, threads: int = 0, index: str = "") -> object:
    """A ``ServedModel`` of ``uri`` with the environment's settings (``threads``, ``index``:
    overrides)."""
    from mlflow_source.fetch import fetch_bundle
    from serving.model.served import ServedModel
    from serving.settings import ServeSettings

    settings = ServeSettings.from_env()
    settings = replace(settings, model_uri=uri, threads=threads or settings.threads,
                       gallery_index=index or settings.gallery_index)
    return ServedModel(fetch_bundle(uri, settings.cache_path()), settings)


def kept_images(first: int, count: int, per: int, side: int) -> list[list[bytes]]:
    """People ``first`` .. ``first + count - 1``, ``per`` kept images each: one digit per
    person, each image of it shifted and noisy, as ``keep_image`` keeps it."""
    from PIL import Image
    from sklearn.datasets import load_digits

    from serving.gallery.kept import keep_image

    digits = load_digits().images
    people = []
    for person in range(first, first + count):
        rng = np.random.default_rng(person)
        base = Image.fromarray((digits[person % len(digits)] * 255 / 16).astype(np.uint8))
        base = np.asarray(base.resize((side, side), Image.Resampling.BILINEAR), np.float32)
        images = []
        for _ in range(per):
            shifted = np.roll(base, tuple(rng.integers(-2, 3, 2)), axis=(0, 1))
            noisy = np.clip(shifted + rng.normal(0, 6, shifted.shape), 0, 255).astype(np.uint8)
            images.append(keep_image(Image.fromarray(noisy)))
        people.append(images)
    return people


def fill(uri: str, entries: int, per: int, side: int, threads: int) -> None:
    """``entries`` kept entries enrolled with version 1, one transaction per person."""
    from tqdm import tqdm

    from serving.gallery.kept import kept_input

    model = served(uri, threads, index="flat")  # no k-means while it grows
    try:
        if model.sealer is None:
            raise SetupError("ZOO_KEEP_ENROLLED=false: nothing would be kept to carry")
        people, chunk = -(-entries // per), 256
        with tqdm(total=people * per, desc="fill (GalleryStore.enroll, not HTTP)",
                  unit="entry", mininterval=2) as bar:
            for first in range(0, people, chunk):
                batch = kept_images(first, min(chunk, people - first), per, side)
                flat = [data for person in batch for data in person]
                x = np.stack([kept_input("image", d, model.pre, None, model.settings)
                              for d in flat])
                vectors = model.run_batched(x)["embedding"]
                for i, person in enumerate(batch):
                    model.gallery.enroll(vectors[i * per:(i + 1) * per],
                                         f"person{first + i:06d}",
                                         [hashlib.sha256(d).hexdigest() for d in person],
                                         ("image", person))
                    bar.update(len(person))
    finally:
        model.close()


# --- measuring ------------------------------------------------------------------------------

def db_bytes(folder: Path) -> int:
    """The gallery's database and its write-ahead log."""
    return sum(p.stat().st_size for p in folder.glob("gallery.db*") if not p.name.endswith("shm"))


def query(folder: Path, sql: str, *args: object) -> int:
    with sqlite3.connect(f"file:{folder / 'gallery.db'}?mode=ro", uri=True, timeout=30) as db:
        return int(db.execute(sql, args).fetchone()[0] or 0)


def carried(folder: Path, key: str) -> int:
    return query(folder, "SELECT count(*) FROM zoo_gallery_entries WHERE model_key = ? "
                 "AND kept_id IS NOT NULL", key)


@dataclass
class Sample:
    """The first kept entries as the migration reads them, with its per-entry costs."""

    x: np.ndarray
    unseal_us: float
    decode_us: float


def sample(model, folder: Path) -> Sample:
    """The first ``RAW_SAMPLE`` kept entries unsealed and decoded as ``carry`` does, timed."""
    from serving.gallery.kept import kept_input

    with sqlite3.connect(f"file:{folder / 'gallery.db'}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT identity, kind, payload FROM zoo_gallery_kept ORDER BY id "
                          "LIMIT ?", (RAW_SAMPLE,)).fetchall()
    family = model.gallery.contract.name
    t0 = time.perf_counter()
    opened = [(kind, model.sealer.open(family, who, kind, payload)) for who, kind, payload in rows]
    t1 = time.perf_counter()
    x = np.stack([kept_input(kind, data, model.pre, model.faces, model.settings)
                  for kind, data in opened])
    t2 = time.perf_counter()
    return Sample(x, (t1 - t0) / len(rows) * 1e6, (t2 - t1) / len(rows) * 1e6)


def raw_rate(model, x: np.ndarray, seconds: float) -> float:
    """``run_batched`` on ``x`` over and over for ``seconds``: images/s."""
    model.run_batched(x[:model.settings.max_batch_size])
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        model.run_batched(x)
        done += len(x)
    return done / (time.perf_counter() - start)


def table_ms(model) -> tuple[float, float]:
    """Milliseconds of one ``CarryTable.pending`` batch and one ``count`` (what ``carry``
    reads before and after each batch)."""
    from serving.gallery.table import CarryTable

    table = CarryTable(model.gallery.table)
    size = model.settings.max_batch_size
    t0 = time.perf_counter()
    for _ in range(5):
        table.pending(0, size)
    t1 = time.perf_counter()
    for _ in range(5):
        table.count()
    return (t1 - t0) / 5 * 1000, (time.perf_counter() - t1) / 5 * 1000


@dataclass
class Migration:
    """One ``python -m serving.migrate`` run, watched."""

    code: int = -1
    wall_s: float = 0.0
    added: int = 0
    carry_s: float = 0.0
    maxrss_mb: float = 0.0
    rss: list[tuple[float, float]] = field(default_factory=list)  # (s, MiB) every 0.1 s
    bar_times: list[tuple[float, int]] = field(default_factory=list)  # while carrying
    gating_at: float = 0.0  # when it said the gate began
    carried_at: float = 0.0  # when the command printed what it carried (the gate's end)
    output: str = ""

    @property
    def rate(self) -> float:
        return self.added / self.carry_s if self.carry_s else 0.0

    def peaks(self) -> dict[str, float]:
        """Peak sampled RSS (MiB) in start-up, carrying, the gate (with the tags), and the
        rest (the report, closing)."""
        if not self.bar_times or not self.gating_at or not self.carried_at:
            return {}
        edges = {"start-up": (0.0, self.bar_times[0][0]),
                 "carrying": (self.bar_times[0][0], self.gating_at),
                 "gate": (self.gating_at, self.carried_at),
                 "the rest": (self.carried_at, float("inf"))}
        return {name: max((mb for t, mb in self.rss if lo <= t < hi), default=float("nan"))
                for name, (lo, hi) in edges.items()}

    def phases(self) -> dict[str, float]:
        """Seconds of start-up, the batches, after the last batch (the counts of the
        report), the gate with its tags, and the rest, from the progress bar's timestamps."""
        if len(self.bar_times) < 2 or not self.gating_at or not self.carried_at:
            return {}
        first = self.bar_times[0][0]
        done = max(n for _, n in self.bar_times)
        last = min(t for t, n in self.bar_times if n == done)  # the last batch's draw
        return {"start-up": first, "batches": last - first,
                "after the last batch (the report's counts)": self.gating_at - last,
                "the gate and its tags": self.carried_at - self.gating_at,
                "the rest": self.wall_s - self.carried_at}


def start_migration(uri: str, env: dict[str, str], batch: int, nice: int | None = None,
                    output: object = subprocess.PIPE) -> subprocess.Popen:
    """``python -m serving.migrate --to uri``, its work ``nice`` steps nicer
    (``ZOO_MIGRATION_NICE``; None: the default); its output to ``output`` (pipes by
    default)."""
    niceness = {} if nice is None else {"ZOO_MIGRATION_NICE": str(nice)}
    return subprocess.Popen(
        [sys.executable, "-m", "serving.migrate", "--to", uri, "--batch-size", str(batch)],
        cwd=REPO, env={**os.environ, **env, **niceness, "PYTHONPATH": str(REPO),
                       "PYTHONUNBUFFERED": "1"},
        stdout=output, stderr=subprocess.STDOUT if output is not subprocess.PIPE else output)


def migrate_watched(uri: str, env: dict[str, str], batch: int) -> Migration:
    """The whole command: its output with timestamps, RSS sampled, ``wait4``'s peak."""
    import psutil

    found = Migration()
    start = time.perf_counter()
    proc = start_migration(uri, env, batch)
    out: list[str] = []

    def stdout() -> None:
        for line in proc.stdout:
            out.append(line.decode(errors="replace"))
            if CARRIED.search(out[-1]):
                found.carried_at = time.perf_counter() - start

    def stderr() -> None:
        pending = b""
        while chunk := os.read(proc.stderr.fileno(), 4096):
            pending += chunk
            *draws, pending = re.split(rb"[\r\n]", pending)
            for draw in draws:
                text = draw.decode(errors="replace")
                if m := BAR.search(text):
                    found.bar_times.append((time.perf_counter() - start, int(m[1])))
                elif GATING.search(text):
                    found.gating_at = time.perf_counter() - start
                elif text.strip():
                    out.append(text + "\n")

    readers = [threading.Thread(target=f, daemon=True) for f in (stdout, stderr)]
    for reader in readers:
        reader.start()
    watched = psutil.Process(proc.pid)
    while True:  # wait4, never Popen.poll: the child's own peak RSS comes with its exit
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        with contextlib.suppress(psutil.Error):
            found.rss.append((time.perf_counter() - start, watched.memory_info().rss / 2**20))
        time.sleep(0.1)
    found.code = proc.returncode = os.waitstatus_to_exitcode(status)
    found.maxrss_mb = usage.ru_maxrss / 1024
    for reader in readers:
        reader.join(10)
    found.wall_s = time.perf_counter() - start
    found.output = "".join(out)
    if m := CARRIED.search(found.output):
        found.added, found.carry_s = int(m[1]), float(m[4])
    return found


@dataclass
class Window:
    name: str
    result: object  # serve_throughput.Load
    carried: int = 0  # entries the migration carried meanwhile
    finished: bool = False  # the migration ended inside the window


def during_migration(url: str, bodies: list, clients: int, seconds: float, uri: str,
                     env: dict[str, str], batch: int, nice: int, folder: Path, key: str,
                     pid: int) -> Window:
    """Load while a migration carries (from its first carried batch), then the migration
    stopped (it resumes where it stands the next time)."""
    before = carried(folder, key)
    log = folder.parent / f"migration-nice{nice}.log"
    with log.open("wb") as output:
        proc = start_migration(uri, env, batch, nice, output)
    try:
        deadline = time.monotonic() + 300
        while carried(folder, key) <= before:
            if proc.poll() is not None or time.monotonic() > deadline:
                said = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
                raise SetupError(f"the migration to {uri} carried nothing (exit "
                                 f"{proc.returncode}; {said[0][-300:]}): is everything "
                                 "carried already? Give it more --entries")
            time.sleep(0.1)
        first = carried(folder, key)
        result = asyncio.run(load(url, bodies, clients, seconds, "/identify", pid))
        return Window(f"during a migration (ZOO_MIGRATION_NICE {nice})", result,
                      carried(folder, key) - first, proc.poll() is not None)
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(60)


def latency(env: dict[str, str], uris: list[str], folder: Path, key: str, args) -> list[Window]:
    from support.process import Server

    bodies = [multipart(p) for p in digit_pngs()]
    server_env = {**env, "ZOO_MODEL_URI": uris[0], "PYTHONPATH": str(REPO)}
    print("serving version 1 (its index is built from the filled gallery) ...",
          file=sys.stderr, flush=True)
    try:
        server = Server("serving.service:ZooService", server_env, timeout=900)
    except (RuntimeError, TimeoutError) as exc:
        raise SetupError(f"the server did not start: {str(exc).splitlines()[0]}") from None
    with server:
        pid = server.process.pid
        asyncio.run(load(server.url, bodies, args.clients, 2, "/identify"))  # warm
        windows = [Window("steady, before", asyncio.run(
            load(server.url, bodies, args.clients, args.seconds, "/identify", pid)))]
        for nice in args.nice:
            print(f"/identify during a migration, ZOO_MIGRATION_NICE={nice} ...", file=sys.stderr,
                  flush=True)
            windows.append(during_migration(server.url, bodies, args.clients, args.seconds,
                                            uris[2], env, args.batch_size, nice, folder, key,
                                            pid))
            time.sleep(2)  # the migration's exit settles
        windows.append(Window("steady, after", asyncio.run(
            load(server.url, bodies, args.clients, args.seconds, "/identify", pid))))
    return windows


# --- the run --------------------------------------------------------------------------------

def run(args) -> list[str]:
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="zoo-migration-bench-") as tmp:
        print("preparing resnet18 at 32 px ...", file=sys.stderr, flush=True)
        try:
            env = prepare(32, Path(tmp))
        except Exception as exc:  # noqa: BLE001 - any failure of training or export stops it
            raise SetupError(f"training or exporting the model failed: "
                             f"{type(exc).__name__}: {exc}") from None
        env.pop("onnx")
        if args.threads:
            env["ZOO_THREADS"] = str(args.threads)
        run_id = register_copies(env, 2)
        uris = [f"models:/{FAMILY}/{v}" for v in (1, 2, 3)]
        folder = Path(env["ZOO_GALLERY_DIR"])
        os.environ.update(env)

        started = time.perf_counter()
        fill(uris[0], args.entries, args.per_identity, args.side, cores)
        fill_s = time.perf_counter() - started
        kept = query(folder, "SELECT count(*) FROM zoo_gallery_kept")
        payload = query(folder, "SELECT avg(length(payload)) FROM zoo_gallery_kept")
        filled_bytes = db_bytes(folder)

        print("raw rate, then the migration to version 2 ...", file=sys.stderr, flush=True)
        model = served(uris[1])
        from zoo.export.runtime_timing import worker_threads

        threads = model.settings.threads or worker_threads(model.settings.worker_count,
                                                           model.settings.device)
        entries = sample(model, folder)
        pending_ms, count_ms = table_ms(model)
        raw_before = raw_rate(model, entries.x, args.raw_seconds)
        loads = [os.getloadavg()[0]]
        migration = migrate_watched(uris[1], env, args.batch_size)
        loads.append(os.getloadavg()[0])
        if migration.code != 0 or not migration.added:
            model.close()
            last = migration.output.strip().splitlines()[-1:] or ["no output"]
            raise SetupError(f"python -m serving.migrate --to {uris[1]} exited "
                             f"{migration.code}: {last[0]}")
        raw_after = raw_rate(model, entries.x, args.raw_seconds)
        count_ms = (count_ms + table_ms(model)[1]) / 2  # the count grows with the gallery
        runtime = model.runtime.name
        model.close()
        raw = (raw_before + raw_after) / 2
        migrated_bytes = db_bytes(folder)

        windows = latency(env, uris, folder, f"{FAMILY}-v3-{run_id[:12]}", args)
        loads.append(os.getloadavg()[0])

    steady = [w for w in windows if w.name.startswith("steady")]
    steady_p99 = float(np.mean([w.result.pct(99) for w in steady]))
    batches = -(-kept // args.batch_size)
    rows = [
        ("raw batched throughput, version 2 (`run_batched`, batch "
         f"{args.batch_size}, {runtime}, {threads} thread{'s' * (threads > 1)})",
         f"{raw:,.0f} img/s ({raw_before:,.0f} before, {raw_after:,.0f} after)", "", ""),
        (f"{kept:,} kept entries carried (`python -m serving.migrate`, its batches)",
         f"{migration.rate:,.0f} entries/s ({migration.added:,} in {migration.carry_s:.1f} s)",
         ">= 0.8 x raw", f"{migration.rate / raw:.2f}"),
    ]
    for w in windows:
        r = w.result
        cells = (f"{r.pct(50):.1f} / {r.pct(99):.1f} ms ({r.requests:,} requests, "
                 f"{r.rps:.0f}/s, {r.errors} errors)")
        if w.name.startswith("steady"):
            rows.append((f"/identify p50 / p99, {w.name}, {args.clients} clients", cells, "",
                         ""))
        else:
            rate = w.carried / args.seconds
            rows.append((f"/identify p50 / p99 {w.name}", cells, "p99 <= 2 x steady",
                         f"{r.pct(99) / steady_p99:.2f}"))
            rows.append((f"  the migration meanwhile (ZOO_MIGRATION_NICE "
                          f"{w.name.split()[-1][:-1]})",
                         f"{rate:,.0f} entries/s"
                         + (" (it finished inside the window)" if w.finished else ""),
                         "", f"{rate / raw:.2f} x raw"))
    rows += [
        ("peak RSS of the migration (whole command, `wait4`)",
         f"{migration.maxrss_mb:,.0f} MiB (sampled: " + ", ".join(
             f"{k} {v:,.0f}" for k, v in migration.peaks().items()) + ")", "", ""),
        ("database (gallery.db + WAL) per kept entry: after the fill (version 1's entries, "
         "what is kept) / after the migration",
         f"{filled_bytes / kept:,.0f} / {migrated_bytes / kept:,.0f} B "
         f"({filled_bytes / 2**20:,.0f} / {migrated_bytes / 2**20:,.0f} MiB)", "", ""),
        ("  a sealed kept image, mean", f"{payload:,.0f} B", "", ""),
    ]
    lines = ["| measure | measured | target | ratio |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    carry_us = 1e6 / migration.rate
    model_us = 1e6 / raw
    known = entries.unseal_us + entries.decode_us + model_us
    lines += ["", f"Fill: {kept:,} kept entries ({args.per_identity} per person, "
              f"{args.side} px) through GalleryStore.enroll, not HTTP, in {fill_s:.0f} s; "
              f"{cores} cores.",
              f"The migration's {migration.wall_s:.1f} s: " + ", ".join(
                  f"{k} {v:.1f} s" for k, v in migration.phases().items()) + ".",
              f"Its carry per entry, {carry_us:.0f} us, against the model's {model_us:.0f} "
              f"alone: reading the next batch (pending {pending_ms:.1f} ms per "
              f"{args.batch_size}, timed from the first entry), unsealing "
              f"({entries.unseal_us:.0f} us an entry) and decoding it "
              f"({entries.decode_us:.0f}), and writing the last one, run on two other "
              f"threads meanwhile ({known - model_us:.0f} us an entry besides the writes; "
              f"the progress count, {count_ms:.1f} ms, every 2 s; {batches:,} batches).",
              "Load average (1 min, the whole machine) at the raw rate, the migration, the "
              "server: " + ", ".join(f"{x:.1f}" for x in loads) + f" on {cores} cores.",
              f"Steady p99 (mean of before and after): {steady_p99:.1f} ms."]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=100_000, help="kept entries to carry")
    parser.add_argument("--per-identity", type=int, default=10, help="kept entries a person")
    parser.add_argument("--side", type=int, default=32, help="a kept image's side, px")
    parser.add_argument("--seconds", type=float, default=15.0,
                        help="each /identify measurement")
    parser.add_argument("--raw-seconds", type=float, default=8.0,
                        help="each raw measurement (before and after the migration)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent /identify clients")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="the migration's batch (and the raw rate's)")
    parser.add_argument("--nice", default="0,10",
                        help="ZOO_MIGRATION_NICE while served, one window each")
    parser.add_argument("--threads", type=int, default=0,
                        help="ZOO_THREADS for the migration, the raw rate and the server "
                             "(0: the serving default, cores / workers)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args(argv)
    args.nice = [int(n) for n in args.nice.split(",") if n.strip()]
    if min(args.entries, args.per_identity, args.side, args.clients, args.batch_size) < 1:
        parser.error("--entries, --per-identity, --side, --clients and --batch-size must be "
                     "at least 1")
    import logging
    logging.basicConfig(level=logging.WARNING)
    try:
        lines = run(args)
    except SetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
