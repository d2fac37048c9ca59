"""Identification at scale: the gallery table and its index at 10k, 100k and 1M entries.

    python bench/gallery_scale.py [--sizes 10000,100000,1000000] [--index auto] [--markdown]

For each size, a gallery of synthetic 128-d unit vectors (10 noisy entries around each
identity's centre) is loaded into a fresh SQLite store through ``serving.gallery_db``, and then:

- start-up: another process opens the gallery and builds its index (time, peak RSS);
- enroll: this worker enrolls one new identity of one image, 200 times (p50, p99), each a
  transaction plus this worker's own catch-up;
- search: top-5 identities for one query at a time, a noisy copy of a stored entry (p50, p99);
- recall@5 of the index against exact search, as the index measured it when built;
- catch-up: after each of 50 enrollments here, how long the other process takes to apply it
  (p50, max), and whether its next search finds the new identity.

Targets at 1M on a 2-core machine: enroll p50 <= 10 ms, search p50 <= 5 ms at recall@5 >= 0.99,
catch-up <= 50 ms.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DIM, PER_IDENTITY, NOISE = 128, 10, 0.3

WORKER = """
import json, resource, sys, time
from pathlib import Path
import numpy as np
sys.path.insert(0, {repo!r})
from serving.gallery.store import EmbeddingContract, GalleryStore
contract = EmbeddingContract(**json.loads(sys.argv[2]))
start = time.perf_counter()
store = GalleryStore(Path(sys.argv[1]), None, contract, index=sys.argv[3])
print(json.dumps({{"startup_s": time.perf_counter() - start,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "index": store.index.info.to_dict()}}), flush=True)
for line in sys.stdin:  # "<identity> <query as json>": catch up, then search
    name, query = line.split(" ", 1)
    start = time.perf_counter()
    store.refresh()
    took = time.perf_counter() - start
    found = store.search(np.array([json.loads(query)], np.float32), 1)[0]
    print(json.dumps({{"catch_up_s": took, "found": bool(found) and found[0].label == name}}),
          flush=True)
"""


def synthetic(identities: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Identity centres and ``PER_IDENTITY`` noisy unit entries around each."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((identities, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    noise = rng.standard_normal((identities, PER_IDENTITY, DIM)).astype(np.float32)
    entries = centres[:, None, :] + noise * (NOISE / DIM ** 0.5)
    entries /= np.linalg.norm(entries, axis=2, keepdims=True)
    return centres, entries.reshape(-1, DIM)


def load(folder: Path, contract: object, size: int) -> np.ndarray:
    """Fill the table with ``size`` entries in chunks; returns the identity centres."""
    from tqdm import tqdm

    from serving.gallery.database import database_uri, open_engine
    from serving.gallery.table import GalleryTable

    table = GalleryTable(open_engine(database_uri("", folder)), contract.key, contract.name)
    table.create(dataclasses.asdict(contract), DIM, 0.5, 1e-3, None, [])
    chunk, centres = 10_000, []
    with tqdm(total=size, desc=f"load {size:,}", unit="entry", leave=False) as bar:
        for first in range(0, size // PER_IDENTITY, chunk):
            count = min(chunk, size // PER_IDENTITY - first)
            c, entries = synthetic(count, first)
            names = [f"id{first + i:07d}" for i in range(count) for _ in range(PER_IDENTITY)]
            table.enroll_many(names, entries)
            centres.append(c)
            bar.update(len(entries))
    table.dispose()
    return np.concatenate(centres)


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000


def measure(size: int, index: str, root: Path) -> dict[str, float | str]:
    from serving.gallery.store import EmbeddingContract, GalleryStore

    contract = EmbeddingContract("bench", "1", f"run{size}", "0" * 64, DIM, "0" * 64)
    folder = root / f"g{size}"
    started = time.perf_counter()
    centres = load(folder, contract, size)
    load_s = time.perf_counter() - started
    other = subprocess.Popen(
        [sys.executable, "-c", WORKER.format(repo=str(Path(__file__).resolve().parents[1])),
         str(folder), json.dumps(dataclasses.asdict(contract)), index],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert other.stdin is not None and other.stdout is not None
    startup = json.loads(other.stdout.readline())
    store = GalleryStore(folder, None, contract, index=index)
    rng = np.random.default_rng(123)

    searches = []
    picks = rng.choice(len(centres), 300)
    queries = centres[picks] + rng.standard_normal((300, DIM)).astype(np.float32) * (
        NOISE / DIM ** 0.5)
    hits = 0
    for query, pick in zip(queries, picks):
        start = time.perf_counter()
        found = store.search(query[None], 5)[0]
        searches.append(time.perf_counter() - start)
        hits += found[0].label == f"id{pick:07d}"

    enrolls = []
    for i in range(200):
        vector = rng.standard_normal((1, DIM)).astype(np.float32)
        start = time.perf_counter()
        store.enroll(vector, f"new{i}")
        enrolls.append(time.perf_counter() - start)

    catch_up, found = [], 0
    for i in range(50):
        vector = rng.standard_normal((1, DIM)).astype(np.float32)
        store.enroll(vector, f"late{i}")
        other.stdin.write(f"late{i} {json.dumps(vector[0].tolist())}\n")
        other.stdin.flush()
        answer = json.loads(other.stdout.readline())
        catch_up.append(answer["catch_up_s"])
        found += answer["found"]
    other.stdin.close()
    other.wait(60)
    info = store.index.info
    store.close()
    return {
        "entries": f"{size:,}", "index": info.kind + (f" {info.params}" if info.params else ""),
        "load s": round(load_s, 1),
        "start-up s": round(startup["startup_s"], 1), "RSS MB": round(startup["rss_mb"]),
        "enroll p50 ms": round(pct(enrolls, 50), 2), "enroll p99 ms": round(pct(enrolls, 99), 2),
        "search p50 ms": round(pct(searches, 50), 2), "search p99 ms": round(pct(searches, 99), 2),
        "recall@5": 1.0 if info.recall_at_5 is None else round(info.recall_at_5, 4),
        "top-1 right": round(hits / len(picks), 3),
        "catch-up p50 ms": round(pct(catch_up, 50), 2),
        "catch-up max ms": round(max(catch_up) * 1000, 2),
        "found after catch-up": f"{found}/50",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--index", default="auto", help="auto, flat, ivf or hnsw")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="gallery-bench-") as root:
        for size in (int(s) for s in args.sizes.split(",")):
            rows.append(measure(size, args.index, Path(root)))
            print(json.dumps(rows[-1]), flush=True)
    columns = list(rows[0])
    if args.markdown:
        print("| " + " | ".join(columns) + " |")
        print("|" + "---|" * len(columns))
        for row in rows:
            print("| " + " | ".join(str(row[c]) for c in columns) + " |")


if __name__ == "__main__":
    main()
