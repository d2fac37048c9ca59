"""Evaluation at scale: time and peak memory of every metric at 20k, 100k and 1M samples.

    python bench/eval_scale.py [--sizes 20000,100000,1000000] [--classes 10,1000] [--dim 128]
                               [--markdown]

Each case runs ``zoo.metrics.evaluate`` (retrieval, clustering and verification, as the trainer
logs them at the end of a run) in a fresh process on synthetic unit embeddings: one Gaussian
centre per class and equal class sizes, so 10 classes is the emitter case (few classes, many
samples each, hence a deep search per query) and 1,000 classes the face case. Printed per case:
seconds per metric group, the process's RSS once the embeddings are made (the imports and the
data), its peak after retrieval, and its peak over all three. Above 20k samples retrieval
scores 20k seeded queries against the whole set and k-means fits on 20k seeded samples
(``zoo.metrics``), so these numbers are estimates there.

For the 20k x 10-class case it also runs the retrieval search the way it ran before chunking
(every query's neighbour list held at once), beside the chunked one, for the memory ratio.

Target on a 2-core machine: 100k x 128-d in 10 classes under 4 GiB peak RSS.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

WORKER = """
import json, resource, sys, time
import numpy as np
sys.path.insert(0, {repo!r})
from zoo.metrics import clustering_metrics, retrieval_metrics, verification_metrics

def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

n, classes, dim, mode = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rng = np.random.default_rng(0)
centres = rng.normal(size=(classes, dim)).astype(np.float32)
y = np.arange(n) % classes
x = np.empty((n, dim), np.float32)
for lo in range(0, n, 100_000):
    part = y[lo:lo + 100_000]
    x[lo:lo + len(part)] = (centres[part]
                            + 1.5 * rng.normal(size=(len(part), dim)).astype(np.float32))
out = {{"data_rss_mb": rss_mb()}}
if mode == "before":
    import faiss
    from zoo.metrics._utils import l2_normalize
    start = time.perf_counter()
    xn = l2_normalize(x)
    index = faiss.IndexFlatIP(dim)
    index.add(xn)
    _, idx = index.search(xn, n // classes)
    hits = y[idx] == y[:, None]
    out.update(retrieval_s=time.perf_counter() - start, retrieval_rss_mb=rss_mb(),
               peak_rss_mb=rss_mb())
else:
    for name, fn in (("retrieval", retrieval_metrics), ("clustering", clustering_metrics),
                     ("verification", verification_metrics)):
        start = time.perf_counter()
        values = fn(x, y)
        out[name + "_s"] = time.perf_counter() - start
        out[name + "_rss_mb"] = rss_mb()
        out[name] = values
    out["peak_rss_mb"] = rss_mb()
print(json.dumps(out))
"""


def run_case(n: int, classes: int, dim: int, mode: str) -> dict:
    """One case in a fresh process, so its peak RSS is its own."""
    done = subprocess.run(
        [sys.executable, "-c", WORKER.format(repo=str(REPO)), str(n), str(classes), str(dim), mode],
        capture_output=True, text=True, check=False,
    )
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr else "failed"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="20000,100000,1000000")
    parser.add_argument("--classes", default="10,1000")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--markdown", action="store_true", help="print a README table")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    class_counts = [int(c) for c in args.classes.split(",")]

    rows = []
    for n in sizes:
        for classes in class_counts:
            result = run_case(n, classes, args.dim, "chunked")
            rows.append((n, classes, "chunked" if n <= 20_000 else "20k queries, chunked", result))
            print(json.dumps({"samples": n, "classes": classes, **result}), file=sys.stderr)
            if n == 20_000 and classes == 10:
                before = run_case(n, classes, args.dim, "before")
                rows.append((n, classes, "one search (before)", before))

    sep = "|" if args.markdown else " "
    head = ["samples", "classes", "retrieval", "retrieval s", "clustering s", "verification s",
            "RSS with embeddings MB", "peak RSS after retrieval MB", "peak RSS MB"]
    print(sep.join(head) if not args.markdown else "| " + " | ".join(head) + " |")
    if args.markdown:
        print("|" + "---|" * len(head))
    for n, classes, mode, r in rows:
        if "error" in r:
            cells = [f"{n:,}", str(classes), mode, r["error"], "", "", "", "", ""]
        else:
            cells = [f"{n:,}", str(classes), mode, f"{r['retrieval_s']:.1f}",
                     f"{r.get('clustering_s', float('nan')):.1f}",
                     f"{r.get('verification_s', float('nan')):.1f}",
                     f"{r['data_rss_mb']:,.0f}", f"{r['retrieval_rss_mb']:,.0f}",
                     f"{r['peak_rss_mb']:,.0f}"]
        print("| " + " | ".join(cells) + " |" if args.markdown else sep.join(cells))


if __name__ == "__main__":
    main()
